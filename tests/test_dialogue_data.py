"""Readers and catalog entries of the assistant's benchmark data (SNIPS, CAIS, SMP2017, AFQMC, SGD,
CrossWOZ), on small fixtures written here; every malformed file is an error naming file and line."""

from __future__ import annotations

import json
import zipfile

import pytest

from nanonlp.config import load_config
from nanonlp.data import catalog
from nanonlp.data.readers import (CONTEXT_MARK, read_cais, read_crosswoz, read_examples, read_question_pairs, read_sgd_turns,
                                  read_snips, turn_examples)
from nanonlp.data.tagging import convert, read_tagged
from nanonlp.errors import NanoNLPError

SNIPS = "play O\nsome O\njazz B-genre\nmusic O\nPlayMusic\n\nrate O\nthis O\nbook B-object_type\nfive B-rating_value\nstars B-rating_unit\nRateBook\n\n"
# CAIS writes a space character as a token ("  O"): the reader splits at the last space.
CAIS = "我 O\n要 O\n听 O\n周 B-singer\n杰 I-singer\n伦 E-singer\n\n放 O\nA B-song\n  I-song\nB E-song\n\n晴 S-song\n"
SGD = ("dialogue_id\tturn\tspeaker\tservice\tintent_or_acts\tutterance\n"
       "1_0\t0\tUSER\tRestaurants_2\tReserveRestaurant\tBook a table for two.\n"
       "1_0\t1\tSYSTEM\tRestaurants_2\tREQUEST\tWhich city?\n"
       "1_0\t2\tUSER\tRestaurants_2\tReserveRestaurant\tSan Jose.\n"
       "1_0\t3\tSYSTEM\tRestaurants_2\tCONFIRM,OFFER\tSino at 11:30?\n"
       "1_0\t4\tUSER\tRestaurants_2\tNONE\tNo thanks.\n"
       "2_0\t0\tUSER\tEvents_1,Alarm_1\tFindEvents\tAny concerts?\n")
CROSSWOZ = {"7": {"messages": [
    {"role": "usr", "content": "推荐一家餐馆", "dialog_act": [["Request", "餐馆", "名称", ""], ["General", "greet", "none", "none"]]},
    {"role": "sys", "content": "推荐全聚德", "dialog_act": [["Inform", "餐馆", "名称", "全聚德"]]},
    {"role": "usr", "content": "它的地址呢", "dialog_act": [["Request", "餐馆", "地址", ""], ["Request", "餐馆", "地址", ""]]},
    {"role": "sys", "content": "在前门", "dialog_act": []}]}}


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_snips_reads_tokens_tags_and_intents(tmp_path):
    utterances = read_snips(write(tmp_path / "snips.txt", SNIPS))
    assert [u.intent for u in utterances] == ["PlayMusic", "RateBook"]
    assert utterances[0].tokens == ("play", "some", "jazz", "music") and utterances[0].tags == ("O", "O", "B-genre", "O")
    assert [s.tags for s in read_tagged(tmp_path / "snips.txt", "snips")][1] == ["O", "O", "B-object_type", "B-rating_value", "B-rating_unit"]
    assert [(e.text, e.label) for e in read_examples(tmp_path / "snips.txt", "snips")] == [
        ("play some jazz music", "PlayMusic"), ("rate this book five stars", "RateBook")]


@pytest.mark.parametrize("text, line, message", [
    ("play O\njazz B-genre\n\nPlayMusic\n", 3, "no intent line"),
    ("PlayMusic\n", 1, "follows no tokens"),
    ("play O\njazz B-genre\n", 2, "last utterance has no intent line"),
])
def test_snips_malformed_names_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path / "bad.txt", text)
    with pytest.raises(NanoNLPError, match=rf"bad.txt, line {line}: .*{message}"):
        read_snips(path)


