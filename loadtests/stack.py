"""The demo's processes: embedded server, gateway, worker and channel simulators, all on
127.0.0.1 with free ports, all in one fresh data directory, all stopped on exit.

A fresh directory per run keeps the outbox holding exactly this run's events, which is what
lets the invariant checker demand that the events add up to the final stock.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import httpx
from msgspec import Struct

from stockgate.embedded import EmbeddedRedis, free_port
from stockgate.local_cluster import LocalCluster

TENANT = "flash"
LOCATION = "main"


class ChannelSpec(Struct, frozen=True):
    """One demo channel: its name in the config, its kind, where its simulator listens."""

    name: str
    kind: str
    secret: str
    api_url: str = ""
    access_token: str = ""
    # Pushes per second Stockgate may send. Real Shopify REST allows 2/s (Plus: 20/s); the
    # local simulators take more so the demo's catalogue converges within seconds.
    rate_limit_per_s: float = 50.0
    # The channel's default allocation rule as a TOML inline table ("": none).
    allocation: str = ""
    # More of the channel's table, as TOML lines (ids maps, a marketplace's own sub-table),
    # and the variables its `env:` references read.
    extra_toml: str = ""
    extra_env: dict[str, str] = {}


class StackConfig(Struct, frozen=True):
    data_dir: str
    storefront_key: str
    operator_key: str
    channels: list[ChannelSpec]
    hold_ttl_s: int = 5
    durability: str = "strict"
    log_level: str = "WARNING"
    tenant: str = TENANT
    # Where the stock lives: "" the embedded server, LOCAL_CLUSTER a LocalCluster started
    # for the run, else a Cluster URL. With a Cluster the embedded server holds arq's queue.
    store: str = ""


LOCAL_CLUSTER = "local-cluster"


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def _env_name(channel: str) -> str:
    return "SG_DEMO_SECRET_" + "".join(c if c.isalnum() else "_" for c in channel).upper()


def render_config(cfg: StackConfig) -> str:
    """The demo's TOML config. Secrets stay in the environment (`env:NAME`), as in production."""
    out = [
        f"hold_ttl_s = {cfg.hold_ttl_s}",
        f'durability = "{cfg.durability}"',
        f'log_level = "{cfg.log_level}"',
        "",
        f"[tenants.{cfg.tenant}]",
        f'default_location = "{LOCATION}"',
        "",
        "[api_keys.demo-storefront]",
        f'tenant = "{cfg.tenant}"',
        'secret = "env:SG_DEMO_STOREFRONT_KEY"',
        'scopes = ["storefront"]',
        "",
        "[api_keys.demo-operator]",
        f'tenant = "{cfg.tenant}"',
        'secret = "env:SG_DEMO_OPERATOR_KEY"',
        'scopes = ["operator"]',
    ]
    for ch in cfg.channels:
        out += [
            "",
            f"[channels.{ch.name}]",
            f'tenant = "{cfg.tenant}"',
            f'kind = "{ch.kind}"',
            f'secret = "env:{_env_name(ch.name)}"',
            f'api_url = "{ch.api_url}"',
            f'access_token = "{ch.access_token}"',
            f"rate_limit_per_s = {ch.rate_limit_per_s}",
        ]
        if ch.allocation:
            out.append(f"allocation = {ch.allocation}")
        if ch.extra_toml:
            out.append(ch.extra_toml)
    return "\n".join(out) + "\n"


def config_env(cfg: StackConfig) -> dict[str, str]:
    env = {"SG_DEMO_STOREFRONT_KEY": cfg.storefront_key,
           "SG_DEMO_OPERATOR_KEY": cfg.operator_key}
    env.update({_env_name(ch.name): ch.secret for ch in cfg.channels})
    for ch in cfg.channels:
        env.update(ch.extra_env)
    return env


class Process:
    """A child process whose output goes to a log file in the data directory."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path
                 ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # closed in stop()
        # Own session: a Ctrl-C in the terminal reaches the demo, which stops us in order.
        self.popen = subprocess.Popen(argv, env=dict(env), stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_http(url: str, process: Process | None, timeout: float = 30.0) -> None:
    """Until `url` answers 2xx; fails early, with the log, if the process died."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n"
                               f"{process.tail()}")
        try:
            if httpx.get(url, timeout=1.0).is_success:
                return
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.1)
    tail = process.tail() if process else ""
    raise RuntimeError(f"{url} did not answer within {timeout}s ({last})\n{tail}")


