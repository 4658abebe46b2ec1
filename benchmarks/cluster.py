"""Capacity on a Redis Cluster: holds per second, server CPU per hold per shard, and what
WAIT for a replica after each batch costs, against a plain server measured in the same run.

    python -m benchmarks.cluster [--holds 20000] [--rounds 3] [--concurrency 200]
                                 [--engines 4]

One run starts, on 127.0.0.1 from the embedded server binary (all `appendfsync everysec`):

- plain: one server, no Cluster (the baseline; the engine's own pipelined connection),
- plain, pipes: the same server, the engine's batches sent as redis-py pipelines (the
  Cluster's client path, without a Cluster),
- 1p+1r: a LocalCluster of 1 primary and 1 replica,
- 3p+0r: a LocalCluster of 3 primaries without replicas (isolates what replication costs),
- 3p+1r: a LocalCluster of 3 primaries, 1 replica each,
- 3p+1r WAIT 1: the same Cluster, with `replica_wait=1` (a WAIT per node after each batch),
- 3p+1r, 600 shop: the same Cluster with three times the shoppers, so that each primary's
  batches are as large as the plain server's (a tick's calls split three ways otherwise).

Each measurement is a burst of `--holds` 1-line holds through StockEngine (the gateway's
client path) from `--concurrency` coroutines spread over `--engines` engines, each with its
own client (connection pool), so batches come from several sources as from several gateway
processes. Three tenants, one per primary of the 3-primary Cluster (`spread_tenants(3)`), five
hot SKUs each; on plain and 1p+1r the same three tenants share the one server. Configurations
alternate within a round (the order reverses every other round) and the medians of the
rounds are printed at the end.

Figures per measurement: holds/s; server CPU per hold (the change of used_cpu_user +
used_cpu_sys of `INFO cpu`, summed over the primaries, and separately over the replicas,
divided by the holds; the primaries' main threads alone too, the single core a shard is
bound by); the benchmark process's own CPU per hold (`time.process_time`); p50 / p99 of each
hold's latency; holds per read event on the primaries (about the batch size per node) and
per WAIT; how busy the whole machine was and how much of it this run's processes used.
Everything shares this machine's cores, the load generator included (one Python process,
most likely the bottleneck), so holds/s is this machine's figure and server CPU per hold is
the portable one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from stockgate.cluster import connect
from stockgate.embedded import EmbeddedRedis
from stockgate.local_cluster import LocalCluster, spread_tenants
from stockgate.models import Line
from stockgate.settings import Settings
from stockgate.stock import StockEngine

TENANTS = spread_tenants(3, prefix="bench")
SKUS = [f"DROP-{i}" for i in range(5)]
SEED_UNITS = 1_000_000_000  # far above any run: no hold is refused
WARMUP_PER_SHOPPER = 2


@dataclass
class Target:
    """One configuration: where its engines connect and which nodes it is measured on."""

    name: str
    url: str
    primaries: list[EmbeddedRedis]
    replicas: list[EmbeddedRedis]
    replica_wait: int = 0
    # False: the engine's batches go through redis-py pipelines, as on a Cluster, instead of
    # its own pipelined connection (stockgate/wire.py): separates the client path's batch
    # shape from what Cluster mode itself costs the server.
    wire: bool = True
    # As many shoppers per primary as the baseline has on its one server: each node's
    # batches are then as large as the plain server's (otherwise three primaries split a
    # tick's calls three ways), as they become on a loaded shard.
    scale_concurrency: bool = False


@dataclass
class Result:
    holds: int
    seconds: float
    primary_us: float  # server CPU per hold, all primaries' processes
    primary_main_us: float  # the primaries' main threads only
    replica_us: float
    client_us: float
    p50_ms: float
    p99_ms: float
    per_primary_us: list[float] = field(default_factory=list)
    holds_per_read: float = 0.0  # on the primaries: about the holds per batch per node
    holds_per_wait: float = 0.0
    busy: float = 0.0  # share of the whole machine (all cores) busy during the burst
    ours: float = 0.0  # share of the machine this benchmark's processes used (client + nodes)

    @property
    def rate(self) -> float:
        return self.holds / self.seconds


@dataclass
class Sample:
    cpu: float  # whole process, CPU seconds
    main: float  # main thread
    # Read events (total_reads_processed): about one per batch a client sent; a primary's
    # count also has its replicas' acknowledgements.
    reads: int
    waits: int  # WAIT commands served


async def sample(nodes: list[EmbeddedRedis]) -> list[Sample]:
    """INFO cpu, stats and commandstats of each node."""
    found = []
    for node in nodes:
        client = Redis(host="127.0.0.1", port=node.port)
        try:
            info = await client.info("everything")
        finally:
            await client.aclose()
        found.append(Sample(
            cpu=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            main=(float(info.get("used_cpu_user_main_thread", 0.0))
                  + float(info.get("used_cpu_sys_main_thread", 0.0))),
            reads=int(info.get("total_reads_processed", 0)),
            waits=int(info.get("cmdstat_wait", {}).get("calls", 0))))
    return found


async def hincrby_us(server: EmbeddedRedis, calls: int = 20_000, batch: int = 200) -> float:
    """Server microseconds per bare HINCRBY, pipelined (INFO commandstats): how fast this
    shared machine is at the moment, as in benchmarks/lua.py (0.17 us on a quiet day)."""
    redis = Redis(host="127.0.0.1", port=server.port)
    try:
        await redis.config_resetstat()
        for _ in range(calls // batch):
            pipe = redis.pipeline(transaction=False)
            for _ in range(batch):
                pipe.hincrby("bench:calibrate", "n", 1)
            await pipe.execute()
        stats = await redis.info("commandstats")
        return float(stats["cmdstat_hincrby"]["usec_per_call"])
    finally:
        await redis.aclose()


def machine() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, every core, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [float(x) for x in stat.readline().split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / hz, sum(fields) / hz


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


async def seed(url: str) -> None:
    redis = connect(url)
    engine = StockEngine(redis, Settings())
    try:
        await engine.load_scripts()
        for tenant in TENANTS:
            for sku in SKUS:
                await engine.adjust(tenant, sku, reason="bench", idempotency_key=f"seed-{sku}",
                                    delta=SEED_UNITS)
    finally:
        engine.scripts.close()
        await redis.aclose()


async def measure(target: Target, tag: str, holds: int, concurrency: int,
                  engines: int) -> Result:
    settings = Settings(durability="everysec", replica_wait=target.replica_wait,
                        replica_wait_ms=1000)
    if target.scale_concurrency:
        concurrency *= len(target.primaries)
    clients = [connect(target.url) for _ in range(engines)]
    pool = [StockEngine(client, settings) for client in clients]
    try:
        for engine in pool:
            await engine.load_scripts()
            if not target.wire and engine.scripts.wire is not None:
                engine.scripts.wire.close()
                engine.scripts.wire = None
        per_shopper = holds // concurrency
        latencies: list[float] = []

        async def shopper(n: int, count: int, prefix: str, timed: bool) -> None:
            engine = pool[n % engines]
            tenant = TENANTS[n % len(TENANTS)]
            sku = SKUS[(n // len(TENANTS)) % len(SKUS)]
            for i in range(count):
                start = time.perf_counter()
                await engine.hold(tenant, [Line(sku, 1)], hold_id=f"{prefix}-{n}-{i}")
                if timed:
                    latencies.append(time.perf_counter() - start)

        # Warm-up: connections to every node, slot maps, script caches.
        await asyncio.gather(*(shopper(n, WARMUP_PER_SHOPPER, f"{tag}-w", False)
                               for n in range(concurrency)))
        nodes = target.primaries + target.replicas
        before = await sample(nodes)
        busy0, total0 = machine()
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(shopper(n, per_shopper, tag, True) for n in range(concurrency)))
        seconds, client = time.perf_counter() - t0, time.process_time() - cpu0
        busy1, total1 = machine()
        after = await sample(nodes)
    finally:
        for engine in pool:
            engine.scripts.close()
        for client_ in clients:
            await client_.aclose()
    done = len(latencies)
    deltas = [Sample(a.cpu - b.cpu, a.main - b.main, a.reads - b.reads, a.waits - b.waits)
              for a, b in zip(after, before, strict=True)]
    prim, repl = deltas[: len(target.primaries)], deltas[len(target.primaries):]
    us = 1e6 / done
    reads, waits = sum(d.reads for d in prim), sum(d.waits for d in prim)
    return Result(
        holds=done, seconds=seconds,
        primary_us=sum(d.cpu for d in prim) * us, primary_main_us=sum(d.main for d in prim) * us,
        replica_us=sum(d.cpu for d in repl) * us, client_us=client * us,
        p50_ms=percentile(latencies, 50) * 1e3, p99_ms=percentile(latencies, 99) * 1e3,
        per_primary_us=[d.cpu * us for d in prim],
        holds_per_read=done / reads if reads else 0.0,
        holds_per_wait=done / waits if waits else 0.0,
        busy=(busy1 - busy0) / (total1 - total0),
        ours=(client + sum(d.cpu for d in deltas)) / (total1 - total0))


HEADER = (f"{'configuration':<16}{'holds/s':>9}{'x plain':>8}{'prim us':>9}{'main us':>9}"
          f"{'repl us':>9}{'client us':>10}{'p50 ms':>8}{'p99 ms':>8}{'batch':>7}")


def row(name: str, r: Result, plain_rate: float | None) -> str:
    ratio = f"{r.rate / plain_rate:>8.2f}" if plain_rate else f"{'':>8}"
    return (f"{name:<16}{r.rate:>9.0f}{ratio}{r.primary_us:>9.1f}{r.primary_main_us:>9.1f}"
            f"{r.replica_us:>9.1f}{r.client_us:>10.1f}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}"
            f"{r.holds_per_read:>7.1f}{r.busy:>6.0%}{r.ours:>6.0%}")


async def idle_cpu(targets: list[Target], seconds: float = 1.0) -> dict[str, float]:
    """Server CPU microseconds per second with no load (cron, cluster bus, replication
    pings), summed over each configuration's nodes."""
    nodes = {t.name: t.primaries + t.replicas for t in targets}
    before = {name: await sample(n) for name, n in nodes.items()}
    await asyncio.sleep(seconds)
    after = {name: await sample(n) for name, n in nodes.items()}
    return {name: sum(a.cpu - b.cpu for a, b in zip(after[name], before[name], strict=True))
            * 1e6 / seconds for name in nodes}


