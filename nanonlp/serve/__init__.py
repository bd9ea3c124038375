"""Serving trained runs over HTTP: the API (app.py), the routes built from what predictors declare (routes.py),
dynamic batching (batching.py), generation scheduling (generation.py), `nanonlp serve`, and the same app on
Ray Serve for more than one process or machine (ray_serve.py)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

from nanonlp.errors import ConfigError


def mount_names(specs: list[str]) -> dict[str, Path]:
    """`RUN` or `NAME=RUN` arguments -> {name: run directory}; a name is the directory's name by default."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
        path = Path(path)
        name = name or path.resolve().name
        if name in out:
            raise ConfigError(f"two runs are mounted as '{name}'; name them apart with NAME=RUN.")
        out[name] = path
    return out


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN", help="run directories to serve, each RUN or NAME=RUN")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; 0.0.0.0 serves the network, a deliberate "
                   "choice that needs --api-key or --allow-no-key)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--api-key", default=os.environ.get("NANONLP_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $NANONLP_API_KEY; none when unset)")
    p.add_argument("--allow-no-key", action="store_true",
                   help="serve a non-loopback address without an API key (anyone who reaches it may use the models)")
    p.add_argument("--max-body-mb", type=float, default=10.0, help="largest request body in MB (413 above it)")
    p.add_argument("--max-batch", type=int, default=64, help="texts run together at most")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting per model before 503")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request before 504")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="generation budget cap per prompt")
    p.add_argument("--max-request-tokens", type=int, default=16384, help="generation budget cap per request: prompts x max_new_tokens")
    p.add_argument("--max-sequences", type=int, default=32,
                   help="sequences a language model generates together at most, one token each per step (more wait)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads each model computation uses (torch intra-op); default half the cores, at least 1, so the "
                        "server's own work (HTTP, JSON, decoding text) keeps the rest; under --ray, each replica's CPUs")
    p.add_argument("--max-connections", type=int, default=256, help="open connections at most (503 past it)")
    p.add_argument("--graceful-timeout", type=float, default=20.0,
                   help="on SIGTERM or Ctrl-C, seconds in-flight requests get to finish before the server exits")
    p.add_argument("--access-log", choices=("json", "off"), default="json",
                   help="one JSON line per request on stderr, with its request id (default), or none")
    p.add_argument("--analyze-config", help="serve POST /v1/analyze with this analysis YAML (docs/analyze.md)")
    p.add_argument("--analyze-store", default="history.duckdb", help="the DuckDB history /v1/analyze stores to and alerts against")
    p.add_argument("--sessions", help="an assistant run's session store: a SQLite path or a SQLAlchemy URL "
                                      "(postgresql+psycopg://...); default RUN/sessions.sqlite")
    ray = p.add_argument_group("more than one process or machine: Ray Serve (pip install 'nanonlp[ray]'; docs/serve.md)")
    ray.add_argument("--ray", action="store_true", help="deploy on Ray Serve: each replica loads the runs and serves this same app")
    ray.add_argument("--replicas", type=int, metavar="N", help="replicas, a fixed count (default 1)")
    ray.add_argument("--autoscale", metavar="MIN,MAX", help="replicas that follow the load, from MIN to MAX (not with --replicas)")
    ray.add_argument("--ray-address", metavar="ADDRESS", help="the Ray cluster to join: auto (this node's), HOST:6379 or ray://HOST:10001 "
                                           "(default: start a local Ray on this machine)")
    ray.add_argument("--replica-cpus", type=float, metavar="C", help="CPUs per replica, and its torch threads (default 1)")
    ray.add_argument("--replica-gpus", type=float, metavar="G", help="GPUs per replica, a fraction to share one (default 0)")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_exposure(host: str, api_key: str | None, allow_no_key: bool) -> str | None:
    """Refuse a non-loopback bind without an API key unless allowed; the warning to print when allowed."""
    if host in LOOPBACK or api_key:
        return None
    if not allow_no_key:
        raise ConfigError(f"--host {host} serves the network without an API key: set --api-key (or $NANONLP_API_KEY), "
                          "or pass --allow-no-key to let anyone who reaches it use the models.")
    return f"warning: serving {host} without an API key; anyone who can reach this address can use the models."


def _stopped(signum, frame) -> None:
    raise SystemExit(0)


def mounted_tasks(runs: dict[str, Path], sessions: str | None = None) -> dict:
    """{name: run directory} -> {name: its task}; refuses `sessions` unless exactly one run is an assistant
    (one store can keep one assistant's conversations)."""
    from nanonlp import tasks

    task_of = {name: tasks.task_of(path) for name, path in runs.items()}
    assistants = [name for name, task in task_of.items() if task.name == "assistant"]
    if sessions and not assistants:
        raise ConfigError("--sessions says where assistant conversations live, and none of the mounted runs is an assistant; leave it out.")
    if sessions and len(assistants) > 1:
        raise ConfigError(f"--sessions names one session store, and {len(assistants)} assistants are mounted ({', '.join(assistants)}); "
                          "serve each from its own server, or leave --sessions out (each then keeps RUN/sessions.sqlite).")
    return task_of


