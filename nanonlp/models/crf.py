"""A linear-chain conditional random field over per-token tag scores.

Lafferty et al. 2001, "Conditional Random Fields"; as the output layer of a tagger in Lample et al.
2016, "Neural Architectures for Named Entity Recognition". The score of a tag sequence y for a
sentence of n tokens is

    start[y_0] + sum_t emissions[t, y_t] + sum_t transitions[y_(t-1), y_t] + end[y_(n-1)]

and p(y | x) is its exponential over the sum for all sequences (the partition function, computed by
the forward algorithm). Decoding is Viterbi; per-token and per-span marginals come from
forward-backward. Transitions that the tagging scheme forbids (I-PER after B-LOC) carry a large
negative score that training never changes, so neither decoding nor the marginals ever produce them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# Added to forbidden transitions. Finite, so that log-sum-exp over rows that are all forbidden (the
# padding past a sentence's end) stays finite instead of giving NaN.
FORBIDDEN = -1e4


class CRF(nn.Module):
    def __init__(self, num_tags: int, allowed: tuple | None = None):
        """allowed: (start (T,), transitions (T, T), end (T,)) booleans, transitions[i][j] for i -> j; None allows all."""
        super().__init__()
        self.num_tags = num_tags
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))  # [from, to]
        if allowed is None:
            allowed = ([True] * num_tags, [[True] * num_tags for _ in range(num_tags)], [True] * num_tags)
        start, transitions, end = (torch.tensor(a, dtype=torch.bool) for a in allowed)
        # Buffers, not parameters: the constraints are part of the model, saved with it, never trained.
        self.register_buffer("start_penalty", torch.where(start, 0.0, FORBIDDEN))
        self.register_buffer("transition_penalty", torch.where(transitions, 0.0, FORBIDDEN))
        self.register_buffer("end_penalty", torch.where(end, 0.0, FORBIDDEN))

    def _scores(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.start + self.start_penalty, self.transitions + self.transition_penalty, self.end + self.end_penalty

    # -- training ------------------------------------------------------------------------------------

    def forward_scores(self, emissions: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward algorithm. emissions (B, L, T) float, mask (B, L) bool with every sentence's real
        tokens first. Returns alpha (B, L, T), the log-sum of all paths ending in each tag at each
        position (emission included), and log Z (B,)."""
        start, transitions, end = self._scores()
        emissions = emissions.float()
        score = start + emissions[:, 0]  # (B, T)
        alphas = [score]
        for t in range(1, emissions.size(1)):
            # (B, T_prev, 1) + (T_prev, T) + (B, 1, T) -> sum over the previous tag
            step = torch.logsumexp(score.unsqueeze(2) + transitions + emissions[:, t].unsqueeze(1), dim=1)
            score = torch.where(mask[:, t].unsqueeze(1), step, score)  # past the end, carry the last score
            alphas.append(score)
        return torch.stack(alphas, dim=1), torch.logsumexp(score + end, dim=1)

    def path_score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The score of the given tag sequences (B, L) (padding positions ignored). (B,)"""
        start, transitions, end = self._scores()
        emissions, maskf = emissions.float(), mask.float()
        batch = torch.arange(tags.size(0), device=tags.device)
        score = start[tags[:, 0]] + emissions[batch, 0, tags[:, 0]]
        for t in range(1, tags.size(1)):
            score = score + maskf[:, t] * (transitions[tags[:, t - 1], tags[:, t]] + emissions[batch, t, tags[:, t]])
        last = tags[batch, mask.long().sum(1) - 1]
        return score + end[last]

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of the gold sequences over the batch."""
        _, log_z = self.forward_scores(emissions, mask)
        return (log_z - self.path_score(emissions, tags, mask)).mean()

    # -- inference -------------------------------------------------------------------------------------

    def viterbi(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """The best tag sequence of each sentence, as many tags as it has real tokens."""
        start, transitions, end = self._scores()
        emissions = emissions.float()
        score = start + emissions[:, 0]
        backpointers = []
        for t in range(1, emissions.size(1)):
            candidates = score.unsqueeze(2) + transitions  # (B, T_prev, T)
            best, previous = candidates.max(dim=1)
            step = best + emissions[:, t]
            real = mask[:, t].unsqueeze(1)
            score = torch.where(real, step, score)
            # Past the end the pointer is the identity, so the walk back passes through unchanged.
            identity = torch.arange(self.num_tags, device=emissions.device).expand_as(previous)
            backpointers.append(torch.where(real, previous, identity))
        last = (score + end).argmax(dim=1)
        lengths = mask.long().sum(1).tolist()
        paths = [last]
        for pointers in reversed(backpointers):
            paths.append(pointers.gather(1, paths[-1].unsqueeze(1)).squeeze(1))
        paths.reverse()
        tags = torch.stack(paths, dim=1).tolist()  # (B, L); the padded tail repeats the last real tag
        return [row[:n] for row, n in zip(tags, lengths)]

    def backward_scores(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """beta (B, L, T): the log-sum of all continuations after each tag at each position (emission
        at that position excluded, the end score included)."""
        _, transitions, end = self._scores()
        emissions = emissions.float()
        length = emissions.size(1)
        score = end.expand(emissions.size(0), -1)
        betas = [score]
        for t in range(length - 2, -1, -1):
            # (T, T_next) + (B, 1, T_next) + (B, 1, T_next) -> sum over the next tag
            step = torch.logsumexp(transitions + (emissions[:, t + 1] + score).unsqueeze(1), dim=2)
            score = torch.where(mask[:, t + 1].unsqueeze(1), step, end.expand_as(step))  # the last real token ends the path
            betas.append(score)
        betas.reverse()
        return torch.stack(betas, dim=1)

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """p(y_t = tag | x) for every position and tag (B, L, T); rows at padding positions are meaningless."""
        alpha, log_z = self.forward_scores(emissions, mask)
        beta = self.backward_scores(emissions, mask)
        return torch.exp(alpha + beta - log_z[:, None, None])

    def span_probability(self, emissions: torch.Tensor, mask: torch.Tensor, start: int, tags: list[int]) -> float:
        """p(y_start .. y_(start+len(tags)-1) = tags | x) for one sentence (emissions (1, L, T)): the
        probability that the tagger's span, with exactly these tags, is right."""
        return self.span_probabilities(emissions, mask, [[(start, tags)]])[0][0]

    @torch.no_grad()
    def span_probabilities(self, emissions: torch.Tensor, mask: torch.Tensor, spans: list[list[tuple[int, list[int]]]]) -> list[list[float]]:
        """span_probability of every (start, tags) span of every sentence of a batch, from one
        forward-backward pass: alpha to the span's first tag, the span's own path, beta from its last."""
        _, transitions, _ = self._scores()
        alpha, log_z = self.forward_scores(emissions, mask)
        beta = self.backward_scores(emissions, mask)
        emissions = emissions.float()
        out = []
        for b, sentence_spans in enumerate(spans):
            row = []
            for start, tags in sentence_spans:
                score = alpha[b, start, tags[0]]
                for offset in range(1, len(tags)):
                    score = score + transitions[tags[offset - 1], tags[offset]] + emissions[b, start + offset, tags[offset]]
                score = score + beta[b, start + len(tags) - 1, tags[-1]]
                row.append(float(torch.exp(score - log_z[b])))
            out.append(row)
        return out


class SequenceTagger(nn.Module):
    """What every tagger here shares, whatever reads the words (a BiLSTM, a pretrained Transformer):
    a linear layer from each word's state to tag scores, the CRF's loss (or a per-token softmax's
    when config.crf is false), constrained Viterbi decoding, marginals and span confidences.

    Without a CRF the transition scores stay zero and untrained, so decoding the per-token
    log-probabilities under the scheme's constraints still never yields an invalid sequence.
    A subclass calls `_build_output(width)` and ends its forward with `self.output(states, mask, tags)`.
    """

    def _build_output(self, width: int) -> None:
        num_tags = len(self.config.tags)
        self.emissions = nn.Linear(width, num_tags)
        self.crf = CRF(num_tags, tuple(self.config.allowed) if self.config.allowed else None)
        if not self.config.crf:
            self.crf.requires_grad_(False)  # zero transition scores: only the constraints remain

    def output(self, states: torch.Tensor, mask: torch.Tensor, tags: torch.Tensor | None):
        """states (B, L, width) of the words, mask (B, L) -> emissions (B, L, T) and the loss when tags are given."""
        emissions = self.emissions(states)
        loss = None
        if tags is not None:
            if self.config.crf:
                loss = self.crf.nll(emissions, tags, mask)
            else:
                loss = F.cross_entropy(emissions[mask].float(), tags[mask])
        return emissions, loss

    def scores(self, emissions: torch.Tensor) -> torch.Tensor:
        """What decoding reads: the CRF's emissions, or a softmax tagger's log-probabilities."""
        return emissions if self.config.crf else F.log_softmax(emissions.float(), dim=-1)

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        return self.crf.viterbi(self.scores(emissions), mask)

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.crf:
            return self.crf.marginals(emissions, mask)
        return torch.softmax(emissions.float(), dim=-1)

    def span_scores(self, emissions: torch.Tensor, mask: torch.Tensor, spans: list[list[tuple[int, list[int]]]]) -> list[list[float]]:
        """Confidence in each (start, tags) span of each sentence of a batch: its CRF marginal
        probability, or the product of its token probabilities without a CRF."""
        if self.config.crf:
            return self.crf.span_probabilities(emissions, mask, spans)
        probs = torch.softmax(emissions.float(), dim=-1)
        return [[float(torch.prod(torch.stack([probs[b, start + i, tag] for i, tag in enumerate(tags)]))) for start, tags in row]
                for b, row in enumerate(spans)]
