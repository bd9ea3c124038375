"""Budget-aware GPT recipes: with `model.size: auto` and a time budget (`train.max_seconds`), the
model's shape, batch, dropout and learning rates are chosen for the budget and for this machine's measured speed.

The rule (no table of per-machine settings):
1. A ladder of shapes, each a little larger than the last: width w in LADDER, depth max(2, w / 32)
   capped at 8, heads of 32 channels, context 64 up to width 128, 128 up to 256, then 256.
2. The machine's speed: a few timed training steps (without dropout, which the recipe may add) of
   three shapes of the ladder (smallest, middle, largest) fit seconds per step = a + b * FLOPs per
   step by least squares, which predicts every rung. The probe builds the model the config
   describes (model.* switches, vocabulary, tied head or not) and trains it with train.optimizer.
   Its seconds count against the budget; its result is cached per machine, instruction set, thread
   count, torch version, precision, vocabulary, model switches, optimizer and rungs, so later runs
   skip it.
3. The shape: the largest rung that still sees at least TOKENS_PER_PARAMETER training tokens per
   parameter of its blocks (the vocabulary's embedding and head left out, as Kaplan et al. 2020
   count non-embedding parameters) in the budget left (tokens = seconds left / predicted seconds
   per step * tokens per step). Repeated tokens count for less: after the first pass over a small corpus, the tokens are
   discounted as in Muennighoff et al. (2023, "Scaling data-constrained language models"): U unique
   tokens seen P times count as U * (1 + R * (1 - exp(-(P - 1) / R))), R = REPEAT_DECAY passes, so
   a corpus never counts for more than about R + 1 passes. A longer budget sees at least as many
   counted tokens on every rung, so it never picks a smaller model.
4. The batch: BATCH_TOKENS tokens a step (rounded to whole sequences); about EVALUATIONS validations
   in the run (train.eval_interval from the predicted step count).
5. Dropout where the run repeats its data many times: 0 below DROPOUT_FROM_PASSES passes, else
   min(MAX_DROPOUT, 0.05 * log2(passes / 4)): 0.05 at 8 passes, 0.1 at 16, 0.2 from 64 (nanoGPT's Tiny
   Shakespeare setting, about 80 passes, uses 0.2). Dropout slows learning, so it waits until the data
   is repeated enough to overfit: at 2 passes, 0.05 cost 0.07 in validation loss (1.383 against 1.315).
6. The schedule follows the clock, not a step count: warmup over the first WARMUP_SHARE of the budget,
   then cosine decay that ends at the budget (`train.lr_schedule: time`). Peak rates: Muon's
   MUON_LR for the hidden matrices (where train.optimizer is muon); AdamW's ADAM_LR * 128 / width for
   the rest (wider models take smaller Adam steps, as in muP).
7. What the user gives wins: any of model.n_layer, n_head, n_embd, block_size, dropout and
   train.batch_size, learning_rate, min_lr, muon_learning_rate, warmup_share, eval_interval,
   max_steps set in the config file or on the command line is kept, and the recipe chooses the rest
   around it (a given width fixes the rung; a given depth, head count or context applies to every
   rung; a given batch sets the tokens a step). What it cannot keep (heads that fit no width, a step
   schedule) is refused in one sentence. The shipped budget_char_gpt.yaml leaves those keys out.
8. torch.compile is left as given (train.compile, off by default): it pays for itself only when the
   seconds it saves, budget x (1 - compiled step / eager step), exceed the seconds it takes to
   compile, which the compile cache (nanonlp's cache directory) cuts to a cache load on later runs
   of the same shape. On 2 CPU cores compiling this GPT takes tens of seconds to minutes, so for
   budgets of a few minutes it is worth turning on only once its kernels are cached (a second run of
   the same shape), and for 15-minute budgets when its step is faster at all (docs/benchmarks.md).
The choice is printed with its reasons and saved in the run directory (recipe.json) and its config,
so a resumed run continues the same recipe (a train setting given at the resume wins there too).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nanonlp.errors import ConfigError

LADDER = (64, 96, 128, 192, 256, 320, 384, 512)
HEAD_DIM = 32
TOKENS_PER_PARAMETER = 8.0
REPEAT_DECAY = 15.0  # Muennighoff et al.'s R*_D: repeated passes lose value on this scale
MAX_DROPOUT = 0.2
DROPOUT_FROM_PASSES = 8.0
BATCH_TOKENS = 2048
WARMUP_SHARE = 0.02
MUON_LR = 0.02
ADAM_LR = 4e-3
RECIPE = "recipe.json"
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "dropout")  # model.* the recipe chooses unless given
TRAIN_KEYS = ("batch_size", "learning_rate", "min_lr", "muon_learning_rate", "warmup_share", "eval_interval", "lr_schedule",
              "max_steps")  # train.* the recipe chooses unless given
SPEED_SWITCHES = ("compile",)  # train.* switches that change the step's speed (the probe's cache key)
EVALUATIONS = 20  # validations in a run (the recipe sets train.eval_interval from the predicted steps)


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int

    @classmethod
    def of_width(cls, width: int) -> "Shape":
        depth = min(8, max(2, width // 32))
        context = 64 if width <= 128 else 128 if width <= 256 else 256
        return cls(depth, max(1, width // HEAD_DIM), width, context)

    def body_parameters(self) -> int:
        """Weights of the blocks (attention 4 C^2, MLP 8 C^2 a layer): what tokens per parameter counts.
        The vocabulary's matrices (embedding, head) are left out, as Kaplan et al. (2020) count
        non-embedding parameters: a 50k BPE vocabulary would otherwise outweigh the blocks of every rung."""
        return self.n_layer * 12 * self.n_embd ** 2

    def parameters(self, vocab_size: int, tied: bool = False) -> int:
        """All weights of the GPT (no learned positions): embedding, head unless tied to it, blocks."""
        return (1 if tied else 2) * vocab_size * self.n_embd + self.body_parameters()

    def flops_per_step(self, vocab_size: int, batch_tokens: int) -> float:
        # The embedding is a lookup; the head is a matmul whether tied or not.
        n = self.body_parameters() + vocab_size * self.n_embd
        return batch_tokens * (6 * n + 12 * self.n_layer * self.n_embd * self.block_size)


@dataclass(frozen=True)
class Given:
    """The settings the user gave (config file or command line): the recipe keeps them and chooses the rest."""
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None
    dropout: float | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    muon_learning_rate: float | None = None
    grad_accum_steps: int = 1
    rotary: bool = True  # rotary positions need an even head width

    @classmethod
    def of(cls, cfg) -> "Given":
        given = cfg.given or frozenset()
        pick = lambda section, key: getattr(getattr(cfg, section), key) if f"{section}.{key}" in given else None  # noqa: E731
        return cls(**{key: pick("model", key) for key in MODEL_KEYS},
                   **{key: pick("train", key) for key in ("batch_size", "learning_rate", "muon_learning_rate")},
                   grad_accum_steps=cfg.train.grad_accum_steps, rotary=cfg.model.position == "rotary")

    def shapes(self) -> list[Shape]:
        """The rungs of the ladder with the given parts of the shape in place (one rung where the width is given)."""
        out = []
        for width in (self.n_embd,) if self.n_embd else LADDER:
            shape = Shape.of_width(width)
            shape = Shape(self.n_layer or shape.n_layer, self.n_head or shape.n_head, width, self.block_size or shape.block_size)
            if width % shape.n_head or (self.rotary and (width // shape.n_head) % 2):
                continue
            if shape not in out:
                out.append(shape)
        if not out:
            raise ConfigError(f"model.n_head={self.n_head} gives no even head width at any width the recipe chooses from "
                              f"({', '.join(map(str, LADDER))}) or at the given model.n_embd; set model.n_embd to a multiple "
                              f"of {2 * self.n_head}, or leave model.n_head to the recipe.")
        return out

    def batch(self, shape: Shape) -> int:
        return self.batch_size or max(1, BATCH_TOKENS // shape.block_size)


@dataclass
class Recipe:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    learning_rate: float
    muon_learning_rate: float
    warmup_share: float
    seconds_per_step: float
    probe_seconds: float
    reason: str
    dropout: float = 0.0


def fit_speed(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares a, b of seconds = a + b * flops over (flops, seconds) samples; b >= 0, a >= 0."""
    n = len(samples)
    mean_f = sum(f for f, _ in samples) / n
    mean_s = sum(s for _, s in samples) / n
    var = sum((f - mean_f) ** 2 for f, _ in samples)
    b = max(0.0, sum((f - mean_f) * (s - mean_s) for f, s in samples) / var) if var > 0 else mean_s / max(mean_f, 1.0)
    a = max(0.0, mean_s - b * mean_f)
    return a, b


