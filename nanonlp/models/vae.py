"""The sentence VAE (Bowman et al. 2016), the same-size RNN language model it is measured against,
and the latent-variable maths they share with the ARAE (nanonlp.models.arae).

A sentence is a batch row of token ids: `inputs` are <s> w1 .. wn and `targets` w1 .. wn </s>,
both right-padded with PAD; `lengths` counts the targets (n + 1). The VAE's encoder (a
bidirectional GRU or LSTM) reads the targets and gives the mean and log-variance of a diagonal
Gaussian q(z|x); z = mu + sigma * eps (the reparameterisation of Kingma and Welling 2014) sets the
decoder's initial state and is concatenated to its every input. Against posterior collapse the task
anneals the KL weight, applies free bits, and the decoder can drop its input words (`word_dropout`).

Evaluation figures (He et al. 2019, "Lagging Inference Networks", give the estimators):
- `importance_weighted_nll`: -log (1/k sum_i p(x, z_i) / q(z_i|x)), z_i ~ q(z|x) (Burda et al. 2016);
  k = 1 is the ELBO in expectation and the bound tightens as k grows.
- `mutual_information`: I(x; z) under the aggregate posterior, estimated on a batch.
- `active_units`: dimensions whose posterior mean varies over the data (Burda et al. 2016).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from nanonlp.decode import choose
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.models.layers import Dropout

PAD, UNK, BOS, EOS = 0, 1, 2, 3  # the first four words of every sentence vocabulary
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def _check_sizes(config, names) -> None:
    if config.vocab_size <= len(SPECIALS):
        raise NanoNLPError(f"{type(config).__name__}.vocab_size must be set from the tokenizer before building the model.")
    for name in names:
        if getattr(config, name) < 1:
            raise ConfigError(f"model.{name} must be at least 1, got {getattr(config, name)}.")
    if not 0.0 <= config.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {config.dropout}.")
    if not 0.0 <= getattr(config, "word_dropout", 0.0) <= 1.0:
        raise ConfigError(f"model.word_dropout must be in [0, 1], got {config.word_dropout}.")


# ---------------------------------------------------------------------------------------------------
# the latent-variable maths


def randn(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal noise on `device`, drawn from `generator` (on its own device) when one is given."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per dimension: (B, D) -> (B, D). Sum over D for the total."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def free_bits(kl_dims: torch.Tensor, nats: float) -> torch.Tensor:
    """The KL term with free bits (Kingma et al. 2016): each dimension's KL, averaged over the batch,
    counts as at least `nats`, so the optimizer gains nothing by pushing a dimension below it."""
    per_dim = kl_dims.mean(dim=0)
    return torch.clamp(per_dim, min=nats).sum() if nats > 0 else per_dim.sum()


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) / logvar.exp()).sum(dim=-1)


def mutual_information(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None, samples: int = 10) -> float:
    """I(x; z) = E_x E_q(z|x)[log q(z|x) - log q(z)], q(z) the aggregate posterior of the batch (a
    mixture of its N posteriors), with `samples` draws of z from each posterior; both terms are read
    at the same draws, so identical posteriors give exactly 0. At most log N."""
    n, d = mu.shape
    mu, logvar = mu.double(), logvar.double()
    eps = randn((samples, n, d), generator, mu.device).to(mu.dtype)
    z = mu + (0.5 * logvar).exp() * eps  # (samples, N, D): z[s, i] drawn from q(z|x_i)
    log_q_own = log_normal(z, mu, logvar).reshape(-1)
    z = z.reshape(samples * n, d)
    log_qz = torch.cat([  # log q(z) of each z under the mixture, 64 z at a time: (64, N, D) at most
        torch.logsumexp(log_normal(part[:, None, :], mu[None, :, :], logvar[None, :, :]), dim=1) for part in z.split(64)
    ]) - math.log(n)
    return float((log_q_own - log_qz).mean())


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Dimensions whose posterior mean varies over the data: Cov_x(E_q(z|x)[z]) above `threshold`."""
    if mu.size(0) < 2:
        return 0
    return int((mu.double().var(dim=0, unbiased=True) > threshold).sum())


