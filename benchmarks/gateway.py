"""Gateway throughput and latency under wrk, next to a bare Starlette endpoint.

`python -m benchmarks.gateway` starts its own embedded Redis (everysec) and uvicorn processes
on free ports of 127.0.0.1, then measures with wrk, in one run:
  - bare: a Starlette endpoint that reads and parses the same JSON body and answers 200;
  - POST /v1/holds (unique hold id per request, generated in wrk's Lua);
  - a signed Shopify orders/create webhook (unique order and webhook id per request, signed
    here in advance since wrk's Lua has no HMAC);
on one gateway worker process, then on two. Prints req/s, p50/p99, the ratio to bare, and
the CPU each process spent per request (from /proc) with the whole machine's busy share, so
a run squeezed by something else on the machine shows as such.
Figures are indicative: wrk, Redis and the servers share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stockgate.embedded import EmbeddedRedis, free_port

API_KEY = "bench-storefront-key-0123456789"
SHOPIFY_SECRET = "bench-shopify-secret"
SKU = "BENCH-1"


# ---- the bare endpoint -------------------------------------------------------------------

async def _bare(request: Request) -> Response:
    import msgspec

    msgspec.json.decode(await request.body())
    return Response(b'{"ok":true}', media_type="application/json")


bare_app = Starlette(routes=[Route("/bare", _bare, methods=["POST"])])


# ---- wrk scripts ---------------------------------------------------------------------------

_THREAD_IDS = """
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end
"""

HOLDS_LUA = _THREAD_IDS + """
local counter = 0
function init(args)
  path = args[1]
  run = args[2]
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer KEY"
end
function request()
  counter = counter + 1
  local body = '{"hold_id":"' .. run .. '-' .. tid .. '-' .. counter ..
    '","lines":[{"sku":"SKU","qty":1}]}'
  return wrk.format("POST", path, nil, body)
