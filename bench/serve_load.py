"""Load figures for `nanonlp serve`, on this machine, against 127.0.0.1 only.

    python bench/serve_load.py                       # trains what it needs first (about 3 minutes)
    python bench/serve_load.py --seconds 60 --clients 16
    python bench/serve_load.py --classifier runs/sst2_ngrams --lm runs/quickstart --encoder runs/sst2_minilm

It starts `nanonlp serve` as a subprocess on a free loopback port and measures:
1. the bag-of-n-grams classifier under `--clients` concurrent clients for `--seconds`: texts and
   requests per second, p50/p95/p99 latency, responses by status;
2. a MiniLM classifier with dynamic batching, and again with `--max-batch 1` (one request at a
   time), under the same load: the throughput ratio;
3. a burst of `--burst` requests at once at the MiniLM server, past its queue of 64: how many get 503;
4. one streamed generation from the quickstart GPT: time to the first piece, and tokens per second;
5. generation under load (continuous batching, serve/generation.py): `--streams` concurrent streams
   against one stream alone (aggregate tokens/s and the ratio, first-piece p50/p99), and one stream's
   tokens/s over HTTP against `LanguageModel.stream` in this process, for each `--lm` (by default the
   quickstart GPT and the Shakespeare CPU GPT);
6. a Transformer translator under `--translate-clients` concurrent clients (one sentence a request,
   beam 5), batched across requests and again with `--max-batch 1`: the throughput ratio;
7. (`--only mixed`, not run by default) a mixed load for `--mixed-seconds` (10 minutes): classify,
   generate and translate clients at once against one server, its resident memory sampled every 10 s;
and the server's resident memory before and after each load. Runs it needs and is not given are
trained first into --out: sst2_ngrams (seconds), the quickstart GPT (2 minutes), a MiniLM
classifier trained for 1 step (its speed does not depend on its accuracy), and the Multi30k
Transformer trained for 2 minutes (its translations are poor; a search's cost depends on their
lengths, which the ratio shares), and the Shakespeare CPU GPT trained for 1 minute (generation speed
depends on its shape, not on its loss). Data from $NANONLP_DATA. `--only SECTION` (repeatable: classify,
generation, translate, mixed) runs those sections alone.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SENTENCES = ["A man is riding a bike down the street .", "Two dogs play in the snow .", "A woman sings on a stage .",
             "Children are playing soccer in a park .", "A man in a red shirt is cooking .", "A girl reads a book on a bench .",
             "People walk past a shop at night .", "A black cat sleeps on the sofa ."]
TEXTS = ["an utterly charming and funny film", "a dull , lifeless mess", "not bad at all", "the best film of the year",
         "it never quite works", "a moving , beautifully acted story", "tedious and far too long", "good fun"]


def train_if_missing(run: str | None, out: Path, name: str, config: str, overrides: list[str]) -> Path:
    if run:
        return Path(run)
    from nanonlp.config import load_config
    from nanonlp.train import fit

    run_dir = out / name
    if not (run_dir / "model.safetensors").is_file():
        print(f"training {name} ({config} {' '.join(overrides)}) ...", flush=True)
        fit(load_config(ROOT / config, [f"--train.out_dir={run_dir}", *overrides]), quiet=True, overwrite=True)
    return run_dir


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """`nanonlp serve RUN ...` on a free loopback port, as a subprocess."""

    def __init__(self, runs: list[Path], *options: str):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        import tempfile

        self.log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads would block the server once full
        self.process = subprocess.Popen([sys.executable, "-m", "nanonlp", "serve", *map(str, runs), "--host", "127.0.0.1",
                                         "--port", str(self.port), "--device", "cpu", *options],
                                        stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        import httpx

        for _ in range(600):
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
            if self.process.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"the server stopped: {self.log.read()}")
        self.close()
        raise SystemExit("the server did not start within 60 s")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


def load(base: str, model: str, clients: int, seconds: float, texts_per_request: int, endpoint: str = "/v1/classify",
         texts: list[str] = TEXTS, extra: dict | None = None) -> dict:
    """`clients` threads posting requests (`endpoint`: classify, or translate with `extra` options) back to back for
    `seconds`, each on one kept-alive connection. The load generator is the standard library's http.client: it shares
    the 2 cores with the server, and costs a fraction of what httpx costs a request."""
    import http.client
    from urllib.parse import urlsplit

    latencies, statuses, lock = [], Counter(), threading.Lock()
    deadline = time.perf_counter() + seconds
    where = urlsplit(base)

    def client(k: int) -> None:
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
        i = k
        while time.perf_counter() < deadline:
            batch = [texts[(i + j) % len(texts)] for j in range(texts_per_request)]
            body = json.dumps({"model": model, "texts": batch, **(extra or {})}).encode()
            started = time.perf_counter()
            try:
                connection.request("POST", endpoint, body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = "connection error"
                connection.close()
                connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
            with lock:
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1
            i += 1
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ok = statuses.get(200, 0)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {"requests_per_s": ok / wall, "texts_per_s": ok * texts_per_request / wall, "mean_ms": 1000 * statistics.fmean(latencies),
            "p50_ms": 1000 * q[49],
            "p95_ms": 1000 * q[94], "p99_ms": 1000 * q[98], "statuses": dict(statuses), "requests": sum(statuses.values())}


def scrape(base: str) -> dict[str, float]:
    """The server's Prometheus metrics: {'name{labels}': value}."""
    import httpx

    values = {}
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def where_time_goes(base: str, model: str, endpoint: str, before: dict, r: dict) -> str:
    """Where a batched request's time went during a load, from the server's metrics scraped before and after
    it and the clients' mean latency: waiting for its batch, in the model, in the rest of the server
    (validation, JSON, middleware, thread hops), and in HTTP and the client (connection, parsing)."""
    after = scrape(base)

    def delta(name: str, labels: str) -> float:
        key = f"{name}{{{labels}}}"
        return after.get(key, 0.0) - before.get(key, 0.0)

    m, e = f'model="{model}"', f'endpoint="{endpoint}"'
    batches, waits, requests = (delta("nanonlp_batch_seconds_count", m), delta("nanonlp_queue_wait_seconds_count", m),
                                delta("nanonlp_request_seconds_count", e))
    if not (batches and waits and requests):
        return "  (no batches in the metrics)"
    wait_ms = 1000 * delta("nanonlp_queue_wait_seconds_sum", m) / waits
    model_ms = 1000 * delta("nanonlp_batch_seconds_sum", m) / batches
    server_ms = 1000 * delta("nanonlp_request_seconds_sum", e) / requests
    items = delta("nanonlp_batch_items_sum", m) / batches
    return (f"  where the time goes (means per request, {r['mean_ms']:.1f} ms at the client): {wait_ms:.1f} ms waiting for its batch, "
            f"{model_ms:.1f} ms in the model (batches of {items:.1f} texts, {batches / waits:.2f} batches a request), "
            f"{server_ms - wait_ms - model_ms:.1f} ms in the rest of the server, {r['mean_ms'] - server_ms:.1f} ms in HTTP and the client")