def test_cais_reads_space_tokens_and_the_intent_file(tmp_path):
    path = write(tmp_path / "ch.train", CAIS)
    write(tmp_path / "ch.train.intent", "PlayMusic\nPlayMusic\nChat\n")
    utterances = read_cais(path)
    assert utterances[1].tokens == ("放", "A", " ", "B") and utterances[1].tags == ("O", "B-song", "I-song", "E-song")
    assert [u.intent for u in utterances] == ["PlayMusic", "PlayMusic", "Chat"]
    assert read_examples(path, "cais")[1].text == "放A B"  # characters joined as they are, the space kept
    # BIOES to IOB2 for seqeval: E- becomes I-, S- becomes B-
    assert convert(list(utterances[0].tags), "bioes", "iob2") == ["O", "O", "O", "B-singer", "I-singer", "I-singer"]
    assert convert(list(utterances[2].tags), "bioes", "iob2") == ["B-song"]


def test_cais_malformed(tmp_path):
    path = write(tmp_path / "ch.dev", CAIS)
    with pytest.raises(NanoNLPError, match=r"ch.dev.intent"):
        read_cais(path)  # no .intent file
    write(tmp_path / "ch.dev.intent", "PlayMusic\nChat\n")
    with pytest.raises(NanoNLPError, match=r"3 utterances but .* 2 intents"):
        read_cais(path)
    write(tmp_path / "ch.dev.intent", "PlayMusic\nPlay Music\nChat\n")
    with pytest.raises(NanoNLPError, match=r"ch.dev.intent, line 2: expected one intent name"):
        read_cais(path)
    write(tmp_path / "ch.bad", "我 O\n要\n")
    write(tmp_path / "ch.bad.intent", "Chat\n")
    with pytest.raises(NanoNLPError, match=r"ch.bad, line 2: expected 'TOKEN TAG'"):
        read_cais(tmp_path / "ch.bad")


def test_question_pairs(tmp_path):
    pairs = read_question_pairs(write(tmp_path / "dev.txt", "花呗怎么还款\t花呗如何还钱\t1\n借呗额度\t花呗额度\t0\n"))
    assert [(p.first, p.second, p.same) for p in pairs] == [("花呗怎么还款", "花呗如何还钱", True), ("借呗额度", "花呗额度", False)]
    with pytest.raises(NanoNLPError, match=r"bad.txt, line 2: expected 'QUESTION1<TAB>QUESTION2<TAB>LABEL'"):
        read_question_pairs(write(tmp_path / "bad.txt", "a\tb\t1\na\tb\tyes\n"))
    with pytest.raises(NanoNLPError, match=r"line 1: a question is empty"):
        read_question_pairs(write(tmp_path / "empty.txt", " \tb\t1\n"))


def test_sgd_turns_and_examples_with_context(tmp_path):
    dialogues = read_sgd_turns(write(tmp_path / "sgd.tsv", SGD))
    assert [d.id for d in dialogues] == ["1_0", "2_0"]
    assert dialogues[0].turns[3].labels == ("CONFIRM", "OFFER") and dialogues[1].turns[0].services == ("Events_1", "Alarm_1")
    alone = turn_examples(dialogues, "user")
    assert [(e.text, e.label) for e in alone] == [("Book a table for two.", "ReserveRestaurant"), ("San Jose.", "ReserveRestaurant"),
                                                  ("No thanks.", "NONE"), ("Any concerts?", "FindEvents")]
    context = turn_examples(dialogues, "user", context_turns=3)
    # the turn first, then the previous turns, most recent first
    assert context[2].text == CONTEXT_MARK.join(["No thanks.", "Sino at 11:30?", "San Jose.", "Which city?"])
    assert context[1].text == CONTEXT_MARK.join(["San Jose.", "Which city?", "Book a table for two."])
    assert context[0].text == "Book a table for two."
    following = read_examples(tmp_path / "sgd.tsv", "sgd_next_act")
    # the system's act types after each user turn that has a reply, as one label
    assert [e.label for e in following] == ["REQUEST", "CONFIRM,OFFER"]


@pytest.mark.parametrize("text, message", [
    ("dialogue\tturn\n", r"line 1: expected the header"),
    (SGD.replace("1_0\t2\tUSER", "1_0\t5\tUSER"), r"line 4: turn '5' of dialogue 1_0 should be 2"),
    (SGD.replace("\tREQUEST\t", "\tREQUEST\textra\t"), r"line 3: expected 6 tab-separated columns, found 7"),
    (SGD.replace("\tSYSTEM\t", "\tBOT\t", 1), r"line 3: speaker 'BOT'"),
    (SGD.replace("\tNONE\t", "\t\t"), r"line 6: the intent_or_acts column is empty"),
])
def test_sgd_malformed_names_file_and_line(tmp_path, text, message):
    with pytest.raises(NanoNLPError, match=r"sgd.tsv, " + message):
        read_sgd_turns(write(tmp_path / "sgd.tsv", text))


