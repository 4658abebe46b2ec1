"""`stockgate demo`: a flash sale end to end on this machine, judged by the invariants.

Starts an embedded server, the gateway and a worker (subprocesses) and three channel
simulators (threads here), seeds a catalogue of a few hot SKUs and a long tail, runs the
locust scenario headless, waits for the workers to settle, then checks every invariant and
prints what a merchant wants to know. Exit code 0 only if nothing was oversold, no field went
negative, no event was lost and every channel shows Stockgate's count.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec
from msgspec import Struct

from loadtests import invariants
from loadtests.lag import Receipt, propagation, propagation_by_channel
from loadtests.report import (
    ChannelCalls,
    ChannelCheck,
    DemoResult,
    LatencyStats,
    LoadRecord,
    plot,
    read_load_record,
    summary,
)
from loadtests.stack import (
    LOCAL_CLUSTER,
    LOCATION,
    TENANT,
    SimulatedChannel,
    Stack,
    StackConfig,
    new_secret,
)
from loadtests.tiktok_channel import TIKTOK_APP_KEY, tiktok_channel
from stockgate.bundles import Bundles
from stockgate.cli import operator_key
from stockgate.cluster import Store, connect, is_cluster_url
from stockgate.keys import tenant_keys
from stockgate.settings import Settings, load_settings
from stockgate.stock import StockEngine

LOCUSTFILE = Path(__file__).with_name("locustfile.py")

# A drop: a few products everyone wants, in short supply, next to the everyday catalogue.
HOT = {"DROP-SNKR-RED": 60, "DROP-SNKR-BLK": 120, "DROP-HOODIE": 250, "DROP-CAP": 400,
       "DROP-POSTER": 800}
TAIL_SKUS = 50
TAIL_UNITS = 2000
# A kit on sale next to its parts: carts and channel orders mix it with the parts, so the
# parts' units are shared between lines (README "Bundles and kits").
BUNDLES = {"DROP-KIT": {"DROP-SNKR-RED": 1, "DROP-CAP": 2}}
# The marketplace channel's allocation rule (README, "Per-channel allocation").
MARKETPLACE_ALLOCATION = "{percent = 50, hide_below = 5}"


class DemoOptions(Struct, frozen=True):
    duration_s: int = 30
    users: int = 40
    spawn_rate: int = 40
    reports_dir: str = "reports"
    hot: dict[str, int] = msgspec.field(default_factory=lambda: dict(HOT))
    tail_skus: int = TAIL_SKUS
    tail_units: int = TAIL_UNITS
    hold_ttl_s: int = 5
    # Pushes per second Stockgate may send each channel (see ChannelSpec).
    channel_rate_per_s: float = 50.0
    # Upper bound on waiting for expiry, the outbox and every channel after the load.
    settle_timeout_s: float = 30.0
    keep_data: bool = False
    # After the report, keep the whole system up (gateway, worker, simulators) until Ctrl-C,
    # so that its console can be looked at; `on_report` is then called with the result first.
    keep_running: bool = False
    bundles: dict[str, dict[str, int]] = msgspec.field(default_factory=lambda: dict(BUNDLES))
    # Where the stock lives: "" the embedded server, LOCAL_CLUSTER a local Redis Cluster
    # started for the run, else a Cluster URL (its data outlives the run: the demo then
    # uses a tenant of its own, `flash-<random>`, so that an earlier run's events are not
    # counted as this one's).
    store: str = ""


def tail_names(n: int) -> list[str]:
    return [f"TEE-{i:03d}" for i in range(1, n + 1)]


def _seed(url: str, key: str, stock: dict[str, int]) -> None:
    """The catalogue arrives as one bulk adjust, like a warehouse receipt."""
    lines = [{"sku": sku, "delta": units, "reason": "flash sale receipt",
              "idempotency_key": f"seed-{sku}", "location": LOCATION}
             for sku, units in stock.items()]
    resp = httpx.post(f"{url}/v1/stock/bulk", json={"lines": lines},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)
    resp.raise_for_status()
    body = resp.json()
    if body.get("failed"):
        raise RuntimeError(f"seeding failed: {body}")


def _define_bundles(url: str, key: str, bundles: dict[str, dict[str, int]]) -> None:
    for sku, parts in bundles.items():
        resp = httpx.put(f"{url}/v1/bundles/{sku}", headers={"Authorization": f"Bearer {key}"},
                         json={"components": [{"sku": p, "qty": q} for p, q in parts.items()]},
                         timeout=30)
        resp.raise_for_status()


def _locust(stack: Stack, channels: list[SimulatedChannel], opts: DemoOptions,
            reports: Path, skus_tail: list[str], record_path: Path) -> int:
    """Runs the scenario; returns the number of failed requests locust counted."""
    by_kind = {c.kind: c for c in channels}
    env = stack.env()
    env.update({
        "SG_API_KEY": stack.cfg.storefront_key,
        "SG_SKUS_HOT": ",".join([*opts.hot, *opts.bundles]),
        "SG_SKUS_TAIL": ",".join(skus_tail),
        "SG_SHOPIFY": f"{by_kind['shopify'].name}:{by_kind['shopify'].spec.secret}",
        "SG_WOO": f"{by_kind['woocommerce'].name}:{by_kind['woocommerce'].spec.secret}",
        "SG_HOLD_TTL_S": str(opts.hold_ttl_s),
        "SG_LATENCY_OUT": str(record_path),
    })
    if tiktok := by_kind.get("tiktok"):
        env["SG_TIKTOK"] = "|".join([tiktok.name, tiktok.spec.secret, TIKTOK_APP_KEY,
                                     tiktok.server.url])
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "-u", str(opts.users), "-r", str(opts.spawn_rate), "-t", f"{opts.duration_s}s",
            "--host", stack.gateway_url, "--only-summary", "--exit-code-on-error", "0",
            "--html", str(reports / "flash-sale.html"), "--csv", str(reports / "locust"),
            "--loglevel", "WARNING"]
    with open(stack.data_dir / "locust.log", "wb") as log:
        subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, check=True,
                       timeout=opts.duration_s + 60)
    return _locust_failures(reports / "locust_stats.csv")


def _locust_failures(path: Path) -> int:
    import csv

    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("Name") == "Aggregated":
                return int(row.get("Failure Count") or 0)
    return 0


async def _backlog(redis: Store, tenant: str) -> dict[str, int]:
    """Work still in flight: holds not yet resolved, outbox entries, channel deliveries."""
    from stockgate.deliveries import pending_deliveries
    from stockgate.keys import worker_keys

    keys = worker_keys(tenant)
    backlog = await invariants.outbox_backlog(redis, tenant)
    backlog["deliveries queued"] = await pending_deliveries(redis, tenant)
    backlog["deliveries failed"] = int(await redis.hlen(keys.failed))
    return backlog


async def _unconverged(engine: StockEngine, channels: list[SimulatedChannel],
                       skus: list[str], tenant: str) -> int:
    bundles = await Bundles(engine).views(tenant, skus)
    views = {**await invariants.read_views(engine, tenant,
                                           [s for s in skus if s not in bundles]), **bundles}
    return sum(1 for c in channels for sku, v in views.items()
               if c.count(sku) != v.channels.get(c.name))


async def _settle(redis: Store, engine: StockEngine, channels: list[SimulatedChannel],
                  skus: list[str], limit_s: float, tenant: str) -> tuple[bool, float]:
    """Until every hold is resolved (committed, released or expired), the workers are idle
    and every channel shows Stockgate's count, or `limit_s` passed; returns (settled, seconds)."""
    started = time.monotonic()
    expiry = tenant_keys(tenant).expiry
    while time.monotonic() - started < limit_s:
        if (await redis.zcard(expiry) == 0
                and not any((await _backlog(redis, tenant)).values())
                and await _unconverged(engine, channels, skus, tenant) == 0):
            return True, time.monotonic() - started
        await asyncio.sleep(0.25)
    return False, time.monotonic() - started