def kl_weight(step: int, schedule: str, anneal_steps: int, cycles: int = 4, ratio: float = 0.5, maximum: float = 1.0) -> float:
    """The KL weight at an optimizer step (0-based), a function of the step alone, so a resumed run
    continues the same schedule.

    constant:  `maximum` throughout.
    linear:    rises from 0 to `maximum` over `anneal_steps`, then stays.
    logistic:  maximum / (1 + exp(-k (step - anneal_steps / 2))) with k = 10 / anneal_steps
               (Bowman et al. 2016): about 0.7% of the maximum at step 0, 99.3% at anneal_steps.
    cyclical:  `cycles` cycles of `anneal_steps` steps each (Fu et al. 2019); in each, the weight rises
               linearly from 0 over the first `ratio` of the cycle and holds `maximum` for the rest;
               after the last cycle it stays at `maximum`.
    """
    if schedule == "constant" or anneal_steps <= 0:
        return maximum
    if schedule == "linear":
        return maximum * min(1.0, step / anneal_steps)
    if schedule == "logistic":
        k = 10.0 / anneal_steps
        return maximum / (1.0 + math.exp(-k * (step - anneal_steps / 2)))
    if schedule == "cyclical":
        if step >= cycles * anneal_steps:
            return maximum
        tau = (step % anneal_steps) / anneal_steps
        return maximum * min(1.0, tau / ratio)
    raise ConfigError(f"vae.kl_schedule must be constant, linear, logistic or cyclical, got '{schedule}'.")


# ---------------------------------------------------------------------------------------------------
# the recurrent parts


def _rnn(cell: str):
    return nn.GRU if cell == "gru" else nn.LSTM


class SentenceEncoder(nn.Module):
    """A bidirectional GRU/LSTM over the tokens: the top layer's last states of both directions (B, 2H)."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, cell: str, num_layers: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.rnn = _rnn(cell)(embed_dim, hidden_dim, num_layers, batch_first=True, bidirectional=True,
                              dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = Dropout(dropout)
        self.out_dim = 2 * hidden_dim

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.embedding(tokens))
        # Packing makes the backward direction start at each sentence's last token, not in its padding.
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.rnn(packed)
        if isinstance(h, tuple):
            h = h[0]  # LSTM: (h, c)
        return torch.cat([h[-2], h[-1]], dim=-1)  # (B, 2H): the top layer, forward then backward


class SentenceDecoder(nn.Module):
    """A GRU/LSTM language model, conditioned on a latent vector when latent_dim > 0: the vector sets
    the initial state (through a tanh layer) and is concatenated to every input embedding."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, latent_dim: int, cell: str, num_layers: int,
                 dropout: float):
        super().__init__()
        self.cell, self.num_layers, self.hidden_dim, self.latent_dim = cell, num_layers, hidden_dim, latent_dim
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.rnn = _rnn(cell)(embed_dim + latent_dim, hidden_dim, num_layers, batch_first=True,
                              dropout=dropout if num_layers > 1 else 0.0)
        states = num_layers * hidden_dim * (2 if cell == "lstm" else 1)
        self.to_state = nn.Linear(latent_dim, states) if latent_dim else None
        self.dropout = Dropout(dropout)
        self.head = nn.Linear(hidden_dim, vocab_size)

    def initial_state(self, z: torch.Tensor | None):
        if z is None:
            return None  # zeros
        h = torch.tanh(self.to_state(z)).view(z.size(0), -1, self.num_layers, self.hidden_dim).permute(1, 2, 0, 3).contiguous()
        return (h[0], h[1]) if self.cell == "lstm" else h[0]  # (layers, B, H) each

    def forward(self, inputs: torch.Tensor, z: torch.Tensor | None, state=None):
        """inputs (B, T) -> logits (B, T, vocab) and the state after them."""
        x = self.dropout(self.embedding(inputs))
        if z is not None:
            x = torch.cat([x, z[:, None, :].expand(-1, inputs.size(1), -1).to(x.dtype)], dim=-1)
            if state is None:
                state = self.initial_state(z)
        out, state = self.rnn(x, state)
        return self.head(self.dropout(out)), state

    @torch.no_grad()
    def generate(self, z: torch.Tensor | None, batch_size: int, max_length: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, generator: torch.Generator | None = None) -> list[list[int]]:
        """Sentences (ids without <s> and </s>) decoded from z (B, D), or from nothing (a language model).
        Temperature 0 is greedy; a sentence ends at </s> or after max_length tokens."""
        device = self.head.weight.device
        idx = torch.full((batch_size, 1), BOS, dtype=torch.long, device=device)
        state, done = None, torch.zeros(batch_size, dtype=torch.bool, device=device)
        out = []
        for _ in range(max_length):
            logits, state = self(idx, z, state)
            logits = logits[:, -1].float()
            logits[:, [PAD, BOS]] = float("-inf")  # never generated
            idx = choose(logits, temperature, top_k, top_p, generator)
            idx = idx.masked_fill(done[:, None], PAD)
            out.append(idx)
            done |= idx[:, 0] == EOS
            if bool(done.all()):
                break
        ids = torch.cat(out, dim=1).tolist() if out else [[] for _ in range(batch_size)]
        return [[i for i in row[: row.index(EOS)] if i != PAD] if EOS in row else [i for i in row if i != PAD] for row in ids]


