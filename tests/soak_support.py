"""Helpers for the worker soak (tests/test_soak_workers.py): worker processes (one of them with
a skewed clock), a paced burst of stock changes, and what the channels and Redis show after."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from redis.asyncio import Redis

from stockgate.deliveries import delivery_id, member_of
from stockgate.errors import StockgateError
from stockgate.keys import tenant_keys, worker_keys
from stockgate.models import Line, event_decoder
from stockgate.stock import StockEngine
from workers.simulators import SimulatorServer

REPO = Path(__file__).parent.parent

# `python -c WORKER <config> <skew seconds> <worker config JSON>`: the real worker entry
# (workers.main.run_worker), with time.time moved by the skew before anything imports it, as
# on a host whose clock is off. Leases, due times and call slots use Redis TIME, so the skew
# must change nothing there.
WORKER = """
import asyncio, faulthandler, signal, sys, time

def dump_stacks(signum, frame):
    # A worker that outlives its SIGTERM: where its threads and tasks are.
    faulthandler.dump_traceback(all_threads=True)
    try:
        for task in asyncio.all_tasks(asyncio.get_running_loop()):
            task.print_stack(limit=8, file=sys.stderr)
    except RuntimeError:
        print("no event loop running", file=sys.stderr)
    sys.stderr.flush()

signal.signal(signal.SIGUSR2, dump_stacks)
skew = float(sys.argv[2])
if skew:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + skew
    time.time_ns = lambda: _time_ns() + int(skew * 1e9)
import msgspec
from stockgate.settings import load_settings
from workers.main import run_worker
from workers.runtime import WorkerConfig
print(f"clock skew {skew:+.0f}s: time.time() - real = {time.time() - _time() if skew else 0:.1f}s",
      flush=True)
run_worker(load_settings(sys.argv[1]), msgspec.json.decode(sys.argv[3], type=WorkerConfig))
"""


def start_worker(config: Path, worker_config: bytes, log: Path,
                 skew_s: float = 0.0) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, str(config), str(skew_s), worker_config.decode()],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def stop_workers(procs: list[subprocess.Popen[bytes]], within_s: float = 15.0) -> list[int]:
    """SIGTERM to each (the worker's graceful stop); one still running within_s later dumps its
    stacks into its log and is killed. Returns the exit codes (-9: it had to be killed)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + within_s
    for proc in procs:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR2)  # its stacks into its log, for the report
            time.sleep(1)
            proc.kill()
            proc.wait(5)
    return [proc.returncode for proc in procs]


class Load:
    """A bounded burst of holds, commits, releases and receipts over many SKUs of several
    tenants, at a fixed pace, through the engine (the same Lua calls the gateway makes)."""

    def __init__(self, engine: StockEngine, skus: dict[str, list[str]], seed: int) -> None:
        self.engine = engine
        self.skus = skus
        self.rng = random.Random(seed)
        self.open_holds: dict[str, list[str]] = {t: [] for t in skus}
        self.ops: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self._n = 0

    async def run(self, rate: float, duration_s: float, tick_s: float = 0.02) -> float:
        """Runs ~rate ops a second for duration_s. Returns the seconds it took."""
        start = time.monotonic()
        due = 0.0
        while (elapsed := time.monotonic() - start) < duration_s:
            owed = int(elapsed * rate) - self._n
            if owed > 0:
                await asyncio.gather(*(self.one() for _ in range(owed)))
            due += tick_s
            await asyncio.sleep(max(start + due - time.monotonic(), 0))
        return time.monotonic() - start

    async def one(self) -> None:
        self._n += 1
        n, rng = self._n, self.rng
        tenant = rng.choice(sorted(self.skus))
        held = self.open_holds[tenant]
        roll = rng.random()
        try:
            if roll < 0.15:
                await self.engine.adjust(tenant, rng.choice(self.skus[tenant]),
                                         reason="receipt", idempotency_key=f"rcv-{n}",
                                         delta=rng.randint(1, 6))
                self.ops["adjust"] += 1
            elif roll < 0.40 and held:
                hold_id = held.pop(rng.randrange(len(held)))
                await self.engine.commit(tenant, hold_id, f"order-{hold_id}")
                self.ops["commit"] += 1
            elif roll < 0.55 and held:
                await self.engine.release(tenant, held.pop(rng.randrange(len(held))))
                self.ops["release"] += 1
            else:
                lines = [Line(sku, rng.randint(1, 3))
                         for sku in rng.sample(self.skus[tenant], rng.choice((1, 1, 1, 2)))]
                hold_id = f"h-{n}"
                await self.engine.hold(tenant, lines, hold_id=hold_id)
                held.append(hold_id)
                self.ops["hold"] += 1
        except StockgateError as exc:
            self.refused[type(exc).__name__] += 1

    @property
    def total(self) -> int:
        return sum(self.ops.values())


