"""Dynamic batching: requests to one model that arrive close together run as one batch.

Each request is a list of items (texts). A worker thread takes the waiting requests, up to
`max_batch` items (a single request larger than that runs alone, as one batch), after waiting at most `max_wait` seconds for more to arrive once the first is
there, runs the model once on all their items, and hands each request its slice of the results.
The queue is bounded: past `max_queue` waiting requests, `submit` refuses at once (the server
answers 503 with Retry-After) instead of letting the backlog, and every client's wait, grow.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Callable


class QueueFull(Exception):
    """More requests are waiting for this model than the queue holds."""


class Batcher:
    def __init__(self, run: Callable[[list], list], max_batch: int = 64, max_wait: float = 0.005, max_queue: int = 64,
                 name: str = "model", on_batch: Callable[[int], None] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be at least 1, and max_wait not negative.")
        self.run, self.max_batch, self.max_wait, self.max_queue = run, max_batch, max_wait, max_queue
        self.waiting: deque[tuple[list, Future]] = deque()
        self.ready = threading.Condition()
        self.closed = False
        self.batches = 0  # batches run so far (for tests and the load bench)
        self.on_batch = on_batch  # told the number of items of each batch run (the server's metrics)
        self.worker = threading.Thread(target=self._work, name=f"nanonlp-batcher-{name}", daemon=True)
        self.worker.start()

    def submit(self, items: list) -> Future:
        """A future of the results for `items` (one per item, in order); QueueFull when the queue is full."""
        future: Future = Future()
        if not items:
            future.set_result([])
            return future
        with self.ready:
            if self.closed:
                raise RuntimeError("the batcher is closed.")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting")
            self.waiting.append((list(items), future))
            self.ready.notify()
        return future

    @property
    def depth(self) -> int:
        """Requests waiting to run."""
        return len(self.waiting)

    def close(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify_all()
        self.worker.join(timeout=5)

    def _take(self) -> list[tuple[list, Future]] | None:
        """The next batch of requests: at least one, then whatever arrives within max_wait, up to max_batch items."""
        with self.ready:
            while not self.waiting and not self.closed:
                self.ready.wait()
            if self.closed and not self.waiting:
                return None
            deadline = time.monotonic() + self.max_wait
            while sum(len(items) for items, _ in self.waiting) < self.max_batch and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.ready.wait(left)
            taken, count = [], 0
            while self.waiting and (not taken or count + len(self.waiting[0][0]) <= self.max_batch):
                items, future = self.waiting.popleft()
                if future.set_running_or_notify_cancel():  # a request whose client gave up is skipped
                    taken.append((items, future))
                    count += len(items)
            return taken

    def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            if not taken:
                continue
            items = [item for request, _ in taken for item in request]
            try:
                results = self.run(items)
            except BaseException as err:  # the model's error goes to every request of the batch
                for _, future in taken:
                    future.set_exception(err)
                continue
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(items))
            start = 0
            for request, future in taken:
                future.set_result(results[start : start + len(request)])
                start += len(request)
