"""Budget-aware GPT recipes: with `model.size: auto` and a time budget (`train.max_seconds`), the
model's shape, batch, dropout and learning rates are chosen for the budget and for this machine's measured speed.

The rule (no table of per-machine settings):
1. A ladder of shapes, each a little larger than the last: width w in LADDER, depth max(2, w / 32)
   capped at 8, heads of 32 channels, context 64 up to width 128, 128 up to 256, then 256.
2. The machine's speed: a few timed training steps (without dropout, which the recipe may add) of
   three shapes of the ladder (smallest, middle, largest) fit seconds per step = a + b * FLOPs per
   step by least squares, which predicts every rung. The probe's seconds count against the budget;
   its result is cached per machine, instruction set, thread count, torch version and precision, so
   later runs skip it.
3. The shape: the largest rung that still sees at least TOKENS_PER_PARAMETER training tokens per
   parameter in the budget left (tokens = seconds left / predicted seconds per step * tokens per
   step). Repeated tokens count for less: after the first pass over a small corpus, the tokens are
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
The choice is printed with its reasons and saved in the run directory (recipe.json) and its config,
so a resumed run continues the same recipe.
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

    def parameters(self, vocab_size: int) -> int:
        """Weights of the speedrun GPT (untied head, no learned positions): embedding, head, blocks."""
        return 2 * vocab_size * self.n_embd + self.n_layer * 12 * self.n_embd ** 2

    def flops_per_step(self, vocab_size: int, batch_tokens: int) -> float:
        n = self.parameters(vocab_size) - vocab_size * self.n_embd  # the embedding is a lookup
        return batch_tokens * (6 * n + 12 * self.n_layer * self.n_embd * self.block_size)


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
           train_tokens: int | None = None) -> Recipe:
    """The recipe for a budget, given the fitted speed (seconds per step = a + b * FLOPs per step) and
    the size of the training split (None: unlimited data)."""
    if budget_seconds <= 0:
        raise ConfigError("model.size auto needs a time budget: set train.max_seconds.")
    if train_tokens is not None and train_tokens <= 0:
        raise ConfigError("model.size auto found no training tokens: give data.path a longer text, or a smaller data.val_fraction.")
    a, b = speed
    left = max(1.0, budget_seconds - probe_seconds)
    chosen, reason = None, ""
    for width in LADDER:
        shape = Shape.of_width(width)
        batch = max(1, BATCH_TOKENS // shape.block_size)
        step = a + b * shape.flops_per_step(vocab_size, batch * shape.block_size)
        tokens = left / step * batch * shape.block_size
        counted = counted_tokens(tokens, train_tokens)
        ratio = counted / shape.parameters(vocab_size)
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
    return Recipe(shape.n_layer, shape.n_head, shape.n_embd, shape.block_size, batch, ADAM_LR * 128 / shape.n_embd, MUON_LR,
                  WARMUP_SHARE, step, probe_seconds, reason, dropout)


def _probe_cache_key(device: torch.device, dtype: torch.dtype) -> str:
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
    return f"{name}|{torch.get_num_threads()} threads|torch {torch.__version__}|{dtype}"


def measure_speed(vocab_size: int, device: torch.device, dtype: torch.dtype, steps: int = 3) -> tuple[tuple[float, float], float]:
    """Time `steps` training steps (after one warm-up step) of three rungs; fit and return the speed
    and the seconds spent. Cached per machine, instruction set, thread count, torch and precision."""
    from nanonlp.data.catalog import cache_dir
    from nanonlp.device import autocast
    from nanonlp.models.gpt import GPT, GPTConfig
    from nanonlp.optim import MuonAdamW

    key = _probe_cache_key(device, dtype)
    cache = cache_dir() / "speed_probe.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if key in known:
        return tuple(known[key]), 0.0
    started = time.perf_counter()
    samples = []
    for width in (LADDER[0], LADDER[len(LADDER) // 2], LADDER[-1]):
        shape = Shape.of_width(width)
        batch = max(1, BATCH_TOKENS // shape.block_size)
        model = GPT(GPTConfig(block_size=shape.block_size, n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd,
                              dropout=0.0, bias=False, vocab_size=vocab_size, position="rotary", qk_norm=True,
                              activation="relu2", tie_embeddings=False)).to(device)
        optimizer = MuonAdamW([{"params": model.matrix_parameters(), "muon": True},
                               {"params": [p for p in model.parameters() if p.dim() != 2 or
                                           all(p is not q for q in model.matrix_parameters())]}], lr=1e-4)
        x = torch.randint(vocab_size, (batch, shape.block_size), device=device)
        for i in range(steps + 1):
            if i == 1:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
            with autocast(device, dtype):
                _, loss = model(x, x)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append((shape.flops_per_step(vocab_size, batch * shape.block_size), (time.perf_counter() - t0) / steps))
    speed = fit_speed(samples)
    known[key] = list(speed)
    from nanonlp.io import atomic_write_text

    atomic_write_text(cache, json.dumps(known, indent=1))
    return speed, time.perf_counter() - started


def apply(cfg, recipe: Recipe) -> None:
    """Set the model shape and the train settings of `cfg` to the recipe's."""
    cfg.model = dataclasses.replace(cfg.model, n_layer=recipe.n_layer, n_head=recipe.n_head, n_embd=recipe.n_embd,
                                    block_size=recipe.block_size, dropout=recipe.dropout)
    apply_train(cfg, recipe)


