"""The NanoGPT speedrun's methods: Muon, rotary positions, QK-norm, ReLU², zero-initialised
projections, an untied head, logit soft-capping."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nanonlp.config import TrainConfig
from nanonlp.decode import generate_ids
from nanonlp.errors import ConfigError
from nanonlp.models import GPT, GPTConfig
from nanonlp.optim import MuonAdamW, orthogonalize
from nanonlp.train import make_optimizer

SPEEDRUN = dict(position="rotary", qk_norm=True, activation="relu2", zero_init=True, tie_embeddings=False, logit_softcap=15.0)


def tiny_gpt(block_size=16, vocab_size=11, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=block_size, n_layer=2, n_head=2, n_embd=16, dropout=0.0, vocab_size=vocab_size, **kw)).eval()


def _perturb(model: GPT) -> GPT:
    """Zero-initialised projections make every block the identity; give them weights to test the rest."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("shape", [(32, 32), (16, 48), (48, 16)])
def test_muon_update_is_orthogonal_to_within_the_newton_schulz_band(shape):
    torch.manual_seed(0)
    # singular values spread over a decade, as a gradient's are
    u0, _ = torch.linalg.qr(torch.randn(shape[0], min(shape)))
    v0, _ = torch.linalg.qr(torch.randn(shape[1], min(shape)))
    g = u0 @ torch.diag(torch.logspace(0, 1, min(shape))) @ v0.T
    singular = torch.linalg.svdvals(orthogonalize(g))
    # the quintic's five steps bring every singular value into about [0.7, 1.2] (Jordan et al. 2024)
    assert singular.min() > 0.6 and singular.max() < 1.25
    # and the directions are g's: close to U V^T of its SVD
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cosine = torch.nn.functional.cosine_similarity(orthogonalize(g).flatten(), (u @ vh).flatten(), dim=0)
    assert cosine > 0.97


def test_muon_step_moves_a_matrix_by_lr_times_an_orthogonal_update():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(24, 8))
    bias = torch.nn.Parameter(torch.randn(8))
    optimizer = MuonAdamW([{"params": [w], "muon": True}, {"params": [bias]}], lr=0.1, momentum=0.0)
    before = w.detach().clone()
    w.grad, bias.grad = torch.randn(24, 8), torch.randn(8)
    optimizer.step()
    step = (before - w.detach()) / 0.1 / (24 / 8) ** 0.5  # tall matrices step sqrt(rows / cols) further
    singular = torch.linalg.svdvals(step)
    assert singular.min() > 0.6 and singular.max() < 1.25
    with pytest.raises(ValueError, match="matrices only"):
        MuonAdamW([{"params": [bias], "muon": True}])


def test_non_matrix_parameters_follow_adamw_exactly():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(5, 3))
    b.data.copy_(a.data)
    ours = MuonAdamW([{"params": [a], "weight_decay": 0.1}], lr=0.01, betas=(0.9, 0.99))
    reference = torch.optim.AdamW([{"params": [b], "weight_decay": 0.1}], lr=0.01, betas=(0.9, 0.99), foreach=False)
    for _ in range(5):
        grad = torch.randn(5, 3)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        reference.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_make_optimizer_gives_muon_the_hidden_matrices_only():
    model = tiny_gpt(**SPEEDRUN)
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon", learning_rate=1e-3, muon_learning_rate=0.02), torch.device("cpu"))
    assert isinstance(optimizer, MuonAdamW)
    muon = {id(p) for g in optimizer.param_groups if g["muon"] for p in g["params"]}
    assert muon == {id(p) for p in model.matrix_parameters()}
    hidden = {id(p) for n, p in model.transformer.h.named_parameters() if p.dim() == 2}
    assert muon == hidden
    for p in (model.transformer.wte.weight, model.lm_head.weight, model.transformer.ln_f.weight):
        assert id(p) not in muon
    muon_group = next(g for g in optimizer.param_groups if g["muon"])
    assert muon_group["lr_scale"] == pytest.approx(20.0)  # the schedule reaches 0.02 at its peak
    plain = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    assert isinstance(plain, torch.optim.AdamW)