def load_runs(runs: dict[str, Path], device: str = "auto", sessions: str | None = None,
              load_seconds: dict[str, float] | None = None) -> dict:
    """{name: run directory} -> {name: predictor}; an assistant run keeps its conversations in `sessions`
    (None: RUN/sessions.sqlite), which one store can do for one assistant only. `load_seconds`, when
    given, is filled with how long each run took to load (for /metrics)."""
    import nanonlp

    task_of = mounted_tasks(runs, sessions)
    models = {}
    for name, path in runs.items():
        start = time.perf_counter()
        models[name] = (task_of[name].load(path, device, sessions=sessions) if sessions and task_of[name].name == "assistant"
                        else nanonlp.load(path, device=device))
        if load_seconds is not None:
            load_seconds[name] = time.perf_counter() - start
    return models


def json_access_log() -> None:
    """One JSON line per request on stderr (the `nanonlp.serve.access` logger)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("nanonlp.serve.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False


def serving_threads() -> int:
    """The default --threads: half the cores this process may use, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // 2)


def serve(args) -> None:
    from nanonlp.serve import ray_serve
    from nanonlp.serve.app import ServeSettings, create_app

    ray_options = ray_serve.check_arguments(args)
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("nanonlp serve needs FastAPI and uvicorn: pip install 'nanonlp[serve]'.") from None
    for flag, value in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue), ("--max-new-tokens", args.max_new_tokens),
                        ("--max-request-tokens", args.max_request_tokens), ("--max-sequences", args.max_sequences), ("--max-connections", args.max_connections)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}.")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}.")
    if args.threads is not None and args.ray:
        raise ConfigError("--threads is each replica's CPUs under --ray; set --replica-cpus instead.")
    if args.max_body_mb <= 0 or args.timeout <= 0 or args.max_wait_ms < 0 or args.graceful_timeout < 0:
        raise ConfigError("--max-body-mb and --timeout must be positive, and --max-wait-ms and --graceful-timeout not negative.")
    if not args.runs and not args.analyze_config:
        raise ConfigError("give at least one run directory to serve, or --analyze-config for POST /v1/analyze.")
    warning = check_exposure(args.host, args.api_key, args.allow_no_key)  # before minutes of loading
    settings = ServeSettings(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_batch=args.max_batch,
                             max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, timeout_s=args.timeout,
                             max_new_tokens=args.max_new_tokens, max_request_tokens=args.max_request_tokens, max_sequences=args.max_sequences,
                             max_connections=args.max_connections, graceful_timeout_s=args.graceful_timeout,
                             api_key=args.api_key or None,
                             # on loopback, answer only loopback names: a web page elsewhere cannot reach the
                             # server by pointing a domain of its own at 127.0.0.1 (DNS rebinding)
                             allowed_hosts=("127.0.0.1", "localhost", "[::1]") if args.host in LOOPBACK else ())
    if args.ray:  # each replica loads the runs itself
        if warning:
            print(warning, file=sys.stderr)
        return ray_serve.serve_on_ray(args, ray_options, settings, mount_names(args.runs))
    import torch

    # On 2 cores, one thread per model computation measured up to 1.7x the generation throughput of two (two
    # OpenMP teams, the scheduler's and a batcher's, spinning against each other and the event loop).
    torch.set_num_threads(args.threads or serving_threads())
    load_seconds: dict[str, float] = {}
    models = load_runs(mount_names(args.runs), args.device, args.sessions, load_seconds)
    analysis = None
    if args.analyze_config:
        from nanonlp.analyze import load_analyze_config
        from nanonlp.serve.analyze import AnalysisService

        analysis = AnalysisService(load_analyze_config(args.analyze_config), args.analyze_store, args.device)
    app = create_app(models, settings, analysis, load_seconds)
    if args.access_log == "json":
        json_access_log()
    where = f"http://{args.host}:{args.port}"
    if warning:
        print(warning, file=sys.stderr)
    print(f"serving {', '.join(models)} at {where} (API docs at {where}/docs)"
          + ("; API key required" if settings.api_key else ""), file=sys.stderr, flush=True)
    # SIGTERM and Ctrl-C: uvicorn stops accepting, lets in-flight requests finish for up to
    # graceful_timeout_s, then closes the app (its batchers). It then raises the signal again for the
    # handler that was there before it: for SIGTERM that is ours, so a stopped server exits 0, as
    # process managers (systemd, Docker, Kubernetes) expect of a clean shutdown.
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                limit_concurrency=settings.max_connections, timeout_keep_alive=5,
                timeout_graceful_shutdown=settings.graceful_timeout_s)
