"""The machine loses power in the middle of a burst of holds: the Redis-compatible server runs
with its append-only file on LazyFS (tests/lazyfs.py), which forgets every write not yet
fsync'd when the power goes. A hold that got its acknowledgement must survive in strict mode
and with WAITAOF (on a server whose WAITAOF waits for the fsync); everysec must be seen to
lose some, or this test could not see a loss.

Skips where FUSE is unavailable, except in CI (CI set), where it must run."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lazyfs import LazyMount
from redis.asyncio import Redis

from stockgate.embedded import EmbeddedRedis
from stockgate.errors import StoreUnavailable
from stockgate.keys import tenant_keys
from stockgate.models import Line
from stockgate.settings import Settings
from stockgate.stock import StockEngine

SKU = "DROP-1"
STOCK = 1_000_000
SHOPPERS = 20
BURST_SECONDS = 1.5  # longer than everysec's one second, so some holds have been fsync'd
EVERYSEC_RUNS = 3  # everysec needs one run with a loss; the first almost always has one


def fuse_unavailable(reason: str) -> None:
    # CI runs as root with fuse3 installed by the Makefile: there a missing FUSE is a failure,
    # not a reason to stop testing the README's power-loss promise.
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"the power-loss test must run in CI, but FUSE is unavailable: {reason}")
    pytest.skip(f"FUSE unavailable: {reason}")


@pytest.fixture(scope="module")
def fuse_ready(tmp_path_factory: pytest.TempPathFactory) -> None:
    if not os.path.exists("/dev/fuse"):
        fuse_unavailable("no /dev/fuse")
    try:
        import mfusepy  # noqa: F401  (loads libfuse, raising OSError when it is missing)
    except (ImportError, OSError) as e:
        fuse_unavailable(f"{e} (make test installs fuse3 with apt-get when run as root)")
    probe = LazyMount(tmp_path_factory.mktemp("probe") / "disk",
                      tmp_path_factory.mktemp("probe") / "mnt")
    try:
        probe.mount()
    except RuntimeError as e:
        fuse_unavailable(str(e))
    probe.unmount()


@dataclass
class Cut:
    acknowledged: set[str]
    seconds: float
    # The store after the restart:
    held: set[str]
    reserved: int
    hold_events: int
    on_hand: int

    @property
    def lost(self) -> set[str]:
        return self.acknowledged - self.held

    def assert_whole(self) -> None:
        """Each hold in the store has its one reserved unit and its one outbox event, so an
        AOF replayed up to the middle of a script would show; the seed survived."""
        assert self.reserved == len(self.held) == self.hold_events
        assert self.on_hand == STOCK


async def burst_then_power_cut(lazy: LazyMount, durability: str, wait_aof: bool) -> Cut:
    """Shoppers place holds until the power goes; the server then restarts on what LazyFS had
    synced. Returns the acknowledged holds and the holds the restarted store has."""
    server = EmbeddedRedis(lazy.mountpoint, durability=durability)  # type: ignore[arg-type]
    server.start()
    redis = Redis.from_url(server.url, max_connections=SHOPPERS * 2, socket_timeout=5)
    engine = StockEngine(redis, Settings(data_dir=str(lazy.backing.parent), wait_aof=wait_aof))
    await engine.load_scripts()
    # The seed is on disk before the burst in every mode, so every run starts equal; WAITAOF
    # cannot promise that on Valkey (see waitaof_waits_for_fsync), appendfsync always can.
    configured = (await redis.config_get("appendfsync"))["appendfsync"]
    await redis.config_set("appendfsync", "always")
    await engine.adjust("default", SKU, reason="receipt", idempotency_key="seed", delta=STOCK)
    await redis.config_set("appendfsync", configured)  # the burst runs as EmbeddedRedis set it
    acknowledged: set[str] = set()
    power_off = asyncio.Event()

    async def shopper(n: int) -> None:
        i = 0
        while not power_off.is_set():
            hold_id = f"s{n}-{i}"
            try:
                await engine.hold("default", [Line(SKU, 1)], hold_id=hold_id)
            except StoreUnavailable:
                if power_off.is_set():
                    return
                raise
            # A reply read after the cut was still sent before it: it is acknowledged.
            acknowledged.add(hold_id)
            i += 1

    async def power_cut() -> None:
        await asyncio.sleep(BURST_SECONDS)
        power_off.set()
        # Both at once, blocking the loop so no shopper runs in between: the server dies
        # (SIGKILL) and the page cache with it (LazyFS killed, unsynced writes gone).
        server.kill()
        lazy.power_cut()

    started = time.monotonic()
    await asyncio.gather(power_cut(), *(shopper(n) for n in range(SHOPPERS)))
    seconds = time.monotonic() - started
    await redis.aclose()

    # The reboot: the disk as LazyFS left it, mounted again, and the server replays its AOF.
    lazy.mount()
    server.start()
    redis = Redis.from_url(server.url)
    try:
        k = tenant_keys("default")
        held = {key.decode().rsplit(":", 1)[1]
                async for key in redis.scan_iter(match=k.prefix + "hold:*", count=1000)}
        stock = {f.decode(): int(v) for f, v in (await redis.hgetall(k.stock(SKU))).items()}
        events = [e for _, e in await redis.xrange(k.outbox) if b'"type":"hold"' in e[b"e"]]
    finally:
        await redis.aclose()
        server.stop()
    return Cut(acknowledged, seconds, held, stock.get("main|reserved", 0), len(events),
               stock.get("main|on_hand", 0))


def report(mode: str, run: int, cut: Cut, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\n[power loss, {mode}, run {run}] acknowledged holds: {len(cut.acknowledged)} "
              f"in {cut.seconds:.1f}s, in the store after the cut: {len(cut.held)}, "
              f"acknowledged and lost: {len(cut.lost)}")


@pytest.fixture
def lazy_mounts(tmp_path: Path) -> Iterator[list[LazyMount]]:
    mounts: list[LazyMount] = []
    yield mounts
    for mount in mounts:
        mount.unmount()


def new_mount(mounts: list[LazyMount], tmp_path: Path) -> LazyMount:
    run = tmp_path / f"run{len(mounts)}"
    mount = LazyMount(run / "disk", run / "mnt")
    mounts.append(mount)
    mount.mount()
    return mount


async def test_acknowledged_holds_survive_a_power_loss_in_strict_mode(
    fuse_ready: None, lazy_mounts: list[LazyMount], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cut = await burst_then_power_cut(new_mount(lazy_mounts, tmp_path), "strict", False)
    report("strict (appendfsync always)", 1, cut, capsys)
    assert cut.acknowledged, "no hold was acknowledged before the power cut"
    lost = sorted(cut.lost)
    assert len(lost) == 0, f"{len(lost)} acknowledged holds lost, e.g. {lost[:5]}"
    cut.assert_whole()


async def waitaof_waits_for_fsync(tmp_path: Path) -> bool:
    """Under everysec a WAITAOF that really waits for the fsync takes up to a second; three in
    a row, each after a new write, cannot all return within half a second. The embedded Valkey
    8.1 answers at once (measured: 5 x SET + WAITAOF in 0.09 s); the likely cause, from reading
    the server's source and an upstream report not verified here, is the empty-buffer branch
    of flushAppendOnlyFile advancing the fsynced offset without an fsync."""
    server = EmbeddedRedis(tmp_path, durability="everysec")
    server.start()
    redis = Redis.from_url(server.url)
    try:
        started = time.monotonic()
        for i in range(3):
            await redis.set(f"probe{i}", i)
            await redis.execute_command("WAITAOF", 1, 0, 0)
        return time.monotonic() - started > 0.5
    finally:
        await redis.aclose()
        server.stop()


async def test_acknowledged_holds_survive_a_power_loss_with_waitaof(
    fuse_ready: None, lazy_mounts: list[LazyMount], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Settings.wait_aof, for your own Redis with appendfsync everysec."""
    sound = await waitaof_waits_for_fsync(tmp_path / "probe")
    cut = await burst_then_power_cut(new_mount(lazy_mounts, tmp_path), "everysec", True)
    report("everysec + WAITAOF", 1, cut, capsys)
    cut.assert_whole()
    lost = sorted(cut.lost)
    if not sound:
        pytest.skip(f"this server's WAITAOF confirms before the fsync under everysec "
                    f"(measured by waitaof_waits_for_fsync): {len(lost)} of "
                    f"{len(cut.acknowledged)} acknowledged holds lost")
    assert cut.acknowledged, "no hold was acknowledged before the power cut"
    assert len(lost) == 0, f"{len(lost)} acknowledged holds lost, e.g. {lost[:5]}"


async def test_everysec_loses_the_last_second_of_holds(
    fuse_ready: None, lazy_mounts: list[LazyMount], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The measure of what everysec risks, and the proof that this harness sees a loss: if
    no run lost a hold, LazyFS is not dropping unsynced writes and strict's 0 proves nothing."""
    losses: list[int] = []
    for run in range(1, EVERYSEC_RUNS + 1):
        cut = await burst_then_power_cut(new_mount(lazy_mounts, tmp_path), "everysec", False)
        report("everysec", run, cut, capsys)
        cut.assert_whole()
        losses.append(len(cut.lost))
        if cut.lost:
            break
    assert any(losses), f"everysec lost nothing in {len(losses)} power cuts: {losses}"
