"""Alerts to a webhook: each as a JSON POST, retried with exponential backoff, on a background
thread so that a slow or absent receiver never holds up the analysis."""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import urllib.error
import urllib.request


class Webhook:
    """`send(alert)` queues; a daemon thread posts. `close(wait)` waits at most `wait` seconds for the
    queue to drain and returns the keys delivered and the keys that were not."""

    def __init__(self, url: str, retries: int = 4, timeout: float = 10.0, backoff: float = 0.5):
        if not url.startswith(("http://", "https://")):
            from nanonlp.errors import ConfigError

            raise ConfigError(f"alerts.webhook must be an http:// or https:// URL, got '{url}'.")
        self.url, self.retries, self.timeout, self.backoff = url, retries, timeout, backoff
        self.queue: queue.Queue = queue.Queue()
        self.delivered: list[str] = []
        self.failed: list[str] = []
        self.thread = threading.Thread(target=self._work, name="nanonlp-webhook", daemon=True)
        self.thread.start()

    def send(self, alert: dict) -> None:
        self.queue.put(alert)

    def _post(self, alert: dict) -> None:
        body = json.dumps(alert, ensure_ascii=False).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "nanonlp-analyze"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            if response.status >= 300:
                raise urllib.error.HTTPError(self.url, response.status, "not a 2xx answer", response.headers, None)

    def _work(self) -> None:
        while True:
            alert = self.queue.get()
            if alert is None:
                self.queue.task_done()
                return
            for attempt in range(self.retries + 1):
                try:
                    self._post(alert)
                    self.delivered.append(alert["key"])
                    break
                except (urllib.error.URLError, OSError, ValueError) as err:
                    if attempt == self.retries:
                        self.failed.append(alert["key"])
                        print(f"warning: webhook {self.url} did not take alert {alert['key']} after {attempt + 1} tries ({err}).",
                              file=sys.stderr)
                    else:
                        time.sleep(self.backoff * 2**attempt)
            self.queue.task_done()

    def close(self, wait: float) -> tuple[list[str], list[str]]:
        self.queue.put(None)
        self.thread.join(timeout=wait)
        pending = [] if not self.thread.is_alive() else ["(still sending)"]
        return list(self.delivered), list(self.failed) + pending
