"""A bulk change reaching every channel: one adjust per SKU over thousands of SKUs (a warehouse
receipt or a stock count), timed until each channel simulator shows every new count, with the
calls each channel took; tests/test_bulk_push.py and `python -m benchmarks.bulk_push` run it.

The channels are the three simulators with their real limits on: Shopify's cost bucket (the
simulator's defaults, 2,000 points restoring 100 a second: the Standard plan), WooCommerce's
100-item batches, BigCommerce's 2,000-item adjustments under the Standard plan's request quota.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Sequence

from msgspec import Struct

from stockgate.settings import Channel
from stockgate.stock import StockEngine
from workers.adapters import ADAPTERS
from workers.propagation import PropagationConfig
from workers.simulators import SimulatorServer

TENANT = "default"
LOCATION = "main"


class BulkChannel(Struct, frozen=True):
    """One channel of the run and the call rate its config allows (Channel.rate_limit_per_s)."""

    name: str
    kind: str
    rate_limit_per_s: float


# The rates Stockgate is configured to call each channel at; each is one batched call.
# - Shopify GraphQL Admin: limited by query cost, not calls. Standard plan: 100 points/s
#   restored (https://shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits), and
#   inventorySetQuantities costs 10 points (a mutation), so the bucket sustains 10 pushes/s;
#   5/s leaves half the restore rate for what shares the bucket: SKU lookups, reads of stale
#   counts, reconciliation. (REST's 2 requests/s was the old figure.)
# - WooCommerce wc/v3: no platform limit is documented (the store is self-hosted; the only
#   WooCommerce limiter, the Store API's opt-in one, allows 25 POSTs per 10 s,
#   https://developer.woocommerce.com/docs/apis/store-api/rate-limiting). 5 calls/s of 100
#   items is a conservative figure for a store's PHP, not a documented one.
# - BigCommerce: 150 requests per 30 s on the Standard and Plus plans (5/s), shared by every
#   app on the store (https://docs.bigcommerce.com/developer/docs/overview/api-fundamentals/
#   rate-limits): half of it, 2.5 calls/s.
CHANNELS = (
    BulkChannel("shop", "shopify", 5.0),
    BulkChannel("woo", "woocommerce", 5.0),
    BulkChannel("bc", "bigcommerce", 2.5),
)
# BigCommerce's Standard/Plus request quota, set on its simulator (its default is 10,000).
BIGCOMMERCE_QUOTA = 150
BIGCOMMERCE_WINDOW_MS = 30_000
# The one-call-per-SKU baseline the issue compares against: Shopify REST's 2 calls/s.
REST_CALLS_PER_S = 2.0


def sku_names(n: int) -> list[str]:
    return [f"BULK-{i:05d}" for i in range(1, n + 1)]


def start_simulators(channels: Sequence[BulkChannel] = CHANNELS) -> dict[str, SimulatorServer]:
    sims: dict[str, SimulatorServer] = {}
    try:
        for ch in channels:
            sim = SimulatorServer(ch.kind).start()
            sims[ch.name] = sim
            if ch.kind == "bigcommerce":
                sim.state.window_quota = BIGCOMMERCE_QUOTA
                sim.state.window_ms = BIGCOMMERCE_WINDOW_MS
    except BaseException:
        stop_simulators(sims.values())
        raise
    return sims


def stop_simulators(sims: Iterable[SimulatorServer]) -> None:
    for sim in sims:
        sim.stop()


def channel_config(sims: dict[str, SimulatorServer],
                   channels: Sequence[BulkChannel] = CHANNELS,
                   ids: dict[str, dict[str, str]] | None = None) -> dict[str, Channel]:
    """The channels' config. Without `ids` (channel -> item id -> SKU) no item is mapped: each
    adapter finds its items by SKU, as a new install does."""
    ids = ids or {}
    out = {}
    for ch in channels:
        mapped = ids.get(ch.name, {})
        out[ch.name] = Channel(
            kind=ch.kind, secret="s3cret", api_url=sims[ch.name].url,
            access_token="ck_bulk:cs_bulk" if ch.kind == "woocommerce" else "token",
            rate_limit_per_s=ch.rate_limit_per_s,
            inventory_item_skus=mapped if ch.kind == "shopify" else {},
            variant_skus=mapped if ch.kind != "shopify" else {})
    return out


def catalogue_ids(sims: dict[str, SimulatorServer], skus: Sequence[str]
                  ) -> dict[str, dict[str, str]]:
    """Creates every SKU's item on every simulator and returns channel -> item id -> SKU, as a
    merchant's imported id mapping would give it."""
    return {name: {sim.state.mint(sku): sku for sku in skus} for name, sim in sims.items()}


