"""`stockgate up` as a newcomer runs it (no config, no REDIS_URL): the key it prints opens the
gateway, and a second process on the same data directory uses the embedded server `up`
started, found through the URL file, rather than starting its own. (The key's printing by
listen address is in tests/test_hardening_gateway.py.)"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stockgate import cli
from stockgate.embedded import free_port, running_url
from stockgate.settings import Settings


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "STOCKGATE_CONFIG", "SG_LOCAL_KEY",
                        "STOCKGATE_METRICS_DIR")}
    env.update(STOCKGATE_DATA_DIR=str(data_dir), STOCKGATE_LOG_LEVEL="WARNING", **extra)
    return env


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "stockgate.cli", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _until(check, what: str, proc: subprocess.Popen, log: Path, within: float = 30.0):
    deadline = time.monotonic() + within
    while True:
        assert proc.poll() is None, f"{what}: exited {proc.returncode}\n{log.read_text()}"
        with contextlib.suppress(httpx.TransportError, ValueError):
            if found := check():
                return found
        assert time.monotonic() < deadline, f"{what} not within {within}s\n{log.read_text()}"
        time.sleep(0.05)


def _healthy(port: int) -> bool:
    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200


def test_up_prints_a_working_key_and_shares_its_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    up_port, serve_port = free_port(), free_port()
    up_log, serve_log = tmp_path / "up.log", tmp_path / "serve.log"
    with _process(["up", "--port", str(up_port)], _env(data), up_log) as up:
        key = _until(lambda: (m := re.search(r"Bearer (\S+)'", up_log.read_text()))
                     and m.group(1), "the printed key", up, up_log)
        assert key == (data / cli.LOCAL_KEY_FILE).read_text().strip()
        _until(lambda: _healthy(up_port), "up's gateway", up, up_log)
        url = running_url(data)
        assert url is not None and (data / "redis.url").read_text().strip() == url
        auth = {"Authorization": f"Bearer {key}"}
        r = httpx.post(f"http://127.0.0.1:{up_port}/v1/stock/SKU-1/adjust", headers=auth,
                       json={"delta": 7, "reason": "receipt", "idempotency_key": "cli-1"},
                       timeout=10)
        assert r.status_code == 200, r.text
        assert httpx.get(f"http://127.0.0.1:{up_port}/v1/stock/SKU-1",
                         headers={"Authorization": "Bearer wrong-key"},
                         timeout=10).status_code == 401

        # A second process on the same data directory, with no REDIS_URL: it must read the
        # URL file and use up's server (the stock written above), not start its own.
        env = _env(data, STOCKGATE_CONFIG=str(data / "local-config.toml"), SG_LOCAL_KEY=key)
        with _process(["serve", "--port", str(serve_port)], env, serve_log) as serve:
            _until(lambda: _healthy(serve_port), "the second gateway", serve, serve_log)
            r = httpx.get(f"http://127.0.0.1:{serve_port}/v1/stock/SKU-1", headers=auth,
                          timeout=10)
            assert r.status_code == 200, r.text
            assert r.json()["locations"]["main"]["on_hand"] == 7
            assert (data / "redis.url").read_text().strip() == url
        # The second process did not own the server: stopping it leaves the server serving.
        assert serve.returncode is not None and running_url(data) == url
    # `up` owned it and stops it on the way out.
    assert up.returncode == 0, up_log.read_text()
    assert running_url(data) is None


def test_up_cluster_keeps_holds_on_its_cluster(tmp_path: Path) -> None:
    """`up --cluster`: a local Cluster for the run holds the stock (a hold made through HTTP
    is a key of the Cluster, not of the embedded server, which has arq's queue only), and
    both are stopped when `up` is."""
    from redis import Redis as SyncRedis
    from redis.cluster import ClusterNode
    from redis.cluster import RedisCluster as SyncCluster

    from stockgate.cluster import cluster_seeds
    from stockgate.keys import tenant_keys

    data = tmp_path / "data"
    port = free_port()
    log = tmp_path / "up.log"
    with _process(["up", "--cluster", "--port", str(port)], _env(data), log) as up:
        key = _until(lambda: (m := re.search(r"Bearer (\S+)'", log.read_text()))
                     and m.group(1), "the printed key", up, log)
        url = _until(lambda: (m := re.search(r"redis (redis\+cluster://\S+)", log.read_text()))
                     and m.group(1), "the printed Cluster URL", up, log)
        _until(lambda: _healthy(port), "up's gateway", up, log)
        auth = {"Authorization": f"Bearer {key}"}
        base = f"http://127.0.0.1:{port}"
        r = httpx.post(f"{base}/v1/stock/SKU-1/adjust", headers=auth,
                       json={"delta": 5, "reason": "receipt", "idempotency_key": "cl-1"},
                       timeout=10)
        assert r.status_code == 200, r.text
        r = httpx.post(f"{base}/v1/holds", headers=auth, timeout=10,
                       json={"hold_id": "cart-1", "lines": [{"sku": "SKU-1", "qty": 2}]})
        assert r.status_code == 201, r.text

        seeds, _ = cluster_seeds(url)
        cluster = SyncCluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds])
        try:
            hold = tenant_keys("default").hold("cart-1")
            assert cluster.exists(hold) == 1
            # CLUSTER NODES, not the client's view: CLUSTER SLOTS leaves out a replica that
            # has had no write to replicate yet.
            flags = [n["flags"] for n in cluster.cluster_nodes().values()]
            assert sum("master" in f for f in flags) == 3, flags
            assert sum("slave" in f for f in flags) == 3, flags
        finally:
            cluster.close()
        queue_url = running_url(data)
        assert queue_url is not None and queue_url in log.read_text()
        with SyncRedis.from_url(queue_url) as queue:
            assert queue.exists(hold) == 0
        assert httpx.get(f"{base}/v1/stock/SKU-1", headers=auth, timeout=10
                         ).json()["locations"]["main"]["reserved"] == 2
    assert up.returncode == 0, log.read_text()
    assert running_url(data) is None
    with contextlib.suppress(OSError), socket.create_connection(seeds[0], timeout=1):
        raise AssertionError(f"the Cluster's node {seeds[0]} still listens after up stopped")


def test_demo_store_follows_the_flag_and_a_cluster_url() -> None:
    """`demo`: a fresh embedded server by default, even with a plain REDIS_URL (as always); a
    local Cluster with --cluster; the Cluster a Cluster REDIS_URL names; not both."""
    from loadtests.demo import demo_store
    from loadtests.stack import LOCAL_CLUSTER
    from stockgate.settings import Settings

    plain, cluster = "redis://127.0.0.1:6379/0", "redis+cluster://127.0.0.1:7000"
    assert demo_store(Settings(), cluster=False) == ""
    assert demo_store(Settings(redis_url=plain), cluster=False) == ""
    assert demo_store(Settings(), cluster=True) == LOCAL_CLUSTER
    assert demo_store(Settings(redis_url=plain), cluster=True) == LOCAL_CLUSTER
    assert demo_store(Settings(redis_url=cluster), cluster=False) == cluster
    with pytest.raises(ValueError, match="--cluster"):
        demo_store(Settings(redis_url=cluster), cluster=True)


def test_demo_without_the_load_extra_says_how_to_install_it(tmp_path: Path) -> None:
    """Before: `demo` ran locust as a subprocess and, without it, ended in that subprocess's
    traceback. Now it says how to install the extra and exits 2. A None in sys.modules is
    Python's own way to make a module absent (find_spec and import both see nothing)."""
    hide = "import sys; sys.modules['locust'] = None; from stockgate.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", hide, "demo", "--duration", "1"],
                          env=_env(tmp_path / "data"), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "locust not installed" in proc.stderr
    assert "pip install -e '.[load]'" in proc.stderr and "make run" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    # Nothing was started for a demo that could not run.
    assert not (tmp_path / "data").exists()