def test_rotary_scores_depend_only_on_relative_position():
    from nanonlp.models.gpt import Rotary

    torch.manual_seed(0)
    rotary = Rotary(8, 64, 10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    score = lambda i, j: (rotary(q, i) * rotary(k, j)).sum().item()  # noqa: E731
    assert score(3, 1) == pytest.approx(score(13, 11), abs=1e-5) == pytest.approx(score(40, 38), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    assert torch.allclose(rotary(q, 0), q)  # position 0 is no rotation
    assert rotary(q, 5).norm() == pytest.approx(q.norm().item(), rel=1e-5)  # a rotation keeps length


@pytest.mark.parametrize("prompt_len,new_tokens", [(5, 8), (3, 30)])  # 3 + 30 passes block_size 16
def test_kv_cached_generation_equals_recomputation_with_every_switch_on(prompt_len, new_tokens):
    model = _perturb(tiny_gpt(**SPEEDRUN))
    prompt = torch.randint(11, (2, prompt_len))
    tokens = torch.cat(list(generate_ids(model, prompt, new_tokens, temperature=0)), dim=1)
    expected = prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            logits, _ = model(expected[:, -16:])
            expected = torch.cat([expected, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(tokens, expected[:, prompt_len:])
    state = model.init_state(1)
    idx = torch.randint(11, (1, 10))
    with torch.no_grad():
        model(idx[:, :4], cache=state)
        chunk, _ = model(idx[:, 4:], cache=state)
        full, _ = model(idx)
    assert torch.allclose(chunk, full[:, 4:], atol=1e-5)


def test_future_tokens_do_not_change_earlier_logits_with_every_switch_on():
    model = _perturb(tiny_gpt(**SPEEDRUN))
    idx = torch.randint(11, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 11
    with torch.no_grad():
        a, b = model(idx)[0], model(changed)[0]
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6) and not torch.allclose(a[:, 7], b[:, 7])


def test_switches_change_the_layout_as_documented():
    default = tiny_gpt()
    assert default.config.gpt2_layout and default.lm_head.weight is default.transformer.wte.weight
    assert "transformer.wpe.weight" in default.state_dict()
    model = tiny_gpt(**SPEEDRUN)
    assert not model.config.gpt2_layout
    assert "transformer.wpe.weight" not in model.state_dict()
    assert model.lm_head.weight is not model.transformer.wte.weight
    # zero-initialised projections and head: every block starts as the identity and the logits at 0
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight") or name == "lm_head.weight":
            assert p.abs().sum() == 0, name
    idx = torch.randint(11, (1, 6))
    with torch.no_grad():
        assert torch.allclose(model.hidden_states(idx), model.transformer.ln_f(model.transformer.wte(idx)), atol=1e-6)
    capped = _perturb(tiny_gpt(logit_softcap=2.0))
    with torch.no_grad():
        logits = capped(torch.randint(11, (2, 16)))[0]
    assert logits.abs().max() < 2.0
    with pytest.raises(ConfigError, match="even head width"):
        GPTConfig(n_embd=18, n_head=2, position="rotary").validate()


def test_relu_squared_activation():
    model = tiny_gpt(activation="relu2")
    x = torch.randn(1, 3, 16)
    h = model.transformer.h[0].mlp.c_fc(x)
    expected = model.transformer.h[0].mlp.c_proj(torch.relu(h) ** 2)
    assert torch.allclose(model.transformer.h[0].mlp(x), expected, atol=1e-6)


def test_a_tiny_speedrun_gpt_with_muon_overfits_a_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, vocab_size=11, **SPEEDRUN))
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon", learning_rate=3e-3, muon_learning_rate=0.02,
                                                  weight_decay=0.0), torch.device("cpu"))
    for group in optimizer.param_groups:
        group["lr"] = 3e-3 * group["lr_scale"]
    x, y = torch.randint(11, (4, 16)), torch.randint(11, (4, 16))
    first = None
    for _ in range(150):
        _, loss = model(x, y)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > 2.0 and loss.item() < 0.2


# -- budget-aware recipes ----------------------------------------------------------------------------

from nanonlp import recipe as recipes  # noqa: E402
from nanonlp.train import learning_rate  # noqa: E402


def test_a_longer_budget_never_picks_a_smaller_model():
    for speed in [(0.01, 1e-11), (0.002, 2e-12), (0.05, 5e-11)]:  # a slow and a fast machine, and one with high overhead
        widths = [recipes.choose(budget, 65, speed).n_embd for budget in (5, 30, 60, 120, 300, 900, 3600, 36000, 360000)]
        assert widths == sorted(widths), (speed, widths)
        assert widths[0] < widths[-1]


