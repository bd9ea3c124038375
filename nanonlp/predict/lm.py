"""A trained language model (CharRNN or GPT): generate, stream with stop strings, score text."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from nanonlp.data.tokenizers import BPETokenizer, StreamDecoder, load_tokenizer
from nanonlp.decode import Cancelled, check_cancel, generate_ids  # noqa: F401 (Cancelled: what a cancelled stream raises)
from nanonlp.device import autocast, resolve_device, resolve_dtype
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.predict import as_batch, load_model, open_for_inference
from nanonlp.predict.service import Call, Endpoint, Param, items_of


MIN_TEMPERATURE = 1e-4  # below it (but above 0, which is greedy) logits / temperature can overflow float32
MAX_TEMPERATURE = 100.0
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256  # characters in one stop string
RNN_PROMPT_TOKENS = 4096  # a recurrent model reads a longer prompt through its last this-many tokens


@dataclass
class SampleConfig:
    prompt: str = "\n"  # text the sample continues
    max_new_tokens: int = 500
    temperature: float = 0.8  # < 1 sharper, > 1 flatter; 0 means greedy
    top_k: int = 0  # keep only the k most likely tokens; 0 disables
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches p; 1 disables
    seed: int = 1

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise ConfigError(f"sample.max_new_tokens must not be negative, got {self.max_new_tokens}.")
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE):
            raise ConfigError(f"sample.temperature must be 0 (greedy) or between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}, "
                              f"got {self.temperature:g}; smaller positive values overflow the logits.")
        if self.top_k < 0:
            raise ConfigError(f"sample.top_k must not be negative, got {self.top_k}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"sample.top_p must be in (0, 1], got {self.top_p}.")


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """SampleConfig's checks of the sampling options alone, for models that sample without a token budget (sentence models)."""
    SampleConfig(temperature=temperature, top_k=top_k, top_p=top_p).validate()


def check_stop(stop: list[str]) -> None:
    """At most MAX_STOP_STRINGS stop strings of at most MAX_STOP_LENGTH characters each."""
    if len(stop) > MAX_STOP_STRINGS:
        raise ConfigError(f"give at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}.")
    longest = max((len(s) for s in stop), default=0)
    if longest > MAX_STOP_LENGTH:
        raise ConfigError(f"a stop string may be at most {MAX_STOP_LENGTH} characters long, got one of {longest:,}.")


def checked_options(max_new_tokens: int, temperature: float, top_k: int, top_p: float, stop: list[str] | str | None) -> list[str]:
    """Check a generation's sampling options (ConfigError naming the bad one); the stop strings as a list."""
    SampleConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p).validate()
    stop = [stop] if isinstance(stop, str) else list(stop or [])
    check_stop(stop)
    return stop


def seeded_generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A generator of one call's own, never the global one, so that calls sampling at once stay apart;
    seed None: a fresh non-deterministic seed."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _failure(pattern: str) -> list[int]:
    """Knuth-Morris-Pratt: for each prefix length n, the length of its longest proper border."""
    fail = [0] * (len(pattern) + 1)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = fail[k]
        if pattern[i] == pattern[k]:
            k += 1
        fail[i + 1] = k
    return fail


