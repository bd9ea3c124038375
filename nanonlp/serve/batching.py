"""Dynamic batching: requests to one model that arrive close together run as one batch.

Each request is a list of items (texts). A worker thread takes the waiting requests, up to
`max_batch` items (a single request larger than that runs alone, as one batch), runs the model
once on all their items, and hands each request its slice of the results. The queue is bounded:
past `max_queue` waiting requests, `submit` refuses at once (the server answers 503 with
Retry-After) instead of letting the backlog, and every client's wait, grow.

The batching window adapts to the load (`window_left`): once a request is there, the worker waits
for more only while the arrivals it has seen lately (an exponential moving average of the gaps
between requests, while the model was free) say the next one is due soon, and never longer than
`max_wait`. A lone request
to an idle model runs at once; under a steady stream of requests a batch waits for the next ones.

A cancellable batcher (`cancellable=True`) calls `run(items, cancel)` with a threading.Event for
each batch. Requests share a batch, so one request giving up (`give_up`: its time limit passed)
does not stop the others' work: a waiting request leaves the queue, a running one is dropped from
the batch's results, and the batch's `cancel` is set only once every request in it has given up
(or the batcher closes), so the model stops at its next step with nobody left to answer.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Callable

GAP_WEIGHT = 0.25  # the weight of the newest gap between requests in the moving average
PATIENCE = 2.0  # wait up to this many average gaps after the latest request for the next one


def window_left(now: float, started: float, last_arrival: float, gap: float | None, max_wait: float) -> float:
    """Seconds more a gathering batch waits for requests (0: run now).

    `started`: when the worker began gathering this batch; `last_arrival`: when the latest request
    came; `gap`: the moving average of the gaps between requests (None before two have come).
    Requests that come less often than max_wait would rarely join in time, so there is no wait;
    otherwise the batch waits for the next request up to PATIENCE average gaps after the latest,
    and never past started + max_wait (the cap the user sets)."""
    if gap is None or gap >= max_wait:
        return 0.0
    return max(0.0, min(started + max_wait, last_arrival + PATIENCE * gap) - now)


class QueueFull(Exception):
    """More requests are waiting for this model than the queue holds."""


class Batcher:
    def __init__(self, run: Callable[..., list], max_batch: int = 64, max_wait: float = 0.005, max_queue: int = 64,
                 name: str = "model", on_batch: Callable[[int, float, list[float]], None] | None = None, cancellable: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be at least 1, and max_wait not negative.")
        self.run, self.max_batch, self.max_wait, self.max_queue = run, max_batch, max_wait, max_queue
        self.cancellable, self.clock = cancellable, clock
        self.waiting: deque[tuple[list, Future]] = deque()
        self.ready = threading.Condition()
        self.closed = False
        self.batches = 0  # batches run so far (for tests and the load bench)
        # told of each batch run: its items, the seconds the model took, each request's wait before it (the server's metrics)
        self.on_batch = on_batch
        self.gap: float | None = None  # moving average of the seconds between requests
        self.last_arrival: float | None = None
        self.free_since = clock()  # when the model last finished a batch
        self.running: dict[Future, threading.Event] = {}  # the requests of the batch running, and its cancel flag
        self.abandoned: set[Future] = set()  # requests of the running batch that gave up
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
            now = self.clock()
            self._arrived(now)
            future.arrived = now  # for the wait the metrics report
            self.waiting.append((list(items), future))
            self.ready.notify()
        return future

    def _arrived(self, now: float) -> None:
        """Update the moving average of the gaps between requests (under the lock)."""
        if self.last_arrival is not None:
            # A gap counts from the later of the last request and the end of the last batch: time the
            # model spent busy says nothing of the load (clients that wait for their answer send again
            # only once a batch ends). A gap over the cap starts the average afresh, at most at twice the
            # cap: after a quiet spell a lone request runs at once, and a burst brings the average down
            # within a few requests.
            gap = min(now - max(self.last_arrival, self.free_since), 2 * self.max_wait)
            self.gap = gap if self.gap is None or gap >= self.max_wait else GAP_WEIGHT * gap + (1 - GAP_WEIGHT) * self.gap
        self.last_arrival = now

    def give_up(self, future: Future) -> str:
        """A request stops waiting for `future` (its time limit passed). Says what became of its work:
        "dequeued" (it had not started), "stopped" (its batch is cancelled: every request in it gave
        up), "shared" (its batch runs on for the other requests in it; its results are dropped),
        "finished" (it had just finished)."""
        with self.ready:
            if future.cancel():  # still waiting: taken off the queue (the worker skips it)
                return "dequeued"
            if future.done() or future not in self.running:
                return "finished"  # its results came as the time limit passed
            self.abandoned.add(future)
            if self.abandoned >= self.running.keys():
                self.running[future].set()
                return "stopped"
            return "shared"

    @property
    def depth(self) -> int:
        """Requests waiting to run."""
        return len(self.waiting)

    def close(self) -> None:
        with self.ready:
            self.closed = True
            for cancel in self.running.values():  # the batch running stops at its next step (a cancellable run)
                cancel.set()
            self.ready.notify_all()
        self.worker.join(timeout=5)

    def _count(self) -> int:
        return sum(len(items) for items, _ in self.waiting)

    def _take(self) -> tuple[list[tuple[list, Future]], threading.Event] | None:
        """The next batch of requests (at least one, then whatever arrives within the window, up to
        max_batch items; none when all gave up) and its cancel flag."""
        with self.ready:
            while not self.waiting and not self.closed:
                self.ready.wait()
            if self.closed and not self.waiting:
                return None
            started = self.clock()
            while self._count() < self.max_batch and not self.closed:
                left = window_left(self.clock(), started, self.last_arrival, self.gap, self.max_wait)
                if left <= 0:
                    break
                self.ready.wait(left)
            taken, count = [], 0
            while self.waiting and (not taken or count + len(self.waiting[0][0]) <= self.max_batch):
                items, future = self.waiting.popleft()
                if future.set_running_or_notify_cancel():  # a request whose client gave up is skipped
                    taken.append((items, future))
                    count += len(items)
            cancel = threading.Event()
            self.running = {future: cancel for _, future in taken}
            self.abandoned = set()
            return taken, cancel

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            taken, cancel = batch
            if not taken:
                continue
            items = [item for request, _ in taken for item in request]
            began = self.clock()
            try:
                results = self.run(items, cancel) if self.cancellable else self.run(items)
            except BaseException as err:  # the model's error (or Cancelled) goes to every request of the batch
                for _, future in taken:
                    future.set_exception(err)
                continue
            finally:
                with self.ready:
                    self.running, self.abandoned = {}, set()
                    self.free_since = self.clock()
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(items), self.clock() - began, [began - future.arrived for _, future in taken])
            start = 0
            for request, future in taken:  # a request that gave up gets its slice too; nobody reads it
                future.set_result(results[start : start + len(request)])
                start += len(request)