def test_crosswoz_from_a_zip_with_acts_as_labels(tmp_path):
    path = tmp_path / "val.json.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("val.json", json.dumps(CROSSWOZ, ensure_ascii=False))
    dialogues = read_crosswoz(path)
    assert [t.speaker for t in dialogues[0].turns] == ["user", "system", "user", "system"]
    assert dialogues[0].turns[0].labels == ("General-greet-none", "Request-餐馆-名称")
    assert dialogues[0].turns[2].labels == ("Request-餐馆-地址",)  # a repeated act counts once
    examples = read_examples(path, "crosswoz_acts_context")
    assert [e.text for e in examples] == ["推荐一家餐馆", CONTEXT_MARK.join(["它的地址呢", "推荐全聚德", "推荐一家餐馆"])]
    assert examples[0].labels == ("General-greet-none", "Request-餐馆-名称")


def test_crosswoz_malformed(tmp_path):
    bad = {"7": {"messages": [{"role": "usr", "content": "你好", "dialog_act": [["General", "greet"]]}]}}
    with pytest.raises(NanoNLPError, match=r"dialogue 7, message 0: an act is not \[intent, domain, slot, value\]"):
        read_crosswoz(write(tmp_path / "val.json", json.dumps(bad)))
    with pytest.raises(NanoNLPError, match=r"not valid JSON \(line 1"):
        read_crosswoz(write(tmp_path / "broken.json", "{"))
    with pytest.raises(NanoNLPError, match=r"dialogue 7 has no 'messages' list"):
        read_crosswoz(write(tmp_path / "nomessages.json", '{"7": {}}'))


@pytest.fixture
def shared(tmp_path, monkeypatch):
    """A NANONLP_DATA folder laid out as ../shared/data is, with tiny files."""
    root = tmp_path / "shared"
    for split in ("train", "dev", "test"):
        write(root / f"dialogue/snips/snips.{split}.txt", SNIPS)
        write(root / f"dialogue/smp2017/{split}.tsv", "text\tdomain\n明天天气\tweather\n你好呀\tchat\n")
        write(root / f"sgd/sgd_{split}_turns.tsv", SGD)
    for split in ("train", "valid", "test"):
        write(root / f"dialogue/cais/ch.{split}", CAIS)
        write(root / f"dialogue/cais/ch.{split}.intent", "PlayMusic\nPlayMusic\nChat\n")
    write(root / "dialogue/afqmc/dev.txt", "a\tb\t1\n")
    monkeypatch.setenv("NANONLP_DATA", str(root))
    return root


def test_catalog_names_resolve_through_nanonlp_data(shared):
    assert catalog.resolve("snips_test") == shared / "dialogue/snips/snips.test.txt"
    assert catalog.resolve("cais_dev") == shared / "dialogue/cais/ch.valid"
    assert catalog.resolve("afqmc_dev") == shared / "dialogue/afqmc/dev.txt"
    assert catalog.split_of("sgd", "dev") == "sgd_dev" and catalog.split_of("smp2017", "test") == "smp2017_test"
    with pytest.raises(NanoNLPError, match=r"\$NANONLP_DATA/dialogue/afqmc/train.txt"):
        catalog.resolve("afqmc")  # not in the folder, and no download address


def test_tasks_read_the_catalog_sets(shared):
    from nanonlp.tasks import classify, tag

    smp = load_config("configs/smp2017_ngrams.yaml").data
    train, dev, test = classify.load_splits(smp)
    assert [(e.text, e.label) for e in test] == [("明天天气", "weather"), ("你好呀", "chat")]
    sgd = load_config("configs/sgd_intent_ngrams.yaml", ["--data.format=sgd_intent"]).data
    assert [e.label for e in classify.read_split(sgd, "dev")] == ["ReserveRestaurant", "ReserveRestaurant", "NONE", "FindEvents"]
    cais = load_config("configs/cais_slots_bilstm_crf.yaml").data
    splits = tag.load_splits(cais)
    assert splits["test"][1].tokens == ["放", "A", " ", "B"] and splits["test"][1].tags == ["O", "B-song", "I-song", "E-song"]
    snips = load_config("configs/snips_slots_minilm.yaml").data
    splits = tag.load_splits(snips)
    # SNIPS is IOB2 on file, tagged in BIOES inside the model
    assert splits["dev"][1].tags == ["O", "O", "S-object_type", "S-rating_value", "S-rating_unit"]
    assert [e.label for e in classify.read_split(load_config("configs/cais_intent_ngrams.yaml").data, "test")] == ["PlayMusic", "PlayMusic", "Chat"]


