"""The `stockgate` command: serve, worker, up (everything in one), demo, redis."""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec

from stockgate.embedded import EmbeddedRedis, running_url, start_for
from stockgate.settings import ApiKey, ConfigError, Settings, load_settings

log = logging.getLogger("stockgate")

# The operator key `up` makes when none is configured, in the data directory.
LOCAL_KEY_FILE = "local-operator-key"


def _with_redis(settings: Settings) -> tuple[Settings, EmbeddedRedis | None]:
    """Point the settings at a Redis: REDIS_URL / the config, else the embedded server already
    serving this data directory, else a new embedded server owned by this process. With a
    Cluster redis_url and no queue_redis_url, the embedded server holds arq's queue only."""
    if settings.redis_url and settings.queue_url():
        return settings, None
    url = running_url(settings.data_dir)
    server = None
    if url is None:
        server = start_for(settings.data_dir, settings.durability)
        url = server.url
        log.info("started embedded server %s (data in %s)", url, settings.data_dir)
    if settings.redis_url:  # a Cluster: the embedded server is the job queue's
        os.environ["QUEUE_REDIS_URL"] = url
        return msgspec.structs.replace(settings, queue_redis_url=url), server
    os.environ["REDIS_URL"] = url
    return msgspec.structs.replace(settings, redis_url=url), server


# Where `--cluster` runs its Cluster's nodes, under the data directory.
LOCAL_CLUSTER_DIR = "cluster"


def _refuse_two_stores(settings: Settings, wanted: bool) -> None:
    if wanted and settings.redis_url:
        raise SystemExit("stockgate: --cluster starts a Cluster of its own; unset REDIS_URL "
                         f"(now {_without_password(settings.redis_url)}) or drop --cluster")


@contextmanager
def _local_cluster(settings: Settings, wanted: bool) -> Iterator[Settings]:
    """With `--cluster`: a LocalCluster (3 primaries, 3 replicas) for this run only, in the
    data directory (an earlier run's nodes are wiped first: their ports are gone), with
    REDIS_URL pointing at it for this process and its children; stopped on the way out.
    Without it: the settings unchanged."""
    if not wanted:
        yield settings
        return
    from stockgate.local_cluster import LocalCluster

    _refuse_two_stores(settings, wanted)
    directory = Path(settings.data_dir) / LOCAL_CLUSTER_DIR
    shutil.rmtree(directory, ignore_errors=True)
    cluster = LocalCluster(directory, primaries=3, replicas=1,
                           durability=settings.durability)  # type: ignore[arg-type]
    try:
        cluster.start()
    except (OSError, RuntimeError) as exc:
        raise SystemExit(f"stockgate: the local Cluster did not start: {exc}") from None
    log.info("started a local Cluster %s (3 primaries + 3 replicas, data in %s)",
             cluster.url, directory)
    os.environ["REDIS_URL"] = cluster.url
    try:
        yield msgspec.structs.replace(settings, redis_url=cluster.url)
    finally:
        cluster.stop()


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    from gateway.server import serve

    settings, server = _with_redis(settings)
    try:
        serve(settings, host=args.host, port=args.port, workers=args.workers)
    finally:
        if server:
            server.stop()


def _worker(settings: Settings, args: argparse.Namespace) -> None:
    from workers.main import run_worker

    settings, server = _with_redis(settings)
    try:
        run_worker(settings)
    finally:
        if server:
            server.stop()


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only ("" and 0.0.0.0 are every
    interface; a name other than localhost may resolve to anything)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _local_key(settings: Settings) -> tuple[Settings, str | None]:
    """With no API key configured every call would be a 401: for a local `up` without a
    config file, make one operator key and write a config naming it in the data directory
    for the child processes. The key itself goes to a file only its owner can read."""
    if settings.api_keys or os.environ.get("STOCKGATE_CONFIG"):
        return settings, None
    secret = secrets.token_urlsafe(24)
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    key_file = data_dir / LOCAL_KEY_FILE
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)  # an older file may have had wider permissions
        fh.write(secret + "\n")
    path = data_dir / "local-config.toml"
    path.write_text('[api_keys.local-operator]\nsecret = "env:SG_LOCAL_KEY"\n'
                    'scopes = ["operator"]\n')
    os.environ["STOCKGATE_CONFIG"] = str(path)
    os.environ["SG_LOCAL_KEY"] = secret
    return load_settings(), secret


def local_key_notice(host: str, port: int, key: str, data_dir: str) -> str:
    """What `up` tells about the key it made. On loopback the key is shown (a newcomer's first
    run); on any other address it is not: terminals of servers are recorded and shipped to
    log stores, and the key opens every operator route to whoever reads them."""
    key_file = Path(data_dir) / LOCAL_KEY_FILE
    if is_loopback(host):
        return (f"no API keys configured: this run's operator key is {key} (also in "
                f"{key_file})\n  try: curl -H 'Authorization: Bearer {key}' "
                f"http://{host}:{port}/v1/stock/SKU-1")
    return (f"no API keys configured: this run's operator key is in {key_file} (readable by "
            f"this user only), not shown because the gateway listens on {host}; for a server "
            "others reach, configure API keys in STOCKGATE_CONFIG instead")


def operator_key(settings: Settings) -> tuple[str, ApiKey] | None:
    """The first operator-scope API key of the config (its order in the file), by name."""
    return next(((name, key) for name, key in settings.api_keys.items()
                 if "operator" in key.scopes), None)