def counted_tokens(tokens: float, train_tokens: int | None) -> float:
    """The tokens a run sees, discounted for repeats of a corpus of `train_tokens` (None: unlimited)."""
    if train_tokens is None or tokens <= train_tokens:
        return tokens
    repeats = tokens / train_tokens - 1.0
    return train_tokens * (1.0 + REPEAT_DECAY * (1.0 - math.exp(-repeats / REPEAT_DECAY)))


def dropout_for(passes: float) -> float:
    """Dropout for a run that sees its training data `passes` times."""
    return 0.0 if passes < DROPOUT_FROM_PASSES else round(min(MAX_DROPOUT, 0.05 * math.log2(passes / 4)), 3)


def choose(budget_seconds: float, vocab_size: int, speed: tuple[float, float], probe_seconds: float = 0.0,
           train_tokens: int | None = None, given: Given = Given()) -> Recipe:
    """The recipe for a budget, given the fitted speed (seconds per step = a + b * FLOPs per step), the
    size of the training split (None: unlimited data) and the settings the user gave, which it keeps."""
    if budget_seconds <= 0:
        raise ConfigError("model.size auto needs a time budget: set train.max_seconds.")
    if train_tokens is not None and train_tokens <= 0:
        raise ConfigError("model.size auto found no training tokens: give data.path a longer text, or a smaller data.val_fraction.")
    a, b = speed
    left = max(1.0, budget_seconds - probe_seconds)
    chosen, reason = None, ""
    for shape in given.shapes():
        batch = given.batch(shape)
        step_tokens = batch * shape.block_size * given.grad_accum_steps
        step = a + b * shape.flops_per_step(vocab_size, step_tokens)
        tokens = left / step * step_tokens
        counted = counted_tokens(tokens, train_tokens)
        ratio = counted / shape.body_parameters()
        if chosen is None or ratio >= TOKENS_PER_PARAMETER:
            passes = tokens / train_tokens if train_tokens is not None else 0.0
            chosen = (shape, batch, step, dropout_for(passes))
            seen = f"{ratio:.1f} tokens per parameter in {left:.0f} s at {step * 1000:.0f} ms a step"
            if counted < tokens:
                seen += f" ({passes:.1f} passes over the {train_tokens:,} training tokens count as {counted / train_tokens:.1f})"
            reason = (f"the largest model that sees {seen}, at least {TOKENS_PER_PARAMETER:g}" if ratio >= TOKENS_PER_PARAMETER
                      else f"the smallest model (even it sees only {seen})")
        else:
            break
    shape, batch, step, dropout = chosen
    kept = [f"{key}={getattr(given, key)}" for key in (*MODEL_KEYS, "batch_size", "learning_rate", "muon_learning_rate")
            if getattr(given, key) is not None]
    if kept:
        reason += "; kept as given: " + ", ".join(kept)
    return Recipe(shape.n_layer, shape.n_head, shape.n_embd, shape.block_size, batch,
                  given.learning_rate or ADAM_LR * 128 / shape.n_embd, given.muon_learning_rate or MUON_LR,
                  WARMUP_SHARE, step, probe_seconds, reason, dropout if given.dropout is None else given.dropout)