def test_the_tagger_trains_on_cais_bioes_and_scores_in_iob2(shared, tmp_path):
    import nanonlp
    from nanonlp.train import fit

    rows = []  # the same two commands many times: a tiny model learns them exactly
    for _ in range(30):
        rows += ["我 O", "要 O", "听 O", "周 B-singer", "杰 I-singer", "伦 E-singer", "", "放 O", "晴 S-song", ""]
    write(shared / "dialogue/cais/ch.train", "\n".join(rows) + "\n")
    write(shared / "dialogue/cais/ch.train.intent", "PlayMusic\n" * 60)
    cfg = load_config("configs/cais_slots_bilstm_crf.yaml", [
        f"--train.out_dir={tmp_path / 'run'}", "--train.max_steps=40", "--train.eval_interval=40", "--train.batch_size=8",
        "--train.warmup_steps=0", "--train.learning_rate=1e-2", "--model.embed_dim=16", "--model.bigram_dim=0", "--model.hidden_size=16",
        "--model.dropout=0.0", "--train.device=cpu", "--train.peak_tflops=1.0", "--train.max_seconds=0"])
    fit(cfg, quiet=True)
    tagger = nanonlp.load(tmp_path / "run", device="cpu")
    assert tagger.tag_tokens([list("我要听周杰伦"), ["放", "晴"]], "iob2") == [
        ["O", "O", "O", "B-singer", "I-singer", "I-singer"], ["O", "B-song"]]


def test_context_tells_apart_turns_the_turn_alone_cannot(tmp_path):
    """'yes please' books a flight after a flight question and a hotel after a hotel question: only
    a classifier that reads the previous turn can get every such turn right."""
    import nanonlp
    from nanonlp.train import fit

    lines = [SGD.splitlines()[0]]
    for n in range(40):
        intent, question = ("BookFlight", "Shall I book the flight to Paris?") if n % 2 else ("BookHotel", "Shall I book the hotel room?")
        lines += [f"{n}_0\t0\tUSER\tTravel_1\t{intent}\tI need help with my trip.",
                  f"{n}_0\t1\tSYSTEM\tTravel_1\tOFFER\t{question}",
                  f"{n}_0\t2\tUSER\tTravel_1\t{intent}\tyes please"]
    data = write(tmp_path / "sgd.tsv", "\n".join(lines) + "\n")
    accuracy = {}
    for data_format in ("sgd_intent", "sgd_intent_context"):
        cfg = load_config("configs/sgd_intent_ngrams.yaml", [
            f"--data.path={data}", f"--data.dev_path={data}", f"--data.test_path={data}", f"--data.format={data_format}",
            f"--train.out_dir={tmp_path / data_format}", "--train.max_steps=60", "--train.eval_interval=60", "--train.batch_size=16",
            "--train.warmup_steps=0", "--train.learning_rate=5e-2", "--train.device=cpu", "--train.peak_tflops=1.0",
            "--train.max_seconds=0", "--model.n_embd=8"])
        fit(cfg, quiet=True)
        classifier = nanonlp.load(tmp_path / data_format, device="cpu")
        yes_turns = [e for e in read_examples(data, data_format) if e.text.startswith("yes please")]
        predicted = [p["label"] for p in classifier.predict([e.text for e in yes_turns])]
        accuracy[data_format] = sum(p == e.label for p, e in zip(predicted, yes_turns)) / len(yes_turns)
    assert accuracy["sgd_intent"] == 0.5  # the same text, the same answer: right for one half only
    assert accuracy["sgd_intent_context"] == 1.0