def sequence_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(targets) per sentence (B,), summed over its tokens; padding does not count."""
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=PAD, reduction="none")
    return nll.sum(dim=1)


def drop_words(inputs: torch.Tensor, p: float) -> torch.Tensor:
    """Word dropout (Bowman et al. 2016): each decoder input word but <s> becomes <unk> with
    probability p, so the decoder must lean on z. Padding stays padding."""
    if p <= 0:
        return inputs
    drop = torch.rand(inputs.shape, device=inputs.device) < p
    drop &= (inputs != PAD) & (inputs != BOS)
    return inputs.masked_fill(drop, UNK)


# ---------------------------------------------------------------------------------------------------
# the models


@dataclass
class SentenceLMConfig:
    cell: str = field(default="gru", metadata={"choices": ("gru", "lstm")})
    embed_dim: int = 256
    hidden_dim: int = 512
    num_layers: int = 1
    dropout: float = 0.0  # on the embeddings and before the read-out
    max_length: int = 32  # longest sentence generated (words)
    vocab_size: int = field(default=0, metadata={"derived": "the sentence vocabulary's size"})

    def validate(self) -> None:
        for name in ("embed_dim", "hidden_dim", "num_layers", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}.")


class SentenceLM(nn.Module):
    """The baseline: a GRU/LSTM language model of whole sentences, the VAE's decoder without z."""

    latent = False

    def __init__(self, config: SentenceLMConfig):
        super().__init__()
        _check_sizes(config, ("embed_dim", "hidden_dim", "num_layers"))
        self.config = config
        self.decoder = SentenceDecoder(config.vocab_size, config.embed_dim, config.hidden_dim, 0, config.cell,
                                       config.num_layers, config.dropout)

    def forward(self, inputs, targets, lengths, kl_weight: float = 1.0, free_bits_nats: float = 0.0) -> dict:
        nll = sequence_nll(self.decoder(inputs, None)[0], targets)
        return {"loss": nll.mean(), "reconstruction": nll.mean()}

    def log_likelihood(self, inputs, targets, lengths, samples: int = 1, generator=None) -> torch.Tensor:
        """log p(x) per sentence (B,), exactly."""
        return -sequence_nll(self.decoder(inputs, None)[0], targets)

    def sample(self, n: int, max_length: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator=None):
        return self.decoder.generate(None, n, max_length, temperature, top_k, top_p, generator)


@dataclass
class SentenceVAEConfig:
    cell: str = field(default="gru", metadata={"choices": ("gru", "lstm")})
    embed_dim: int = 256
    hidden_dim: int = 512  # the decoder's; the encoder's is hidden_dim / 2 in each direction
    latent_dim: int = 32
    num_layers: int = 1
    dropout: float = 0.0  # on the embeddings and before the read-out
    word_dropout: float = 0.0  # chance that a decoder input word becomes <unk> in training
    max_length: int = 32  # longest sentence generated (words)
    vocab_size: int = field(default=0, metadata={"derived": "the sentence vocabulary's size"})

    def validate(self) -> None:
        for name in ("embed_dim", "hidden_dim", "latent_dim", "num_layers", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}.")
        if self.hidden_dim < 2:
            raise ConfigError(f"model.hidden_dim must be at least 2, got {self.hidden_dim}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}.")
        if not 0.0 <= self.word_dropout <= 1.0:
            raise ConfigError(f"model.word_dropout must be in [0, 1], got {self.word_dropout}.")