class Counters(Struct, frozen=True):
    calls: int
    writes: int
    throttled: int  # Shopify THROTTLED answers (cost bucket empty)
    limited: int  # 429s (BigCommerce quota, token buckets)
    stale: int

    @classmethod
    def of(cls, sim: SimulatorServer) -> Counters:
        s = sim.state
        return cls(s.calls, s.writes, s.throttled, s.limited, s.stale)

    def since(self, before: Counters) -> Counters:
        return Counters(self.calls - before.calls, self.writes - before.writes,
                        self.throttled - before.throttled, self.limited - before.limited,
                        self.stale - before.stale)


class ChannelFigures(Struct, frozen=True):
    channel: str
    kind: str
    rate_limit_per_s: float
    # Targets one push carries: the adapter's items per call, capped by
    # PropagationConfig.claim_batch.
    batch_limit: int
    # From the change's start until the channel showed the last SKU's new count (its own
    # receive time); None when it had not within the run's limit.
    seconds: float | None
    converged_skus: int
    calls: int  # every HTTP call the simulator answered: writes, lookups, reads, refusals
    writes: int  # calls that set counts
    throttled: int
    limited: int
    stale: int

    @property
    def other_calls(self) -> int:
        """SKU lookups and count reads."""
        return self.calls - self.writes - self.throttled - self.limited


class BulkFigures(Struct, frozen=True):
    phase: str
    skus: int
    change_s: float  # how long the adjusts themselves took
    channels: list[ChannelFigures]

    @property
    def seconds(self) -> float | None:
        """Until every channel showed every count."""
        times = [c.seconds for c in self.channels]
        return None if any(t is None for t in times) else max(t for t in times if t is not None)


async def bulk_adjust(engine: StockEngine, skus: Sequence[str], delta: int, phase: str) -> None:
    """One adjust per SKU, issued together, as POST /v1/stock/bulk issues its lines."""
    await asyncio.gather(*(engine.adjust(TENANT, sku, reason=f"bulk {phase}",
                                         idempotency_key=f"bulk-{phase}-{sku}", delta=delta,
                                         location=LOCATION)
                           for sku in skus))


async def expected_counts(engine: StockEngine, skus: Sequence[str]
                          ) -> dict[str, dict[str, int]]:
    """channel -> SKU -> the count Stockgate says the channel should show."""
    views = []
    for start in range(0, len(skus), 500):
        views += await asyncio.gather(*(engine.stock(TENANT, sku)
                                        for sku in skus[start:start + 500]))
    out: dict[str, dict[str, int]] = {}
    for view in views:
        for channel, value in view.channels.items():
            out.setdefault(channel, {})[view.sku] = value
    return out


def _shown(sim: SimulatorServer, sku: str) -> int | None:
    return sim.state.count(sku, LOCATION)


def _converged_at(sim: SimulatorServer, wanted: dict[str, int], since_ms: float
                  ) -> tuple[int, float | None]:
    """How many SKUs the channel received their wanted count for since `since_ms`, and when
    (unix ms) the last of them arrived; None unless all did and still show it."""
    first: dict[str, float] = {}
    for t, item, _location, value in list(sim.state.received):
        if t >= since_ms and item in wanted and item not in first and value == wanted[item]:
            first[item] = t
    if len(first) < len(wanted) or any(_shown(sim, sku) != v for sku, v in wanted.items()):
        return len(first), None
    return len(first), max(first.values()) if first else since_ms


