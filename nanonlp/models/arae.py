"""The adversarially regularized autoencoder (ARAE; Zhao et al. 2018): a GAN for text that never
needs a gradient through a discrete token.

An autoencoder maps a sentence to a code on the unit sphere (its encoder is the VAE's bidirectional
RNN; noise is added to the code in training, as in the paper, so nearby codes decode alike), and its
decoder reconstructs the sentence from the code. Beside it, a generator maps Gaussian noise to a code
and a critic tells generated codes from encoded ones: a Wasserstein GAN with gradient penalty
(Gulrajani et al. 2017) in the continuous code space. A sample is noise -> generator -> code ->
decoder.

One loss, one backward pass: the reconstruction trains encoder and decoder; the critic's loss sees
the codes detached, so it trains only the critic; the generator's loss reads the critic through a
detached copy of its weights, so it trains only the generator. The three parts therefore update
simultaneously, at their own learning rates (`critic_lr_scale`, `generator_lr_scale`: the two
time-scale rule of Heusel et al. 2017), and the shared training loop needs nothing GAN-specific.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from nanonlp.errors import ConfigError
from nanonlp.models.vae import SentenceDecoder, SentenceEncoder, _check_sizes, drop_words, randn, sequence_nll


@dataclass
class ARAEConfig:
    cell: str = field(default="gru", metadata={"choices": ("gru", "lstm")})
    embed_dim: int = 256
    hidden_dim: int = 512  # the decoder's; the encoder's is hidden_dim / 2 in each direction
    latent_dim: int = 64  # the code, on the unit sphere
    num_layers: int = 1
    dropout: float = 0.0  # on the embeddings and before the read-out
    word_dropout: float = 0.0  # chance that a decoder input word becomes <unk> in training
    code_noise: float = 0.1  # std of the Gaussian noise added to a code before decoding, in training
    noise_dim: int = 32  # the generator's input
    gan_hidden: int = 256  # width of the generator's and the critic's two hidden layers
    gradient_penalty: float = 10.0  # WGAN-GP's lambda
    critic_lr_scale: float = 1.0  # the critic's learning rate, as a multiple of train.learning_rate
    generator_lr_scale: float = 1.0  # the generator's, likewise
    encoder_adversarial: float = 0.0  # weight of the critic's score in the encoder's loss (ARAE's encoder term); 0 off
    max_length: int = 32  # longest sentence generated (words)
    vocab_size: int = field(default=0, metadata={"derived": "the sentence vocabulary's size"})

    def validate(self) -> None:
        for name in ("embed_dim", "hidden_dim", "latent_dim", "num_layers", "noise_dim", "gan_hidden", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("code_noise", "gradient_penalty", "encoder_adversarial"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name} must not be negative, got {getattr(self, name)}.")
        for name in ("critic_lr_scale", "generator_lr_scale"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}.")
        if not 0.0 <= self.word_dropout <= 1.0:
            raise ConfigError(f"model.word_dropout must be in [0, 1], got {self.word_dropout}.")


def _mlp(inputs: int, hidden: int, outputs: int, activation) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), activation(), nn.Linear(hidden, hidden), activation(), nn.Linear(hidden, outputs))


class ARAE(nn.Module):
    latent = True

    def __init__(self, config: ARAEConfig):
        super().__init__()
        _check_sizes(config, ("embed_dim", "hidden_dim", "latent_dim", "num_layers"))
        self.config = config
        self.encoder = SentenceEncoder(config.vocab_size, config.embed_dim, config.hidden_dim // 2, config.cell,
                                       config.num_layers, config.dropout)
        self.to_code = nn.Linear(self.encoder.out_dim, config.latent_dim)
        self.decoder = SentenceDecoder(config.vocab_size, config.embed_dim, config.hidden_dim, config.latent_dim, config.cell,
                                       config.num_layers, config.dropout)
        self.generator = _mlp(config.noise_dim, config.gan_hidden, config.latent_dim, nn.ReLU)
        # No normalisation layer in the critic: the gradient penalty is per sample (Gulrajani et al. 2017).
        self.critic = _mlp(config.latent_dim, config.gan_hidden, 1, lambda: nn.LeakyReLU(0.2))

    def learning_rate_scales(self) -> dict[int, float]:
        """Parameter id -> its learning rate as a multiple of train.learning_rate (read by make_optimizer)."""
        scales = {id(p): self.config.critic_lr_scale for p in self.critic.parameters()}
        scales.update({id(p): self.config.generator_lr_scale for p in self.generator.parameters()})
        return scales

    def gradient_groups(self) -> list[list]:
        """The parts trained by separate losses, each clipped alone: autoencoder, critic, generator."""
        gan = {id(p) for p in self.critic.parameters()} | {id(p) for p in self.generator.parameters()}
        return [[p for p in self.parameters() if id(p) not in gan], list(self.critic.parameters()), list(self.generator.parameters())]

    def encode_mean(self, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The code of each sentence (B, D), on the unit sphere."""
        return F.normalize(self.to_code(self.encoder(targets, lengths)).float(), dim=-1)

    def generate_codes(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = randn((n, self.config.noise_dim), generator, self.to_code.weight.device)
        return F.normalize(self.generator(noise).float(), dim=-1)

    def critic_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """WGAN-GP: E[D(fake)] - E[D(real)] + lambda E[(||grad D(mix)|| - 1)^2], real and fake detached."""
        real, fake = real.detach(), fake.detach()
        loss = self.critic(fake).mean() - self.critic(real).mean()
        if self.config.gradient_penalty > 0 and torch.is_grad_enabled():
            alpha = torch.rand(real.size(0), 1, device=real.device)
            mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
            grad, = torch.autograd.grad(self.critic(mix).sum(), mix, create_graph=True)
            loss = loss + self.config.gradient_penalty * (grad.norm(dim=-1) - 1).pow(2).mean()
        return loss

    def critic_score(self, codes: torch.Tensor) -> torch.Tensor:
        """D(codes) through a detached copy of the critic's weights: gradients reach the codes only."""
        frozen = {name: p.detach() for name, p in self.critic.named_parameters()}
        return functional_call(self.critic, frozen, (codes,))

    def forward(self, inputs, targets, lengths, kl_weight: float = 1.0, free_bits_nats: float = 0.0) -> dict:
        """The training loss: reconstruction + the critic's loss + the generator's loss (+ the encoder's
        adversarial term), each part training only its own module; and the parts, for the log."""
        code = self.encode_mean(targets, lengths)
        noisy = code + self.config.code_noise * torch.randn_like(code) if self.training else code
        if self.training:
            inputs = drop_words(inputs, self.config.word_dropout)
        nll = sequence_nll(self.decoder(inputs, noisy)[0], targets)
        fake = self.generate_codes(code.size(0))
        critic = self.critic_loss(code, fake)
        generator = -self.critic_score(fake).mean()
        loss = nll.mean() + critic + generator
        if self.config.encoder_adversarial > 0:
            loss = loss + self.config.encoder_adversarial * self.critic_score(code).mean()
        with torch.no_grad():
            distance = self.critic(code).mean() - self.critic(fake).mean()  # the critic's Wasserstein estimate
        return {"loss": loss, "reconstruction": nll.mean(), "critic": critic.detach(), "generator": generator.detach(),
                "wasserstein": distance}

    def decode(self, z: torch.Tensor, max_length: int | None = None, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, generator=None) -> list[list[int]]:
        return self.decoder.generate(z, z.size(0), max_length or self.config.max_length, temperature, top_k, top_p, generator)

    def sample(self, n: int, max_length: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator=None):
        """Sentences from the generator: noise -> code -> the decoder, with the given sampling options."""
        return self.decode(self.generate_codes(n, generator), max_length, temperature, top_k, top_p, generator)