class StopMatcher:
    """Stop strings matched as text arrives (push-style): `push(piece)` returns the text that is now
    safe to show, holding back what may be the start of a stop string; `done` turns true when a stop
    string is complete (what came before it has been returned, the stop string never); `flush()`
    returns what is held back once the text ends.

    Each stop string is matched by a Knuth-Morris-Pratt automaton fed one character at a time, so
    the work is linear in the text generated times the number of stop strings. `until_stop` (pulled
    pieces) and the generation scheduler (serve/generation.py, pushed pieces) both use it."""

    def __init__(self, stop: list[str]):
        self.stop = [s for s in stop if s]
        self.tables = [_failure(s) for s in self.stop]
        self.matched = [0] * len(self.stop)  # per stop string: how many of its first characters end the text so far
        self.held = ""  # text not yet returned: the longest of the partial matches
        self.done = False

    def push(self, piece: str) -> str:
        if not self.stop:
            return piece
        held = self.held
        for ch in piece:
            held += ch
            for j, (s, fail) in enumerate(zip(self.stop, self.tables)):
                k = self.matched[j]
                while k and s[k] != ch:
                    k = fail[k]
                if s[k] == ch:
                    k += 1
                if k == len(s):  # a stop string is complete: what came before it is the output
                    self.held, self.done = "", True
                    return held[: len(held) - len(s)]
                self.matched[j] = k
        keep = max(self.matched)
        self.held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep]

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


def until_stop(pieces: Iterator[str], stop: list[str]) -> Iterator[str]:
    """The pieces up to (not including) the first stop string (see StopMatcher). Text that may be
    the start of a stop string is held back until the next piece decides; ending the output closes `pieces`."""
    matcher = StopMatcher(stop)
    try:
        for piece in pieces:
            out = matcher.push(piece)
            if out:
                yield out
            if matcher.done:
                return
        tail = matcher.flush()
        if tail:
            yield tail
    finally:
        if hasattr(pieces, "close"):
            pieces.close()


SAMPLING = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop")  # a request's options of generate and stream


def _check_sampling(request: dict) -> None:
    """The one validation of sampling options (SampleConfig's, the CLI's and the predictor's), for a request."""
    try:
        SampleConfig(max_new_tokens=request["max_new_tokens"], temperature=request["temperature"], top_k=request["top_k"],
                     top_p=request["top_p"]).validate()
        check_stop(request["stop"])
    except NanoNLPError as err:
        raise ValueError(str(err).replace("sample.", "")) from None


def generate_endpoint(lm) -> Endpoint:
    """POST /v1/generate: a prompt's continuation (or each of a list's), or a stream of server-sent events of one.
    `lm` is a LanguageModel, or anything with its `generate`, `stream` and `truncated`."""

    def generate(request: dict, call: Call) -> dict:
        """Per prompt the `text` (prompt and continuation), the `completion` alone, and `truncated`; with
        `"stream": true` (one prompt), server-sent events `data: {"text": piece}`, then `data: [DONE]`."""
        prompts = items_of(request["prompt"])
        options = {name: request[name] for name in SAMPLING}
        texts = lm.generate(prompts, cancel=call.cancel, on_token=call.on_token, **options)
        flags = [lm.truncated(p) for p in prompts]
        return {"results": [{"text": t, "completion": t[len(p):], "truncated": f} for p, t, f in zip(prompts, texts, flags)]}

    def stream(request: dict, call: Call) -> Iterator[str]:
        return lm.stream(request["prompt"], cancel=call.cancel, on_token=call.on_token, **{name: request[name] for name in SAMPLING})

    return Endpoint(
        "generate",
        {"prompt": Param(str | list[str], "\n", "a prompt, or a batch of prompts"),
         "max_new_tokens": Param(int, 200, "tokens generated per prompt at most", label="tokens", ge=1),
         "temperature": Param(float, 0.8, "0 is greedy", label="temperature", ge=0.0),
         "top_k": Param(int, 0, "keep the k most likely tokens; 0 keeps all", ge=0),
         "top_p": Param(float, 1.0, "keep the most likely tokens up to this probability; 1 keeps all", gt=0.0, le=1.0),
         "seed": Param(int | None, None, "the same seed gives the same text; none draws one", ge=0, lt=2**63),
         "stop": Param(list[str], [], f"at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_LENGTH} characters",
                       max_length=MAX_STOP_STRINGS)},
        generate, runner="schedule", items="prompt", stream=stream, budget="max_new_tokens", check=_check_sampling,
        title="Generate", placeholder="A prompt", view={"kind": "text", "key": "text"})


