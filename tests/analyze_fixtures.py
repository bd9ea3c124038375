"""Fixtures shared by the analyze tests: documents with timestamps written here, a sentiment
predictor that reads its score from the text (so every aggregate is known by hand), and a tiny
trained sentiment classifier."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone

import pytest

from nanonlp.analyze.config import from_mapping

START = date(2024, 3, 1)  # a Friday


class ScoreInText:
    """A regression-style predictor for tests: the score is written in the text as `score=-0.5`."""

    task = "regress"
    labels = None

    def predict(self, texts):
        return [{"score": float(re.search(r"score=(-?[\d.]+)", t).group(1))} for t in texts]


WORDS = ("market analysts traders revenue guidance outlook margin quarter board shares investors demand supply costs "
         "dividend growth orders pricing factory retail cloud chips energy credit deal merger lawsuit rating bonds cash "
         "forecast customers partners exports tariffs inflation wages capital report briefing").split()


def doc(entity: str, day: int, k: int, score: float, extra: str = "", hour: int = 9) -> dict:
    """A document whose words differ from every other's (so no two are reposts of each other)."""
    import random

    words = " ".join(random.Random(f"{entity}/{day}/{k}").sample(WORDS, 7))
    moment = datetime.combine(START + timedelta(days=day), datetime.min.time(), tzinfo=timezone.utc) + timedelta(hours=hour, minutes=k)
    return {"id": f"{entity}-{day}-{k}", "time": moment.strftime("%Y-%m-%dT%H:%M:%SZ"), "ticker": entity, "source": "wire",
            "text": f"{entity} {words} {extra} score={score}"}


def day_docs(entity: str, day: int, negatives: int, total: int, extra_negative: str = "") -> list[dict]:
    """`total` documents of the entity on the day, `negatives` of them at -0.8, the rest at +0.6."""
    return [doc(entity, day, k, -0.8 if k < negatives else 0.6, extra_negative if k < negatives else "") for k in range(total)]


def write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return str(path)


def config(**alerts):
    settings = {"min_count": 10, "warmup": 5, "baseline": 10, "z_threshold": 3.0, "burst_z": 4.0}
    settings.update(alerts)
    return from_mapping({"fields": {"time": "time", "entity": "ticker", "id": "id", "source": "source"},
                         "events": {"rules": {"layoffs": {"words": ["layoffs", "job cuts", "裁员"]},
                                              "profit_warning": {"words": ["profit warning", "业绩预警"], "severe": True}}},
                         "alerts": settings})


BASELINE_NEGATIVES = [2, 3, 2, 1, 2, 3, 2]  # of 10 documents a day, days 0-6


def history_rows(turn_negatives: int | None = 8, entity: str = "ACME") -> list[dict]:
    rows = [r for day, n in enumerate(BASELINE_NEGATIVES) for r in day_docs(entity, day, n, 10)]
    if turn_negatives is not None:
        rows += day_docs(entity, 7, turn_negatives, 10, extra_negative="layoffs announced")
    return rows


@pytest.fixture(scope="session")
def sentiment_run(tmp_path_factory):
    """A bag-of-n-grams classifier with labels negative/positive, trained for a few seconds."""
    from nanonlp.config import load_config
    from nanonlp.train import fit

    folder = tmp_path_factory.mktemp("sentiment")
    good = ["strong quarter", "shares rise", "record profit", "good results", "upgrade to buy", "demand is strong", "利润大增", "业绩很好"]
    bad = ["weak quarter", "shares fall", "record loss", "bad results", "downgrade to sell", "demand is weak", "利润下降", "业绩很差"]
    train = folder / "train.txt"
    train.write_text("".join(f"positive {t}\n" for t in good * 3) + "".join(f"negative {t}\n" for t in bad * 3), encoding="utf-8")
    dev = folder / "dev.txt"
    dev.write_text("positive strong results\nnegative weak results\npositive profit rise\nnegative loss fall\n", encoding="utf-8")
    values = {"data.path": train, "data.dev_path": dev, "model.type": "bag_of_ngrams", "train.out_dir": folder / "run",
              "train.max_steps": 80, "train.batch_size": 8, "train.eval_interval": 40, "train.learning_rate": 1e-2,
              "train.warmup_steps": 0, "train.dtype": "float32", "train.device": "cpu", "train.peak_tflops": 1.0,
              "train.weight_decay": 0.0, "classify.calibration_min_dev": 2}
    fit(load_config(None, ["--task=classify"] + [f"--{k}={v}" for k, v in values.items()]), quiet=True)
    return folder / "run"