def test_missing_load_modules_names_what_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.missing_load_modules() == []  # the dev venv has the load extra
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.missing_load_modules() == ["matplotlib"]


def _keys(**keys: tuple[str, tuple[str, ...]]) -> Settings:
    from stockgate.settings import ApiKey

    return Settings(api_keys={name: ApiKey(secret=secret, scopes=scopes)  # type: ignore[arg-type]
                              for name, (secret, scopes) in keys.items()})


def test_console_notice_names_the_first_operator_key() -> None:
    settings = _keys(front=("sf-secret", ("storefront",)), ops=("ops-secret", ("operator",)),
                     ops2=("ops2-secret", ("operator", "storefront")))
    assert cli.console_notice(settings, "127.0.0.1", 8123) == (
        "Console: http://127.0.0.1:8123/console  (sign in with operator key ops: ops-secret)")
    assert "http://[::1]:8123/console" in cli.console_notice(settings, "::1", 8123)


def test_console_notice_on_every_interface_withholds_the_secret() -> None:
    """As local_key_notice: a server's terminal is recorded, and the secret opens the console
    to whoever reads it; the name is enough for its owner to find it in the config."""
    settings = _keys(ops=("ops-secret", ("operator",)))
    for host, url in (("0.0.0.0", "http://127.0.0.1:80/console"),
                      ("::", "http://[::1]:80/console"), ("10.0.0.5", "http://10.0.0.5:80/")):
        notice = cli.console_notice(settings, host, 80)
        assert url in notice and "operator key ops" in notice and "ops-secret" not in notice


