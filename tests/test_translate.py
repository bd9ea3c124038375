"""Translation task: pair readers, splits, vocabularies, catalog, sacreBLEU wrapper, and a run end to end."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import itertools
from concurrent.futures import ThreadPoolExecutor
import json

import pytest
import sacrebleu
import torch

from nanonlp.cli import main
from nanonlp.config import load_config
from nanonlp.data import catalog
from nanonlp.data.readers import Pair, read_aligned_pairs, read_tsv_pairs
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.metrics import bleu_chrf
from nanonlp.predict.translate import load
from nanonlp.tasks.translate import TranslateDataConfig, Vocabularies, keep_pair, load_splits
from nanonlp.train import fit

# A tiny "language pair": every English phrase has one German rendering, word by word, with German
# word order for the verb-final subordinate clause, so the model must learn more than a copy.
SUBJECTS = {"the dog": "der Hund", "the cat": "die Katze", "a man": "ein Mann", "the girl": "das Mädchen", "a woman": "eine Frau"}
VERBS = {"runs": "läuft", "sleeps": "schläft", "sings": "singt"}
PLACES = {"outside": "draußen", "at home": "zu Hause"}


def toy_pairs() -> list[Pair]:
    pairs = []
    for (s_en, s_de), (v_en, v_de), (p_en, p_de) in itertools.product(SUBJECTS.items(), VERBS.items(), PLACES.items()):
        pairs.append(Pair(f"{s_en} {v_en} {p_en} .", f"{s_de} {v_de} {p_de} ."))
    return pairs  # 30 pairs


def write_tsv(path, pairs, extra_column: bool = False):
    lines = [f"{p.source}\t{p.target}" + ("\tCC-BY 2.0 (France) Attribution: tatoeba.org #1" if extra_column else "") for p in pairs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------
# readers and splits


def test_tsv_reader_ignores_extra_columns_and_blank_lines(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("Go.\tVa !\tCC-BY attribution\n\nHi.\tSalut !\n", encoding="utf-8")
    assert read_tsv_pairs(path) == [Pair("Go.", "Va !"), Pair("Hi.", "Salut !")]
    assert read_tsv_pairs(path, source_column=1, target_column=0)[1] == Pair("Salut !", "Hi.")


def test_tsv_reader_names_the_malformed_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("Go.\tVa !\nHi. Salut !\nRun!\tCours !\n", encoding="utf-8")
    with pytest.raises(NanoNLPError, match=r"pairs.tsv, line 2: expected at least 2 tab-separated columns"):
        read_tsv_pairs(path)


def test_aligned_files_must_have_the_same_number_of_lines(tmp_path):
    (tmp_path / "train.en").write_text("A dog.\nA cat.\n", encoding="utf-8")
    (tmp_path / "train.de").write_text("Ein Hund.\n", encoding="utf-8")
    with pytest.raises(NanoNLPError, match="has 2 lines but .* has 1"):
        read_aligned_pairs(tmp_path / "train.en", tmp_path / "train.de")
    (tmp_path / "train.de").write_text("Ein Hund.\nEine Katze.\n", encoding="utf-8")
    assert read_aligned_pairs(tmp_path / "train.en", tmp_path / "train.de")[1] == Pair("A cat.", "Eine Katze.")


def test_undecodable_pairs_name_the_byte(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes("Go.\tVa !\n".encode() + b"Caf\xe9\tCafe\n")
    with pytest.raises(NanoNLPError, match="byte offset 12"):
        read_tsv_pairs(path)


def test_held_out_splits_are_seeded_deduplicated_and_kept_out_of_training(tmp_path):
    pairs = toy_pairs()
    # a repeated pair, and a second translation of a sentence that will be held out
    data = pairs + [pairs[0], Pair(pairs[5].source, "eine andere Übersetzung .")]
    path = write_tsv(tmp_path / "pairs.tsv", data)
    cfg = TranslateDataConfig(path=str(path), dev_size=4, test_size=3, split_seed=7)
    train, dev, test = load_splits(cfg)
    assert (len(dev), len(test)) == (4, 3)
    assert load_splits(cfg) == (train, dev, test)  # the same config holds out the same pairs
    assert load_splits(dataclasses.replace(cfg, split_seed=8))[1] != dev
    assert len(set(train)) == len(train)  # no duplicates
    held_sources = {p.source for p in dev + test}
    assert not held_sources & {p.source for p in train}
    assert len(train) + len(dev) + len(test) <= 31
    # without dedup the repeats stay in training
    train_all, _, _ = load_splits(dataclasses.replace(cfg, dedup=False))
    assert len(train_all) == len(data) - 7


def test_too_few_pairs_for_the_hold_out_is_an_error(tmp_path):
    path = write_tsv(tmp_path / "pairs.tsv", toy_pairs()[:5])
    with pytest.raises(NanoNLPError, match="too few to hold out"):
        load_splits(TranslateDataConfig(path=str(path), dev_size=3, test_size=3))


def test_prefix_of_line_aligned_files_and_explicit_dev_and_test(tmp_path):
    pairs = toy_pairs()
    for split, chunk in (("train", pairs[:20]), ("val", pairs[20:25]), ("test", pairs[25:])):
        (tmp_path / f"{split}.en").write_text("".join(p.source + "\n" for p in chunk), encoding="utf-8")
        (tmp_path / f"{split}.de").write_text("".join(p.target + "\n" for p in chunk), encoding="utf-8")
    cfg = TranslateDataConfig(path=str(tmp_path / "train"), dev_path=str(tmp_path / "val"), test_path=str(tmp_path / "test"))
    train, dev, test = load_splits(cfg)
    assert (train, dev, test) == (pairs[:20], pairs[20:25], pairs[25:])
    with pytest.raises(NanoNLPError, match="not a TSV file of sentence pairs, nor the prefix"):
        load_splits(dataclasses.replace(cfg, path=str(tmp_path / "nothing")))


def test_length_filter():
    cfg = TranslateDataConfig(max_length=4, max_length_ratio=2.0)
    eos = 2
    assert keep_pair([5, 6, eos], [7, 8, 9], cfg)
    assert not keep_pair([5, 6, 7, 8, 9, eos], [7], cfg)  # source longer than max_length
    assert not keep_pair([5, eos], [7, 8, 9], cfg)  # 3 target tokens for 1 source token: ratio 3 > 2
    assert not keep_pair([eos], [7], cfg)  # empty source
    assert keep_pair([5, eos], [7, 8, 9], dataclasses.replace(cfg, max_length_ratio=0.0))


def test_catalog_reads_multi30k_from_the_shared_folder_by_language(tmp_path, monkeypatch):
    folder = tmp_path / "shared" / "multi30k"
    folder.mkdir(parents=True)
    for split, stem in (("train", "train"), ("val", "val"), ("test", "test_2016_flickr")):
        (folder / f"{stem}.en").write_text(f"a {split} sentence .\nanother {split} one .\n", encoding="utf-8")
        (folder / f"{stem}.de").write_text(f"ein {split} Satz .\nnoch einer ({split}) .\n", encoding="utf-8")
    monkeypatch.setenv("NANONLP_DATA", str(tmp_path / "shared"))
    train, dev, test = load_splits(TranslateDataConfig(path="multi30k"))
    assert train == [Pair("a train sentence .", "ein train Satz ."), Pair("another train one .", "noch einer (train) .")]
    assert dev[0].target == "ein val Satz ." and test[1].source == "another test one ."
    with pytest.raises(NanoNLPError, match="has the languages en, de, fr; got 'cs'"):
        load_splits(TranslateDataConfig(path="multi30k", target_lang="cs"))


def test_catalog_downloads_a_gzipped_file_and_checks_it(tmp_path, monkeypatch):
    """The real download path, pointed at a local file:// URL (no network here)."""
    text = b"ein Satz .\n"
    source = tmp_path / "remote" / "train.de.gz"
    source.parent.mkdir()
    source.write_bytes(gzip.compress(text))
    entry = dataclasses.replace(catalog.CATALOG["multi30k"], url=source.parent.as_uri() + "/train.{lang}.gz",
                                checksums=(("de", hashlib.sha256(text).hexdigest()),))
    monkeypatch.setitem(catalog.CATALOG, "multi30k", entry)
    path = catalog.resolve("multi30k", "de")
    assert path.read_bytes() == text and path.parent.name == "multi30k"
    bad = dataclasses.replace(entry, checksums=(("de", "0" * 64),))
    monkeypatch.setitem(catalog.CATALOG, "multi30k", bad)
    path.unlink()
    with pytest.raises(NanoNLPError, match="checksum"):
        catalog.resolve("multi30k", "de")
    assert not path.exists()  # nothing half-written