def test_the_chosen_model_sees_enough_tokens_and_the_next_one_would_not():
    speed, budget, vocab = (0.005, 5e-12), 600, 65
    chosen = recipes.choose(budget, vocab, speed)

    def ratio(width):
        shape = recipes.Shape.of_width(width)
        batch = recipes.BATCH_TOKENS // shape.block_size
        step = speed[0] + speed[1] * shape.flops_per_step(vocab, batch * shape.block_size)
        return budget / step * batch * shape.block_size / shape.body_parameters()

    assert ratio(chosen.n_embd) >= recipes.TOKENS_PER_PARAMETER
    larger = [w for w in recipes.LADDER if w > chosen.n_embd]
    assert not larger or ratio(larger[0]) < recipes.TOKENS_PER_PARAMETER
    assert chosen.batch_size * chosen.block_size == recipes.BATCH_TOKENS
    assert chosen.learning_rate == pytest.approx(recipes.ADAM_LR * 128 / chosen.n_embd)
    # the probe's seconds come out of the budget
    assert chosen.n_embd > recipes.LADDER[0]
    assert recipes.choose(budget, vocab, speed, probe_seconds=590).n_embd < chosen.n_embd


def test_a_small_corpus_counts_its_repeats_for_less_and_gets_dropout():
    unique = 100_000
    assert recipes.counted_tokens(50_000, unique) == 50_000 and recipes.counted_tokens(5e6, None) == 5e6  # no repeats
    counted = [recipes.counted_tokens(passes * unique, unique) for passes in (1, 2, 4, 16, 64, 1000)]
    assert counted == sorted(counted) and counted[1] < 2 * unique  # repeats count, but for less than new text
    assert recipes.REPEAT_DECAY * unique < counted[-1] <= (recipes.REPEAT_DECAY + 1) * unique  # 1000 passes count as ~R + 1
    assert recipes.counted_tokens(2 * unique, unique) == pytest.approx(unique * (1 + 15 * (1 - math.exp(-1 / 15))))
    assert recipes.dropout_for(0.5) == 0.0 and recipes.dropout_for(7.9) == 0.0
    rates = [recipes.dropout_for(p) for p in (8, 16, 32, 80, 1000)]
    assert rates == sorted(rates) and rates[0] > 0 and rates[-1] == recipes.MAX_DROPOUT
    speed, vocab = (0.005, 5e-12), 65
    for budget in (60, 600, 6000):  # less text never picks a larger model; a longer budget never a smaller one
        widths = [recipes.choose(budget, vocab, speed, train_tokens=n).n_embd for n in (10_000, 100_000, 1_000_000, 10 ** 9)]
        assert widths == sorted(widths), (budget, widths)
    for tokens in (10_000, 1_000_000):
        widths = [recipes.choose(budget, vocab, speed, train_tokens=tokens).n_embd for budget in (60, 600, 6000, 60000)]
        assert widths == sorted(widths), (tokens, widths)
    assert recipes.choose(6000, vocab, speed, train_tokens=10_000).n_embd < recipes.choose(6000, vocab, speed).n_embd
    assert recipes.choose(6000, vocab, speed, train_tokens=10_000).dropout == recipes.MAX_DROPOUT
    assert recipes.choose(60, vocab, speed, train_tokens=10 ** 9).dropout == 0.0  # one pass at most: no dropout
    with pytest.raises(ConfigError, match="no training tokens"):
        recipes.choose(60, vocab, speed, train_tokens=0)


def test_a_recipe_saved_before_dropout_was_chosen_still_loads(tmp_path):
    from nanonlp.config import Config

    old = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=32, learning_rate=0.008, muon_learning_rate=0.02,
               warmup_share=0.02, seconds_per_step=0.01, probe_seconds=0.0, reason="the smallest model")
    (tmp_path / recipes.RECIPE).write_text(json.dumps(old), encoding="utf-8")
    cfg = Config(task="lm", data=None, model=GPTConfig(size="auto"), train=TrainConfig(max_seconds=60))
    loaded = recipes.load_for_run(cfg, tmp_path)
    assert loaded.dropout == 0.0 and cfg.train.batch_size == 32 and cfg.train.lr_schedule == "time"


def test_speed_fit_recovers_a_line():
    samples = [(f, 0.003 + 2e-12 * f) for f in (1e9, 5e9, 2e10)]
    a, b = recipes.fit_speed(samples)
    assert a == pytest.approx(0.003) and b == pytest.approx(2e-12)