class LanguageModel:
    """A trained language model with its tokenizer: `generate`, `stream`, `evaluate`.

    Safe to share between threads: the model is in eval mode from load on, and each call keeps its
    own key/value cache and random generator."""

    task = "lm"

    def __init__(self, model, tokenizer, config, device: torch.device, run_dir: Path | None = None):
        self.model, self.tokenizer, self.config, self.device, self.run_dir = model.eval(), tokenizer, config, device, run_dir
        # bf16 sampling on GPUs; on CPU float32, whose per-token matmuls are too small to gain from bf16.
        self.dtype = resolve_dtype("auto", device) if device.type == "cuda" else torch.float32

    @property
    def block_size(self) -> int:
        return self.model.config.block_size

    @property
    def max_input_length(self) -> int:
        """Prompt tokens read: a GPT sees its last block_size tokens; a recurrent model, whose state
        could carry any length, reads its last RNN_PROMPT_TOKENS, which bounds a request's memory and time."""
        return self.block_size if hasattr(self.model, "transformer") else RNN_PROMPT_TOKENS  # GPTs hold a transformer

    def truncated(self, prompt: str) -> bool:
        """Whether the model reads only the end of `prompt`."""
        return len(self.tokenizer.encode(prompt)) > self.max_input_length

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def describe(self) -> dict:
        return {"vocab_size": self.vocab_size}

    def endpoints(self) -> list[Endpoint]:
        return [generate_endpoint(self)]

    @property
    def sample_defaults(self) -> SampleConfig:
        return self.config.sample if self.config is not None else SampleConfig()

    def prompt_tokens(self, prompt: str) -> tuple[list[int], bool]:
        """The ids the model reads of `prompt` (its last max_input_length tokens), and whether that cut it."""
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise NanoNLPError("the prompt is empty after tokenization; give at least one character of prompt.")
        return ids[-self.max_input_length :], len(ids) > self.max_input_length

    def _prompt_ids(self, prompt: str) -> torch.Tensor:
        return torch.tensor([self.prompt_tokens(prompt)[0]], dtype=torch.long, device=self.device)

    def stream(self, prompt: str = "\n", max_new_tokens: int = 500, temperature: float = 0.8, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None, stop: list[str] | str | None = None,
               cancel: threading.Event | None = None, on_token: Callable[[], None] | None = None) -> Iterator[str]:
        """Yield the continuation of `prompt` piece by piece as it is generated, ending before the
        first of the `stop` strings (which is not yielded). A prompt longer than max_input_length
        tokens is read through its end. Setting `cancel` stops generation before the next token
        (the iterator raises Cancelled); `on_token` is called once per token sampled (a server's count).

        Bad arguments and an unencodable prompt raise here, before anything is generated.
        """
        stop = checked_options(max_new_tokens, temperature, top_k, top_p, stop)
        prompt_ids = self._prompt_ids(prompt)
        generator = seeded_generator(self.device, seed)
        pieces = self._pieces(prompt_ids, max_new_tokens, temperature, top_k, top_p, generator, cancel, on_token)
        return until_stop(pieces, stop)

    def _pieces(self, prompt_ids, max_new_tokens, temperature, top_k, top_p, generator, cancel=None, on_token=None) -> Iterator[str]:
        decoder = StreamDecoder(self.tokenizer)
        tokens = generate_ids(self.model, prompt_ids, max_new_tokens, temperature, top_k, top_p, generator)
        while True:
            check_cancel(cancel)
            # The modes are entered around each step, not across a yield: the caller's code between
            # pieces runs in its own mode, on its own thread.
            with torch.inference_mode(), autocast(self.device, self.dtype):
                token = next(tokens, None)
            if token is None:
                break
            if on_token is not None:
                on_token()
            piece = decoder.push(int(token[0, 0]))
            if piece:
                yield piece
        tail = decoder.flush()
        if tail:
            yield tail

    def generate(self, prompt: str | list[str] = "\n", max_new_tokens: int = 500, temperature: float = 0.8, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, stop: list[str] | str | None = None,
                 cancel: threading.Event | None = None, on_token: Callable[[], None] | None = None) -> str | list[str]:
        """The prompt followed by its generated continuation; for a list of prompts, a list (each
        prompt sampled with the same seed, as if alone). `cancel` as in `stream`."""
        prompts, single = as_batch(prompt)
        out = [p + "".join(self.stream(p, max_new_tokens, temperature, top_k, top_p, seed, stop, cancel, on_token)) for p in prompts]
        return out[0] if single else out

    def evaluate(self, text: str, batch_size: int = 16) -> dict:
        """Loss (nats per token), perplexity and bits per character of `text`."""
        ids = self.tokenizer.encode(text)
        characters = len(text) - len(self.tokenizer.decode(ids[:1]))
        return self.score_ids(ids, characters, batch_size)

    @torch.inference_mode()
    def score_ids(self, ids: list[int], characters: int, batch_size: int = 16) -> dict:
        """Loss, perplexity and bits per character of token ids spelling `characters` characters
        (not counting the first token, which is never predicted).

        Windows of block_size tokens advance by half a window; each token is scored once, with at
        least half a window of context (all of it at the start of the text).
        """
        if len(ids) < 2:
            raise NanoNLPError("the text is too short to score: it needs at least two tokens.")
        T = self.block_size
        stride = max(1, T // 2)
        windows, begin, scored_to = [], 0, 0  # scored_to: targets up to this index are scored
        while True:
            end = min(begin + T, len(ids) - 1)
            windows.append((begin, end, scored_to))
            scored_to = end
            if end == len(ids) - 1:
                break
            begin += stride
        ids_tensor = torch.as_tensor(ids, dtype=torch.long)
        total_nll, total_tokens = 0.0, 0
        for i in range(0, len(windows), batch_size):
            group = windows[i : i + batch_size]
            width = max(end - begin for begin, end, _ in group)
            x = torch.zeros(len(group), width, dtype=torch.long)
            y = torch.full((len(group), width), -1, dtype=torch.long)  # -1: not scored
            for row, (begin, end, already) in enumerate(group):
                x[row, : end - begin] = ids_tensor[begin:end]
                first = max(already - begin, 0)  # target index (relative) from which this window scores
                y[row, first : end - begin] = ids_tensor[begin + 1 + first : end + 1]
            logits, _ = self.model(x.to(self.device))
            nll = torch.nn.functional.cross_entropy(
                logits.float().view(-1, logits.size(-1)), y.to(self.device).view(-1), ignore_index=-1, reduction="sum"
            )
            total_nll += nll.item()
            total_tokens += int((y != -1).sum())
        loss = total_nll / total_tokens
        return {
            "loss": loss,
            "perplexity": math.exp(loss),
            "bits_per_char": total_nll / max(characters, 1) / math.log(2),
            "tokens": total_tokens,
            "characters": characters,
        }


def is_huggingface_gpt2(folder: Path) -> bool:
    return not (Path(folder) / "config.yaml").is_file() and (Path(folder) / "config.json").is_file()


def load(run_dir: str | Path, device: str = "auto") -> LanguageModel:
    """Rebuild a trained language model from a run directory (or a Hugging Face GPT-2 folder)."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and is_huggingface_gpt2(run_dir):
        from nanonlp.models.gpt import GPT

        torch_device = resolve_device(device)
        model = GPT.from_huggingface(run_dir).to(torch_device)
        return LanguageModel(model, BPETokenizer.from_huggingface(run_dir), None, torch_device, run_dir)
    run, torch_device = open_for_inference(run_dir, device)
    # A language model samples from its latest step before the first evaluation kept a best one.
    return LanguageModel(load_model(run, torch_device, allow_latest=True), load_tokenizer(run.dir), run.config, torch_device, run.dir)