class Stack:
    """Starts everything for one demo run; `close()` stops it in reverse order."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.data_dir = Path(cfg.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.redis = EmbeddedRedis(self.data_dir / "redis", durability=cfg.durability)  # type: ignore[arg-type]
        self.cluster = (LocalCluster(self.data_dir / "cluster", primaries=3, replicas=1,
                                     durability=cfg.durability)  # type: ignore[arg-type]
                        if cfg.store == LOCAL_CLUSTER else None)
        self.processes: list[Process] = []
        self.gateway_port = free_port()
        self.config_path = self.data_dir / "stockgate.toml"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def store_url(self) -> str:
        """The stock's store: the embedded server, or the Cluster (then arq's queue is on the
        embedded server)."""
        if self.cluster is not None:
            return self.cluster.url
        return self.cfg.store or self.redis.url

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("STOCKGATE_", "SG_"))
               and k not in ("REDIS_URL", "QUEUE_REDIS_URL", "AUDIT_DSN")}
        env.update(config_env(self.cfg))
        if self.store_url != self.redis.url:
            env["QUEUE_REDIS_URL"] = self.redis.url
        env.update({
            "REDIS_URL": self.store_url,
            "STOCKGATE_CONFIG": str(self.config_path),
            "STOCKGATE_DATA_DIR": str(self.data_dir),
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def start(self) -> None:
        """Server (and Cluster), then gateway and worker; returns once the gateway is
        ready."""
        self.redis.start()
        if self.cluster is not None:
            self.cluster.start()
        self.config_path.write_text(render_config(self.cfg))
        env = self.env()
        me = [sys.executable, "-m", "stockgate.cli"]
        gateway = Process("gateway", [*me, "serve", "--host", "127.0.0.1", "--port",
                                      str(self.gateway_port), "--workers", "1"],
                          env, self.data_dir)
        self.processes.append(gateway)
        self.processes.append(Process("worker", [*me, "worker"], env, self.data_dir))
        wait_http(self.gateway_url + "/readyz", gateway)

    def check_alive(self) -> None:
        for p in self.processes:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode}:\n{p.tail()}")

    def close(self) -> None:
        for p in reversed(self.processes):
            p.stop()
        self.processes.clear()
        if self.cluster is not None:
            self.cluster.stop()
        self.redis.stop()


class SimulatedChannel:
    """One channel of the demo: its simulator (a thread of this process) and its config."""

    def __init__(self, name: str, kind: str, secret: str, rate_limit_per_s: float = 50.0,
                 allocation: str = "") -> None:
        from workers.simulators import SimulatorServer

        self.name = name
        self.kind = kind
        self.server = SimulatorServer(kind)
        self.state = self.server.state
        self.spec = ChannelSpec(name=name, kind=kind, secret=secret, api_url=self.server.url,
                                access_token="demo-token" if kind != "woocommerce"
                                else "ck_demo:cs_demo",
                                rate_limit_per_s=rate_limit_per_s, allocation=allocation)

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def _key(self, sku: str) -> tuple[str, str]:
        # Unmapped SKUs travel as the channel's item id; WooCommerce has no locations.
        return (sku, "") if self.kind == "woocommerce" else (sku, LOCATION)

    def count(self, sku: str) -> int | None:
        return self.state.counts.get(self._key(sku))

    def snapshot(self, skus: list[str]) -> dict[str, int]:
        return {sku: value for sku in skus if (value := self.count(sku)) is not None}

    def traffic(self) -> tuple[int, int, int]:
        """(calls answered, write calls, values accepted) so far."""
        return self.state.calls, self.state.writes, len(self.state.received)

    def receipts(self) -> list[tuple[float, str, int]]:
        """(unix ms, sku, value) of every value the channel accepted."""
        return [(t, item, value) for t, item, _loc, value in list(self.state.received)]