async def _audit_ids(settings: Settings, tenant: str) -> list[str]:
    from stockgate.audit import EventQuery, audit_store

    store = audit_store(settings)
    await store.open()
    try:
        ids: list[str] = []
        cursor = None
        while True:
            page = await store.query(EventQuery(tenant=tenant, cursor=cursor, limit=10_000))
            ids += [e.id for e in page.events]
            if not page.next_cursor:
                return ids
            cursor = page.next_cursor
    finally:
        await store.close()


async def _observe(stack: Stack, settings: Settings, channels: list[SimulatedChannel],
                   skus: list[str], opts: DemoOptions, phase: str
                   ) -> tuple[bool, float, invariants.Observed | None]:
    tenant = stack.cfg.tenant
    # The stock's store as the gateway sees it: the embedded server or the Cluster (every
    # read below names one tenant's keys, which share a hash slot).
    redis = connect(stack.store_url)
    try:
        engine = StockEngine(redis, settings)
        if phase == "seed":
            ok, took = await _settle(redis, engine, channels, skus, opts.settle_timeout_s,
                                     tenant)
            return ok, took, None
        ok, took = await _settle(redis, engine, channels, skus, opts.settle_timeout_s, tenant)
        counts = {c.name: c.snapshot(skus) for c in channels}
        backlog = await _backlog(redis, tenant)
        observed = await invariants.collect(
            redis, engine, tenant, audit_ids=await _audit_ids(settings, tenant),
            channel_counts=counts,
            extra_pending={k: v for k, v in backlog.items() if k.startswith("deliveries")})
        return ok, took, observed
    finally:
        await redis.aclose()


