"""Serving trained runs over HTTP: the API (app.py), dynamic batching (batching.py) and `nanonlp serve`."""

from __future__ import annotations

import os
import sys
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
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories to serve, each RUN or NAME=RUN")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; 0.0.0.0 serves the network, a deliberate choice)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--api-key", default=os.environ.get("NANONLP_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $NANONLP_API_KEY; none when unset)")
    p.add_argument("--max-body-mb", type=float, default=10.0, help="largest request body in MB (413 above it)")
    p.add_argument("--max-batch", type=int, default=64, help="texts run together at most")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting per model before 503")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request before 504")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="generation budget cap per request")
    p.add_argument("--sessions", help="an assistant run's session store: a SQLite path or a SQLAlchemy URL "
                                      "(postgresql+psycopg://...); default RUN/sessions.sqlite")


def load_runs(runs: dict[str, Path], device: str = "auto", sessions: str | None = None) -> dict:
    """{name: run directory} -> {name: predictor}; an assistant run keeps its conversations in `sessions`
    (None: RUN/sessions.sqlite), which one store can do for one assistant only."""
    import nanonlp
    from nanonlp import tasks

    assistants = [name for name, path in runs.items() if tasks.task_of(path).name == "assistant"]
    if sessions and not assistants:
        raise ConfigError("--sessions says where assistant conversations live, and none of the mounted runs is an assistant; leave it out.")
    if sessions and len(assistants) > 1:
        raise ConfigError(f"--sessions names one session store, and {len(assistants)} assistants are mounted ({', '.join(assistants)}); "
                          "serve each from its own server, or leave --sessions out (each then keeps RUN/sessions.sqlite).")
    return {name: tasks.task_of(path).load(path, device, sessions=sessions) if sessions and name in assistants
            else nanonlp.load(path, device=device) for name, path in runs.items()}


def serve(args) -> None:
    from nanonlp.serve.app import ServeSettings, create_app

    try:
        import uvicorn
    except ImportError:
        raise ConfigError("nanonlp serve needs FastAPI and uvicorn: pip install 'nanonlp[serve]'.") from None
    for flag, value in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}.")
    if args.max_body_mb <= 0 or args.timeout <= 0 or args.max_wait_ms < 0:
        raise ConfigError("--max-body-mb and --timeout must be positive, and --max-wait-ms not negative.")
    models = load_runs(mount_names(args.runs), args.device, args.sessions)
    settings = ServeSettings(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_batch=args.max_batch,
                             max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, timeout_s=args.timeout,
                             max_new_tokens=args.max_new_tokens, api_key=args.api_key or None,
                             # on loopback, answer only loopback names: a web page elsewhere cannot reach the
                             # server by pointing a domain of its own at 127.0.0.1 (DNS rebinding)
                             allowed_hosts=("127.0.0.1", "localhost", "[::1]") if args.host in ("127.0.0.1", "localhost", "::1") else ())
    app = create_app(models, settings)
    where = f"http://{args.host}:{args.port}"
    print(f"serving {', '.join(models)} at {where} (API docs at {where}/docs)"
          + ("; API key required" if settings.api_key else ""), file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