def apply_train(cfg, recipe: Recipe) -> None:
    tc = cfg.train
    tc.batch_size, tc.grad_accum_steps = recipe.batch_size, 1
    tc.learning_rate, tc.min_lr = recipe.learning_rate, recipe.learning_rate / 10
    tc.muon_learning_rate = recipe.muon_learning_rate  # used where train.optimizer is muon
    tc.lr_schedule, tc.warmup_share = "time", recipe.warmup_share
    tc.max_steps = max(tc.max_steps, 10 ** 9)  # the clock ends the run
    steps = max(1.0, (tc.max_seconds - recipe.probe_seconds) / recipe.seconds_per_step)
    tc.eval_interval = max(10, int(steps / EVALUATIONS))


def choose_for_run(cfg, run_dir: Path, vocab_size: int, train_tokens: int, device: torch.device, quiet: bool) -> Recipe:
    """A fresh run: probe (or read the cached probe), choose, apply, print and save the recipe."""
    from nanonlp.device import resolve_dtype
    from nanonlp.io import atomic_write_text

    speed, probe_seconds = measure_speed(vocab_size, device, resolve_dtype(cfg.train.dtype, device))
    if probe_seconds >= 0.5 * cfg.train.max_seconds:
        raise ConfigError(f"the speed probe took {probe_seconds:.0f} s, at least half of train.max_seconds "
                          f"({cfg.train.max_seconds:g} s); it is cached now, so the same command again trains for the "
                          "whole budget (or raise train.max_seconds).")
    recipe = choose(cfg.train.max_seconds, vocab_size, speed, probe_seconds, train_tokens)
    apply(cfg, recipe)
    atomic_write_text(run_dir / RECIPE, json.dumps(dataclasses.asdict(recipe), indent=1))
    if not quiet:
        rates = f"Muon {recipe.muon_learning_rate:g} and AdamW" if cfg.train.optimizer == "muon" else "AdamW"
        print(f"recipe for {cfg.train.max_seconds:g} s: {recipe.n_layer} layers x {recipe.n_embd} wide, {recipe.n_head} heads, "
              f"context {recipe.block_size}, batch {recipe.batch_size}, dropout {recipe.dropout:g}; {rates} "
              f"{recipe.learning_rate:.2g}, warmup {100 * recipe.warmup_share:g}% then cosine decay to the budget's end; "
              f"{recipe.reason} (speed probe {probe_seconds:.1f} s{', cached' if probe_seconds == 0 else ''})", file=sys.stderr)
    return recipe


def load_for_run(cfg, run_dir: Path) -> Recipe | None:
    """A run's saved recipe, its train settings applied to cfg (a resumed run continues it); None without one."""
    path = run_dir / RECIPE
    if not path.is_file():
        return None
    recipe = Recipe(**json.loads(path.read_text(encoding="utf-8")))
    apply_train(cfg, recipe)
    return recipe
