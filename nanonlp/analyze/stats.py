"""Aggregates with confidence intervals, and alerts against each entity's own rolling baseline.

Everything here is plain arithmetic on per-period counts (the store computes them in SQL), so the
tests check it against hand computation.

- Negative share: Wilson score interval (95%), which stays inside [0, 1] and is honest at small n.
- Mean sentiment: Student-t interval (95%) from the documents' sample standard deviation.
- A period with fewer than `min_count` documents is flagged `low_confidence` and is never judged.
- z-scores compare a period with the entity's previous `baseline` periods that had at least
  `min_count` documents and where the same condition did not hold (a sustained turn is measured
  against the entity's normal, not against itself): (value - baseline mean) / max(baseline standard deviation, the period's own
  sampling error), so a flat baseline does not turn every wobble into an alert.
- Volume: (count - baseline mean count) / max(sd, sqrt(mean), 1) over the previous `baseline`
  calendar periods (zeros included), Poisson-like noise as the floor.
- Nothing but a severe event fires before `warmup` baseline periods exist. A condition must hold
  for `consecutive` periods in a row to fire, fires once, and can fire again only after a period
  without it (debouncing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, timedelta

Z95 = 1.959963984540054
# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (standard tables).
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
ALL = "*"  # the pseudo-entity of every document together


def t_quantile(df: int) -> float:
    if df < 1:
        return float("nan")
    if df <= len(T95):
        return T95[df - 1]
    z = Z95  # Cornish-Fisher expansion of t around the normal quantile; within 0.001 past 30 df
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(mean: float, sd: float | None, n: int) -> tuple[float, float]:
    """Student-t 95% interval of a mean sentiment, clipped to the scale's [-1, 1]."""
    if n < 2 or sd is None or math.isnan(sd):
        return (float("nan"), float("nan"))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return (max(-1.0, mean - half), min(1.0, mean + half))  # sentiment lies in [-1, 1]


@dataclass
class Cell:
    """One entity in one period."""
    entity: str
    period: date | None
    count: int  # documents (reposts not counted)
    scored: int = 0  # of them, with a sentiment
    negative: int = 0
    mean: float | None = None
    sd: float | None = None
    events: dict[str, int] = field(default_factory=dict)

    @property
    def negative_share(self) -> float | None:
        return self.negative / self.scored if self.scored else None

    def row(self, min_count: int) -> dict:
        low, high = wilson(self.negative, self.scored) if self.scored else (None, None)
        mlow, mhigh = mean_interval(self.mean, self.sd, self.scored) if self.mean is not None else (None, None)
        top = sorted(self.events.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        return {"entity": self.entity, "period": self.period.isoformat() if self.period else "all", "count": self.count,
                "scored": self.scored, "mean_sentiment": _round(self.mean), "mean_low": _round(mlow), "mean_high": _round(mhigh),
                "negative": self.negative, "negative_share": _round(self.negative_share), "negative_low": _round(low),
                "negative_high": _round(high), "top_events": dict(top), "low_confidence": self.count < min_count}


def _round(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def step(period: date, kind: str, n: int = 1) -> date:
    return period + timedelta(days=n * (7 if kind == "week" else 1))


@dataclass
class Check:
    """One judged condition of one entity in one period."""
    kind: str  # negative_share, mean_sentiment, volume, event:<name>
    holds: bool
    z: float | None = None
    severity: float = 0.0
    numbers: dict = field(default_factory=dict)


def judge(series: list[Cell], settings, period_kind: str, severe: set[str]) -> list[tuple[Cell, list[Check]]]:
    """For each period of one entity (calendar order, gaps filled with empty cells) the checks made."""
    if not series:
        return []
    filled: list[Cell] = []
    if period_kind == "all" or series[0].period is None:
        filled = list(series)
    else:
        by_period = {c.period: c for c in series}
        day, last = series[0].period, series[-1].period
        while day <= last:
            filled.append(by_period.get(day) or Cell(series[0].entity, day, 0))
            day = step(day, period_kind)
    out = []
    held: dict[str, set[int]] = {"negative_share": set(), "mean_sentiment": set(), "volume": set()}
    for i, cell in enumerate(filled):
        first = max(0, i - settings.baseline)
        checks = []
        enough = cell.count >= settings.min_count

        def baseline(kind: str, judged_only: bool = True) -> list[Cell]:
            # the previous periods, less those where this condition held: a turn is measured
            # against the entity's normal, not against the turn itself
            return [filled[j] for j in range(first, i) if j not in held[kind]
                    and (not judged_only or (filled[j].count >= settings.min_count and filled[j].scored))]

        share = cell.negative_share
        scored = baseline("negative_share")
        if share is not None and enough and len(scored) >= max(settings.warmup, 1):
            shares = [c.negative_share for c in scored]
            base, sd = _mean_sd(shares)
            pooled = (sum(c.negative for c in scored) + 1) / (sum(c.scored for c in scored) + 2)
            spread = max(sd, math.sqrt(pooled * (1 - pooled) / cell.scored))
            z = (share - base) / spread
            checks.append(Check("negative_share", z >= settings.z_threshold, z, z / settings.z_threshold,
                                {"negative_share": share, "baseline_share": base, "baseline_sd": sd, "z": z, "count": cell.count,
                                 "baseline_periods": len(scored)}))
        scored = baseline("mean_sentiment")
        if cell.mean is not None and enough and len(scored) >= max(settings.warmup, 1):
            means = [c.mean for c in scored]
            base, sd = _mean_sd(means)
            spread = max(sd, (cell.sd or 0.0) / math.sqrt(cell.scored), 1e-6)
            z = (base - cell.mean) / spread  # positive when sentiment falls
            checks.append(Check("mean_sentiment", z >= settings.z_threshold, z, z / settings.z_threshold,
                                {"mean_sentiment": cell.mean, "baseline_mean": base, "baseline_sd": sd, "z": z, "count": cell.count,
                                 "baseline_periods": len(scored)}))
        window = baseline("volume", judged_only=False)
        if enough and len(window) >= max(settings.warmup, 1) and period_kind != "all":
            counts = [c.count for c in window]
            base, sd = _mean_sd(counts)
            spread = max(sd, math.sqrt(base), 1.0)
            z = (cell.count - base) / spread
            checks.append(Check("volume", z >= settings.burst_z, z, z / settings.burst_z,
                                {"count": cell.count, "baseline_count": base, "baseline_sd": sd, "z": z, "baseline_periods": len(window)}))
        for check in checks:
            if check.holds:
                held[check.kind].add(i)
        for name in sorted(severe):
            if cell.events.get(name):
                checks.append(Check(f"event:{name}", True, None, 1.5 + 0.1 * min(cell.events[name], 10),
                                    {"documents": cell.events[name], "count": cell.count}))
        out.append((cell, checks))
    return out


def debounce(judged: list[tuple[Cell, list[Check]]], consecutive: int) -> list[tuple[Cell, Check, date | None]]:
    """The checks that fire: a condition holding `consecutive` periods in a row fires once (at the
    period completing the run), then stays quiet until a period without it. (cell, check, first period)."""
    streak: dict[str, int] = {}
    start: dict[str, date | None] = {}
    fired = []
    for cell, checks in judged:
        holding = {c.kind: c for c in checks if c.holds}
        for kind in list(streak):
            if kind not in holding:
                streak[kind] = 0
        for kind, check in holding.items():
            streak[kind] = streak.get(kind, 0) + 1
            if streak[kind] == 1:
                start[kind] = cell.period
            if streak[kind] == consecutive:
                fired.append((cell, check, start[kind]))
    return fired