def _probe_cache_key(device: torch.device, dtype: torch.dtype, what: str) -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # The kernels' instruction set too: ATEN_CPU_CAPABILITY=avx2 makes an AVX-512 machine run as an AVX2 one.
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu}|{torch.backends.cpu.get_cpu_capability()}"
    return f"{name}|{torch.get_num_threads()} threads|torch {torch.__version__}|{dtype}|{what}"


def probe_shapes(shapes: list[Shape]) -> list[Shape]:
    """The rungs the probe times: the smallest, the middle and the largest (fewer where fewer are allowed)."""
    picked = [shapes[0], shapes[len(shapes) // 2], shapes[-1]]
    return [shape for i, shape in enumerate(picked) if shape not in picked[:i]]


def measure_speed(model_cfg, train_cfg, device: torch.device, dtype: torch.dtype, given: Given = Given(),
                  steps: int = 3) -> tuple[tuple[float, float], float]:
    """Time `steps` training steps (after one warm-up step) of up to three rungs of the model that
    `model_cfg` (its switches and vocabulary; dropout off) and `train_cfg` (its optimizer and precision
    switches) describe; fit and return the speed and the seconds spent. Cached per machine,
    instruction set, thread count, torch, precision, vocabulary, model switches, optimizer and rungs."""
    from nanonlp.data.catalog import cache_dir
    from nanonlp.device import autocast
    from nanonlp.io import atomic_write_text
    from nanonlp.models.gpt import GPT
    from nanonlp.train import make_optimizer, optimizer_step

    vocab_size = model_cfg.vocab_size
    shapes = probe_shapes(given.shapes())
    switches = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in (*MODEL_KEYS, "size")}
    rungs = [(dataclasses.astuple(shape), given.batch(shape), given.grad_accum_steps) for shape in shapes]
    what = json.dumps({"model": switches, "optimizer": train_cfg.optimizer, "grad_clip": train_cfg.grad_clip > 0,
                       **{k: getattr(train_cfg, k) for k in SPEED_SWITCHES}, "rungs": rungs}, sort_keys=True)
    key = _probe_cache_key(device, dtype, what)
    cache = cache_dir() / "speed_probe.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if key in known:
        return tuple(known[key]), 0.0
    started = time.perf_counter()
    samples = []
    for shape in shapes:
        batch = given.batch(shape)
        config = dataclasses.replace(model_cfg, n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd,
                                     block_size=shape.block_size, dropout=0.0, size="manual")
        model = GPT(config).to(device)
        optimizer = make_optimizer(model, train_cfg, device)
        x = torch.randint(vocab_size, (batch, shape.block_size), device=device)
        for i in range(steps + 1):
            if i == 1:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
            for _ in range(given.grad_accum_steps):
                with autocast(device, dtype):
                    _, loss = model(x, x)
                loss.backward()
            optimizer_step(model, optimizer, train_cfg.grad_clip)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_tokens = batch * shape.block_size * given.grad_accum_steps
        samples.append((shape.flops_per_step(vocab_size, step_tokens), (time.perf_counter() - t0) / steps))
    speed = fit_speed(samples)
    known[key] = list(speed)
    atomic_write_text(cache, json.dumps(known, indent=1))
    return speed, time.perf_counter() - started


def refuse_conflicts(cfg) -> None:
    """Given settings the recipe cannot keep: one sentence each."""
    given = cfg.given or frozenset()
    if "train.lr_schedule" in given and cfg.train.lr_schedule != "time":
        raise ConfigError("model.size auto fits warmup and decay to the clock (train.lr_schedule time) and runs until "
                          "train.max_seconds; remove train.lr_schedule steps, or set model.size manual and choose the schedule yourself.")


def apply(cfg, recipe: Recipe) -> None:
    """Set the model shape and the train settings of `cfg` to the recipe's, except those the user gave."""
    given = cfg.given or frozenset()
    chosen = {key: getattr(recipe, key) for key in MODEL_KEYS if f"model.{key}" not in given}
    cfg.model = dataclasses.replace(cfg.model, **chosen)
    dataclasses.replace(cfg.model, size="manual").validate()  # the whole shape now, with what was given in it
    apply_train(cfg, recipe)


def apply_train(cfg, recipe: Recipe) -> None:
    """Set the train settings of `cfg` to the recipe's, except those the user gave."""
    tc, given = cfg.train, cfg.given or frozenset()
    chosen = dict(batch_size=recipe.batch_size, learning_rate=recipe.learning_rate,
                  muon_learning_rate=recipe.muon_learning_rate,  # used where train.optimizer is muon
                  lr_schedule="time", warmup_share=recipe.warmup_share,
                  max_steps=max(tc.max_steps, 10 ** 9))  # the clock ends the run
    for key, value in chosen.items():
        if f"train.{key}" not in given:
            setattr(tc, key, value)
    if "train.min_lr" not in given:
        tc.min_lr = tc.learning_rate / 10
    elif tc.min_lr > tc.learning_rate:
        raise ConfigError(f"train.min_lr ({tc.min_lr:g}) is above the peak rate the recipe chose ({tc.learning_rate:g}); "
                          "lower train.min_lr or give train.learning_rate too.")
    if "train.eval_interval" not in given:
        steps = min(tc.max_steps, max(1.0, (tc.max_seconds - recipe.probe_seconds) / recipe.seconds_per_step))
        tc.eval_interval = max(10, int(steps / EVALUATIONS))


def choose_for_run(cfg, run_dir: Path, vocab_size: int, train_tokens: int, device: torch.device, quiet: bool) -> Recipe:
    """A fresh run: probe (or read the cached probe), choose around the given settings, apply, print and save the recipe."""
    from nanonlp.device import resolve_dtype

    from nanonlp.io import atomic_write_text

    refuse_conflicts(cfg)
    given = Given.of(cfg)
    model_cfg = dataclasses.replace(cfg.model, vocab_size=vocab_size)
    speed, probe_seconds = measure_speed(model_cfg, cfg.train, device, resolve_dtype(cfg.train.dtype, device), given)
    if probe_seconds >= 0.5 * cfg.train.max_seconds:
        raise ConfigError(f"the speed probe took {probe_seconds:.0f} s, at least half of train.max_seconds "
                          f"({cfg.train.max_seconds:g} s); it is cached now, so the same command again trains for the "
                          "whole budget (or raise train.max_seconds).")
    recipe = choose(cfg.train.max_seconds, vocab_size, speed, probe_seconds, train_tokens, given)
    apply(cfg, recipe)
    atomic_write_text(run_dir / RECIPE, json.dumps(dataclasses.asdict(recipe), indent=1))
    if not quiet:
        tc = cfg.train
        rates = f"Muon {tc.muon_learning_rate:g} and AdamW" if tc.optimizer == "muon" else "AdamW"
        print(f"recipe for {tc.max_seconds:g} s: {recipe.n_layer} layers x {recipe.n_embd} wide, {recipe.n_head} heads, "
              f"context {recipe.block_size}, batch {tc.batch_size}, dropout {cfg.model.dropout:g}; {rates} "
              f"{tc.learning_rate:.2g}, warmup {100 * tc.warmup_share:g}% then cosine decay to the budget's end; "
              f"{recipe.reason} (speed probe {probe_seconds:.1f} s{', cached' if probe_seconds == 0 else ''})", file=sys.stderr)
    return recipe


def load_for_run(cfg, run_dir: Path) -> Recipe | None:
    """A run's saved recipe, its train settings applied to cfg except those the user gives now (a
    resumed run continues it); None without one."""
    path = run_dir / RECIPE
    if not path.is_file():
        return None
    refuse_conflicts(cfg)
    recipe = Recipe(**json.loads(path.read_text(encoding="utf-8")))
    apply_train(cfg, recipe)
    return recipe