def _unchanged(receipts: list[tuple[float, str, int]], since_ms: float) -> int:
    """Values received since `since_ms` that repeat the SKU's previous value."""
    last: dict[str, int] = {}
    repeats = 0
    for t, sku, value in receipts:
        if t >= since_ms and last.get(sku) == value:
            repeats += 1
        last[sku] = value
    return repeats


def _tenant(store: str) -> str:
    """The demo's tenant: a fresh store (embedded server, local Cluster) starts empty; a
    Cluster of the user's keeps earlier runs' data, so each run there has a tenant of its own."""
    return TENANT if store in ("", LOCAL_CLUSTER) else f"{TENANT}-{secrets.token_hex(4)}"


def _store_name(store: str) -> str:
    if store == LOCAL_CLUSTER:
        return "a local Redis Cluster (3 primaries + 3 replicas)"
    return "the Redis Cluster at REDIS_URL" if store else ""


def run_scenario(settings: Settings, opts: DemoOptions) -> DemoResult:
    """One full run; raises only when the system could not be started at all."""
    reports = Path(opts.reports_dir)
    reports.mkdir(parents=True, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="stockgate-demo-")
    skus_tail = tail_names(opts.tail_skus)
    catalogue = {**opts.hot, **dict.fromkeys(skus_tail, opts.tail_units)}
    skus = sorted([*catalogue, *opts.bundles])
    channels = [
        SimulatedChannel("shopify-main", "shopify", new_secret(), opts.channel_rate_per_s),
        SimulatedChannel("woo-main", "woocommerce", new_secret(), opts.channel_rate_per_s),
        # A marketplace bridge on Standard Webhooks: it only receives pushes in this demo, and
        # is shown half of each SKU, delisted when fewer than 5 remain (an allocation rule).
        SimulatedChannel("marketplace", "standard",
                         "whsec_" + base64.b64encode(os.urandom(24)).decode(),
                         opts.channel_rate_per_s,
                         allocation=MARKETPLACE_ALLOCATION),
        tiktok_channel("tiktok-shop", skus, opts.channel_rate_per_s),
    ]
    cfg = StackConfig(data_dir=data_dir, storefront_key=new_secret(),
                      operator_key=new_secret(), channels=[c.spec for c in channels],
                      hold_ttl_s=opts.hold_ttl_s, durability=settings.durability,
                      tenant=_tenant(opts.store), store=opts.store)
    stack = Stack(cfg)
    failed = True
    try:
        for c in channels:
            c.start()
        stack.start()
        stack_settings = load_settings(str(stack.config_path), env=stack.env())
        # The gateway listens on loopback only: its secret may go to this terminal (see
        # stockgate.cli.console_notice).
        print(f"Console: {stack.gateway_url}/console  (sign in with key demo-operator: "
              f"{cfg.operator_key})", flush=True)
        _seed(stack.gateway_url, cfg.operator_key, catalogue)
        _define_bundles(stack.gateway_url, cfg.operator_key, opts.bundles)
        # Let the seed reach the channels first: the lag figures are about the sale.
        asyncio.run(_observe(stack, stack_settings, channels, skus, opts, "seed"))
        load_started_ms = time.time() * 1000
        before = {c.name: c.traffic() for c in channels}
        record_path = Path(data_dir) / "load-record.json"
        http_errors = _locust(stack, channels, opts, reports, skus_tail, record_path)
        stack.check_alive()
        settled, settle_s, observed = asyncio.run(
            _observe(stack, stack_settings, channels, skus, opts, "final"))
        assert observed is not None
        traffic = {c.name: [n - m for n, m in zip(c.traffic(), before[c.name], strict=True)]
                   for c in channels}
        report = invariants.check(observed)
        record = (read_load_record(record_path) if record_path.exists()
                  else LoadRecord(started=load_started_ms / 1000, outcomes={}, samples={}))
        receipts = [Receipt(c.name, sku, value, t) for c in channels
                    for t, sku, value in c.receipts()]
        locations = {c.name: (LOCATION,) for c in channels}
        rules = {c.name: stack_settings.channels[c.name].allocation for c in channels}
        lag = propagation(observed.events, receipts, locations, since_ms=load_started_ms,
                          rules=rules)
        lags = propagation_by_channel(observed.events, receipts, locations,
                                      since_ms=load_started_ms, rules=rules)
        calls = [ChannelCalls(c.name, c.kind, changes=lags[c.name].changes,
                              values=traffic[c.name][2],
                              unchanged=_unchanged(c.receipts(), load_started_ms),
                              writes=traffic[c.name][1],
                              calls=traffic[c.name][0], p99_ms=lags[c.name].p99_ms)
                 for c in channels]
        latency: dict[str, LatencyStats] = {k: record.latency(k) for k in record.samples}
        checks = [ChannelCheck(c.name, len(skus), sum(
            1 for sku, v in {**observed.views, **observed.bundle_views}.items()
            if (observed.channel_counts or {}).get(c.name, {}).get(sku) == v.channels.get(c.name)
        )) for c in channels]
        plot_path = reports / "flash-sale.png"
        console_key = operator_key(stack_settings)  # the config's demo-operator
        plot(plot_path, record, observed.events, list(opts.hot),
             f"Stockgate flash sale: {opts.users} users, {opts.duration_s} s")
        result = DemoResult(
            duration_s=opts.duration_s, users=opts.users, hot=dict(opts.hot),
            tail_units=opts.tail_units * opts.tail_skus, tail_skus=opts.tail_skus,
            outcomes=record.outcomes, latency=latency, lag=lag, invariants=report,
            channels=checks,
            final_counts={c.name: c.snapshot([*opts.hot, *opts.bundles]) for c in channels},
            bundles=dict(opts.bundles),
            kits_left={sku: v.available for sku, v in observed.bundle_views.items()},
            expected_counts={c.name: {sku: v.channels.get(c.name, 0) for sku, v in
                                      {**observed.views, **observed.bundle_views}.items()
                                      if sku in opts.hot or sku in opts.bundles}
                             for c in channels},
            rules={c.name: c.spec.allocation for c in channels},
            store=_store_name(opts.store),
            console_url=f"{stack.gateway_url}/console",
            console_key=console_key[0] if console_key else "",
            http_errors=http_errors, settled=settled, settle_s=settle_s,
            durability=cfg.durability, channel_rate_per_s=opts.channel_rate_per_s,
            channel_calls=calls,
            reports=[str(reports / "flash-sale.html"), str(plot_path),
                     str(reports / "summary.json")])
        failed = not passed(result)
        if failed:
            result.data_dir = data_dir
        (reports / "summary.json").write_bytes(msgspec.json.format(msgspec.json.encode(result)))
        (reports / "summary.txt").write_text(summary(result) + "\n")
        if opts.keep_running:
            print(summary(result))
            print(f"Still running: the console is at {stack.gateway_url}/console (key "
                  f"demo-operator: {cfg.operator_key}). Ctrl-C stops everything.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    stack.check_alive()
                    time.sleep(1)
        return result
    finally:
        stack.close()
        for c in channels:
            c.stop()
        if not failed and not opts.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)


