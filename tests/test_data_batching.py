"""data/batching.py: the one length-sorted batching helper every predictor uses."""

import pytest

from nanonlp.data.batching import by_length


def test_by_length_batches_similar_lengths_and_restores_the_order():
    items = ["ccc", "a", "eeeee", "bb", "dddd", "a2", "ffffff"]
    batches = []

    def run(batch):
        batches.append(batch)
        return [item.upper() for item in batch]

    assert by_length(items, [len(i) for i in items], 3, run) == [i.upper() for i in items]  # the input's order
    assert batches == [["a", "bb", "a2"], ["ccc", "dddd", "eeeee"], ["ffffff"]]  # sorted (stably) by length, then cut
    assert all(len(b) <= 3 for b in batches)


def test_by_length_on_empty_input_runs_nothing_and_bad_arguments_are_refused():
    calls = []
    assert by_length([], [], 4, lambda batch: calls.append(batch) or batch) == [] and calls == []
    with pytest.raises(ValueError, match="one length per item"):
        by_length(["a"], [], 4, list)
    with pytest.raises(ValueError, match="gave 0 results"):
        by_length(["a", "b"], [1, 1], 4, lambda batch: [])