# ---------------------------------------------------------------------------------------------------
# vocabularies and scoring


def test_joint_and_separate_vocabularies(tmp_path):
    pairs = toy_pairs()
    joint = Vocabularies.train(TranslateDataConfig(vocab_size=300), pairs)
    assert joint.source is joint.target
    assert (joint.pad_id, joint.bos_id, joint.eos_id) == (0, 1, 2)
    separate = Vocabularies.train(TranslateDataConfig(vocab_size=300, joint_vocab=False), pairs)
    assert separate.source is not separate.target
    for vocab in (joint, separate):
        vocab.save(tmp_path / "run")
        again = Vocabularies.load(tmp_path / "run")
        text = "das Mädchen singt zu Hause — 42 ü !"
        ids = again.encode_targets([text])[0]
        assert again.decode_target(ids) == text  # detokenised output is the text itself
        assert again.encode_sources(["a dog"])[0][-1] == again.eos_id
        assert ids == vocab.encode_targets([text])[0]


def test_bleu_and_chrf_equal_sacrebleu():
    hypotheses = ["The cat sat on the mat.", "A dog runs in the park", "Hello there!"]
    references = ["The cat is sitting on the mat.", "A dog is running in the park.", "Hello there!"]
    report = bleu_chrf(hypotheses, references)
    assert report["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score, abs=1e-9)
    assert report["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score, abs=1e-9)
    assert report["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert bleu_chrf(references, references)["bleu"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="pair up"):
        bleu_chrf(hypotheses, references[:2])


# ---------------------------------------------------------------------------------------------------
# configs


def test_translate_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.type must be one of seq2seq, transformer for task translate"):
        load_config(None, ["task=translate", "--model.type=gpt"])
    with pytest.raises(ConfigError, match="source_lang and data.target_lang are both 'en'"):
        load_config(None, ["task=translate", "--model.type=seq2seq", "--data.target_lang=en"])
    with pytest.raises(ConfigError, match="translate.label_smoothing"):
        load_config(None, ["task=translate", "--model.type=transformer", "--translate.label_smoothing=1.5"])
    with pytest.raises(ConfigError, match="model.attention must be one of bahdanau, dot, general"):
        load_config(None, ["task=translate", "--model.type=seq2seq", "--model.attention=luong"])
    with pytest.raises(ConfigError, match="source_vocab_size is set from the data"):
        load_config(None, ["task=translate", "--model.type=seq2seq", "--model.source_vocab_size=9"])


def tiny_translate(tsv, out_dir, family: str = "transformer", **extra) -> list[str]:
    values = {
        "data.path": str(tsv), "data.vocab_size": 300, "data.dev_size": 2, "data.test_size": 2, "data.batch_tokens": 512,
        "data.dedup": False,
        "train.out_dir": str(out_dir), "train.max_steps": 150, "train.eval_interval": 150, "train.log_interval": 50,
        "train.learning_rate": 3e-3, "train.min_lr": 3e-4, "train.warmup_steps": 10, "train.peak_tflops": 1.0,
        "train.dtype": "float32", "train.keep_checkpoints": 3, "translate.val_sentences": 2, "translate.label_smoothing": 0.0,
    }
    if family == "transformer":
        values.update({"model.type": "transformer", "model.n_embd": 48, "model.n_head": 2, "model.encoder_layers": 1,
                       "model.decoder_layers": 1, "model.ffn_dim": 96, "model.dropout": 0.0})
    else:
        values.update({"model.type": "seq2seq", "model.embed_dim": 32, "model.hidden_size": 64, "model.dropout": 0.0})
    values.update(extra)
    return ["task=translate"] + [f"--{k}={v}" for k, v in values.items()]


def test_shared_embeddings_need_a_joint_vocabulary(tmp_path):
    tsv = write_tsv(tmp_path / "pairs.tsv", toy_pairs())
    cfg = load_config(None, tiny_translate(tsv, tmp_path / "run", **{"data.joint_vocab": False}))
    with pytest.raises(ConfigError, match="share_embeddings needs one vocabulary"):
        fit(cfg, quiet=True)
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing half-prepared


# ---------------------------------------------------------------------------------------------------
# a run end to end


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny Transformer trained through the real task code on all 30 toy pairs (train = dev = test)."""
    tmp = tmp_path_factory.mktemp("translate")
    pairs = toy_pairs()
    tsv = write_tsv(tmp / "pairs.tsv", pairs, extra_column=True)
    torch.manual_seed(0)
    cfg = load_config(None, tiny_translate(tsv, tmp / "run", **{"data.dev_path": str(tsv), "data.test_path": str(tsv)}))
    fit(cfg, quiet=True)
    return tmp / "run", pairs, tsv


def test_trained_run_translates_its_training_pairs(trained_run):
    run_dir, pairs, _ = trained_run
    translator = load(run_dir)
    assert translator.translate([p.source for p in pairs], beam_size=1) == [p.target for p in pairs]
    assert translator.translate([p.source for p in pairs], beam_size=4) == [p.target for p in pairs]
    best = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "val_bleu" in line]
    assert best[-1]["val_bleu"] == pytest.approx(100.0)


def test_saved_run_reloads_and_translates_identically(trained_run):
    run_dir, pairs, _ = trained_run
    sources = [p.source for p in pairs] + ["the dog sings outside .", "a cat runs .", "something it never saw"]
    first = load(run_dir).translate_nbest(sources, beam_size=3, nbest=3)
    second = load(run_dir).translate_nbest(sources, beam_size=3, nbest=3)
    assert first == second
    assert all(len(options) == 3 for options in first)
    for options in first:  # best first, and three different translations
        scores = [score for _, score in options]
        assert scores == sorted(scores, reverse=True) and len({text for text, _ in options}) == 3


def test_cli_translate_from_stdin_args_and_file(trained_run, tmp_path, capsys, monkeypatch):
    run_dir, pairs, _ = trained_run
    expected = load(run_dir).translate([p.source for p in pairs[:3]], beam_size=2)
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(p.source + "\n" for p in pairs[:3]) + "\n"))
    main(["translate", str(run_dir), "--beam", "2"])
    assert capsys.readouterr().out.splitlines() == expected + [""]  # a blank line stays blank, in its place
    main(["translate", str(run_dir), "--beam", "2", *[p.source for p in pairs[:3]]])
    assert capsys.readouterr().out.splitlines() == expected
    source = tmp_path / "in.en"
    source.write_text("".join(p.source + "\n" for p in pairs[:3]), encoding="utf-8")
    main(["translate", str(run_dir), "--beam", "2", "--input", str(source), "--output", str(tmp_path / "out.de")])
    assert (tmp_path / "out.de").read_text(encoding="utf-8").splitlines() == expected
    main(["translate", str(run_dir), "--beam", "3", "--nbest", "2", pairs[0].source])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[0] == "0" and lines[0].split("\t")[2] == pairs[0].target
    assert float(lines[0].split("\t")[1]) >= float(lines[1].split("\t")[1])
    with pytest.raises(SystemExit) as exit_info:
        main(["translate", str(run_dir), "--beam", "2", "--nbest", "3", "x"])
    assert exit_info.value.code == 1 and "larger than the beam" in capsys.readouterr().err


def test_cli_eval_prints_bleu_chrf_and_signature(trained_run, tmp_path, capsys):
    run_dir, pairs, _ = trained_run
    src, ref = tmp_path / "test.en", tmp_path / "test.de"
    src.write_text("".join(p.source + "\n" for p in pairs), encoding="utf-8")
    ref.write_text("".join(p.target + "\n" for p in pairs), encoding="utf-8")
    main(["eval", str(run_dir), "--src", str(src), "--ref", str(ref), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["bleu"] == pytest.approx(100.0) and report["chrf"] == pytest.approx(100.0)
    assert "tok:13a" in report["bleu_signature"]
    main(["eval", str(run_dir)])  # the run's own test split
    out = capsys.readouterr().out
    assert "BLEU:  100.00" in out and "nrefs:1|case:mixed" in out
    ref.write_text("only one line\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(run_dir), "--src", str(src), "--ref", str(ref)])
    assert exit_info.value.code == 1 and "must pair up" in capsys.readouterr().err


def test_attention_heatmap(trained_run, tmp_path, capsys):
    run_dir, pairs, _ = trained_run
    translator = load(run_dir)
    source, target, weights = translator.attention(pairs[0].source, beam_size=1)
    assert weights.shape == (len(target), len(source))
    assert torch.allclose(weights.sum(dim=1), torch.ones(len(target)), atol=1e-5)
    assert target[-1] == "</s>" and source[-1] == "</s>"
    assert "".join(target[:-1]).replace("▁", " ").strip() == pairs[0].target
    png = tmp_path / "attn.png"
    main(["translate", str(run_dir), pairs[0].source, "--plot-attention", str(png), "--layer", "0"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        main(["translate", str(run_dir), pairs[0].source, "--plot-attention", str(png), "--layer", "5"])
    assert "out of range" in capsys.readouterr().err


def test_average_of_checkpoints_is_their_mean(trained_run, tmp_path, capsys):
    run_dir, pairs, _ = trained_run
    from safetensors.torch import load_file

    steps = sorted((run_dir / "checkpoints").glob("step_*"))
    assert len(steps) == 1  # one evaluation: one step checkpoint
    # a second checkpoint with other weights, to average with the first
    other = run_dir.parent / "other"
    tensors = load_file(str(steps[0] / "model.safetensors"))
    from safetensors.torch import save_file

    shifted = {k: v + 1.0 for k, v in tensors.items()}
    fake = run_dir / "checkpoints" / "step_99999999"
    fake.mkdir()
    save_file(shifted, str(fake / "model.safetensors"))
    try:
        main(["average", str(run_dir), "--last", "2", "--out", str(other)])
        averaged = load_file(str(other / "model.safetensors"))
        for name, value in tensors.items():
            assert torch.allclose(averaged[name], value + 0.5, atol=1e-6)
        assert (other / "config.yaml").is_file() and (other / "target" / "tokenizer.json").is_file()
        assert not (other / "checkpoints").exists()
        with pytest.raises(SystemExit) as exit_info:
            main(["average", str(run_dir), "--last", "3", "--out", str(tmp_path / "x")])
        assert exit_info.value.code == 1 and "keeps 2 step checkpoint(s), fewer than --last 3" in capsys.readouterr().err
    finally:
        import shutil

        shutil.rmtree(fake)
    # averaging the single real checkpoint gives a run that translates like the original's last step
    main(["average", str(run_dir), "--last", "1", "--out", str(tmp_path / "avg1")])
    assert load(tmp_path / "avg1").translate([p.source for p in pairs], 1) == [p.target for p in pairs]


def test_rnn_run_end_to_end(tmp_path):
    pairs = toy_pairs()
    tsv = write_tsv(tmp_path / "pairs.tsv", pairs)
    torch.manual_seed(0)
    cfg = load_config(None, tiny_translate(tsv, tmp_path / "run", "seq2seq", **{"data.dev_path": str(tsv), "data.test_path": str(tsv),
                                                                                 "train.max_steps": 200, "train.eval_interval": 200}))
    fit(cfg, quiet=True)
    translator = load(tmp_path / "run")
    assert translator.translate([p.source for p in pairs], beam_size=3) == [p.target for p in pairs]
    source, target, weights = translator.attention(pairs[3].source)
    assert weights.shape == (len(target), len(source))
    assert torch.allclose(weights.sum(1), torch.ones(len(target)), atol=1e-5)  # each row a distribution over the source
    # one predictor, eight threads at once: the same translations as one after another
    sources = [p.source for p in pairs[:8]]
    sequential = [translator.translate(s, beam_size=2) for s in sources]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda s: translator.translate(s, beam_size=2), sources)) == sequential
    # an RNN encoder has no position table, but a source is still capped: a request's memory and time are bounded
    from nanonlp.predict.translate import RNN_SOURCE_TOKENS

    assert translator.languages == ("en", "de") and translator.max_input_length == RNN_SOURCE_TOKENS
    long_source = translator._source_ids([" ".join(p.source for p in pairs) * 200])[0]
    assert len(long_source) == RNN_SOURCE_TOKENS and long_source[-1] == translator.vocab.eos_id


def test_lines_split_only_at_newlines(tmp_path):
    """A U+2028 or form feed inside a sentence must not shift line-aligned files."""
    (tmp_path / "a.en").write_text("one\u2028sentence\ntwo\x0csentences\r\n", encoding="utf-8")
    (tmp_path / "a.de").write_text("ein Satz\nzwei Sätze\n", encoding="utf-8")
    assert read_aligned_pairs(tmp_path / "a.en", tmp_path / "a.de") == [Pair("one\u2028sentence", "ein Satz"),
                                                                        Pair("two\x0csentences", "zwei Sätze")]


def test_more_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="max_length_ratio must be 0 .off. or at least 1"):
        load_config(None, ["task=translate", "--model.type=seq2seq", "--data.max_length_ratio=0.5"])
    tsv = write_tsv(tmp_path / "pairs.tsv", toy_pairs())
    cfg = load_config(None, tiny_translate(tsv, tmp_path / "run", **{"data.max_length": 300}))
    with pytest.raises(ConfigError, match=r"data.max_length \(300\) \+ 1 .* must fit model.max_positions \(256\)"):
        fit(cfg, quiet=True)
    cfg = load_config(None, tiny_translate(tsv, tmp_path / "run2", **{"train.fsdp": True}))
    with pytest.raises(ConfigError, match="train.fsdp is not supported for translation"):
        fit(cfg, quiet=True)


def test_changed_data_is_refused_on_resume_and_eval(tmp_path, capsys):
    pairs = toy_pairs()
    tsv = write_tsv(tmp_path / "pairs.tsv", pairs)
    overrides = tiny_translate(tsv, tmp_path / "run", **{"train.max_steps": 4, "train.eval_interval": 2, "data.dev_size": 3,
                                                          "data.test_size": 3, "data.dedup": True})
    fit(load_config(None, overrides), quiet=True)
    main(["eval", str(tmp_path / "run"), "--beam", "1", "--json"])  # unchanged data: fine
    assert json.loads(capsys.readouterr().out)["sentences"] == 3
    write_tsv(tsv, pairs[1:] + [Pair("a new sentence .", "ein neuer Satz .")])  # the file changed: other held-out pairs
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tmp_path / "run")])
    assert exit_info.value.code == 1 and "changed since the run was prepared" in capsys.readouterr().err
    with pytest.raises(NanoNLPError, match="changed since the run was prepared"):
        fit(load_config(None, overrides + ["--train.max_steps=6"]), resume=True, quiet=True)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tmp_path / "run"), "--data", str(tsv)])
    assert exit_info.value.code == 2 and "--data is for classify, lm, sentence and tag runs" in capsys.readouterr().err


def test_two_process_translation_training_learns_and_resumes(tmp_path):
    """torchrun, gloo: each rank trains on half of the pairs; rank 0 alone logs, evaluates and saves."""
    from test_distributed import torchrun, train_losses

    pairs = toy_pairs()
    tsv = write_tsv(tmp_path / "pairs.tsv", pairs)
    args = tiny_translate(tsv, tmp_path / "run", **{"data.dev_path": str(tsv), "data.test_path": str(tsv), "train.max_steps": 200,
                                                    "train.eval_interval": 100})[1:]  # torchrun takes no task=; the file sets it
    config = tmp_path / "translate.yaml"
    config.write_text("task: translate\nmodel: {type: transformer}\n")
    torchrun([str(config), *args, "--quiet"])
    assert sorted(train_losses(tmp_path / "run")) == [50, 100, 150, 200]  # one writer: each step logged once
    assert load(tmp_path / "run").translate([p.source for p in pairs], 1) == [p.target for p in pairs]
    torchrun([str(config), *args, "--quiet", "--resume", "--train.max_steps=250"])
    assert sorted(train_losses(tmp_path / "run")) == [50, 100, 150, 200, 250]


def test_a_translation_run_prepared_before_the_cache_resumes(tmp_path):
    import shutil

    from nanonlp.tasks.translate import LEGACY_DATA_FILE, legacy_fingerprint

    pairs = toy_pairs()
    tsv = write_tsv(tmp_path / "pairs.tsv", pairs)
    overrides = tiny_translate(tsv, tmp_path / "run", **{"train.max_steps": 4, "train.eval_interval": 2, "data.dev_size": 3,
                                                          "data.test_size": 3})
    fit(load_config(None, overrides), quiet=True)
    shutil.rmtree(tmp_path / "run" / "data")  # a run directory as written before the cache, with its split fingerprint
    splits = load_splits(load_config(None, overrides).data)
    (tmp_path / "run" / LEGACY_DATA_FILE).write_text(json.dumps({"sha256": legacy_fingerprint(splits)}))
    assert fit(load_config(None, overrides + ["--train.max_steps=6"]), resume=True, quiet=True).step == 6
    assert (tmp_path / "run" / "data" / "prepared.json").is_file()
    shutil.rmtree(tmp_path / "run" / "data")
    write_tsv(tsv, pairs[1:])  # changed since: the old fingerprint refuses
    with pytest.raises(NanoNLPError, match="changed since the run was prepared"):
        fit(load_config(None, overrides + ["--train.max_steps=8"]), resume=True, quiet=True)
