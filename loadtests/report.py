"""What the demo shows a merchant: request latency from the locust run, the stock curve from
the outbox, and the PNG plot of both (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from msgspec import Struct

from loadtests.invariants import InvariantReport
from loadtests.lag import LagStats, percentile
from stockgate.models import Event


class LatencyStats(Struct, frozen=True):
    category: str
    requests: int
    per_s: float
    p50_ms: float | None
    p99_ms: float | None


class LoadRecord(Struct, frozen=True):
    """The locustfile's own record: every successful request (unix s, ms) by category, and
    outcome counters (holds accepted, sold out, committed, ...)."""

    started: float
    outcomes: dict[str, int]
    samples: dict[str, list[tuple[float, float]]]

    def window(self) -> tuple[float, float]:
        times = [t for rows in self.samples.values() for t, _ in rows]
        return (min(times), max(times)) if times else (self.started, self.started)

    def latency(self, category: str) -> LatencyStats:
        rows = self.samples.get(category, [])
        start, end = self.window()
        ms = [m for _, m in rows]
        return LatencyStats(category, len(rows), len(rows) / max(end - start, 1e-9),
                            percentile(ms, 50), percentile(ms, 99))


def read_load_record(path: Path) -> LoadRecord:
    raw = json.loads(path.read_text())
    return LoadRecord(
        started=raw["started"], outcomes=raw.get("outcomes", {}),
        samples={k: [(t, ms) for t, ms in v] for k, v in raw.get("samples", {}).items()})


def per_second(rows: Sequence[tuple[float, float]], start: float, seconds: int
               ) -> tuple[list[int], list[float | None], list[float | None]]:
    """Counts, p50 and p99 per one-second bucket from `start`."""
    buckets: list[list[float]] = [[] for _ in range(seconds)]
    for t, ms in rows:
        i = int(t - start)
        if 0 <= i < seconds:
            buckets[i].append(ms)
    return ([len(b) for b in buckets], [percentile(b, 50) for b in buckets],
            [percentile(b, 99) for b in buckets])


def stock_curve(events: Sequence[Event], skus: Sequence[str], start_ms: float, seconds: int,
                step_s: float = 0.5) -> dict[str, list[int]]:
    """Available per SKU (summed over locations) sampled every `step_s` from `start_ms`."""
    wanted = set(skus)
    latest: dict[str, dict[str, int]] = {s: {} for s in skus}
    steps = int(seconds / step_s) + 1
    curve: dict[str, list[int]] = {s: [] for s in skus}
    ordered = sorted((e for e in events if e.sku in wanted and e.after is not None),
                     key=lambda e: e.ts)
    i = 0
    for k in range(steps):
        until = start_ms + k * step_s * 1000
        while i < len(ordered) and ordered[i].ts <= until:
            ev = ordered[i]
            latest[ev.sku][ev.location] = ev.after.available  # type: ignore[union-attr]
            i += 1
        for s in skus:
            curve[s].append(sum(max(v, 0) for v in latest[s].values()))
    return curve


def plot(path: Path, record: LoadRecord, events: Sequence[Event], hot: Sequence[str],
         title: str) -> None:
    """Three panels over the run: requests per second, latency, hot stock remaining."""
    import matplotlib

    matplotlib.use("Agg")  # files only; also keeps a headless CI box from needing a display
    import matplotlib.pyplot as plt

    start, end = record.window()
    seconds = max(int(end - start) + 1, 1)
    xs = list(range(seconds))
    fig, (ax_rps, ax_lat, ax_stock) = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    fig.suptitle(title)
    for category, rows in sorted(record.samples.items()):
        counts, p50, p99 = per_second(rows, start, seconds)
        ax_rps.plot(xs, counts, label=category)
        if category in ("hold", "webhook"):
            ax_lat.plot(xs, [v if v is not None else float("nan") for v in p50],
                        label=f"{category} p50")
            ax_lat.plot(xs, [v if v is not None else float("nan") for v in p99],
                        linestyle="--", label=f"{category} p99")
    ax_rps.set_ylabel("requests / s")
    ax_rps.legend(loc="upper right", fontsize="small")
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.legend(loc="upper right", fontsize="small")
    step = 0.5
    curve = stock_curve(events, hot, start * 1000, seconds, step)
    ts = [k * step for k in range(len(next(iter(curve.values()), [])))]
    for sku, values in curve.items():
        ax_stock.step(ts, values, where="post", label=sku)
    ax_stock.set_ylabel("available (units)")
    ax_stock.set_xlabel("seconds since the load started")
    ax_stock.legend(loc="upper right", fontsize="small")
    for ax in (ax_rps, ax_lat, ax_stock):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class ChannelCheck(Struct, frozen=True):
    channel: str
    skus: int
    matching: int


class ChannelCalls(Struct, frozen=True):
    """One channel's traffic from the load's start until the run settled, as its simulator
    counted it, next to the changes Stockgate made to what the channel should show."""

    channel: str
    kind: str
    changes: int  # count changes for this channel (loadtests/lag.py), one per SKU and change
    values: int  # counts the channel accepted: one call each when pushes were not batched
    # Of those, counts the channel showed already (nothing it shows moves on its own in the
    # demo): pushes that changed nothing.
    unchanged: int
    writes: int  # calls that set counts
    calls: int  # every call the channel answered: writes, lookups, reads, refusals
    p99_ms: float | None  # propagation lag to this channel


class DemoResult(Struct):
    """Everything one demo run measured; `summary()` is what the merchant reads."""

    duration_s: int
    users: int
    hot: dict[str, int]  # SKU -> units put on sale
    tail_units: int
    tail_skus: int
    outcomes: dict[str, int]
    latency: dict[str, LatencyStats]
    lag: LagStats
    invariants: InvariantReport
    channels: list[ChannelCheck]
    final_counts: dict[str, dict[str, int]]  # channel -> sku -> count, for the hot SKUs
    http_errors: int
    settled: bool
    settle_s: float
    reports: list[str]
    durability: str = "strict"
    channel_rate_per_s: float = 0.0
    channel_calls: list[ChannelCalls] = []
    data_dir: str = ""
    # Kits on sale: SKU -> {component: per-kit qty}; their rows show the derived count.
    bundles: dict[str, dict[str, int]] = {}
    kits_left: dict[str, int] = {}  # kit SKU -> kits its parts still make at the end
    # channel -> sku -> what Stockgate says the channel should show (its allocation rule
    # applied), for the hot SKUs and kits; the table's "ok" compares against it.
    expected_counts: dict[str, dict[str, int]] = {}
    # channel -> its allocation rule, as configured ("" or absent: shown the whole pool).
    rules: dict[str, str] = {}
    # Where the stock lived when not the embedded server (e.g. "a local Redis Cluster").
    store: str = ""
    # The operator console of the run's gateway, and the name of the key to sign in with (the
    # name only: the report is written to reports/summary.*, and the secret is no file's).
    console_url: str = ""
    console_key: str = ""


def _ms(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.1f} ms"


def summary(r: DemoResult) -> str:
    inv = r.invariants
    lag = r.lag
    o = r.outcomes
    by_sku = {s.sku: s for s in inv.ledger}
    sold: dict[str, int] = {}
    for s in inv.ledger:
        for channel, n in s.sold.items():
            sold[channel] = sold.get(channel, 0) + n
    hot_units = sum(r.hot.values())
    refused = sum(s.oversell_rejected for s in inv.ledger)
    out = [
        f"Stockgate flash-sale demo: {r.duration_s} s of load, {r.users} simulated users, "
        f"durability {r.durability}, channels take {r.channel_rate_per_s:g} pushes/s"
        + (f", stock on {r.store}" if r.store else ""),
        f"On sale      {hot_units:,} units of {len(r.hot)} hot SKUs, {r.tail_units:,} units "
        f"of {r.tail_skus} long-tail SKUs",
        f"Shoppers     {o.get('holds_accepted', 0):,} carts held, "
        f"{o.get('holds_rejected', 0):,} holds rejected (sold out), "
        f"{o.get('holds_committed', 0):,} checked out, {o.get('holds_released', 0):,} "
        f"emptied, {o.get('holds_abandoned', 0):,} abandoned (expired back on sale)",
        f"Channels     {o.get('webhooks_duplicated', 0):,} duplicate deliveries ignored, "
        f"{o.get('orders_cancelled', 0):,} orders cancelled, {o.get('orders_refunded', 0):,} "
        f"refunded with restock",
        "Units sold   " + ", ".join(f"{ch} {n:,}" for ch, n in sorted(sold.items()))
        + f" (net of cancels and refunds; total {sum(sold.values()):,})",
        f"Refused      {refused:,} channel order lines that arrived after a SKU sold out "
        "(recorded as oversell_rejected, never sold)",
        f"OVERSOLD     {inv.oversold_units} units",
        "",
        "Hot SKU           on sale   sold   left   " + "  ".join(
            f"{c.channel:>13}" for c in r.channels),
    ]
    def shown_cells(sku: str, left: int) -> str:
        cells = []
        for c in r.channels:
            shown = r.final_counts.get(c.channel, {}).get(sku)
            expected = r.expected_counts.get(c.channel, {}).get(sku, max(left, 0))
            cells.append(f"{shown if shown is not None else '-':>11} "
                         f"{'ok' if shown == expected else '!!'}")
        return "  ".join(cells)

    for sku, units in r.hot.items():
        led = by_sku.get(sku)
        left = led.available if led else 0
        sold_sku = sum(led.sold.values()) if led else 0
        out.append(f"{sku:<16} {units:>8} {sold_sku:>6} {left:>6}   " + shown_cells(sku, left))
    for sku in r.bundles:
        # A kit has no units of its own: what is left is what its parts still make.
        left = r.kits_left.get(sku, 0)
        out.append(f"{sku:<16} {'kit':>8} {'-':>6} {left:>6}   " + shown_cells(sku, left))
    if r.bundles:
        out += [f"  {sku} is a kit of " + " + ".join(f"{q} {p}" for p, q in parts.items())
                + ", sold in the same carts and orders as its parts"
                for sku, parts in r.bundles.items()]
    out += [f"  {channel} is shown what its allocation rule {rule} leaves of each SKU; ok means "
            "a channel shows exactly what its rule says" for channel, rule in r.rules.items()
            if rule]
    out.append("")
    out.append("Channels vs Stockgate   " + ", ".join(
        f"{c.channel} {c.matching}/{c.skus} SKUs match" for c in r.channels))
    for name in ("hold", "commit", "release", "webhook"):
        lat = r.latency.get(name)
        if lat and lat.requests:
            out.append(f"Latency {name:<9} p50 {_ms(lat.p50_ms):>9}  p99 {_ms(lat.p99_ms):>9}"
                       f"   {lat.requests:,} requests, {lat.per_s:,.0f}/s")
    out.append(f"Propagation to channels  p50 {_ms(lag.p50_ms)}  p99 {_ms(lag.p99_ms)}  "
               f"max {_ms(lag.max_ms)}  ({lag.delivered:,} count changes timed"
               + (f", {lag.unmatched:,} changed back before any push" if lag.unmatched else "")
               + ")")
    if r.channel_calls:
        out += ["", "Channel calls from the load's start until settled, as each simulator "
                "counted them; a change is one new count a channel should show",
                f"{'channel':<22} {'changes':>8} {'values pushed':>13} {'(unchanged)':>11} "
                f"{'write calls':>11} {'all calls':>9} {'calls/change':>12} {'p99':>9}"]
        for c in r.channel_calls:
            ratio = f"{c.calls / c.changes:.3f}" if c.changes else "n/a"
            out.append(f"{c.channel + ' (' + c.kind + ')':<22} {c.changes:>8,} {c.values:>13,} "
                       f"{c.unchanged:>11,} {c.writes:>11,} {c.calls:>9,} {ratio:>12} "
                       f"{_ms(c.p99_ms):>9}")
        out.append("")
    out.append(f"Settled      {'yes' if r.settled else 'NO'} in {r.settle_s:.1f} s after the "
               f"load; HTTP errors during the run: {r.http_errors}")
    audit = f"{inv.audit_rows:,}" if inv.audit_rows is not None else "not read"
    if inv.ok and r.http_errors == 0:
        out.append(f"Invariants   all hold: {inv.skus} SKUs, {inv.events:,} outbox events, "
                   f"{audit} audit rows")
    else:
        out.append(f"Invariants   {len(inv.violations)} VIOLATIONS:")
        out += [f"  - [{v.check}] {v.sku} {v.channel} {v.detail}".replace("  ", " ")
                for v in inv.violations]
    out.append("Reports      " + ", ".join(r.reports))
    if r.data_dir:
        out.append(f"Logs and data kept in {r.data_dir}")
    if r.console_url:
        # The run's gateway stops with the demo: say how to keep it for a look.
        out.append(f"Console: {r.console_url}"
                   + (f" (sign in with key {r.console_key})" if r.console_key else "")
                   + "; up while the demo runs, `stockgate demo --keep` keeps it after")
    return "\n".join(out)