async def healthy_matches(redis: Redis, engine: StockEngine, tenant: str,
                          sims: dict[str, SimulatorServer], skus: list[str]) -> list[str]:
    """Healthy targets whose channel does not show the canonical value (or are still due)."""
    wrong = []
    for name in sims:
        if await redis.zcard(worker_keys(tenant).due(name)):
            wrong.append(f"{name}: pushes due")
    for sku in skus:
        view = await engine.stock(tenant, sku)
        for name, sim in sims.items():
            shown = sim.state.count(sku, "main")
            if shown != view.channels[name]:
                wrong.append(f"{name}|{sku}: shows {shown}, canonical {view.channels[name]}")
    return wrong


async def failing_targets(redis: Redis, tenant: str, channels: Iterable[str],
                          skus: list[str]) -> dict[str, list[str]]:
    """Where every target of a failing channel stands: parked (in the failed hash), retrying
    (due, with failed attempts counted), or silent: neither, which is a target on its first
    try or not yet marked while changes arrive, and a failure nobody sees once they stop."""
    keys = worker_keys(tenant)
    found: dict[str, list[str]] = {"parked": [], "retrying": [], "silent": []}
    for channel in channels:
        for sku in skus:
            member = member_of(channel, "main", sku)
            if await redis.hexists(keys.failed, delivery_id(member)):
                found["parked"].append(member)
            elif (await redis.zscore(keys.due(channel), member) is not None
                  and int(await redis.hget(keys.attempts, member) or 0) > 0):
                found["retrying"].append(member)
            else:
                found["silent"].append(member)
    return found


# How each cell field moves `available` (stockgate.stock.StockEngine.view).
AVAILABLE_SIGN = {"on_hand": 1, "reserved": -1, "committed": -1, "unavailable": -1, "safety": -1}


async def change_times(redis: Redis, tenant: str, since_ms: int
                       ) -> dict[str, list[tuple[int, int]]]:
    """SKU -> [(Redis ms of the change, available after it)] in outbox order, from since_ms:
    the changes that move what the channels show."""
    changes: dict[str, list[tuple[int, int]]] = {}
    for _, fields in await redis.xrange(tenant_keys(tenant).outbox, min=str(since_ms)):
        event = event_decoder.decode(fields[b"e"])
        # A commit moves units from reserved to committed: what the channels show stays.
        if event.after is None or not sum(AVAILABLE_SIGN.get(k, 0) * v
                                          for k, v in event.delta.items()):
            continue
        changes.setdefault(event.sku, []).append((event.ts, max(event.after.available, 0)))
    return changes


def lags_ms(changes: dict[str, list[tuple[int, int]]], sim: SimulatorServer
            ) -> tuple[list[float], int]:
    """Per change, ms until the channel received a value that reflects it: the first value
    received after the change that equals what it or a later change (made by then) left.
    Coalescing skips intermediate values, so a later value counts. Approximate where a value
    repeats (an older push of the same number arriving late counts too). Returns the lags and
    how many changes no received value matched."""
    received: dict[str, list[tuple[float, int]]] = {}
    for ms, item, _, value in list(sim.state.received):
        received.setdefault(item, []).append((ms, value))
    lags, unmatched = [], 0
    for sku, sku_changes in changes.items():
        got = received.get(sku, [])
        for i, (ts, _) in enumerate(sku_changes):
            lag = None
            for ms, value in got:
                if ms < ts:
                    continue
                if any(v == value for t, v in sku_changes[i:] if t <= ms):
                    lag = ms - ts
                    break
            if lag is None:
                unmatched += 1
            else:
                lags.append(lag)
    return lags, unmatched


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def log_counts(log: Path, *needles: str) -> dict[str, int]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return {needle: text.count(needle) for needle in needles}
