"""Continuous batching of generation (as TGI and vLLM do, at this project's scale).

One `GenerationScheduler` per mounted language model runs a worker thread that steps every active
sequence together: one forward pass gives each of them its next token. Sequences join and leave
between steps:

- A new sequence's prompt goes through the model alone (`next_logits`, as without batching), its
  first token is sampled, and its state (a GPT's keys and values, a CharRNN's hidden state) is
  copied into the next slot of the model's slot state (`init_slots`, `fill_slot`); the active
  sequences hold the first slots (one that leaves is replaced by the last, `move_slot`), so a step
  reads them as views, without gathering.
- Each step feeds every active sequence its newest token (`step_slots`): a GPT attends per row over
  its own keys, at its own position; a CharRNN gathers and scatters its rows of the hidden state.
  GPT sequences whose context is full (block_size) take that step through `next_logits` instead
  (together, all of the same length), which re-windows them as generation without batching does:
  a full forward pass over their last block_size tokens.
- Each sequence samples from its own row with its own temperature, top-k, top-p and seeded
  generator, so a seeded request gives the same text alone and among others. Its stop strings
  (predict/lm.py's StopMatcher), its max_new_tokens and its cancel flag end it; its slot is free for
  the next waiting sequence at the next step.

At most `max_sequences` sequences are active; more wait in order. The slot state is made at the
first request and sized for max_sequences (for a GPT: 2 x layers x max_sequences x block_size x
n_embd numbers).

A sequence reports to its `listener(kind, value)` from the worker thread: ("piece", text) as text
is ready, then exactly one of ("done", None), ("cancelled", None), ("error", exception). Its
`future` resolves to the whole continuation (or raises Cancelled, or the error).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from nanonlp.data.tokenizers import StreamDecoder
from nanonlp.decode import Cancelled, choose
from nanonlp.errors import ConfigError
from nanonlp.device import autocast
from nanonlp.predict import as_batch
from nanonlp.predict.lm import StopMatcher, checked_options, seeded_generator

log = logging.getLogger("nanonlp.serve")


@dataclass(eq=False)
class Sequence:
    """One prompt being continued: its options, state and output."""

    prompt: str
    history: list[int]  # the ids read of the prompt, then every token sampled
    truncated: bool  # whether the prompt was read through its end only
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    generator: torch.Generator
    stop: StopMatcher
    decoder: StreamDecoder
    cancel: threading.Event | None = None  # the caller's flag (a time limit, a server stopping)
    on_token: Callable[[], None] | None = None
    listener: Callable[[str, Any], None] | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    dropped: threading.Event = field(default_factory=threading.Event)  # the consumer left
    parts: list[str] = field(default_factory=list)
    generated: int = 0
    slot: int = -1
    fed: int = 0  # tokens whose state is in the slot (a GPT: keys and values)
    ended: bool = False

    def stopped(self) -> bool:
        return self.dropped.is_set() or self.future.cancelled() or (self.cancel is not None and self.cancel.is_set())


class GenerationScheduler:
    """Steps the active sequences of one language model (predict/lm.py's LanguageModel) together."""

    def __init__(self, lm, max_sequences: int = 32, name: str = "lm", on_step: Callable[[int], None] | None = None):
        if max_sequences < 1:
            raise ConfigError(f"max_sequences must be at least 1, got {max_sequences}.")
        self.lm, self.model, self.max_sequences, self.on_step = lm, lm.model, max_sequences, on_step
        # a GPT's context, past which a sequence is re-windowed; a recurrent state has no end
        self.window = lm.block_size if hasattr(lm.model, "transformer") else None
        self.waiting: collections.deque[Sequence] = collections.deque()
        # touched by the worker thread only; active[i] is in slot i, so a step reads the first slots as views
        self.active: list[Sequence] = []
        self.slots = None  # the model's slot state, made at the first request
        self.wake = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name=f"nanonlp-generate-{name}", daemon=True)
        self.thread.start()

    @staticmethod
    def supports(predictor) -> bool:
        """Whether `predictor` is a language model whose model steps slots (GPT, CharRNN)."""
        model = getattr(predictor, "model", None)
        return hasattr(predictor, "prompt_tokens") and all(hasattr(model, f) for f in ("init_slots", "fill_slot", "move_slot", "step_slots"))

    # -- callers ---------------------------------------------------------------------------------

    def submit(self, prompts: list[str], max_new_tokens: int = 500, temperature: float = 0.8, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None, stop: list[str] | str | None = None,
               cancel: threading.Event | None = None, on_token: Callable[[], None] | None = None,
               listener: Callable[[str, Any], None] | None = None) -> list[Sequence]:
        """Queue one sequence per prompt (each sampled with `seed`, as if alone). Bad options and
        unencodable prompts raise here, before any is queued."""
        stop = checked_options(max_new_tokens, temperature, top_k, top_p, stop)
        sequences = []
        for prompt in prompts:
            ids, truncated = self.lm.prompt_tokens(prompt)
            sequences.append(Sequence(prompt, ids, truncated, max_new_tokens, temperature, top_k, top_p,
                                      seeded_generator(self.lm.device, seed), StopMatcher(stop), StreamDecoder(self.lm.tokenizer),
                                      cancel, on_token, listener))
        with self.wake:
            if self.closed:
                raise Cancelled("the generation scheduler is closed")
            self.waiting.extend(sequences)
            self.wake.notify()
        return sequences

    def stream(self, prompt: str = "\n", max_new_tokens: int = 500, temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0,
               seed: int | None = None, stop: list[str] | str | None = None, cancel: threading.Event | None = None,
               on_token: Callable[[], None] | None = None) -> Iterator[str]:
        """As LanguageModel.stream, batched with the other sequences; closing the iterator early
        frees the sequence's slot at the next step."""
        events = collections.deque()
        ready = threading.Semaphore(0)

        def listener(kind, value):
            events.append((kind, value))
            ready.release()

        (sequence,) = self.submit([prompt], max_new_tokens, temperature, top_k, top_p, seed, stop, cancel, on_token, listener)
        return self._pieces(sequence, events, ready)

    @staticmethod
    def _pieces(sequence: Sequence, events, ready) -> Iterator[str]:
        try:
            while True:
                ready.acquire()
                kind, value = events.popleft()
                if kind == "piece":
                    yield value
                elif kind == "done":
                    return
                elif kind == "cancelled":
                    raise Cancelled("decoding was cancelled")
                else:
                    raise value
        finally:
            sequence.dropped.set()  # a no-op once it ended; otherwise the consumer left

    def generate(self, prompt: str | list[str] = "\n", max_new_tokens: int = 500, temperature: float = 0.8, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, stop: list[str] | str | None = None,
                 cancel: threading.Event | None = None, on_token: Callable[[], None] | None = None) -> str | list[str]:
        """As LanguageModel.generate: the prompt followed by its continuation; a list of prompts runs as
        that many sequences at once."""
        prompts, single = as_batch(prompt)
        sequences = self.submit(prompts, max_new_tokens, temperature, top_k, top_p, seed, stop, cancel, on_token)
        try:
            out = [s.prompt + s.future.result() for s in sequences]
        finally:
            for s in sequences:
                s.dropped.set()
        return out[0] if single else out

    def close(self) -> None:
        """Stop the worker; sequences waiting or active end as cancelled."""
        with self.wake:
            self.closed = True
            self.wake.notify()
        self.thread.join()

    # -- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.closed and not self.waiting and not self.active:
                    self.wake.wait()
                if self.closed:
                    break
                joining = [self.waiting.popleft() for _ in range(min(self.max_sequences - len(self.active), len(self.waiting)))]
            try:
                with torch.inference_mode(), autocast(self.lm.device, self.lm.dtype):
                    while joining:
                        self._join(joining[0])
                        joining.pop(0)
                    if self.active:
                        self._step()
            except Exception as err:  # a bug: every sequence in flight hears of it, the worker goes on afresh
                log.exception("generation step failed")
                failed, self.active, self.slots = joining + self.active, [], None  # the slots may be half written
                for s in failed:
                    self._end(s, "error", err)
        with self.wake:
            left, self.waiting = list(self.waiting), collections.deque()
        left, self.active = left + self.active, []
        for s in left:
            self._end(s, "cancelled")

    def _join(self, s: Sequence) -> None:
        """The prompt alone through the model, its first token, and its state into a free slot."""
        if s.stopped():
            return self._end(s, "cancelled")
        if s.max_new_tokens == 0:
            return self._end(s, "done")
        if self.slots is None:
            self.slots = self.model.init_slots(self.max_sequences)
        ids = torch.tensor([s.history], dtype=torch.long, device=self.lm.device)
        logits, state = self.model.next_logits(ids, self.model.init_state(1), ids)
        s.slot = len(self.active)
        self.active.append(s)
        self.model.fill_slot(self.slots, s.slot, state)
        s.fed = len(s.history)
        self._sample(s, logits)

    def _step(self) -> None:
        """One token for every active sequence."""
        for s in [s for s in self.active if s.stopped()]:
            self._end(s, "cancelled")
        if not self.active:
            return
        rows = [s for s in self.active if self.window is None or s.fed < self.window]
        logits = {}
        if rows:
            idx = torch.tensor([s.history[-1] for s in rows], dtype=torch.long, device=self.lm.device)
            # every active sequence: the first len(rows) slots, in order; otherwise the rows' slots
            slots = None if len(rows) == len(self.active) else torch.tensor([s.slot for s in rows], dtype=torch.long, device=self.lm.device)
            out = self.model.step_slots(idx, slots, self.slots)  # (S, vocab)
            for i, s in enumerate(rows):
                logits[s] = out[i : i + 1]
                s.fed += 1
        full = [s for s in self.active if s not in logits]
        if full:  # a full context: the last block_size tokens again, as next_logits does unbatched (all such rows together)
            ids = torch.tensor([s.history[-self.window :] for s in full], dtype=torch.long, device=self.lm.device)
            out, state = self.model.next_logits(ids, self.model.init_state(len(full)), ids)
            for i, s in enumerate(full):
                logits[s] = out[i : i + 1]
                self.model.fill_slot(self.slots, s.slot, state, i)
                s.fed = self.window
        if self.on_step is not None:
            self.on_step(len(self.active))
        for s in list(self.active):
            self._sample(s, logits[s])

    def _sample(self, s: Sequence, logits: torch.Tensor) -> None:
        """Choose the next token of `s` from its logits (1, vocab) and pass on the text it completes."""
        token = int(choose(logits, s.temperature, s.top_k, s.top_p, s.generator))
        s.history.append(token)
        s.generated += 1
        if s.on_token is not None:
            s.on_token()
        self._say(s, s.decoder.push(token))
        if s.stop.done:
            return self._end(s, "done")
        if s.generated >= s.max_new_tokens:
            self._say(s, s.decoder.flush())
            if not s.stop.done:
                self._say(s, s.stop.flush(), matched=True)
            self._end(s, "done")

    def _say(self, s: Sequence, text: str, matched: bool = False) -> None:
        text = text if matched else s.stop.push(text)
        if text:
            s.parts.append(text)
            self._tell(s, "piece", text)

    def _end(self, s: Sequence, kind: str, error: Exception | None = None) -> None:
        if s.ended:
            return
        s.ended = True
        if s in self.active:  # the last active sequence moves into the freed slot: the active ones stay first
            last = self.active.pop()
            if last is not s:
                self.model.move_slot(self.slots, last.slot, s.slot)
                last.slot = s.slot
                self.active[s.slot] = last
        try:
            if kind == "done":
                s.future.set_result("".join(s.parts))
            else:
                s.future.set_exception(error if kind == "error" else Cancelled("decoding was cancelled"))
        except concurrent.futures.InvalidStateError:
            pass  # the caller cancelled the future (stopped waiting)
        self._tell(s, kind, error)

    @staticmethod
    def _tell(s: Sequence, kind: str, value) -> None:
        """The sequence's listener, kept from harming the others: one that fails (its event loop gone) drops its sequence."""
        if s.listener is None:
            return
        try:
            s.listener(kind, value)
        except Exception:
            log.warning("a generation listener failed; its sequence is dropped", exc_info=True)
            s.dropped.set()