def _url_host(host: str) -> str:
    """The host part of a URL to reach a gateway listening on `host` from this machine: a
    wildcard address (every interface) is reached on loopback; an IPv6 literal is bracketed."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host.strip("[]") == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def console_url(host: str, port: int) -> str:
    return f"http://{_url_host(host)}:{port}/console"


def console_notice(settings: Settings, host: str, port: int) -> str:
    """What `up` prints once its gateway answers: where the operator console is and the key
    to sign in with. The secret is shown on loopback only, for the reason in
    local_key_notice (a server's terminal output is recorded and shipped to log stores)."""
    url = console_url(host, port)
    found = operator_key(settings)
    if found is None:
        config = os.environ.get("STOCKGATE_CONFIG") or "the file STOCKGATE_CONFIG names"
        return (f"Console: {url}  (no operator key to sign in with: add one to {config}, e.g."
                '\n  [api_keys.ops]\n  secret = "env:SG_OPS_KEY"\n  scopes = ["operator"]'
                "\nand restart with SG_OPS_KEY set)")
    name, key = found
    if is_loopback(host):
        return f"Console: {url}  (sign in with operator key {name}: {key.secret})"
    return (f"Console: {url}  (sign in with operator key {name}; its secret is not shown "
            f"because the gateway listens on {host})")


def _answers(host: str, port: int) -> bool:
    """Whether the gateway serves yet (liveness: no Redis round trip, no key needed)."""
    try:
        return httpx.get(f"http://{_url_host(host)}:{port}/healthz", timeout=1,
                         trust_env=False).is_success  # a proxy from the env: not for loopback
    except httpx.HTTPError:
        return False


def _up(settings: Settings, args: argparse.Namespace) -> None:
    """Embedded Redis + gateway + worker as child processes; Ctrl-C stops them all."""
    _refuse_two_stores(settings, args.cluster)  # before writing a key for a run refused
    settings, local_key = _local_key(settings)
    with _local_cluster(settings, args.cluster) as settings:
        _up_with(settings, args, local_key)


def _up_with(settings: Settings, args: argparse.Namespace, local_key: str | None) -> None:
    settings, server = _with_redis(settings)
    me = [sys.executable, "-m", "stockgate.cli"]
    children = [
        subprocess.Popen([*me, "serve", "--host", args.host, "--port", str(args.port),
                          "--workers", str(args.workers)]),
        subprocess.Popen([*me, "worker"]),
    ]
    queue = settings.queue_url()
    print(f"stockgate up: gateway http://{args.host}:{args.port}  redis "
          f"{_without_password(settings.redis_url)}"
          + (f"  queue {_without_password(queue)}" if queue != settings.redis_url else ""),
          flush=True)
    if local_key:
        print(local_key_notice(args.host, args.port, local_key, settings.data_dir), flush=True)
    stopping = False
    announced = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and all(c.poll() is None for c in children):
            # Told once the gateway answers, so the link works when it is read. print(), not
            # the logger: it may carry the key's secret, which is for this terminal (the
            # user's own config, shown for signing in) and never for a log file or store.
            if not announced and _answers(args.host, args.port):
                print(console_notice(settings, args.host, args.port), flush=True)
                announced = True
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
        if server:
            server.stop()


# What the `load` extra brings that the demo needs: locust runs the shoppers (as a subprocess,
# so its absence showed only as that subprocess's traceback), matplotlib draws the report.
LOAD_MODULES = ("locust", "matplotlib")
LOAD_HINT = ("install it with: pip install -e '.[load]' (in the repo), or run `make run`, "
             "which sets up .venv with it and runs the demo")


def missing_load_modules() -> list[str]:
    return [name for name in LOAD_MODULES if importlib.util.find_spec(name) is None]


def _demo(settings: Settings, args: argparse.Namespace) -> None:
    if missing := missing_load_modules():
        print(f"stockgate demo: {' and '.join(missing)} not installed (the optional `load` "
              f"extra); {LOAD_HINT}", file=sys.stderr)
        raise SystemExit(2)
    from loadtests.demo import run_demo

    raise SystemExit(run_demo(settings, duration_s=args.duration, cluster=args.cluster,
                              keep=args.keep))


def _redis(settings: Settings, args: argparse.Namespace) -> None:
    server = start_for(settings.data_dir, settings.durability)
    print(f"embedded server at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stockgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, helptext in (
        ("serve", _serve, "run the HTTP gateway"),
        ("up", _up, "embedded Redis + gateway + worker in one command"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        p.add_argument("--workers", type=int, default=1, help="gateway processes")
        p.set_defaults(func=func)
    sub.choices["up"].add_argument(
        "--cluster", action="store_true",
        help="start a local Redis Cluster (3 primaries + 3 replicas) in the data directory "
             "for this run and keep the stock there (wiped at the next --cluster run)")
    sub.add_parser("worker", help="run the arq workers").set_defaults(func=_worker)
    demo = sub.add_parser("demo", help="flash-sale demo with channel simulators and a report")
    demo.add_argument("--duration", type=int, default=30, help="seconds of load")
    demo.add_argument("--keep", action="store_true",
                      help="after the report, keep everything running (for the console) "
                           "until Ctrl-C")
    demo.add_argument("--cluster", action="store_true",
                      help="keep the stock on a local Redis Cluster (3 primaries + 3 "
                           "replicas) started for the run; a Cluster REDIS_URL is used as is")
    demo.set_defaults(func=_demo)
    sub.add_parser("redis", help="run only the embedded server").set_defaults(func=_redis)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise SystemExit(f"stockgate: {exc}") from None
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args.func(settings, args)


if __name__ == "__main__":
    main()
