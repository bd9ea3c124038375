"""The linear-chain CRF against brute-force enumeration of every tag sequence on a tiny lattice."""

import itertools
import math

import pytest
import torch

from nanonlp.models.crf import CRF

T, L = 3, 4  # 3 tags, 4 tokens: 81 sequences


def random_crf(seed: int, allowed=None) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(T, allowed)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    return crf


def sequence_score(crf: CRF, emissions: torch.Tensor, tags: tuple) -> float:
    """The score of one sequence, written out from the definition."""
    start, transitions, end = crf._scores()
    score = start[tags[0]] + emissions[0, tags[0]]
    for t in range(1, len(tags)):
        score = score + transitions[tags[t - 1], tags[t]] + emissions[t, tags[t]]
    return float((score + end[tags[-1]]).detach())


def enumerate_all(crf: CRF, emissions: torch.Tensor, length: int) -> dict:
    return {tags: sequence_score(crf, emissions, tags) for tags in itertools.product(range(T), repeat=length)}


# Tag 0 = O, 1 = B-X, 2 = I-X (IOB2): I-X only after B-X or I-X, never first.
IOB2 = ([True, True, False], [[True, True, False], [True, True, True], [True, True, True]], [True, True, True])


def is_valid(tags: tuple) -> bool:
    return tags[0] != 2 and all(not (b == 2 and a == 0) for a, b in zip(tags, tags[1:]))


@pytest.mark.parametrize("allowed", [None, IOB2], ids=["free", "iob2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partition_viterbi_and_marginals_equal_enumeration(seed, allowed):
    crf = random_crf(seed, allowed)
    emissions = torch.randn(1, L, T)
    mask = torch.ones(1, L, dtype=torch.bool)
    scores = enumerate_all(crf, emissions[0], L)
    log_z = math.log(sum(math.exp(s) for s in scores.values()))
    _, ours = crf.forward_scores(emissions, mask)
    assert ours.item() == pytest.approx(log_z, abs=1e-4)

    best = max(scores, key=scores.get)
    assert tuple(crf.viterbi(emissions, mask)[0]) == best
    if allowed is not None:
        assert is_valid(best)

    gold = torch.tensor([best])
    nll = crf.nll(emissions, gold, mask).item()
    assert nll == pytest.approx(log_z - scores[best], abs=1e-4)

    marginals = crf.marginals(emissions, mask)[0]
    assert torch.allclose(marginals.sum(-1), torch.ones(L), atol=1e-5)
    for t in range(L):
        for tag in range(T):
            expected = sum(math.exp(s - log_z) for tags, s in scores.items() if tags[t] == tag)
            assert marginals[t, tag].item() == pytest.approx(expected, abs=1e-5)

    for start, span in [(0, [1]), (1, [1, 2]), (2, [0, 1]), (0, [1, 2, 2, 2])]:
        expected = sum(math.exp(s - log_z) for tags, s in scores.items() if list(tags[start : start + len(span)]) == span)
        assert crf.span_probability(emissions, mask, start, span) == pytest.approx(expected, abs=1e-5)


def test_forbidden_transitions_get_no_probability_and_are_never_decoded():
    crf = random_crf(3, IOB2)
    with torch.no_grad():
        crf.transitions[0, 2] = 50.0  # training pushes hard towards O -> I-X: the constraint still holds
        crf.start[2] = 50.0
    for seed in range(20):
        torch.manual_seed(seed)
        emissions = torch.randn(2, L, T) * 5
        emissions[:, :, 2] += 10  # I-X everywhere is the emissions' favourite
        mask = torch.ones(2, L, dtype=torch.bool)
        for path in crf.viterbi(emissions, mask):
            assert is_valid(tuple(path))
        marginals = crf.marginals(emissions, mask)
        assert torch.all(marginals[:, 0, 2] < 1e-6)  # never first


def test_padding_changes_nothing_at_real_positions():
    crf = random_crf(4)
    torch.manual_seed(5)
    short, long = torch.randn(1, 2, T), torch.randn(1, L, T)
    padded = torch.cat([torch.cat([short, torch.randn(1, L - 2, T) * 100], 1), long])  # garbage in the padding
    mask = torch.tensor([[True, True, False, False], [True] * L])
    _, log_z = crf.forward_scores(padded, mask)
    assert log_z[0].item() == pytest.approx(crf.forward_scores(short, torch.ones(1, 2, dtype=torch.bool))[1].item(), abs=1e-5)
    assert log_z[1].item() == pytest.approx(crf.forward_scores(long, torch.ones(1, L, dtype=torch.bool))[1].item(), abs=1e-5)
    paths = crf.viterbi(padded, mask)
    assert paths[0] == crf.viterbi(short, torch.ones(1, 2, dtype=torch.bool))[0] and len(paths[1]) == L
    marginals = crf.marginals(padded, mask)
    assert torch.allclose(marginals[0, :2], crf.marginals(short, torch.ones(1, 2, dtype=torch.bool))[0], atol=1e-5)
    tags = torch.tensor([[1, 2, 0, 0], [0, 1, 2, 0]])
    assert crf.path_score(padded, tags, mask)[0].item() == pytest.approx(
        crf.path_score(short, tags[:1, :2], torch.ones(1, 2, dtype=torch.bool)).item(), abs=1e-5)


def test_a_one_token_sentence():
    crf = random_crf(6)
    emissions = torch.randn(1, 1, T)
    mask = torch.ones(1, 1, dtype=torch.bool)
    start, _, end = crf._scores()
    expected = torch.logsumexp(start + emissions[0, 0] + end, 0)
    assert crf.forward_scores(emissions, mask)[1].item() == pytest.approx(expected.item(), abs=1e-5)
    assert crf.viterbi(emissions, mask)[0] == [int((start + emissions[0, 0] + end).argmax())]


def test_training_the_crf_alone_learns_a_transition_pattern():
    # Emissions carry no information; only the transitions can learn "B-X is followed by I-X".
    torch.manual_seed(0)
    crf = CRF(T, IOB2)
    optimizer = torch.optim.Adam(crf.parameters(), lr=0.1)
    gold = torch.tensor([[1, 2, 0, 1], [0, 1, 2, 2]])
    emissions = torch.zeros(2, L, T)
    emissions[0, 0, 1] = emissions[0, 3, 1] = emissions[1, 1, 1] = 3.0  # where entities begin
    mask = torch.ones(2, L, dtype=torch.bool)
    for _ in range(100):
        optimizer.zero_grad()
        crf.nll(emissions, gold, mask).backward()
        optimizer.step()
    assert crf.viterbi(emissions, mask) == gold.tolist()