def test_console_notice_without_an_operator_key_says_how_to_add_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKGATE_CONFIG", "/etc/stockgate.toml")
    notice = cli.console_notice(_keys(front=("sf-secret", ("storefront",))), "127.0.0.1", 8000)
    assert notice.startswith("Console: http://127.0.0.1:8000/console  (no operator key")
    assert "/etc/stockgate.toml" in notice and 'scopes = ["operator"]' in notice
    assert "sf-secret" not in notice


def test_up_prints_the_console_link_and_key_once_the_gateway_answers(tmp_path: Path) -> None:
    """With the user's own config: the first operator key (after a storefront one) is the one
    to sign in with, printed once, when the link already works."""
    data = tmp_path / "data"
    config = tmp_path / "stockgate.toml"
    config.write_text('[api_keys.front]\nsecret = "env:SGT_FRONT"\n\n'
                      '[api_keys.night-ops]\nsecret = "env:SGT_OPS"\nscopes = ["operator"]\n\n'
                      '[api_keys.day-ops]\nsecret = "env:SGT_DAY"\nscopes = ["operator"]\n')
    secret = "night-ops-secret-0123456789"
    env = _env(data, STOCKGATE_CONFIG=str(config), SGT_FRONT="front-secret-0123456789",
               SGT_OPS=secret, SGT_DAY="day-ops-secret-0123456789")
    port = free_port()
    log = tmp_path / "up.log"
    with _process(["up", "--port", str(port)], env, log) as up:
        line = _until(lambda: (m := re.search(r"^Console: .*$", log.read_text(), re.M))
                      and m.group(0), "the console line", up, log)
        assert _healthy(port)
        assert line == (f"Console: http://127.0.0.1:{port}/console  (sign in with operator key "
                        f"night-ops: {secret})")
        time.sleep(0.5)
        assert log.read_text().count("Console: ") == 1
    assert up.returncode == 0, log.read_text()


def test_the_demo_report_ends_with_the_console_link() -> None:
    """The lines before it are the report as it was; the key is named, its secret not kept
    (the summary is also written to reports/)."""
    from loadtests.invariants import InvariantReport, SkuLedger
    from loadtests.lag import LagStats
    from loadtests.report import ChannelCheck, DemoResult, summary

    base = DemoResult(
        duration_s=5, users=2, hot={"DROP-CAP": 10}, tail_units=100, tail_skus=1,
        outcomes={"holds_accepted": 3}, latency={},
        lag=LagStats(changes=1, delivered=1, p50_ms=5.0, p99_ms=9.0, max_ms=9.0, unmatched=0),
        invariants=InvariantReport(tenant="flash", skus=2, events=4, audit_rows=None,
                                   violations=[], ledger=[SkuLedger("DROP-CAP", seeded=10)]),
        channels=[ChannelCheck("shopify-main", 2, 2)], final_counts={}, http_errors=0,
        settled=True, settle_s=0.5, reports=["reports/summary.json"])
    before = summary(base)
    base.console_url, base.console_key = "http://127.0.0.1:8765/console", "demo-operator"
    after = summary(base).splitlines()
    assert after[:-1] == before.splitlines()
    assert after[-1] == ("Console: http://127.0.0.1:8765/console (sign in with key "
                         "demo-operator); up while the demo runs, `stockgate demo --keep` "
                         "keeps it after")