def test_time_schedule_warms_up_then_decays_to_min_lr_at_the_budget():
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, max_seconds=100, lr_schedule="time", warmup_share=0.1)
    assert learning_rate(0, cfg, 5.0) == pytest.approx(0.5)
    assert learning_rate(0, cfg, 10.0) == pytest.approx(1.0)
    assert learning_rate(0, cfg, 55.0) == pytest.approx(0.55)  # halfway through the decay: the cosine's midpoint
    assert learning_rate(0, cfg, 100.0) == pytest.approx(0.1)
    assert learning_rate(0, cfg, 130.0) == pytest.approx(0.1)
    values = [learning_rate(0, cfg, t) for t in range(10, 101, 5)]
    assert values == sorted(values, reverse=True)
    with pytest.raises(ConfigError, match="max_seconds"):
        TrainConfig(lr_schedule="time").validate()


def test_speed_probe_is_measured_once_per_machine(monkeypatch):
    monkeypatch.setattr(recipes, "LADDER", (32, 64, 96))
    model = GPTConfig(size="auto", vocab_size=11, position="rotary", qk_norm=True, activation="relu2", tie_embeddings=False, bias=False)
    train = TrainConfig(optimizer="muon")
    speed, seconds = recipes.measure_speed(model, train, torch.device("cpu"), torch.float32, steps=1)
    assert seconds > 0 and speed[1] >= 0
    again, seconds = recipes.measure_speed(model, train, torch.device("cpu"), torch.float32, steps=1)
    assert again == pytest.approx(speed) and seconds == 0.0


def test_a_budget_aware_run_saves_its_recipe_and_a_resume_continues_it(tmp_path, corpus, monkeypatch):
    import json

    import yaml

    from nanonlp.config import load_config
    from nanonlp.train import fit

    monkeypatch.setattr(recipes, "measure_speed", lambda *a, **k: ((0.02, 1e-11), 0.0))
    config = tmp_path / "auto.yaml"
    config.write_text("task: lm\nmodel:\n  type: gpt\n  size: auto\n", encoding="utf-8")
    overrides = [f"--data.path={corpus}", f"--train.out_dir={tmp_path / 'run'}", "--train.log_interval=1", "--train.max_seconds=2",
                 "--train.eval_interval=5", "--train.dtype=float32"]
    fit(load_config(config, overrides), quiet=True)
    run = tmp_path / "run"
    chosen = json.loads((run / "recipe.json").read_text())
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["n_embd"] == chosen["n_embd"] and saved["model"]["n_layer"] == chosen["n_layer"]
    assert saved["train"]["lr_schedule"] == "time" and saved["train"]["eval_interval"] == 5  # given: kept
    assert saved["train"]["batch_size"] == chosen["batch_size"]
    assert saved["model"]["dropout"] == chosen["dropout"] > 0  # the tiny corpus is seen many times in the budget
    # A resume with a longer budget continues the recipe: same shape, the clock schedule; the batch given now wins.
    resumed = load_config(config, overrides[:-3] + ["--train.max_seconds=4", "--train.eval_interval=5", "--train.dtype=float32",
                                                    "--train.batch_size=3"])
    result = fit(resumed, resume=True, quiet=True)
    assert result.stopped_by == "max_seconds"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["n_embd"] == chosen["n_embd"] and saved["train"]["batch_size"] == 3 != chosen["batch_size"]
    assert saved["model"]["dropout"] == chosen["dropout"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"lr"' in x]
    peak = chosen["learning_rate"]
    assert lines[-1]["elapsed_s"] > 2.0
    assert max(r["lr"] for r in lines) <= peak * 1.0001 and lines[-1]["lr"] < 0.2 * peak  # decayed on the clock, near min_lr at 4 s
    with pytest.raises(ConfigError, match="max_seconds"):
        fit(load_config(config, overrides[:2] + ["--train.out_dir=" + str(tmp_path / "x")]), quiet=True)
    # A probe that eats most of the budget is an error, not a run with no training and no evaluation.
    monkeypatch.setattr(recipes, "measure_speed", lambda *a, **k: ((0.02, 1e-11), 1.6))
    with pytest.raises(ConfigError, match="speed probe took 2 s, at least half"):
        fit(load_config(config, [overrides[0], f"--train.out_dir={tmp_path / 'y'}", *overrides[3:]]), quiet=True)


def test_gpt_config_refuses_a_dropout_of_one():
    with pytest.raises(ConfigError, match="model.dropout"):
        GPTConfig(dropout=1.0).validate()
