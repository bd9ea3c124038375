"""A trained sentence model (VAE, ARAE or RNN language model): sample, reconstruct, interpolate,
find the nearest training sentences, and score held-out text.

    vae = nanonlp.load("runs/tatoeba_en_vae")
    vae.sample(5, temperature=0.8, seed=1)
    vae.reconstruct("i love you .")                # greedy, from the posterior mean
    vae.interpolate("i am tired .", "she is a doctor .", steps=6)
    vae.nearest("i want to go home .", k=3)        # [(training sentence, similarity), ...]
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import torch

from nanonlp.data.tokenizers import CJK, load_tokenizer
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.models.arae import ARAE
from nanonlp.models.vae import BOS, EOS, PAD, SentenceVAE
from nanonlp.predict import as_batch, load_model, open_for_inference
from nanonlp.predict.lm import check_sampling
from nanonlp.predict.service import Call, Endpoint, Param

_CJK_CHAR = re.compile(rf"^[{CJK}\u3000-\u303f\uff00-\uffef]$")
_NO_SPACE_BEFORE = set(".,!?;:%)]}'\"…") | set("。，！？；：、）》」』")
_NO_SPACE_AFTER = set("([{$¿¡") | set("（《「『")


def join_words(words: list[str]) -> str:
    """Words back to text: no space before closing punctuation or after opening, none between CJK characters."""
    out = ""
    for word in words:
        if out and not (word in _NO_SPACE_BEFORE or out[-1] in _NO_SPACE_AFTER
                        or (_CJK_CHAR.match(word) and _CJK_CHAR.match(out[-1]))):
            out += " "
        out += word
    return out


def _grams(words) -> set:
    return set(words) | {(a, b) for a, b in zip(words, words[1:])}


class TrainingSentences:
    """The run's tokenized training sentences: exact-copy lookups and the nearest by word overlap
    (Dice coefficient over the word and word-bigram sets), through an inverted index built on first use."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise NanoNLPError(f"'{path.parent.parent}' has no training sentences ({path.name}); was it trained with task: sentence?")
        self.sentences = [tuple(line.split(" ")) for line in path.read_text(encoding="utf-8").splitlines()]
        self.exact = set(self.sentences)
        self._index = None
        self._lock = threading.Lock()

    def _build(self):
        with self._lock:
            if self._index is None:
                postings: dict = {}
                for i, words in enumerate(self.sentences):
                    for gram in _grams(words):
                        postings.setdefault(gram, []).append(i)
                sizes = np.array([len(_grams(words)) for words in self.sentences], dtype=np.float64)
                self._index = ({g: np.asarray(ids, dtype=np.int64) for g, ids in postings.items()}, sizes)
        return self._index

    def is_copy(self, words: list[str]) -> bool:
        return tuple(words) in self.exact

    def nearest(self, words: list[str], k: int) -> list[tuple[str, float]]:
        postings, sizes = self._build()
        grams = _grams(words)
        hits = [postings[g] for g in grams if g in postings]
        if not hits or not grams:
            return []
        shared = np.bincount(np.concatenate(hits), minlength=len(self.sentences))
        dice = 2.0 * shared / (len(grams) + sizes)
        best = np.argsort(-dice, kind="stable")[:k]
        return [(join_words(list(self.sentences[i])), float(dice[i])) for i in best if dice[i] > 0]


# -- a run's prepared sentences, batched (shared with the training job, nanonlp.tasks.sentence) ------------

DATA_DIR = "data"


