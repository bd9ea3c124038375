"""The Ray Data engine: the same annotation as the in-process engine, on an actor pool.

The driver reads the files (so malformed rows are named by file and line exactly as in-process),
hands the documents to Ray Data in chunks, and `map_batches` runs them through a pool of actors,
each of which loads the models once and sets torch's threads to the CPUs it was given. The
annotated rows come back in order; the driver marks reposts and writes the same files and history
as the default engine. Run directories must be readable at the same path on every node (a shared
or synced folder); `--address` joins a running cluster (docs/analyze.md).
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np

from nanonlp.analyze.documents import PERMUTATIONS
from nanonlp.errors import NanoNLPError

CHUNK_BATCHES = 64  # model batches handed to Ray at a time: bounds the documents the driver holds


class _Actor:
    """One per Ray actor: the models loaded once in __init__, then batches of rows annotated."""

    def __init__(self, config_values: dict, device: str, threads: int):
        import torch

        from nanonlp.analyze.config import from_mapping
        from nanonlp.analyze.documents import Annotator

        torch.set_num_threads(max(1, threads))
        self.annotator = Annotator(from_mapping(config_values), None, device)

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        given = [json.loads(e) for e in batch["entities"]]
        annotations = self.annotator.annotate(texts, given)
        return {
            "position": np.asarray(batch["position"]),
            "annotation": np.array([json.dumps({k: v for k, v in a.items() if k != "signature"}, ensure_ascii=False)
                                    for a in annotations], dtype=object),
            "signature": np.stack([a["signature"] for a in annotations]) if annotations else np.zeros((0, PERMUTATIONS), np.uint32),
        }


def _plain(config) -> dict:
    """The config as a mapping from_mapping reads back (rules as plain dicts)."""
    return dataclasses.asdict(config)


class RayEngine:
    def __init__(self, config, models, device: str, address: str | None, actors: int | None):
        try:
            import ray
            import ray.data  # noqa: F401
        except ImportError:
            raise NanoNLPError("--engine ray needs Ray Data: pip install 'nanonlp[ray]' (or 'ray[data]').") from None
        if models:
            raise NanoNLPError("the Ray engine loads its models from run directories on each actor; give runs, not loaded predictors.")
        self.ray, self.config, self.device = ray, config, device
        self.started_here = not ray.is_initialized()
        if self.started_here:
            try:
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
            except Exception as err:  # a wrong address, a cluster of another Ray version
                raise NanoNLPError(f"cannot start or join Ray{f' at {address}' if address else ''} ({err}).") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.actors = actors or max(1, cpus // 2)
        if self.actors < 1:
            raise NanoNLPError(f"--actors must be at least 1, got {self.actors}.")
        self.cpus_per_actor = max(1, cpus // self.actors) if actors is None else max(1, min(cpus // self.actors, cpus))
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # rows come back in input order: reposts are marked as in-process
        ctx.enable_progress_bars = False

    def annotate(self, chunks):
        ray = self.ray
        size = self.config.batch_size
        while True:
            group = list(itertools.islice(chunks, CHUNK_BATCHES))
            if not group:
                return
            documents = [d for batch in group for d in batch]
            rows = [{"position": i, "text": d.text, "entities": json.dumps(d.entities, ensure_ascii=False)} for i, d in enumerate(documents)]
            dataset = ray.data.from_items(rows).map_batches(
                _Actor, fn_constructor_args=(_plain(self.config), self.device, self.cpus_per_actor), batch_size=size,
                batch_format="numpy", concurrency=self.actors, num_cpus=self.cpus_per_actor)
            annotations = [None] * len(documents)
            for out in dataset.iter_batches(batch_size=size, batch_format="numpy"):
                for position, text, signature in zip(out["position"], out["annotation"], out["signature"]):
                    annotation = json.loads(text)
                    annotation["signature"] = np.asarray(signature, dtype=np.uint32)
                    annotations[int(position)] = annotation
            start = 0
            for batch in group:
                yield batch, annotations[start:start + len(batch)]
                start += len(batch)

    def close(self) -> None:
        if self.started_here and self.ray.is_initialized():
            self.ray.shutdown()