end
""".replace("KEY", API_KEY).replace("SKU", SKU)

# Each line of the data file: webhook id, signature, body (tab-separated, pre-signed).
WEBHOOK_LUA = _THREAD_IDS + """
local items = {}
local i = 0
function init(args)
  path = args[1]
  local threads = tonumber(args[3])
  local n = 0
  for line in io.lines(args[2]) do
    if n % threads == tid then
      local id, sig, body = line:match("^([^\\t]+)\\t([^\\t]+)\\t(.*)$")
      items[#items + 1] = {id, sig, body}
    end
    n = n + 1
  end
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-Shopify-Topic"] = "orders/create"
  wrk.headers["X-Shopify-Shop-Domain"] = "bench.myshopify.com"
end
function request()
  i = i % #items + 1
  local item = items[i]
  wrk.headers["X-Shopify-Webhook-Id"] = item[1]
  wrk.headers["X-Shopify-Hmac-Sha256"] = item[2]
  return wrk.format("POST", path, nil, item[3])
end
"""


def write_webhooks(path: Path, run: str, run_no: int, count: int) -> None:
    """Pre-signed, real-shaped orders/create deliveries with unique order and webhook ids."""
    key = SHOPIFY_SECRET.encode()
    with path.open("w") as fh:
        for n in range(count):
            order_id = run_no * 100_000_000 + n
            body = json.dumps({
                "id": order_id, "name": f"#{n}", "email": "shopper@example.com",
                "currency": "EUR", "financial_status": "paid", "location_id": None,
                "note_attributes": [], "line_items": [{
                    "id": order_id * 10, "variant_id": 4455, "product_id": 632910392,
                    "sku": SKU, "quantity": 1, "title": "Sneaker", "price": "199.00",
                    "requires_shipping": True}]}, separators=(",", ":"))
            sig = base64.b64encode(hmac.new(key, body.encode(), hashlib.sha256).digest())
            fh.write(f"{run}-{n}\t{sig.decode()}\t{body}\n")


# ---- processes -------------------------------------------------------------------------------

def wait_ready(port: int, path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} not ready after {timeout}s")


def start_uvicorn(target: str, port: int, workers: int, env: dict[str, str],
                  factory: bool) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers), "--no-access-log", "--log-level", "warning",
           "--loop", "uvloop", "--http", "httptools",
           "--no-proxy-headers", "--no-server-header"]
    if factory:
        cmd.append("--factory")
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Result:
    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
        self.p50 = _ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
        self.p99 = _ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
        bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
        self.non_2xx = int(bad.group(1)) if bad else 0
        errors = re.search(r"Socket errors:.*", text)
        self.socket_errors = errors.group(0) if errors else ""
        # CPU microseconds per request: server processes, Redis, wrk; machine busy share.
        self.cpu: dict[str, float] = {}
        self.machine_busy = 0.0


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


_TICK = os.sysconf("SC_CLK_TCK")


def _session_cpu_s(session: int) -> float:
    """utime + stime of every live process in a session (uvicorn and its workers)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # fields after "(comm)": state ppid pgrp session ...
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _machine_cpu() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def wrk(name: str, port: int, script: Path, args: list[str], duration: int,
        connections: int, threads: int, server: subprocess.Popen[bytes] | None = None,
        redis_pid: int | None = None, warmup: int = 2) -> Result:
    base = ["wrk", "-t", str(threads), "-c", str(connections), "--timeout", "2s", "--latency",
            "-s", str(script), f"http://127.0.0.1:{port}", "--", *args]
    if warmup:  # first requests pay imports, connection set-up and the allocator's growth
        subprocess.run([*base[:1], "-d", f"{warmup}s", *base[1:]], capture_output=True,
                       timeout=warmup + 30, check=True)
    before = (_session_cpu_s(server.pid) if server else 0.0,
              _session_cpu_s(redis_pid) if redis_pid else 0.0,
              resource.getrusage(resource.RUSAGE_CHILDREN), _machine_cpu())
    out = subprocess.run([*base[:1], "-d", f"{duration}s", *base[1:]], capture_output=True,
                         text=True, timeout=duration + 30, check=True)
    after = (_session_cpu_s(server.pid) if server else 0.0,
             _session_cpu_s(redis_pid) if redis_pid else 0.0,
             resource.getrusage(resource.RUSAGE_CHILDREN), _machine_cpu())
    result = Result(name, out.stdout)
    requests = max(result.rps * duration, 1.0)
    wrk_s = (after[2].ru_utime + after[2].ru_stime) - (before[2].ru_utime + before[2].ru_stime)
    result.cpu = {"server": (after[0] - before[0]) / requests * 1e6,
                  "redis": (after[1] - before[1]) / requests * 1e6,
                  "wrk": wrk_s / requests * 1e6}
    busy = after[3][0] - before[3][0]
    result.machine_busy = busy / max(after[3][1] - before[3][1], 1)
    return result


async def seed(url: str) -> None:
    from redis.asyncio import Redis

    from stockgate.settings import Settings
    from stockgate.stock import StockEngine

    redis = Redis.from_url(url)
    engine = StockEngine(redis, Settings(redis_url=url))
    await engine.load_scripts()
    await engine.adjust("default", SKU, reason="bench", idempotency_key="bench-seed",
                        set_on_hand=1_000_000_000)
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured seconds before each")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get update && apt-get install -y wrk", file=sys.stderr)
        sys.exit(2)
    work = Path(tempfile.mkdtemp(prefix="stockgate-bench-"))
    redis = EmbeddedRedis(work / "redis", durability="everysec")
    redis.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(seed(redis.url))
        config = work / "stockgate.toml"
        config.write_text(
            f'[api_keys.bench]\nsecret = "{API_KEY}"\nscopes = ["storefront"]\n'
            f'[channels.shop]\nkind = "shopify"\nsecret = "{SHOPIFY_SECRET}"\n')
        env = {**os.environ, "REDIS_URL": redis.url, "STOCKGATE_CONFIG": str(config),
               "STOCKGATE_LOG_LEVEL": "WARNING"}
        holds_lua, hooks_lua = work / "holds.lua", work / "webhooks.lua"
        holds_lua.write_text(HOLDS_LUA)
        hooks_lua.write_text(WEBHOOK_LUA)
        # Enough unique deliveries that no run wraps around into duplicates.
        per_run = 40_000 * (args.duration + args.warmup) // 8 + 20_000
        run_args = dict(duration=args.duration, connections=args.connections,
                        threads=args.threads, redis_pid=redis.process.pid,
                        warmup=args.warmup)
        results: list[Result] = []

        bare_port = free_port()
        procs.append(start_uvicorn("benchmarks.gateway:bare_app", bare_port, 1, env, False))
        wait_ready_post(bare_port)
        hooks_bare = work / "hooks-bare.tsv"
        write_webhooks(hooks_bare, "bare", 1, per_run)
        results.append(wrk("bare: hold body", bare_port, holds_lua, ["/bare", "bare"],
                           server=procs[-1], **run_args))
        results.append(wrk("bare: webhook body", bare_port, hooks_lua,
                           ["/bare", str(hooks_bare), str(args.threads)], server=procs[-1],
                           **run_args))
        stop(procs.pop())

        for workers in (1, 2):
            port = free_port()
            procs.append(start_uvicorn("gateway.server:app_from_env", port, workers, env, True))
            wait_ready(port, "/readyz")
            data = work / f"hooks-{workers}.tsv"
            write_webhooks(data, f"w{workers}", 1 + workers, per_run)
            results.append(wrk(f"gateway x{workers}: POST /v1/holds", port, holds_lua,
                               ["/v1/holds", f"w{workers}"], server=procs[-1], **run_args))
            results.append(wrk(f"gateway x{workers}: shopify orders/create", port, hooks_lua,
                               ["/webhooks/shop", str(data), str(args.threads)],
                               server=procs[-1], **run_args))
            stop(procs.pop())
        report(results, args.connections)
    finally:
        for proc in procs:
            stop(proc)
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


