"""`nanonlp serve RUN --ray`: the same app as a Ray Serve deployment, on one machine or a cluster.

Each replica is a Ray actor that loads the runs once (load_runs) and serves the very ASGI app of the
single-process server (create_app): the same endpoints, limits, errors and page. Ray Serve's HTTP
proxy binds --host/--port (on every node that holds a replica) and spreads requests over the
replicas, whose count is fixed (--replicas) or follows the load (--autoscale MIN,MAX). Responses
name the replica that answered in an X-Replica header.

Run directories (and an --analyze-config) must be readable at the same path on every node, and
every node needs the same Python, torch, Ray and nanonlp (docs/serve.md).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

from nanonlp.errors import ConfigError, NanoNLPError

APP_NAME = "nanonlp"  # the Serve application's name on the cluster
MIN_RAY = "2.60"  # the first Ray tested; its @serve.ingress builds the app on each replica after loading (__serve_build_asgi_app__)
# A replica batches the requests it holds (serve/batching.py), so it serves several at once before
# another replica is worth starting: the autoscaler aims at this many in flight per replica.
TARGET_ONGOING_REQUESTS = 8


def check_arguments(args) -> dict:
    """The Ray flags of `nanonlp serve` -> the deployment's replica options; refuses what cannot be
    honoured. Needs neither Ray nor a cluster."""
    ray_flags = {"--replicas": args.replicas, "--autoscale": args.autoscale, "--ray-address": args.ray_address,
                 "--replica-cpus": args.replica_cpus, "--replica-gpus": args.replica_gpus}
    given = [flag for flag, value in ray_flags.items() if value is not None]
    if not args.ray:
        if given:
            raise ConfigError(f"{', '.join(given)} deploy on Ray Serve: add --ray, or leave {'them' if len(given) > 1 else 'it'} out.")
        return {}
    if args.replicas is not None and args.autoscale is not None:
        raise ConfigError("give --replicas N (a fixed count) or --autoscale MIN,MAX (a count that follows the load), not both.")
    options: dict = {}
    if args.autoscale is not None:
        low, _, high = args.autoscale.partition(",")
        try:
            low, high = int(low), int(high)
        except ValueError:
            raise ConfigError(f"--autoscale takes MIN,MAX replicas, two whole numbers such as 1,4; got '{args.autoscale}'.") from None
        if not 0 <= low <= high or high < 1:
            raise ConfigError(f"--autoscale MIN,MAX needs 0 <= MIN <= MAX and MAX >= 1; got {low},{high}.")
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                         "target_ongoing_requests": TARGET_ONGOING_REQUESTS}
    else:
        replicas = 1 if args.replicas is None else args.replicas
        if replicas < 1:
            raise ConfigError(f"--replicas must be at least 1, got {replicas}.")
        options["num_replicas"] = replicas
    cpus = 1.0 if args.replica_cpus is None else args.replica_cpus
    gpus = 0.0 if args.replica_gpus is None else args.replica_gpus
    if cpus <= 0 or gpus < 0:
        raise ConfigError(f"--replica-cpus must be positive and --replica-gpus not negative; got {cpus:g} and {gpus:g}.")
    if args.device.startswith("cuda") and gpus == 0:
        raise ConfigError(f"--device {args.device} on Ray needs a GPU per replica: add --replica-gpus 1 (or a fraction to share one).")
    options["ray_actor_options"] = {"num_cpus": cpus, "num_gpus": gpus}
    if args.analyze_config and most_replicas(options) > 1:
        raise ConfigError("POST /v1/analyze keeps its history in one DuckDB file, which one process writes: "
                          "serve --analyze-config from one replica (--replicas 1) or from a single-process server.")
    return options


def most_replicas(options: dict) -> int:
    return options["num_replicas"] if "num_replicas" in options else options["autoscaling_config"]["max_replicas"]


def check_runs(args, options: dict, runs: dict[str, Path]) -> None:
    """Refuses, before Ray starts, runs that do not exist, and assistants whose conversations replicas on
    other nodes could not share."""
    from nanonlp.serve import mounted_tasks

    tasks = mounted_tasks(runs, args.sessions)
    if args.ray_address is None or most_replicas(options) == 1 or not any(t.name == "assistant" for t in tasks.values()):
        return  # one replica, or replicas on this machine alone: a SQLite file is shared (one transaction per write)
    if args.sessions is None or "://" not in args.sessions:
        raise ConfigError("on a Ray cluster, replicas of an assistant must keep its conversations in one database every node reaches: "
                          "pass --sessions postgresql+psycopg://USER@HOST/DB (a SQLite file is one node's).")


class Replica:
    """One replica: the runs loaded once, then the single-process app over them (built by
    `ingress` below through __serve_build_asgi_app__, which Ray calls after the constructor)."""

    def __init__(self, runs: dict[str, Path], device: str, sessions: str | None, settings, analyze: tuple | None,
                 threads: int, access_log: bool):
        import torch

        from nanonlp.serve import json_access_log, load_runs

        torch.set_num_threads(threads)  # the CPUs Ray gave this replica, not every core of the node
        if access_log:
            json_access_log()  # into the replica's log (Ray's logs folder, and the driver's terminal)
        self.settings = settings
        self.load_seconds: dict[str, float] = {}
        self.models = load_runs(runs, device, sessions, self.load_seconds)
        self.analysis = None
        if analyze is not None:
            from nanonlp.analyze import load_analyze_config
            from nanonlp.serve.analyze import AnalysisService

            config, store = analyze
            self.analysis = AnalysisService(load_analyze_config(config), store, device)

    def __serve_build_asgi_app__(self):
        from ray import serve

        from nanonlp.serve.app import create_app

        return NameReplica(create_app(self.models, self.settings, self.analysis, self.load_seconds),
                           serve.get_replica_context().replica_tag)


class NameReplica:
    """ASGI middleware: an X-Replica header on every response, naming the replica that answered. The
    app's X-Request-ID is dropped: Ray's proxy gives each request its id (which the app adopts, for
    the body and the log) and adds the header itself."""

    def __init__(self, app, name: str):
        self.app, self.name = app, name.encode()
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_named(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-replica", self.name)]}
            await send(message)

        await self.app(scope, receive, send_named)


def import_serve():
    """Ray Serve, or one sentence on how to get it."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ConfigError("--ray needs Ray Serve: pip install 'nanonlp[ray]' (or 'ray[serve]').") from None
    from packaging.version import Version

    if Version(ray.__version__) < Version(MIN_RAY):
        raise ConfigError(f"--ray needs Ray {MIN_RAY} or later (this is Ray {ray.__version__}): pip install -U 'nanonlp[ray]'.")
    return ray, serve


