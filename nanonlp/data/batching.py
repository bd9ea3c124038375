"""Batching: inference in length-sorted batches; for training, length buckets sized by token count,
padding, and resumable order."""

from __future__ import annotations

from typing import Callable

import torch


def by_length(items: list, lengths: list[int], batch_size: int, run: Callable[[list], list]) -> list:
    """run(batch) on batches of at most batch_size items of similar length (sorted by length, stable:
    less padding), each batch's results put back in the order of `items`. `run` answers one result
    per item of its batch, in order."""
    if len(items) != len(lengths) or batch_size < 1:
        raise ValueError("by_length needs one length per item and a batch size of at least 1.")
    order = sorted(range(len(items)), key=lengths.__getitem__)
    out: list = [None] * len(items)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        results = run([items[i] for i in rows])
        if len(results) != len(rows):
            raise ValueError(f"a batch of {len(rows)} items gave {len(results)} results.")
        for i, result in zip(rows, results):
            out[i] = result
    return out


def pad_batch(id_lists: list[list[int]], pad_id: int) -> torch.Tensor:
    """Lists of ids -> (B, longest) tensor, padded on the right."""
    width = max(len(ids) for ids in id_lists)
    out = torch.full((len(id_lists), width), pad_id, dtype=torch.long)
    for row, ids in enumerate(id_lists):
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def token_batches(lengths: list[int], batch_tokens: int, order: list[int]) -> list[list[int]]:
    """Cut `order` (indices, already grouped by length) into batches whose padded size, the number of
    sentences times the longest of them, stays within batch_tokens. A longer sentence gets a batch of its own."""
    batches, current, longest = [], [], 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if current and new_longest * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


class EpochBatches:
    """Batches of example indices, one shuffled epoch after another. A subclass cuts each epoch into
    batches with `self.generator`; the order then depends only on the seed and the position, both in
    `state_dict()` for an exact resume."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.batches: list[list[int]] = []
        self.position = 0

    def epoch_batches(self) -> list[list[int]]:
        raise NotImplementedError

    def next_rows(self) -> list[int]:
        """The indices of the next batch, starting a new epoch when this one is used up."""
        if self.position >= len(self.batches):
            self.batches, self.position = self.epoch_batches(), 0
        rows = self.batches[self.position]
        self.position += 1
        return rows

    def state_dict(self) -> dict:
        flat = torch.tensor([i for b in self.batches for i in b], dtype=torch.long)
        sizes = torch.tensor([len(b) for b in self.batches], dtype=torch.long)
        return {"generator": self.generator.get_state(), "order": flat, "sizes": sizes, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        flat, sizes = state["order"].tolist(), state["sizes"].tolist()
        self.batches, start = [], 0
        for size in sizes:
            self.batches.append(flat[start : start + size])
            start += size
        self.position = state["position"]


class LengthBatches(EpochBatches):
    """Shuffled batches of batch_size examples, one epoch after another. Each epoch shuffles, sorts by
    length within chunks of 50 batches (less padding, still random), cuts, and shuffles the batches."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        super().__init__(seed)
        self.lengths, self.batch_size = lengths, batch_size

    def epoch_batches(self) -> list[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        chunk = self.batch_size * 50
        order = [i for start in range(0, len(order), chunk) for i in sorted(order[start : start + chunk], key=lambda i: self.lengths[i])]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        shuffle = torch.randperm(len(batches), generator=self.generator).tolist()
        return [batches[i] for i in shuffle]


class PairBatches(EpochBatches):
    """Shuffled batches of (source, target) id pairs of about batch_tokens tokens each.

    Each epoch shuffles the pairs, sorts them by length within chunks of 100 batches (little padding,
    still random), cuts token-sized batches and shuffles the batches.
    """

    def __init__(self, sources: list[list[int]], targets: list[list[int]], batch_tokens: int, seed: int):
        super().__init__(seed)
        self.sources, self.targets, self.batch_tokens = sources, targets, batch_tokens
        # target side: bos + tokens (input) and tokens + eos (output) have the same length, len + 1
        self.lengths = [max(len(s), len(t) + 1) for s, t in zip(sources, targets)]

    def epoch_batches(self) -> list[list[int]]:
        order = torch.randperm(len(self.sources), generator=self.generator).tolist()
        average = max(1, self.batch_tokens // max(1, sum(self.lengths) // max(1, len(self.lengths))))
        chunk = 100 * average
        order = [i for start in range(0, len(order), chunk)
                 for i in sorted(order[start : start + chunk], key=lambda i: (self.lengths[i], len(self.sources[i])))]
        batches = token_batches(self.lengths, self.batch_tokens, order)
        shuffle = torch.randperm(len(batches), generator=self.generator).tolist()
        return [batches[i] for i in shuffle]