async def measure(engine: StockEngine, sims: dict[str, SimulatorServer], skus: Sequence[str],
                  *, phase: str, delta: int, claim_batch: int = PropagationConfig().claim_batch,
                  channels: Sequence[BulkChannel] = CHANNELS,
                  within_s: float = 60.0) -> BulkFigures:
    """Apply one bulk change (`delta` on every SKU) and wait, up to `within_s`, until every
    channel shows every SKU's new count."""
    before = {name: Counters.of(sim) for name, sim in sims.items()}
    started_ms = time.time() * 1000
    started = time.monotonic()
    await bulk_adjust(engine, skus, delta, phase)
    change_s = time.monotonic() - started
    wanted = await expected_counts(engine, skus)
    done: dict[str, float | None] = dict.fromkeys(sims)
    counts: dict[str, int] = dict.fromkeys(sims, 0)
    while True:
        for name, sim in sims.items():
            if done[name] is None:
                counts[name], at = _converged_at(sim, wanted[name], started_ms)
                done[name] = None if at is None else (at - started_ms) / 1000
        if all(v is not None for v in done.values()) or time.monotonic() - started > within_s:
            break
        await asyncio.sleep(0.1)
    rates = {ch.name: ch for ch in channels}
    figures = []
    for name, sim in sims.items():
        c = Counters.of(sim).since(before[name])
        figures.append(ChannelFigures(
            channel=name, kind=sim.state.kind, rate_limit_per_s=rates[name].rate_limit_per_s,
            batch_limit=min(ADAPTERS[sim.state.kind].batch_limit, claim_batch), seconds=done[name],
            converged_skus=counts[name], calls=c.calls, writes=c.writes,
            throttled=c.throttled, limited=c.limited, stale=c.stale))
    return BulkFigures(phase=phase, skus=len(skus), change_s=change_s, channels=figures)


def per_sku_seconds(skus: int, rate_per_s: float) -> float:
    """One call per SKU at `rate_per_s`: the first call at 0, then one every 1/rate."""
    return max(skus - 1, 0) / rate_per_s


def batched_floor_s(skus: int, batch: int, rate_per_s: float) -> float:
    """The rate limit's own bound for batches of `batch`: the last batch's slot."""
    return max(math.ceil(skus / batch) - 1, 0) / rate_per_s


def _duration(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def report(figures: BulkFigures) -> str:
    total = figures.seconds
    out = [f"Bulk change, {figures.phase}: {figures.skus:,} SKUs adjusted in "
           f"{figures.change_s:.2f} s; every channel showed every count after "
           + (f"{total:.2f} s" if total is not None else "NOT within the run's limit"),
           f"{'channel':<16} {'rate/s':>6} {'batch':>5} {'converged':>10} {'calls':>6} "
           f"{'writes':>6} {'other':>6} {'thrott.':>7} {'429s':>5}   "
           f"{'rate floor':>10}   {'1 call per SKU':>14}"]
    for c in figures.channels:
        seconds = (f"{c.seconds:.2f} s" if c.seconds is not None
                   else f"{c.converged_skus}/{figures.skus}")
        floor = batched_floor_s(figures.skus, c.batch_limit, c.rate_limit_per_s)
        out.append(
            f"{c.channel + ' (' + c.kind + ')':<16} {c.rate_limit_per_s:>6g} {c.batch_limit:>5} "
            f"{seconds:>10} {c.calls:>6} {c.writes:>6} {c.other_calls:>6} {c.throttled:>7} "
            f"{c.limited:>5}   {_duration(floor):>10}   "
            f"{_duration(per_sku_seconds(figures.skus, c.rate_limit_per_s)):>14}")
    out.append(f"One call per SKU per channel at Shopify REST's {REST_CALLS_PER_S:g} calls/s: "
               f"{figures.skus:,} calls, "
               f"{_duration(per_sku_seconds(figures.skus, REST_CALLS_PER_S))}.")
    return "\n".join(out)
