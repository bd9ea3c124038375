"""The sentence VAE, the ARAE and the sentence RNN language model (task: sentence)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanonlp.config import load_config
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.models.arae import ARAE, ARAEConfig
from nanonlp.models.vae import (BOS, EOS, PAD, UNK, SentenceVAE, SentenceVAEConfig, active_units, drop_words, free_bits,
                                gaussian_kl, kl_weight, mutual_information)
from nanonlp.predict.sentence import join_words
from nanonlp.tasks.sentence import make_batch
from nanonlp.train import fit

SUBJECTS = ["i", "you", "we", "they", "he", "she"]
VERBS = ["like", "see", "want", "need", "have"]
OBJECTS = ["apples", "a dog", "the car", "tea", "books", "music"]
TOY = [f"{s} {v} {o} ." for s in SUBJECTS for v in VERBS for o in OBJECTS]  # 180 distinct sentences
ZH = ["我喜欢茶。", "你喜欢书。", "他想要车。", "她需要茶。", "我们喜欢音乐。", "他们想要书。", "我需要车。", "你想要音乐。",
      "她喜欢书。", "他需要音乐。", "我们想要茶。", "他们需要车。"]


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy.txt"
    path.write_text("\n".join(TOY) + "\n", encoding="utf-8")
    return path


def config(tmp_path, data_path, name="run", **overrides):
    values = {
        "task": "sentence", "data.path": str(data_path), "data.test_sentences": 10, "data.val_sentences": 10, "data.min_freq": 1,
        "model.type": "vae", "model.embed_dim": 32, "model.hidden_dim": 64, "model.latent_dim": 8,
        "vae.kl_schedule": "linear", "vae.kl_anneal_steps": 20, "vae.iw_samples": 5, "vae.eval_sentences": 10,
        "train.out_dir": str(tmp_path / name), "train.max_steps": 20, "train.batch_size": 16, "train.eval_interval": 10,
        "train.learning_rate": 3e-3, "train.warmup_steps": 5, "train.dtype": "float32", "train.log_interval": 1,
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    if values["model.type"] == "rnn_lm":
        del values["model.latent_dim"]
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"task: {values.pop('task')}\n", encoding="utf-8")
    return load_config(path, [f"--{k}={v}" for k, v in values.items()])


def tiny_vae(vocab=20, latent=4, **kw) -> SentenceVAE:
    torch.manual_seed(0)
    return SentenceVAE(SentenceVAEConfig(vocab_size=vocab, embed_dim=16, hidden_dim=32, latent_dim=latent, **kw))


def random_batch(vocab=20, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    sentences = [torch.randint(4, vocab, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    return make_batch(sentences, torch.device("cpu"))


# -- the latent-variable maths -----------------------------------------------------------------------


def test_kl_equals_torch_distributions_for_diagonal_gaussians():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    q = torch.distributions.Independent(torch.distributions.Normal(mu, (0.5 * logvar).exp()), 1)
    p = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(7), torch.ones(7)), 1)
    expected = torch.distributions.kl_divergence(q, p)
    assert torch.allclose(gaussian_kl(mu, logvar).sum(-1), expected, atol=1e-5)


def test_reparameterised_gradients_reach_the_encoder():
    model = tiny_vae()
    model(*random_batch())["loss"].backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.to_posterior.weight.grad.abs().sum() > 0


def test_free_bits_floor_each_dimension_and_stop_its_gradient():
    kl_dims = torch.tensor([[0.1, 1.0, 0.0], [0.3, 2.0, 0.0]], requires_grad=True)  # batch means 0.2, 1.5, 0.0
    term = free_bits(kl_dims, 0.5)
    assert term.item() == pytest.approx(0.5 + 1.5 + 0.5)
    term.backward()
    assert kl_dims.grad[:, 0].abs().sum() == 0 and kl_dims.grad[:, 2].abs().sum() == 0  # below the floor: no push down
    assert torch.allclose(kl_dims.grad[:, 1], torch.tensor([0.5, 0.5]))
    assert free_bits(kl_dims, 0.0).item() == pytest.approx(1.7)


@pytest.mark.parametrize("schedule, steps, expected", [
    ("constant", [0, 50, 500], [1.0, 1.0, 1.0]),
    ("linear", [0, 25, 50, 100, 1000], [0.0, 0.25, 0.5, 1.0, 1.0]),
    # 1 / (1 + exp(-0.1 (step - 50))): k = 10 / 100 and the midpoint at 50
    ("logistic", [0, 50, 100], [1 / (1 + math.exp(5)), 0.5, 1 / (1 + math.exp(-5))]),
    # cycles of 100 steps rising over the first half (ratio 0.5), 2 cycles, then 1
    ("cyclical", [0, 25, 50, 99, 100, 125, 175, 200, 1000], [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 1.0]),
])
def test_kl_schedules_match_hand_computed_values(schedule, steps, expected):
    got = [kl_weight(s, schedule, 100, cycles=2, ratio=0.5) for s in steps]
    assert got == pytest.approx(expected)
    assert kl_weight(50, schedule, 100, cycles=2, ratio=0.5, maximum=0.5) == pytest.approx(0.5 * kl_weight(50, schedule, 100, 2, 0.5))


def test_unknown_schedule_is_a_config_error(tmp_path, toy):
    with pytest.raises(ConfigError, match="vae.kl_schedule"):
        config(tmp_path, toy, vae__kl_schedule="sigmoid")


def test_sentence_sampling_options_have_the_language_models_one_validation(tmp_path, toy):
    with pytest.raises(ConfigError, match="sample.temperature must be 0 \\(greedy\\) or between"):
        config(tmp_path, toy, sample__temperature=1e-300)  # overflows the logits: refused as for a language model
    with pytest.raises(ConfigError, match="sample.top_p must be in"):
        config(tmp_path, toy, sample__top_p=0)


def test_active_units_on_a_constructed_case():
    torch.manual_seed(0)
    mu = torch.zeros(1000, 6)
    mu[:, 0] = torch.randn(1000)  # variance about 1
    mu[:, 3] = 0.3 * torch.randn(1000)  # about 0.09
    mu[:, 5] = 0.05 * torch.randn(1000)  # about 0.0025: below 0.01
    assert active_units(mu) == 2
    assert active_units(mu, threshold=0.001) == 3


def test_mutual_information_on_constructed_cases():
    g = torch.Generator().manual_seed(0)
    # identical posteriors: z tells nothing about x
    same = mutual_information(torch.zeros(400, 4), torch.zeros(400, 4), g)
    assert same == pytest.approx(0.0, abs=1e-9)
    # eight far-apart posteriors: z tells which x, log 8 nats
    mu = torch.arange(8.0)[:, None].repeat(1, 3) * 100
    assert mutual_information(mu, torch.full((8, 3), -4.0), g) == pytest.approx(math.log(8), abs=1e-3)


def test_importance_weighted_bound_is_above_the_elbo_and_tightens():
    model = tiny_vae()
    batch = random_batch(n=8)
    # trained a little, so that the posterior is not the prior and the gap is real
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        opt.zero_grad()
        model(*batch, kl_weight=0.3)["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        elbo = model.elbo(*batch, samples=200, generator=torch.Generator().manual_seed(1)).mean().item()
        bounds = [torch.stack([model.log_likelihood(*batch, samples=k, generator=torch.Generator().manual_seed(r)) for r in range(40)]).mean().item()
                  for k in (1, 5, 50)]
    assert bounds[0] == pytest.approx(elbo, abs=0.15)  # k = 1 is the ELBO in expectation
    assert elbo <= bounds[1] <= bounds[2]
    assert bounds[2] - elbo > 0.05


def test_word_dropout_keeps_bos_and_padding():
    inputs = make_batch([[5, 6, 7, 8, 9] * 20, [5]], torch.device("cpu"))[0]
    torch.manual_seed(0)
    dropped = drop_words(inputs, 0.5)
    words = (inputs != PAD) & (inputs != BOS)
    assert (dropped[:, 0] == BOS).all() and (dropped[inputs == PAD] == PAD).all()
    share = (dropped[words] == UNK).float().mean().item()
    assert 0.35 < share < 0.65
    assert (drop_words(inputs, 1.0)[words] == UNK).all()
    assert torch.equal(drop_words(inputs, 0.0), inputs)


def test_padding_does_not_change_the_posterior_or_the_likelihood():
    model = tiny_vae().eval()
    inputs, targets, lengths = random_batch(n=4)
    pad = torch.zeros(4, 5, dtype=torch.long)
    with torch.no_grad():
        mu, logvar = model.posterior(targets, lengths)
        mu2, logvar2 = model.posterior(torch.cat([targets, pad], 1), lengths)
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        ll = model.log_likelihood(inputs, targets, lengths, 4, g1)
        ll2 = model.log_likelihood(torch.cat([inputs, pad], 1), torch.cat([targets, pad], 1), lengths, 4, g2)
    assert torch.allclose(mu, mu2, atol=1e-5) and torch.allclose(logvar, logvar2, atol=1e-5)
    assert torch.allclose(ll, ll2, atol=1e-4)


def test_make_batch_shifts_inputs_and_targets():
    inputs, targets, lengths = make_batch([[7, 8], [9]], torch.device("cpu"))
    assert inputs.tolist() == [[BOS, 7, 8], [BOS, 9, PAD]]
    assert targets.tolist() == [[7, 8, EOS], [9, EOS, PAD]]
    assert lengths.tolist() == [3, 2]


# -- the GAN ----------------------------------------------------------------------------------------


def test_a_gan_step_moves_generator_and_critic_the_way_their_losses_say():
    torch.manual_seed(0)
    model = ARAE(ARAEConfig(vocab_size=20, embed_dim=16, hidden_dim=32, latent_dim=8, noise_dim=4, gan_hidden=16,
                            gradient_penalty=0.0))
    batch = random_batch(n=16)
    noise = torch.randn(16, 4)
    model.generate_codes = lambda n, generator=None: torch.nn.functional.normalize(model.generator(noise), dim=-1)

    def losses():
        real = model.encode_mean(batch[1], batch[2])
        fake = model.generate_codes(16)
        return model.critic_loss(real, fake).item(), -model.critic(fake).mean().item()

    with torch.no_grad():
        critic_before, generator_before = losses()
    critic_old = {n: p.detach().clone() for n, p in model.critic.named_parameters()}
    generator_old = {n: p.detach().clone() for n, p in model.generator.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model(*batch)["loss"].backward()  # one simultaneous step of every part
    optimizer.step()
    critic_new = {n: p.detach().clone() for n, p in model.critic.named_parameters()}
    generator_new = {n: p.detach().clone() for n, p in model.generator.named_parameters()}
    assert any(not torch.equal(critic_old[n], critic_new[n]) for n in critic_new)
    assert any(not torch.equal(generator_old[n], generator_new[n]) for n in generator_new)
    with torch.no_grad():
        model.generator.load_state_dict(generator_old)  # the new critic against the old generator
        critic_after = losses()[0]
        model.generator.load_state_dict(generator_new)
        model.critic.load_state_dict(critic_old)  # the new generator against the old critic
        generator_after = losses()[1]
    assert critic_after < critic_before
    assert generator_after < generator_before


def test_gan_losses_train_only_their_own_module():
    torch.manual_seed(0)
    model = ARAE(ARAEConfig(vocab_size=20, embed_dim=16, hidden_dim=32, latent_dim=8, noise_dim=4, gan_hidden=16))
    inputs, targets, lengths = random_batch(n=8)
    code = model.encode_mean(targets, lengths)
    fake = model.generate_codes(8)
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]

    def touched(loss):
        grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
        return {n.split(".")[0] for n, g in zip(names, grads) if g is not None and g.abs().sum() > 0}

    assert touched(model.critic_loss(code, fake)) == {"critic"}
    assert touched(-model.critic_score(fake).mean()) == {"generator"}
    assert touched(model.critic_score(code).mean()) == {"encoder", "to_code"}


def test_optimizer_gives_critic_and_generator_their_own_rates():
    from nanonlp.config import TrainConfig
    from nanonlp.train import make_optimizer

    model = ARAE(ARAEConfig(vocab_size=20, embed_dim=16, hidden_dim=32, latent_dim=8, critic_lr_scale=4.0, generator_lr_scale=0.5))
    optimizer = make_optimizer(model, TrainConfig(learning_rate=1e-3), torch.device("cpu"))
    scale_of = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    assert {scale_of[id(p)] for p in model.critic.parameters()} == {4.0}
    assert {scale_of[id(p)] for p in model.generator.parameters()} == {0.5}
    assert {scale_of[id(p)] for p in model.decoder.parameters()} == {1.0}


# -- training, end to end -----------------------------------------------------------------------------


def memorised(tmp_path, toy, model_type="vae", **overrides):
    values = dict(model__type=model_type, model__latent_dim=16, model__hidden_dim=128, model__embed_dim=32,
                  vae__kl_schedule="constant", vae__kl_max=0.0, train__max_steps=300, train__eval_interval=300,
                  train__learning_rate=1e-2, train__min_lr=1e-3, train__batch_size=32, train__log_interval=50,
                  data__test_sentences=2, data__val_sentences=2)
    values.update(overrides)
    cfg = config(tmp_path, toy, "memorised_" + model_type, **values)
    fit(cfg, quiet=True)
    import nanonlp

    return nanonlp.load(cfg.train.out_dir)


@pytest.fixture(scope="module")
def memorised_vae(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("vae")
    toy = tmp_path / "toy.txt"
    toy.write_text("\n".join(TOY[:40]) + "\n", encoding="utf-8")
    return memorised(tmp_path, toy)


def test_a_sentence_model_is_served_from_its_declaration(memorised_vae):
    pytest.importorskip("fastapi", reason="nanonlp serve needs FastAPI: pip install 'nanonlp[serve]'")
    from fastapi.testclient import TestClient

    from nanonlp.serve.app import create_app

    with TestClient(create_app({"vae": memorised_vae})) as client:
        body = client.post("/v1/sample", json={"n": 3, "seed": 7, "temperature": 0.5}).json()
        assert [r["text"] for r in body["results"]] == memorised_vae.sample(3, temperature=0.5, seed=7) and body["model"] == "vae"
        assert client.post("/v1/sample", json={"temperature": 1e-300}).status_code == 422  # the one validation of sampling
        assert client.post("/v1/sample", json={"n": 65}).status_code == 422
        (described,) = client.get("/v1/models").json()["models"]
    assert described["task"] == "sentence" and described["model"] == "SentenceVAE"
    assert [e["path"] for e in described["endpoints"]] == ["/v1/sample"]


def _train_split(model) -> list[str]:
    return [join_words(line.split(" ")) for line in (model.run_dir / "data" / "train.txt").read_text().splitlines()]


def test_with_kl_weight_zero_a_tiny_vae_reconstructs_the_toy_set_exactly(memorised_vae):
    sentences = _train_split(memorised_vae)
    assert len(sentences) == 36
    assert memorised_vae.reconstruct(sentences) == sentences


def test_interpolation_endpoints_decode_to_their_sentences(memorised_vae):
    first, second = _train_split(memorised_vae)[:2]
    steps = memorised_vae.interpolate(first, second, steps=5)
    assert len(steps) == 5 and steps[0] == first and steps[-1] == second


def test_nearest_training_sentences_and_copies(memorised_vae):
    sentences = _train_split(memorised_vae)
    best, similarity = memorised_vae.nearest(sentences[3], k=2)[0]
    assert best == sentences[3] and similarity == pytest.approx(1.0)
    assert memorised_vae.copies([sentences[0], "no such sentence here ."]) == [True, False]
    assert all(s < 1.0 for _, s in memorised_vae.nearest("zebras sing loudly .", 3))


def test_samples_are_seeded_and_sampling_options_are_checked(memorised_vae):
    a = memorised_vae.sample(5, temperature=1.0, seed=3)
    assert a == memorised_vae.sample(5, temperature=1.0, seed=3) and len(a) == 5
    with pytest.raises(ConfigError):
        memorised_vae.sample(2, top_p=0.0)


def test_sampled_reconstruction_draws_z_from_the_posterior(memorised_vae):
    sentence = _train_split(memorised_vae)[0]
    draws = {memorised_vae.reconstruct(sentence, temperature=1.0, sample_z=True, seed=s) for s in range(8)}
    assert sentence in draws  # the posterior is narrow around a memorised sentence


def test_an_arae_trains_reconstructs_and_samples(tmp_path, toy):
    model = memorised(tmp_path, toy, "arae", model__latent_dim=16, model__code_noise=0.0, train__max_steps=300)
    sentences = _train_split(model)
    assert sum(a == b for a, b in zip(model.reconstruct(sentences), sentences)) >= 0.9 * len(sentences)
    samples = model.sample(20, temperature=0.0, seed=1)
    assert len(samples) == 20 and all(samples)
    metrics = [json.loads(line) for line in (model.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss_critic" in m and "loss_generator" in m for m in metrics)
    assert (model.run_dir / "latent.png").is_file()


def test_vae_logs_its_figures_and_plots_kl(tmp_path, toy):
    cfg = config(tmp_path, toy)
    fit(cfg, quiet=True)
    run = Path(cfg.train.out_dir)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    for key in ("val_reconstruction", "val_kl", "val_iw_nll", "val_ppl", "val_mi", "val_active_units"):
        assert key in evals[-1], key
    assert evals[-1]["val_loss"] == pytest.approx(evals[-1]["val_reconstruction"] + evals[-1]["val_kl"])
    steps = [r for r in records if "loss_kl_weight" in r]
    assert [r["loss_kl_weight"] for r in steps[:3]] == pytest.approx([0 / 20, 1 / 20, 2 / 20])  # logged at steps 1, 2, 3: the weight of steps 0, 1, 2
    assert (run / "latent.png").stat().st_size > 1000


def test_a_resumed_run_continues_the_kl_schedule(tmp_path, toy):
    from safetensors.torch import load_file

    straight = config(tmp_path, toy, "straight", vae__kl_schedule="cyclical", vae__kl_anneal_steps=6, vae__kl_cycles=2,
                      model__word_dropout=0.2, train__lr_decay_steps=20)
    fit(straight, quiet=True)
    fit(config(tmp_path, toy, "resumed", vae__kl_schedule="cyclical", vae__kl_anneal_steps=6, vae__kl_cycles=2,
               model__word_dropout=0.2, train__lr_decay_steps=20, train__max_steps=10), quiet=True)
    fit(config(tmp_path, toy, "resumed", vae__kl_schedule="cyclical", vae__kl_anneal_steps=6, vae__kl_cycles=2,
               model__word_dropout=0.2, train__lr_decay_steps=20), resume=True, quiet=True)
    read = lambda name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]  # noqa: E731
    a, b = read("straight"), read("resumed")
    assert [r["loss_kl_weight"] for r in a] == [r["loss_kl_weight"] for r in b]
    assert [r["loss_kl_weight"] for r in b][10:14] == pytest.approx([kl_weight(s, "cyclical", 6, 2, 0.5) for s in range(10, 14)])
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5)
    wa = load_file(str(tmp_path / "straight/checkpoints/step_00000020/model.safetensors"))
    wb = load_file(str(tmp_path / "resumed/checkpoints/step_00000020/model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_a_language_model_and_a_chinese_vae(tmp_path):
    zh = tmp_path / "zh.txt"
    zh.write_text("\n".join(ZH * 2) + "\n", encoding="utf-8")  # duplicates are dropped
    cfg = config(tmp_path, zh, "zh", data__test_sentences=1, data__val_sentences=1, train__max_steps=200, train__eval_interval=200,
                 model__hidden_dim=64, vae__kl_schedule="constant", vae__kl_max=0.0, train__learning_rate=1e-2)
    fit(cfg, quiet=True)
    import nanonlp

    vae = nanonlp.load(cfg.train.out_dir)
    assert vae.words("我喜欢茶。") == ["我", "喜", "欢", "茶", "。"]  # a character a word
    train = _train_split(vae)
    assert len(train) == 10 and all(" " not in s for s in train)  # Chinese joins without spaces
    assert vae.reconstruct(train) == train

    lm_cfg = config(tmp_path, zh, "zh_lm", model__type="rnn_lm", data__test_sentences=1, data__val_sentences=1)
    fit(lm_cfg, quiet=True)
    lm = nanonlp.load(lm_cfg.train.out_dir)
    figures = lm.evaluate()
    assert figures["sentences"] == 1 and figures["ppl"] == pytest.approx(math.exp(figures["nll"] / figures["tokens"]))
    with pytest.raises(NanoNLPError, match="latent-variable"):
        lm.interpolate("我喜欢茶。", "你喜欢书。")


def test_join_words():
    assert join_words(["i", "don't", "know", ",", "tom", "."]) == "i don't know, tom."
    assert join_words(["我", "喜", "欢", "tom", "。"]) == "我喜欢 tom。"
    assert join_words(["(", "yes", ")", "!"]) == "(yes)!"


# -- data and the command line -------------------------------------------------------------------------


def test_too_few_sentences_is_a_clear_error(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("one .\ntwo .\none .\n", encoding="utf-8")
    with pytest.raises(NanoNLPError, match="distinct sentences"):
        fit(config(tmp_path, small), quiet=True)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_catalog_builds_one_side_of_a_tatoeba_file(tmp_path, monkeypatch):
    from nanonlp.data import catalog

    shared = tmp_path / "shared"
    (shared / "tatoeba_eng_fra").mkdir(parents=True)
    (shared / "zh").mkdir()
    (shared / "tatoeba_eng_fra" / "fra.txt").write_text("Go.\tVa !\nGo.\tMarche.\nHi.\tSalut !\n", encoding="utf-8")
    (shared / "zh" / "tatoeba_eng_cmn.txt").write_text("Hi.\t嗨。\nHi.\t你好。\n", encoding="utf-8")
    monkeypatch.setenv("NANONLP_DATA", str(shared))
    assert catalog.resolve("tatoeba_en_sentences").read_text(encoding="utf-8") == "Go.\nHi.\n"
    assert catalog.resolve("tatoeba_zh_sentences").read_text(encoding="utf-8") == "嗨。\n你好。\n"


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nanonlp", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_sample_reconstruct_interpolate_eval(memorised_vae):
    run = str(memorised_vae.run_dir)
    out = _cli("sample", run, "--num-samples", "3", "--seed", "2", "--nearest", "1", "--temperature", "0.5")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 6 and lines[1].startswith("    ")
    assert [lines[0], lines[2], lines[4]] == memorised_vae.sample(3, temperature=0.5, seed=2)
    first, second = _train_split(memorised_vae)[:2]
    out = _cli("interpolate", run, first, second, "--steps", "3")
    assert out.returncode == 0 and out.stdout.splitlines()[0] == f"0.00  {first}" and out.stdout.splitlines()[-1] == f"1.00  {second}"
    out = _cli("reconstruct", run, first, "--samples", "1")
    assert out.returncode == 0 and f"greedy:  {first}" in out.stdout
    out = _cli("eval", run, "--json", "--iw-samples", "3")
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert figures["iw_samples"] == 3 and figures["sentences"] == 2 and "active_units" in figures
    out = _cli("sample", run, "--prompt", "hello")
    assert out.returncode == 2 and "--prompt is for language models" in out.stderr