def passed(result: DemoResult) -> bool:
    return result.invariants.ok and result.settled and result.http_errors == 0


def demo_store(settings: Settings, cluster: bool) -> str:
    """Where `stockgate demo` keeps the stock: a local Cluster with `--cluster`, the Cluster
    a Cluster REDIS_URL names, else (as always) a fresh embedded server; a plain REDIS_URL
    is not used (the demo needs a store of its own)."""
    url = settings.redis_url
    if cluster:
        if url and is_cluster_url(url):
            raise ValueError("--cluster starts a Cluster of its own, and REDIS_URL names "
                             "one: unset REDIS_URL or drop --cluster")
        return LOCAL_CLUSTER
    return url if url and is_cluster_url(url) else ""


def run_demo(settings: Settings, duration_s: int = 30, cluster: bool = False,
             keep: bool = False) -> int:
    """The `stockgate demo` command: run, print the summary, exit 0 only if all holds."""
    try:
        store = demo_store(settings, cluster)
    except ValueError as exc:
        print(f"stockgate demo: {exc}", file=sys.stderr)
        return 2
    where = f" (stock on {_store_name(store)})" if store else ""
    print(f"Stockgate demo: starting server, gateway, worker and the channel simulators{where}; "
          f"then {duration_s} s of flash-sale load ...", flush=True)
    started = time.monotonic()
    # One line per HTTP call would bury the summary.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        result = run_scenario(settings, DemoOptions(duration_s=duration_s, store=store,
                                                    keep_running=keep))
    except Exception as exc:
        print(f"demo failed to run: {exc}", file=sys.stderr)
        return 2
    if not keep:  # printed already, before the wait
        print(summary(result))
    print(f"(demo took {time.monotonic() - started:.0f} s)")
    return 0 if passed(result) else 1