def wait_ready_post(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/bare", data=b"{}",
                                         method="POST")
            with urllib.request.urlopen(req, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"bare server on port {port} not ready")


def report(results: list[Result], connections: int) -> None:
    base = {"hold": results[0].rps, "webhook": results[1].rps}
    print(f"\nwrk, {connections} connections, 127.0.0.1 "
          f"(ratio = req/s / bare endpoint with the same body)")
    print("CPU us/req: CPU time per request of the server processes, Redis and wrk; "
          "busy: the whole machine's CPU use during the run (other work included)")
    print(f"{'run':42} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'ratio':>6} {'non-2xx':>7} "
          f"{'server':>7} {'redis':>6} {'wrk':>5} {'busy':>5}")
    for r in results:
        kind = "hold" if "hold" in r.name else "webhook"
        ratio = r.rps / base[kind]
        print(f"{r.name:42} {r.rps:7.0f} {r.p50:7.2f} {r.p99:7.2f} {ratio:6.2f} "
              f"{r.non_2xx:7d} {r.cpu['server']:7.1f} {r.cpu['redis']:6.1f} "
              f"{r.cpu['wrk']:5.1f} {r.machine_busy:5.0%}  {r.socket_errors}")
    one = {("hold" if "hold" in r.name else "webhook"): r for r in results if "x1" in r.name}
    two = {("hold" if "hold" in r.name else "webhook"): r for r in results if "x2" in r.name}
    for kind in ("hold", "webhook"):
        if kind in one and kind in two:
            print(f"2 workers / 1 worker, {kind}: {two[kind].rps / one[kind].rps:.2f}x")
    print("targets: ratio >= 0.5 on one worker, p99 < 25 ms")


if __name__ == "__main__":
    main()