def burst(base: str, model: str, n: int) -> dict:
    """n requests at once, each from its own thread."""
    import httpx

    statuses, lock, gate = Counter(), threading.Lock(), threading.Barrier(n)

    def one(k: int) -> None:
        with httpx.Client(timeout=120) as http:
            gate.wait()
            try:
                status = http.post(f"{base}/v1/classify", json={"model": model, "texts": [TEXTS[k % len(TEXTS)]]}).status_code
            except httpx.HTTPError:
                status = "connection error"
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return dict(statuses)


def stream(base: str, model: str, tokens: int) -> dict:
    import httpx

    started = time.perf_counter()
    first, pieces = None, 0
    with httpx.stream("POST", f"{base}/v1/generate", json={"model": model, "prompt": "User: hello\nBot:", "max_new_tokens": tokens,
                                                            "seed": 1, "stream": True}, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                pieces += len(json.loads(line[6:])["text"])
                first = first or time.perf_counter() - started
    total = time.perf_counter() - started
    if first is None:
        raise SystemExit("the stream gave no text")
    # a character model's pieces are its tokens; with no stop string, every token asked for is generated
    return {"first_piece_ms": 1000 * first, "characters": pieces, "tokens_per_s": tokens / total, "total_s": total}


PROMPTS = ["User: hello\nBot:", "ROMEO:", "First Citizen:\n", "To be, or not to be", "The king", "JULIET:\nO", "Once upon", "What is"]


def streams_at_once(base: str, model: str, n: int, tokens: int) -> dict:
    """n streamed generations started together (each its own prompt and seed): aggregate tokens/s and
    each stream's time to its first piece. The clients are http.client connections (light: they share the cores)."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(base)
    gate, lock, firsts = threading.Barrier(n + 1), threading.Lock(), []

    def one(k: int) -> None:
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=600)
        body = json.dumps({"model": model, "prompt": PROMPTS[k % len(PROMPTS)], "max_new_tokens": tokens, "seed": k, "stream": True})
        gate.wait()
        started, first = time.perf_counter(), None
        connection.request("POST", "/v1/generate", body.encode(), {"Content-Type": "application/json"})
        response = connection.getresponse()
        for line in response:  # server-sent events, a line at a time
            if first is None and line.startswith(b"data: {"):
                first = time.perf_counter() - started
        connection.close()
        with lock:
            firsts.append(first if first is not None else float("nan"))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    gate.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    q = statistics.quantiles(firsts, n=100, method="inclusive") if n > 1 else [firsts[0]] * 99
    # with no stop string every stream generates all the tokens it asks for
    return {"tokens_per_s": n * tokens / wall, "first_p50_ms": 1000 * q[49], "first_p99_ms": 1000 * q[98], "wall_s": wall}


def in_process_tokens_per_s(run: Path, tokens: int) -> float:
    """One stream through `LanguageModel.stream` in this process (after one warm-up), for the HTTP comparison,
    with the torch threads the server uses by default."""
    import torch

    import nanonlp
    from nanonlp.serve import serving_threads

    torch.set_num_threads(serving_threads())
    lm = nanonlp.load(run, device="cpu")
    list(lm.stream(PROMPTS[0], max_new_tokens=min(tokens, 20), seed=0))
    speeds = []
    for _ in range(3):  # the median of three, as over HTTP
        started = time.perf_counter()
        list(lm.stream(PROMPTS[0], max_new_tokens=tokens, seed=0))
        speeds.append(tokens / (time.perf_counter() - started))
    return sorted(speeds)[1]


def generation_load(lm: Path, streams: int, tokens: int) -> None:
    server = Server([f"lm={lm}"])
    try:
        streams_at_once(server.base, "lm", 1, min(tokens, 20))  # warm-up
        # the median of three single streams: one stream is short, and this machine's speed wanders
        one = sorted((streams_at_once(server.base, "lm", 1, tokens) for _ in range(3)), key=lambda r: r["tokens_per_s"])[1]
        many = streams_at_once(server.base, "lm", streams, tokens)
        print(f"generation ({lm.name}), one stream of {tokens} tokens: {one['tokens_per_s']:.0f} tokens/s, "
              f"first piece {one['first_p50_ms']:.0f} ms", flush=True)
        print(f"generation, {streams} streams at once: {many['tokens_per_s']:.0f} tokens/s together "
              f"({many['tokens_per_s'] / one['tokens_per_s']:.2f}x one stream), first piece p50 {many['first_p50_ms']:.0f} ms, "
              f"p99 {many['first_p99_ms']:.0f} ms ({many['wall_s']:.1f} s)", flush=True)
        rss = rss_mb(server.process.pid)
    finally:
        server.close()
    local = in_process_tokens_per_s(lm, tokens)  # with the server gone, so the two do not share the processor
    print(f"generation, one stream: {one['tokens_per_s']:.0f} tokens/s over HTTP, {local:.0f} in process "
          f"({100 * one['tokens_per_s'] / local:.0f}%); server memory {rss:.0f} MB", flush=True)


def show(title: str, r: dict) -> None:
    print(f"{title}: {r['texts_per_s']:,.0f} texts/s ({r['requests_per_s']:,.0f} requests/s), latency p50 {r['p50_ms']:.1f} ms, "
          f"p95 {r['p95_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; {r['requests']:,} requests, by status {r['statuses']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", help="a bag-of-n-grams (or any) classification run (default: train sst2_ngrams)")
    parser.add_argument("--lm", action="append", help="a language-model run (repeatable; default: the quickstart GPT and the "
                        "Shakespeare CPU GPT, trained if missing)")
    parser.add_argument("--encoder", help="a MiniLM classification run (default: sst2_minilm trained for 1 step)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each sustained load")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--texts-per-request", type=int, default=8, help="texts in each classify request")
    parser.add_argument("--burst", type=int, default=256, help="requests sent at once in the burst")
    parser.add_argument("--tokens", type=int, default=100, help="tokens of each streamed generation (100: within the Shakespeare CPU GPT's context)")
    parser.add_argument("--streams", type=int, default=16, help="concurrent generation streams")
    parser.add_argument("--translator", help="a translation run (default: multi30k_en_de_transformer trained for 2 minutes)")
    parser.add_argument("--translate-clients", type=int, default=8, help="concurrent clients of the translation load")
    parser.add_argument("--mixed-seconds", type=float, default=600.0, help="length of the mixed load (--only mixed)")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only this section (repeatable); "
                        "default: every section but mixed")
    parser.add_argument("--out", default="runs/bench_serve", help="where runs it trains go")
    args = parser.parse_args()
    os.environ.setdefault("NANONLP_DATA", str(ROOT.parent / "shared" / "data"))
    out = Path(args.out)
    sections = args.only or [s for s in SECTIONS if s != "mixed"]
    print(f"machine: {os.cpu_count()} CPUs, {processor()}; clients and server share them", flush=True)
    if "classify" in sections:
        classify_load(args, out)
    if "generation" in sections:
        for lm in language_models(args, out):
            generation_load(lm, args.streams, args.tokens)
    if "translate" in sections:
        translate_load(args, out)
    if "mixed" in sections:
        mixed_load(args, out)


SECTIONS = ("classify", "generation", "translate", "mixed")


def processor() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown processor"


def language_models(args, out: Path) -> list[Path]:
    if args.lm:
        return [Path(run) for run in args.lm]
    return [train_if_missing(None, out, "quickstart", "configs/quickstart.yaml", []),
            train_if_missing(None, out, "shakespeare_cpu", "configs/shakespeare_char_gpt_cpu.yaml", ["--train.max_seconds=60"])]


def translator_run(args, out: Path) -> Path:
    return train_if_missing(args.translator, out, "multi30k_transformer", "configs/multi30k_en_de_transformer.yaml",
                            ["--train.max_seconds=120", "--train.eval_interval=1000000"])


def translate_load(args, out: Path) -> None:
    translator = translator_run(args, out)
    figures = {}
    for label, options in (("batched across requests", []), ("one request at a time (--max-batch 1)", ["--max-batch", "1"])):
        server = Server([f"mt={translator}"], *options)
        try:
            metrics = scrape(server.base)
            figures[label] = r = load(server.base, "mt", args.translate_clients, args.seconds / 2, 1, "/v1/translate", SENTENCES, {"beam": 5})
            show(f"translation (beam 5), {label}, {args.translate_clients} clients, {args.seconds / 2:g} s", r)
            print(where_time_goes(server.base, "mt", "/v1/translate", metrics, r), flush=True)
        finally:
            server.close()
    ratio = figures["batched across requests"]["texts_per_s"] / max(figures["one request at a time (--max-batch 1)"]["texts_per_s"], 1e-9)
    print(f"translation throughput batched across requests / one at a time: {ratio:.2f}x", flush=True)


def mixed_load(args, out: Path) -> None:
    """Classify, generate and translate clients at once against one server for --mixed-seconds; the
    server's resident memory after a 30-second warm-up, every 10 s, and at the end."""
    classifier = train_if_missing(args.classifier, out, "sst2_ngrams", "configs/sst2_ngrams.yaml", [])
    lm = language_models(args, out)[0]
    translator = translator_run(args, out)
    server = Server([f"ngrams={classifier}", f"lm={lm}", f"mt={translator}"])
    results, samples = {}, []

    def run(name: str, fn) -> None:
        results[name] = fn()

    def streams() -> dict:
        count, deadline = 0, time.perf_counter() + args.mixed_seconds
        while time.perf_counter() < deadline:
            streams_at_once(server.base, "lm", 4, 100)
            count += 4
        return {"streams": count}

    jobs = [threading.Thread(target=run, args=("classify", lambda: load(server.base, "ngrams", 4, args.mixed_seconds, 8))),
            threading.Thread(target=run, args=("translate", lambda: load(server.base, "mt", 2, args.mixed_seconds, 1, "/v1/translate",
                                                                          SENTENCES, {"beam": 5}))),
            threading.Thread(target=run, args=("generate", streams))]
    try:
        started = time.perf_counter()
        for job in jobs:
            job.start()
        while any(job.is_alive() for job in jobs):
            time.sleep(10)
            samples.append((time.perf_counter() - started, rss_mb(server.process.pid)))
        for job in jobs:
            job.join()
    finally:
        server.close()
    warm = [mb for t, mb in samples if t >= 30] or [mb for _, mb in samples]
    print(f"mixed load, {args.mixed_seconds:g} s (classify 4 clients, translate 2, generation 4 streams at a time): "
          f"classify {results['classify']['texts_per_s']:,.0f} texts/s (statuses {results['classify']['statuses']}), "
          f"translate {results['translate']['texts_per_s']:,.1f} texts/s (statuses {results['translate']['statuses']}), "
          f"{results['generate']['streams']} streams", flush=True)
    print(f"  server memory after warm-up {warm[0]:.0f} MB, at the end {warm[-1]:.0f} MB ({100 * (warm[-1] - warm[0]) / warm[0]:+.1f}%), "
          f"peak {max(warm):.0f} MB; every 10 s: {' '.join(f'{mb:.0f}' for _, mb in samples)}", flush=True)


def classify_load(args, out: Path) -> None:
    classifier = train_if_missing(args.classifier, out, "sst2_ngrams", "configs/sst2_ngrams.yaml", [])
    lm = language_models(args, out)[0]
    encoder = train_if_missing(args.encoder, out, "sst2_minilm", "configs/sst2_minilm.yaml",
                               ["--train.max_steps=1", "--train.eval_interval=1", "--classify.calibrate=false"])

    server = Server([f"ngrams={classifier}", f"lm={lm}"])
    try:
        before, metrics = rss_mb(server.process.pid), scrape(server.base)
        r = load(server.base, "ngrams", args.clients, args.seconds, args.texts_per_request)
        show(f"bag of n-grams, {args.clients} clients, {args.seconds:g} s", r)
        print(where_time_goes(server.base, "ngrams", "/v1/classify", metrics, r), flush=True)
        after = rss_mb(server.process.pid)
        print(f"  server memory {before:.0f} MB before, {after:.0f} MB after ({100 * (after - before) / before:+.1f}%)")
        s = stream(server.base, "lm", args.tokens)
        print(f"generation (quickstart GPT, one stream of {args.tokens} tokens): first piece after {s['first_piece_ms']:.0f} ms, "
              f"{s['tokens_per_s']:.0f} tokens/s ({s['total_s']:.2f} s)", flush=True)
    finally:
        server.close()

    figures = {}
    for label, options in (("dynamic batching", []), ("one request at a time (--max-batch 1)", ["--max-batch", "1"])):
        server = Server([f"minilm={encoder}"], *options)
        try:
            before, metrics = rss_mb(server.process.pid), scrape(server.base)
            figures[label] = r = load(server.base, "minilm", args.clients, args.seconds / 2, 1)
            show(f"MiniLM, {label}, {args.clients} clients, {args.seconds / 2:g} s", r)
            print(where_time_goes(server.base, "minilm", "/v1/classify", metrics, r), flush=True)
            print(f"  server memory {before:.0f} MB before, {rss_mb(server.process.pid):.0f} MB after")
            if not options:
                print(f"burst of {args.burst} requests at once at MiniLM (queue 64): by status {burst(server.base, 'minilm', args.burst)}", flush=True)
        finally:
            server.close()
    ratio = figures["dynamic batching"]["texts_per_s"] / max(figures["one request at a time (--max-batch 1)"]["texts_per_s"], 1e-9)
    print(f"MiniLM throughput with dynamic batching / one at a time: {ratio:.2f}x", flush=True)


if __name__ == "__main__":
    main()
