"""Smoke test of benchmarks/cluster.py: its measurement runs against a plain server and a
1-primary Cluster with a replica, with and without WAIT, and reports what it read. Not a
performance assertion: a few hundred holds each."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from stockgate.embedded import EmbeddedRedis
from stockgate.local_cluster import LocalCluster

# benchmarks/ is not an installed package: load the module from its file.
_spec = importlib.util.spec_from_file_location(
    "benchmarks_cluster", Path(__file__).resolve().parents[1] / "benchmarks" / "cluster.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)


async def test_the_cluster_benchmark_measures_each_kind_of_target(tmp_path: Path) -> None:
    plain = EmbeddedRedis(tmp_path / "plain", durability="everysec")
    plain.start()
    try:
        with LocalCluster(tmp_path / "cluster", primaries=1, replicas=1) as cluster:
            await bench.seed(plain.url)
            await bench.seed(cluster.url)
            primary, replica = cluster.nodes
            targets = [bench.Target("plain", plain.url, [plain], []),
                       bench.Target("pipes", plain.url, [plain], [], wire=False),
                       bench.Target("1p+1r", cluster.url, [primary], [replica]),
                       bench.Target("wait", cluster.url, [primary], [replica], replica_wait=1)]
            for target in targets:
                result = await bench.measure(target, target.name, holds=300, concurrency=20,
                                             engines=2)
                assert result.holds == 300
                assert result.rate > 0 and result.primary_us > 0
                assert 0 < result.p50_ms <= result.p99_ms
                assert (result.replica_us > 0) == bool(target.replicas)
                assert (result.holds_per_wait > 0) == bool(target.replica_wait)
    finally:
        plain.stop()
