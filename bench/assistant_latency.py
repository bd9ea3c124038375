"""Assistant serving: per-turn latency through HTTP, and a server killed with SIGKILL mid-conversation.

    python bench/assistant_latency.py                          # trains the shipped English example first
    (from a source checkout that is not the installed one: PYTHONPATH=. python bench/assistant_latency.py ...)
    python bench/assistant_latency.py --run runs/bank          # a trained assistant run
    python bench/assistant_latency.py --folder my_assistant    # trains that folder first

1. Latency: `nanonlp serve RUN` runs as its own process (real uvicorn, loopback, SQLite sessions in a
   temporary file); 16 client threads (--sessions) each hold a conversation of their own, one turn at a
   time, for --turns turns, with the assistant's own example utterances (seeded); every turn's wall time
   from request to parsed JSON is recorded (after --warmup turns per session). Prints p50/p95/p99.
2. Restart: the same 16 sessions chat until the server is killed with SIGKILL mid-traffic; a new server
   on the same session file then answers the next turn of every session. Checks that each session
   keeps its id, that every turn the clients were answered is in the store (nothing lost), and that
   a form begun before the kill is finished after it.

No generative model is involved. Figures, not tests: see docs/benchmarks.md ("Assistant serving").
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

import nanonlp.dialogue as dialogue

ANNOTATION = re.compile(r"\[([^\]]+)\]\([^)]+\)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(run: Path, sessions: Path, port: int, log) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "nanonlp", "serve", str(run), "--port", str(port), "--sessions", str(sessions),
                                "--device", "cpu"], stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}; see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the server did not answer within 120 s; see {log.name}")


def utterances(spec) -> list[str]:
    """The assistant's example utterances, annotations removed (what customers of this assistant say)."""
    return [ANNOTATION.sub(r"\1", ex.text) for examples in spec.intents.values() for ex in examples]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low, high = int(rank), min(int(rank) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def converse(url: str, texts: list[str], turns: int, seed: int, latencies: list[float], errors: list[str],
             acked: dict, stop: threading.Event | None = None) -> None:
    """One customer: `turns` turns (or until `stop`), one at a time, each timed."""
    rng = random.Random(seed)
    session_id = None
    with httpx.Client(timeout=30) as client:
        for _ in range(turns):
            if stop is not None and stop.is_set():
                return
            body = {"message": rng.choice(texts)} | ({"session_id": session_id} if session_id else {})
            start = time.perf_counter()
            try:
                response = client.post(url + "/v1/chat", json=body)
            except httpx.HTTPError as err:
                if stop is None or not stop.is_set():
                    errors.append(f"{type(err).__name__}: {err}")
                return
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                errors.append(f"{response.status_code}: {response.text[:200]}")
                continue
            session_id = response.json()["session_id"]
            acked[seed] = (session_id, acked.get(seed, (None, 0))[1] + 1)
            latencies.append(elapsed)


def latency(run: Path, work: Path, sessions: int, turns: int, warmup: int, texts: list[str]) -> None:
    port = free_port()
    with open(work / "server-latency.log", "w") as log:
        server = start_server(run, work / "latency.sqlite", port, log)
        try:
            url = f"http://127.0.0.1:{port}"
            warm: list[float] = []
            errors: list[str] = []
            for i in range(sessions):  # every session's first turns, unmeasured: imports, caches, the SQLite file
                converse(url, texts, warmup, 10_000 + i, warm, errors, {})
            latencies: list[float] = []
            threads = [threading.Thread(target=converse, args=(url, texts, turns, i, latencies, errors, {})) for i in range(sessions)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait(timeout=30)
    ms = [1000 * x for x in latencies]
    print(f"latency: {sessions} concurrent sessions x {turns} turns = {len(ms)} turns answered in {wall:.1f} s "
          f"({len(ms) / wall:.1f} turns/s), {len(errors)} errors")
    print(f"  per-turn ms: p50 {percentile(ms, 50):.1f}  p95 {percentile(ms, 95):.1f}  p99 {percentile(ms, 99):.1f}  "
          f"mean {sum(ms) / len(ms):.1f}  max {max(ms):.1f}")
    for e in errors[:5]:
        print("  error:", e)


def restart(run: Path, work: Path, sessions: int, texts: list[str], kill_after: float) -> bool:
    store_path = work / "restart.sqlite"
    spec = dialogue.read_assistant(run / "assistant")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(work / "server-restart.log", "w") as log:
        server = start_server(run, store_path, port, log)
        # a form begun before the kill: its intent's first example, then its first slot's first value
        form = next(iter(spec.forms.values()), None)
        form_session = None
        if form is not None:
            opening = ANNOTATION.sub(r"\1", spec.intents[form.intent][0].text)
            first = httpx.post(url + "/v1/chat", json={"message": opening}, timeout=30).json()
            form_session = first["session_id"]
            print(f"restart: before the kill, '{opening}' -> {first['action']} ({first['reply']!r})")
        # traffic: every session chatting when the server dies
        acked: dict = {}
        errors: list[str] = []
        stop = threading.Event()
        threads = [threading.Thread(target=converse, args=(url, texts, 10_000, 500 + i, [], errors, acked, stop)) for i in range(sessions)]
        for t in threads:
            t.start()
        time.sleep(kill_after)
        os.kill(server.pid, signal.SIGKILL)
        stop.set()
        server.wait()
        for t in threads:
            t.join()
        print(f"restart: SIGKILL after {kill_after:g} s of traffic; {sum(n for _, n in acked.values())} turns had been answered "
              f"in {len(acked)} sessions; {len(errors)} errors before the kill")
        killed_at = time.perf_counter()
        server = start_server(run, store_path, port, log)
        print(f"restart: a new server answered /health {time.perf_counter() - killed_at:.1f} s after the kill")
        try:
            ok = True
            stored = dialogue.load(run, sessions=store_path)  # reads the same file the servers wrote
            max_history = spec.settings["session"]["max_history"]
            lost = 0
            for seed, (session_id, answered) in acked.items():
                held = len(stored.transcript(session_id))
                # an answered turn is committed before its reply is sent; the turn in flight at the kill may or may not be
                if not min(answered, max_history) <= held <= min(answered + 1, max_history):
                    lost += 1
                turn = httpx.post(url + "/v1/chat", json={"session_id": session_id, "message": texts[seed % len(texts)]}, timeout=30).json()
                ok &= turn["session_id"] == session_id
            ok &= lost == 0
            print(f"restart: {len(acked)} sessions continued under their ids: {ok and lost == 0}; sessions missing an answered turn: {lost}")
            if form is not None:
                slot = spec.slots[form.slots[0]]
                value = slot.values[0] if slot.values else None
                if value is not None:
                    after = httpx.post(url + "/v1/chat", json={"session_id": form_session, "message": str(value)}, timeout=30).json()
                    continued = after["session_id"] == form_session and after["slots"].get(slot.name) == value
                    ok &= continued
                    print(f"restart: after the restart, '{value}' -> {after['action']} ({after['reply']!r}); "
                          f"slots {after['slots']}; the form continued: {continued}")
        finally:
            server.terminate()
            server.wait(timeout=30)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a trained assistant run (default: train --folder into a temporary folder)")
    parser.add_argument("--folder", help="an assistant folder to train first (default: the shipped English example, bank_en)")
    parser.add_argument("--sessions", type=int, default=16, help="concurrent sessions (default 16)")
    parser.add_argument("--turns", type=int, default=40, help="measured turns per session (default 40)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured turns per session first (default 3)")
    parser.add_argument("--kill-after", type=float, default=3.0, help="seconds of traffic before the SIGKILL (default 3)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nanonlp-assistant-latency-"))
    if args.run:
        run = Path(args.run)
    else:
        folder = Path(args.folder) if args.folder else dialogue.examples().get("bank_en")
        if folder is None:
            raise SystemExit("no shipped bank_en example in this install; pass --folder DIR or --run RUN.")
        start = time.perf_counter()
        run = dialogue.train_assistant(folder, work / "run")
        print(f"trained {folder} in {time.perf_counter() - start:.0f} s")
    spec = dialogue.read_assistant(run / "assistant")
    texts = utterances(spec)
    load = os.getloadavg()
    print(f"assistant {spec.name} ({spec.language}; {len(spec.intents)} intents, {len(texts)} utterances); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
          f"work files in {work}")
    latency(run, work, args.sessions, args.turns, args.warmup, texts)
    ok = restart(run, work, args.sessions, texts, args.kill_after)
    print("restart check:", "passed" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