def read_split(data_dir: Path, name: str) -> list[np.ndarray]:
    """A prepared split of a sentence run (RUN/data/NAME.npz): each sentence's word ids."""
    path = data_dir / f"{name}.npz"
    if not path.is_file():
        raise NanoNLPError(f"'{data_dir.parent}' has no prepared {name} split ({DATA_DIR}/{name}.npz); start it over with --overwrite.")
    with np.load(path) as arrays:
        ids, offsets = arrays["ids"], arrays["offsets"]
    return [ids[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def make_batch(sentences: list, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoder inputs (<s> w1 .. wn), targets (w1 .. wn </s>) and target lengths, right-padded."""
    lengths = [len(s) + 1 for s in sentences]
    inputs = torch.full((len(sentences), max(lengths)), PAD, dtype=torch.long)
    targets = torch.full_like(inputs, PAD)
    for row, ids in enumerate(sentences):
        n = len(ids)
        inputs[row, 0] = BOS
        if n:
            ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
            inputs[row, 1 : n + 1] = ids
            targets[row, :n] = ids
        targets[row, n] = EOS
    lengths = torch.tensor(lengths, dtype=torch.long)
    return inputs.to(device), targets.to(device), lengths.to(device)


def batches(sentences: list, batch_size: int, device: torch.device):
    for start in range(0, len(sentences), batch_size):
        yield make_batch(sentences[start : start + batch_size], device)


@torch.no_grad()
def latent_figures(model, sentences: list, device: torch.device, iw_samples: int, seed: int, batch_size: int = 100) -> dict:
    """The figures of a latent-variable model on `sentences`, per sentence where it says so:
    elbo, reconstruction, kl, iw_nll (k = iw_samples) and ppl (per token, </s> counted),
    mutual_information and active_units. A language model gives nll and ppl only."""
    from nanonlp.models.vae import active_units, mutual_information

    generator = torch.Generator(device=device).manual_seed(seed)
    totals = {"nll": 0.0, "elbo": 0.0, "reconstruction": 0.0, "kl": 0.0}
    tokens, means, logvars = 0, [], []
    from nanonlp.models.vae import gaussian_kl, randn, sequence_nll

    for inputs, targets, lengths in batches(sentences, batch_size, device):
        tokens += int(lengths.sum())
        if isinstance(model, SentenceVAE):
            totals["nll"] -= float(model.log_likelihood(inputs, targets, lengths, iw_samples, generator).sum())
            mu, logvar = model.posterior(targets, lengths)
            means.append(mu)
            logvars.append(logvar)
            z = mu + (0.5 * logvar).exp() * randn(mu.shape, generator, mu.device)  # one draw, from this call's generator
            totals["reconstruction"] += float(sequence_nll(model.decoder(inputs, z)[0], targets).sum())
            totals["kl"] += float(gaussian_kl(mu, logvar).sum())
        elif isinstance(model, ARAE):
            code = model.encode_mean(targets, lengths)
            totals["reconstruction"] += float(sequence_nll(model.decoder(inputs, code)[0], targets).sum())
        else:
            totals["nll"] -= float(model.log_likelihood(inputs, targets, lengths).sum())
    n = len(sentences)
    if isinstance(model, ARAE):
        return {"reconstruction": totals["reconstruction"] / n}
    result = {"nll": totals["nll"] / n, "ppl": float(np.exp(totals["nll"] / tokens))}
    if isinstance(model, SentenceVAE):
        mu, logvar = torch.cat(means), torch.cat(logvars)
        result.update(elbo=-(totals["reconstruction"] + totals["kl"]) / n, reconstruction=totals["reconstruction"] / n,
                      kl=totals["kl"] / n, mutual_information=mutual_information(mu, logvar, generator),
                      active_units=active_units(mu))
    return result


def sample_endpoint(model) -> Endpoint:
    """POST /v1/sample: sentences drawn from a sentence model (a VAE's prior, an ARAE's generator, an RNN
    language model), on the thread pool."""

    def sample(request: dict, call: Call) -> dict:
        """`n` sentences, each `{"text"}`."""
        texts = model.sample(request["n"], request["temperature"], request["top_k"], request["top_p"], request["seed"])
        return {"results": [{"text": text} for text in texts]}

    return Endpoint("sample", {
        "n": Param(int, 5, "sentences to draw", label="sentences", ge=1, le=64),
        "temperature": Param(float, 1.0, "0 is greedy", label="temperature", ge=0.0),
        "top_k": Param(int, 0, "keep the k most likely words; 0 keeps all", ge=0),
        "top_p": Param(float, 1.0, "keep the most likely words up to this probability; 1 keeps all", gt=0.0, le=1.0),
        "seed": Param(int | None, None, "the same seed gives the same sentences; none draws one", ge=0, lt=2**63)},
        sample, check=lambda request: check_sampling(request["temperature"], request["top_k"], request["top_p"]),
        title="Sample", view={"kind": "text", "key": "text"})


class SentenceModel:
    """A trained sentence model with its word vocabulary. Thread-safe: each call has its own generator."""

    task = "sentence"

    def __init__(self, model, tokenizer, config, device: torch.device, run_dir: Path):
        self.model, self.tokenizer, self.config, self.device, self.run_dir = model.eval(), tokenizer, config, device, Path(run_dir)
        self.kind = type(model).__name__
        self._training = None

    @property
    def latent(self) -> bool:
        return bool(getattr(self.model, "latent", False))

    def describe(self) -> dict:
        return {"model": self.kind, "vocab_size": self.tokenizer.vocab_size}

    def endpoints(self) -> list[Endpoint]:
        return [sample_endpoint(self)]

    @property
    def sample_defaults(self):
        return self.config.sample

    @property
    def training_sentences(self) -> TrainingSentences:
        if self._training is None:
            self._training = TrainingSentences(self.run_dir / "data" / "train.txt")
        return self._training

    # -- text <-> ids ---------------------------------------------------------------------------

    def words(self, text: str) -> list[str]:
        return self.tokenizer.split(text)

    def _ids(self, text: str) -> list[int]:
        words = self.words(text)
        if not words:
            raise NanoNLPError(f"the sentence {text!r} has no words after tokenization.")
        return [self.tokenizer.index.get(w, self.tokenizer.unk_id) for w in words]

    def _text(self, ids: list[int]) -> str:
        return join_words([self.tokenizer.words[i] for i in ids])

    def _batch(self, texts: list[str]):
        return make_batch([self._ids(t) for t in texts], self.device)

    def _generator(self, seed: int | None) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        return generator

    def _require_latent(self, what: str) -> None:
        if not self.latent:
            raise NanoNLPError(f"{what} needs a latent-variable model (model.type vae or arae); '{self.run_dir}' is a {self.kind}.")

    # -- generation -----------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int = 1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
               max_length: int | None = None) -> list[str]:
        """n sentences: from the prior (VAE), the generator (ARAE) or the language model itself."""
        if n < 1:
            raise ConfigError(f"the number of samples must be at least 1, got {n}.")
        check_sampling(temperature, top_k, top_p)
        generator = self._generator(seed)
        length = max_length or self.model.config.max_length
        out = []
        for start in range(0, n, 256):
            out += self.model.sample(min(256, n - start), length, temperature, top_k, top_p, generator)
        return [self._text(ids) for ids in out]

    @torch.no_grad()
    def encode(self, texts) -> torch.Tensor:
        """The posterior mean (VAE) or code (ARAE) of each sentence, (N, D)."""
        self._require_latent("encoding")
        batch, _ = as_batch(texts)
        _, targets, lengths = self._batch(batch)
        return self.model.encode_mean(targets, lengths)

    @torch.no_grad()
    def reconstruct(self, texts, temperature: float = 0.0, sample_z: bool = False, seed: int | None = None):
        """Encode and decode again: greedy from the posterior mean by default; with sample_z, z drawn
        from q(z|x) (a VAE) and the words sampled at `temperature`."""
        self._require_latent("reconstruction")
        batch, one = as_batch(texts)
        generator = self._generator(seed)
        _, targets, lengths = self._batch(batch)
        if sample_z and hasattr(self.model, "posterior"):
            from nanonlp.models.vae import randn

            mu, logvar = self.model.posterior(targets, lengths)
            z = mu + (0.5 * logvar).exp() * randn(mu.shape, generator, mu.device)
        else:
            z = self.model.encode_mean(targets, lengths)
        out = [self._text(ids) for ids in self.model.decode(z, None, temperature, 0, 1.0, generator)]
        return out[0] if one else out

    @torch.no_grad()
    def interpolate(self, first: str, second: str, steps: int = 8) -> list[str]:
        """Greedy decodings of `steps` evenly spaced points on the line between the two sentences'
        posterior means (codes, for an ARAE, brought back to the sphere), both ends included."""
        self._require_latent("interpolation")
        if steps < 2:
            raise ConfigError(f"interpolation needs at least 2 steps (the two ends), got {steps}.")
        ends = self.encode([first, second])
        alphas = torch.linspace(0, 1, steps, device=ends.device)[:, None]
        points = (1 - alphas) * ends[0] + alphas * ends[1]
        if not hasattr(self.model, "posterior"):
            points = torch.nn.functional.normalize(points, dim=-1)
        return [self._text(ids) for ids in self.model.decode(points)]

    def nearest(self, text: str, k: int = 3) -> list[tuple[str, float]]:
        """The k training sentences sharing most words and word pairs with `text` (Dice coefficient, 1 is identical)."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}.")
        return self.training_sentences.nearest(self.words(text), k)

    def copies(self, texts) -> list[bool]:
        """Whether each text is, word for word, a training sentence."""
        batch, _ = as_batch(texts)
        return [self.training_sentences.is_copy(self.words(t)) for t in batch]

    # -- scoring --------------------------------------------------------------------------------

    def _sentences(self, texts) -> list:
        if texts is None:
            return read_split(self.run_dir / "data", "test")
        batch, _ = as_batch(texts)
        return [self._ids(t) for t in batch if self.words(t)]

    @torch.no_grad()
    def evaluate(self, texts=None, iw_samples: int = 100, seed: int = 0) -> dict:
        """Figures per sentence on `texts` (default: the run's held-out test split): nll (for a VAE the
        importance-weighted bound with iw_samples), ppl per token (</s> counted), and for a VAE elbo,
        reconstruction, kl, mutual_information, active_units; for an ARAE its reconstruction."""
        sentences = self._sentences(texts)
        if not sentences:
            raise NanoNLPError("no sentences to evaluate.")
        result = latent_figures(self.model, sentences, self.device, iw_samples, seed)
        result.update(sentences=len(sentences), tokens=sum(len(s) + 1 for s in sentences))
        if hasattr(self.model, "posterior"):
            result["iw_samples"] = iw_samples
        return result

    @torch.no_grad()
    def log_likelihood(self, texts, iw_samples: int = 100, seed: int = 0) -> list[float]:
        """log p(x) of each sentence in nats: exact for a language model, the importance-weighted bound for a VAE."""
        if not hasattr(self.model, "log_likelihood"):
            raise NanoNLPError(f"a {self.kind} has no likelihood; score its samples with a language model instead.")
        batch, _ = as_batch(texts)
        inputs, targets, lengths = self._batch(batch)
        return self.model.log_likelihood(inputs, targets, lengths, iw_samples, self._generator(seed)).tolist()


def load(run_dir: str | Path, device: str = "auto") -> SentenceModel:
    run, torch_device = open_for_inference(run_dir, device)
    if run.config.task != "sentence":
        raise NanoNLPError(f"'{run_dir}' is a {run.config.task} run, not a sentence model's.")
    return SentenceModel(load_model(run, torch_device, allow_latest=True), load_tokenizer(run.dir), run.config, torch_device, run.dir)