async def run(data_dir: Path, holds: int, rounds: int, concurrency: int, engines: int) -> None:
    plain = EmbeddedRedis(data_dir / "plain", durability="everysec")
    clusters = {
        "1p+1r": LocalCluster(data_dir / "c1", primaries=1, replicas=1),
        "3p+0r": LocalCluster(data_dir / "c3n", primaries=3, replicas=0),
        "3p+1r": LocalCluster(data_dir / "c3", primaries=3, replicas=1),
    }
    started: list[EmbeddedRedis | LocalCluster] = []
    try:
        plain.start()
        started.append(plain)
        for cluster in clusters.values():
            cluster.start()
            started.append(cluster)
        targets = [Target("plain", plain.url, [plain], []),
                   Target("plain, pipes", plain.url, [plain], [], wire=False)]
        for name, cluster in clusters.items():
            p = cluster.primaries
            targets.append(Target(name, cluster.url, cluster.nodes[:p], cluster.nodes[p:]))
        c3 = clusters["3p+1r"]
        targets.append(Target(f"3p+1r, {3 * concurrency} shop", c3.url, c3.nodes[:3],
                              c3.nodes[3:], scale_concurrency=True))
        targets.append(Target("3p+1r WAIT 1", c3.url, c3.nodes[:3], c3.nodes[3:],
                              replica_wait=1))
        for target in targets:
            if target.wire and not target.replica_wait and not target.scale_concurrency:
                await seed(target.url)
        idle = await idle_cpu([t for t in targets if t.wire and not t.replica_wait
                               and not t.scale_concurrency])
        print(f"1-line holds through StockEngine: {holds:,} per measurement, {concurrency} "
              f"shoppers over {engines} engines, tenants {', '.join(TENANTS)}, "
              f"appendfsync everysec, {rounds} rounds")
        print("idle server CPU, us per second, all nodes: "
              + ", ".join(f"{n} {v:.0f}" for n, v in idle.items()))
        print("prim/main/repl us: server CPU per hold summed over primaries (process / main "
              "thread) and replicas; client us: this process; batch: holds per read event on the "
              "primaries (about the holds per batch per node); busy: the whole machine's busy "
              "share during the burst, ours: the share this client and these servers used")
        results: dict[str, list[Result]] = {t.name: [] for t in targets}
        speeds: list[float] = []
        for r in range(rounds):
            speed = await hincrby_us(plain)
            speeds.append(speed)
            print(f"\nround {r + 1} (bare HINCRBY {speed:.2f} us on plain)\n{HEADER}")
            order = targets if r % 2 == 0 else targets[::-1]
            measured: dict[str, Result] = {}
            for target in order:
                res = await measure(target, f"r{r}-{target.name.replace(' ', '')}", holds,
                                    concurrency, engines)
                measured[target.name] = res
                results[target.name].append(res)
            for target in targets:
                res = measured[target.name]
                line = row(target.name, res, measured["plain"].rate)
                if res.holds_per_wait:
                    line += f"  holds per WAIT: {res.holds_per_wait:.1f}"
                if len(res.per_primary_us) > 1:
                    line += "  per primary: " + " / ".join(f"{u:.1f}"
                                                            for u in res.per_primary_us)
                print(line)
        print(f"\nmedians of {rounds} rounds (x plain: the median of each round's ratio; "
              f"bare HINCRBY {statistics.median(speeds):.2f} us)")
        print(HEADER)
        for target in targets:
            rs = results[target.name]
            med = Result(
                holds=holds, seconds=holds / statistics.median(x.rate for x in rs),
                primary_us=statistics.median(x.primary_us for x in rs),
                primary_main_us=statistics.median(x.primary_main_us for x in rs),
                replica_us=statistics.median(x.replica_us for x in rs),
                client_us=statistics.median(x.client_us for x in rs),
                p50_ms=statistics.median(x.p50_ms for x in rs),
                p99_ms=statistics.median(x.p99_ms for x in rs),
                holds_per_read=statistics.median(x.holds_per_read for x in rs),
                busy=statistics.median(x.busy for x in rs),
                ours=statistics.median(x.ours for x in rs))
            ratios = [x.rate / p.rate for x, p in zip(rs, results["plain"], strict=True)]
            line = row(target.name, med, None)
            print(line[:25] + f"{statistics.median(ratios):>8.2f}" + line[33:])
        print("\nserver CPU per hold on the primaries against plain's in the same round "
              "(median of the rounds' ratios; the rounds'):")
        for target in targets[1:]:
            cpu_ratios = [x.primary_us / p.primary_us
                          for x, p in zip(results[target.name], results["plain"], strict=True)]
            print(f"  {target.name:<16}{statistics.median(cpu_ratios):>6.2f}   ("
                  + ", ".join(f"{c:.2f}" for c in cpu_ratios) + ")")
        wait, nowait = results["3p+1r WAIT 1"], results["3p+1r"]
        print("\nWAIT 1 against 3p+1r without, per round: holds/s "
              + ", ".join(f"{w.rate / n.rate:.2f}" for w, n in zip(wait, nowait, strict=True))
              + "; p50 " + ", ".join(f"{w.p50_ms / n.p50_ms:.2f}"
                                    for w, n in zip(wait, nowait, strict=True))
              + "; p99 " + ", ".join(f"{w.p99_ms / n.p99_ms:.2f}"
                                    for w, n in zip(wait, nowait, strict=True))
              + "; primary CPU per hold " + ", ".join(f"{w.primary_us / n.primary_us:.2f}"
                                                      for w, n in zip(wait, nowait, strict=True))
              + "; replica CPU per hold " + ", ".join(f"{w.replica_us / n.replica_us:.2f}"
                                                      for w, n in zip(wait, nowait, strict=True)))
        main = statistics.median(x.primary_main_us for x in results["3p+1r"])
        print(f"one shard's main thread at 100% of a core: about {1e6 / main:,.0f} holds/s "
              f"(1 s / {main:.1f} us, 3p+1r median)")
    finally:
        for item in reversed(started):
            item.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--holds", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--engines", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        asyncio.run(run(Path(data_dir), args.holds, args.rounds, args.concurrency,
                        args.engines))


if __name__ == "__main__":
    main()