class SentenceVAE(nn.Module):
    latent = True

    def __init__(self, config: SentenceVAEConfig):
        super().__init__()
        _check_sizes(config, ("embed_dim", "hidden_dim", "latent_dim", "num_layers"))
        self.config = config
        self.encoder = SentenceEncoder(config.vocab_size, config.embed_dim, config.hidden_dim // 2, config.cell,
                                       config.num_layers, config.dropout)
        self.to_posterior = nn.Linear(self.encoder.out_dim, 2 * config.latent_dim)
        self.decoder = SentenceDecoder(config.vocab_size, config.embed_dim, config.hidden_dim, config.latent_dim, config.cell,
                                       config.num_layers, config.dropout)

    def posterior(self, targets: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and log-variance of q(z|x), each (B, D)."""
        mu, logvar = self.to_posterior(self.encoder(targets, lengths)).float().chunk(2, dim=-1)
        return mu, logvar

    def encode_mean(self, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.posterior(targets, lengths)[0]

    def forward(self, inputs, targets, lengths, kl_weight: float = 1.0, free_bits_nats: float = 0.0) -> dict:
        """The training loss, -ELBO with the KL weighted (and floored by free bits), and its parts,
        each a mean per sentence."""
        mu, logvar = self.posterior(targets, lengths)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)  # reparameterised: gradients reach the encoder
        if self.training:
            inputs = drop_words(inputs, self.config.word_dropout)
        nll = sequence_nll(self.decoder(inputs, z)[0], targets)
        kl_dims = gaussian_kl(mu, logvar)
        kl = kl_dims.sum(dim=-1).mean()
        loss = nll.mean() + kl_weight * free_bits(kl_dims, free_bits_nats)
        return {"loss": loss, "reconstruction": nll.mean(), "kl": kl,
                "kl_weight": torch.tensor(float(kl_weight), device=kl.device)}

    def log_likelihood(self, inputs, targets, lengths, samples: int = 1, generator=None, chunk: int = 4096) -> torch.Tensor:
        """The importance-weighted lower bound on log p(x) per sentence (B,), with `samples` draws
        from q(z|x) (Burda et al. 2016): log (1/k sum_i p(x|z_i) p(z_i) / q(z_i|x))."""
        mu, logvar = self.posterior(targets, lengths)
        b, d = mu.shape
        eps = randn((samples, b, d), generator, mu.device)
        z = mu[None] + (0.5 * logvar).exp()[None] * eps  # (k, B, D)
        log_prior = log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
        log_q = log_normal(z, mu[None], logvar[None])
        flat = z.reshape(samples * b, d)
        rows = max(1, chunk // max(1, b)) * b  # whole copies of the batch per forward pass
        log_px = []
        for start in range(0, samples * b, rows):
            zs = flat[start : start + rows]
            reps = zs.size(0) // b
            logits, _ = self.decoder(inputs.repeat(reps, 1), zs)
            log_px.append(-sequence_nll(logits, targets.repeat(reps, 1)))
        log_px = torch.cat(log_px).view(samples, b)
        return torch.logsumexp(log_px + log_prior - log_q, dim=0) - math.log(samples)

    def elbo(self, inputs, targets, lengths, samples: int = 1, generator=None) -> torch.Tensor:
        """The ELBO per sentence (B,): E_q[log p(x|z)] (averaged over `samples` draws) - KL, analytic."""
        mu, logvar = self.posterior(targets, lengths)
        kl = gaussian_kl(mu, logvar).sum(dim=-1)
        recon = 0
        for _ in range(samples):
            eps = randn(mu.shape, generator, mu.device)
            recon = recon - sequence_nll(self.decoder(inputs, mu + (0.5 * logvar).exp() * eps)[0], targets)
        return recon / samples - kl

    def decode(self, z: torch.Tensor, max_length: int | None = None, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, generator=None) -> list[list[int]]:
        return self.decoder.generate(z, z.size(0), max_length or self.config.max_length, temperature, top_k, top_p, generator)

    def sample(self, n: int, max_length: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator=None):
        """Sentences from the prior: z ~ N(0, I), then the decoder samples with the given options."""
        z = randn((n, self.config.latent_dim), generator, self.decoder.head.weight.device)
        return self.decode(z, max_length, temperature, top_k, top_p, generator)