def deployment(args, options: dict, settings, runs: dict[str, Path]):
    """The bound Serve application: `options` from check_arguments, the limits of `settings` mapped
    onto Ray Serve's where the proxy, not the app, holds them."""
    _, serve = import_serve()
    cpus = options["ray_actor_options"]["num_cpus"]
    analyze = (str(Path(args.analyze_config).resolve()), str(Path(args.analyze_store).resolve())) if args.analyze_config else None
    sessions = args.sessions if args.sessions is None or "://" in args.sessions else str(Path(args.sessions).resolve())
    replica = serve.deployment(
        serve.ingress()(Replica), name=APP_NAME, **options,
        # --max-connections: the requests each replica holds at once (its batcher sees them all), and as
        # many more waiting at the proxy; past that the proxy answers 503
        max_ongoing_requests=settings.max_connections, max_queued_requests=settings.max_connections,
        graceful_shutdown_timeout_s=settings.graceful_timeout_s,
        logging_config={"enable_access_log": False})  # the app logs each request (--access-log), with its id
    return replica.bind({name: path.resolve() for name, path in runs.items()}, args.device, sessions, settings, analyze,
                        max(1, int(cpus)), args.access_log == "json")


def serve_on_ray(args, options: dict, settings, runs: dict[str, Path]) -> None:
    """Start or join Ray, deploy, and wait; SIGTERM or Ctrl-C takes the application down and exits 0."""
    ray, serve = import_serve()
    check_runs(args, options, runs)
    local = args.ray_address is None
    # replicas' log lines reach this terminal; Ray would fold access lines that differ only in numbers
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        # local: a Ray of this machine's cores for this server alone; otherwise the cluster at the address
        ray.init(address=args.ray_address, include_dashboard=False if local else None, log_to_driver=True)
    except Exception as err:  # a wrong address, a cluster of another Ray version
        raise ConfigError(f"cannot start or join Ray{f' at {args.ray_address}' if args.ray_address else ''} ({err}).") from None
    from ray.serve.context import _get_global_client  # Serve's client: whether it runs, and where its proxy listens

    from nanonlp.serve import _stopped

    serve_was_running = _get_global_client(raise_if_no_controller_running=False) is not None
    if serve_was_running and APP_NAME in serve.status().applications:
        raise ConfigError(f"this Ray cluster already serves an application named '{APP_NAME}' (another nanonlp serve --ray); "
                          "stop that one first (SIGTERM or Ctrl-C where it runs).")
    serve.start(http_options={"host": args.host, "port": args.port, "keep_alive_timeout_s": 5})
    proxy = _get_global_client().http_config
    if (proxy.host, proxy.port) != (args.host, args.port):  # Serve's HTTP options are fixed while it runs
        raise ConfigError(f"Serve already runs on this Ray cluster with its proxy at {proxy.host}:{proxy.port}; serve there "
                          f"(--host {proxy.host} --port {proxy.port}), or shut that Serve down first.")
    signal.signal(signal.SIGTERM, _stopped)  # before the minutes of loading, so that SIGTERM then also takes the app down
    try:
        try:
            serve.run(deployment(args, options, settings, runs), name=APP_NAME, route_prefix="/")
        except RuntimeError as err:  # a replica failed to start: our sentence when it gave one, else Ray's line
            status = serve.status().applications.get(APP_NAME)  # the deployment's message holds the replica's traceback
            why = "\n".join([str(err), *(d.message for d in status.deployments.values())] if status else [str(err)])
            ours = re.findall(r"nanonlp\.errors\.\w+: (.+)", why)
            raise NanoNLPError(f"a replica did not start: {ours[-1]}" if ours else
                              f"the replicas did not start ({str(err).strip().splitlines()[-1]}); the log lines above say why.") from None
        where = f"http://{args.host}:{args.port}"
        count = (f"{options['num_replicas']} replica{'s' if options['num_replicas'] > 1 else ''}" if "num_replicas" in options
                 else f"{options['autoscaling_config']['min_replicas']} to {options['autoscaling_config']['max_replicas']} replicas")
        print(f"serving {', '.join(runs)} on Ray Serve ({count}) at {where} (API docs at {where}/docs)"
              + ("; API key required" if settings.api_key else ""), file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # the application down (Serve drains each replica for up to graceful_shutdown_timeout_s, then its
        # batchers close); Serve itself too when it was started here, as Ray is when local
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if serve_was_running:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
        if local:
            ray.shutdown()
