"""The mutation pass (docs/testing.md): break one line the README promises rest on, run the
tests that guard it, and check that at least one fails; then put the line back.

    .venv/bin/python tests/mutation_pass.py            # every mutation
    .venv/bin/python tests/mutation_pass.py clamp-view # the ones named

Each mutation replaces one exact piece of text that must occur once in its file (so a
refactor that moves the line fails the pass loudly instead of testing nothing). The file is
restored in a `finally`, also on Ctrl-C. Exits 1 when a mutation survives.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Mutation(NamedTuple):
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTATIONS = (
    # --- the promises an audit found no test could fail on (issue 16) -------------------
    # Both clamps live in stockgate/allocation.py since allocation rules (the view and the
    # push share figure_pool and shown); each alone is covered by the other, so their own
    # tests are the unit tests that call them directly.
    Mutation("clamp-view", "stockgate/allocation.py",
             "return sum(max(available.get(loc, 0), 0) for loc in sells_from if loc not in mapped)",
             "return max(sum(available.get(loc, 0) for loc in sells_from if loc not in mapped), 0)",
             ("tests/test_allocation.py", "tests/test_promises.py"),
             "a location below zero takes units from another in a channel's one figure"),
    Mutation("clamp-push", "stockgate/allocation.py",
             "    pool = max(pool, 0)\n    if rule is None:",
             "    if rule is None:",
             ("tests/test_allocation.py", "tests/test_promises.py"),
             "a channel is shown a negative count when its pool is below zero"),
    Mutation("shopify-key-ignores-attempt", "workers/adapters/shopify.py",
             "salt, quantities,\n                               attempts],",
             "salt, quantities],",
             ("tests/test_channel_shopify.py",),
             "a re-push of the value a hand edit overwrote is replayed by Shopify, not applied"),
    Mutation("alloc-clamp-to-pool", "stockgate/allocation.py",
             "    return min(value, pool)", "    return value",
             ("tests/test_allocation.py",),
             "a fixed allocation shows units that do not exist"),
    Mutation("alloc-rule-not-pushed", "workers/propagation.py",
             "    if figure is not None:\n        return figure.value",
             "    if figure is not None:\n        return figure.pool",
             ("tests/test_allocation.py",),
             "channels are pushed the pool, not their rule's value"),
    Mutation("alloc-change-not-pushed", "workers/propagation.py",
             '    if event.type == "allocation":\n        return allocation_targets',
             '    if event.type == "allocation_":\n        return allocation_targets',
             ("tests/test_allocation.py",),
             "a rule change reaches no channel until stock moves"),
    Mutation("no-low-stock-alert", "workers/outbox.py",
             "if threshold and after.available < threshold <= before:",
             "if False and threshold and after.available < threshold <= before:",
             ("tests/test_promises.py",),
             "falling under the low-stock threshold raises nothing"),
    Mutation("no-oversell-alert", "workers/outbox.py",
             'if event.type == "oversell_rejected":',
             'if event.type == "oversell_rejected_":',
             ("tests/test_promises.py",),
             "a refused channel order line raises nothing"),
    Mutation("events-of-another-tenant", "gateway/operator.py",
             "event_query(request, principal.tenant)", 'event_query(request, "acme")',
             ("tests/test_promises.py",),
             "an operator key reads another tenant's audit trail"),
    Mutation("alerts-of-another-tenant", "gateway/operator.py",
             "list_alerts(request.app.state.redis, principal.tenant,",
             'list_alerts(request.app.state.redis, "acme",',
             ("tests/test_promises.py",),
             "an operator key reads another tenant's alerts"),
    Mutation("deliveries-of-another-tenant", "gateway/operator.py",
             "failed_deliveries(request.app.state.redis, principal.tenant)",
             'failed_deliveries(request.app.state.redis, "acme")',
             ("tests/test_promises.py",),
             "an operator key reads another tenant's failed pushes"),
    Mutation("bulk-into-another-tenant", "gateway/stock.py",
             "*(_adjust(engine, principal.tenant, line.sku, line)",
             '*(_adjust(engine, "acme", line.sku, line)',
             ("tests/test_promises.py",),
             "a key's bulk adjust lands in another tenant's stock"),
    Mutation("policy-of-another-tenant", "gateway/stock.py",
             "            principal.tenant, sku, location=body.location, safety=body.safety,",
             '            "acme", sku, location=body.location, safety=body.safety,',
             ("tests/test_promises.py",),
             "a key sets another tenant's safety buffer"),
    Mutation("commit-of-another-tenant", "gateway/holds.py",
             "state.engine.commit(principal.tenant, hold_id, body.order_id)",
             'state.engine.commit("acme", hold_id, body.order_id)',
             ("tests/test_promises.py",),
             "a key commits another tenant's hold"),
    Mutation("release-of-another-tenant", "gateway/holds.py",
             "state.engine.release(principal.tenant, hold_id)",
             'state.engine.release("acme", hold_id)',
             ("tests/test_promises.py",),
             "a key releases another tenant's hold"),
    Mutation("low-stock-every-sale", "workers/outbox.py",
             "if threshold and after.available < threshold <= before:",
             "if threshold and after.available < threshold:",
             ("tests/test_promises.py",),
             "every sale under the threshold raises another low_stock alert"),
    Mutation("retry-after-fixed", "gateway/auth.py",
             "return (1.0 - self.tokens) / self.rate", "return 1.0",
             ("tests/test_promises.py",),
             "Retry-After says 1 s whatever the key's rate"),
    Mutation("fulfil-record-one-day", "lua/fulfil.lua",
             "idem_store(idem_key, req.fp, reply, req.idem_ttl_ms)",
             "idem_store(idem_key, req.fp, reply, 86400000)",
             ("tests/test_promises.py",),
             "a fulfilment sent again after a day ships its units twice"),
    Mutation("restock-record-one-day", "lua/restock.lua",
             "idem_store(idem_key, req.fp, reply, req.idem_ttl_ms)",
             "idem_store(idem_key, req.fp, reply, 86400000)",
             ("tests/test_promises.py",),
             "a refund sent again after a day restocks its units twice"),
    Mutation("customer-count-one-minute", "lua/hold.lua",
             "    redis.call('PEXPIRE', k, req.idem_ttl_ms)",
             "    redis.call('PEXPIRE', k, 60000)",
             ("tests/test_promises.py",),
             "max_per_customer stops counting a customer's units after a minute"),
    Mutation("alert-dedupe-one-minute", "stockgate/alerts.py",
             "_MARKER_TTL_S = 86_400", "_MARKER_TTL_S = 60",
             ("tests/test_promises.py",),
             "the same alert is raised again every minute"),
    Mutation("rate-bucket-too-large", "gateway/auth.py",
             "min(max(self.rate, 1.0),", "min(max(self.rate * 1.5, 1.0),",
             ("tests/test_promises.py",),
             "a key gets half as many requests again as its rate"),
    Mutation("idempotency-two-days", "stockgate/settings.py",
             "msgspec.Meta(ge=86_400)] = 3 * 86_400", "msgspec.Meta(ge=86_400)] = 2 * 86_400",
             ("tests/test_promises.py",),
             "idempotency records expire before a channel's 48-hour retries are over"),
    Mutation("openapi-retry-200", "gateway/openapi.py",
             '("202", "RetryReply", "queued")', '("200", "RetryReply", "queued")',
             ("tests/test_hardening_gateway.py", "tests/test_schemathesis.py"),
             "the document says 200 where the retry route answers 202"),
    # --- the Lua scripts ----------------------------------------------------------------
    Mutation("hold-no-stock-check", "lua/hold.lua",
             "  if not can_take(c, wanted[c]) then", "  if false then",
             ("tests/test_scripts.py", "tests/test_concurrency.py"),
             "a hold reserves units that are not available"),
    Mutation("available-ignores-safety", "lua/_common.lua",
             "return c.on_hand - c.reserved - c.committed - c.unavailable - c.safety",
             "return c.on_hand - c.reserved - c.committed - c.unavailable",
             ("tests/test_scripts.py",),
             "the safety buffer is sold"),
    Mutation("cancel-keeps-committed", "lua/cancel.lua",
             "    c.committed = c.committed - x", "    c.committed = c.committed - 0",
             ("tests/test_scripts.py", "tests/test_lifecycle_regressions.py"),
             "a cancelled order's units never come back on sale"),
    Mutation("restock-no-on-hand", "lua/restock.lua",
             "    c.on_hand = c.on_hand + p.shipped", "    c.on_hand = c.on_hand + 0",
             ("tests/test_scripts.py", "tests/test_refund_review.py"),
             "a returned unit is not put back on the shelf"),
    Mutation("commit-after-ttl", "lua/commit.lua",
             "if status == 'held' and tonumber(expires_at) <= ts then",
             "if status == 'held' and tonumber(expires_at) <= ts - 3600000 then",
             ("tests/test_scripts.py", "tests/test_lifecycle_regressions.py"),
             "a hold past its TTL is still committed (its units may have gone back on sale)"),
    Mutation("order-no-set-aside", "lua/order.lua",
             "    q = q - (q > 0 and take_set_aside(sku, loc, q) or 0)", "",
             ("tests/test_set_aside.py",),
             "a channel's order is refused for the units set aside for it"),
    Mutation("moved-sets-nothing-aside", "lua/moved.lua",
             "        c.reserved = c.reserved + x\n        m[loc][l] = (m[loc][l] or 0) + x",
             "        m[loc][l] = (m[loc][l] or 0) + x",
             ("tests/test_set_aside.py", "tests/test_clobber.py"),
             "units a channel sold on its own are sold again elsewhere"),
    Mutation("expire-keeps-reserved", "lua/_common.lua",
             "      c.reserved = c.reserved - q", "      c.reserved = c.reserved - 0",
             ("tests/test_scripts.py",),
             "an expired hold's units stay reserved for ever"),
    # --- the webhook mapping and the workers -------------------------------------------
    Mutation("signature-always-valid", "gateway/channels/base.py",
             "    return hmac.compare_digest(a, b)", "    return True",
             ("tests/test_gateway_webhooks.py",),
             "an unsigned body moves stock"),
    Mutation("shopify-gift-cards-counted", "gateway/channels/shopify.py",
             "li.quantity) for li in line_items if not li.gift_card)",
             "li.quantity) for li in line_items)",
             ("tests/test_gateway_webhooks.py", "tests/test_review_findings.py",
              "tests/test_review2_findings.py"),
             "a gift card line is counted as a stock line"),
    Mutation("woo-line-quantity-ignored", "gateway/channels/woocommerce.py",
             "(li.sku, (li.variation_id, li.product_id), li.quantity)",
             "(li.sku, (li.variation_id, li.product_id), 1)",
             ("tests/test_gateway_webhooks.py", "tests/test_review_findings.py"),
             "a WooCommerce line of 3 commits 1"),
    Mutation("finish-ignores-claim-token", "workers/propagation.py",
             "  if redis.call('HGET', leases, m) ~= token then\n    out[#out + 1] = 0",
             "  if false then\n    out[#out + 1] = 0",
             ("tests/test_propagation_hardening.py", "tests/test_review3_findings.py"),
             "a lapsed claim finishes a target another worker holds"),
    # --- hold extension and incoming stock (issue 11) ------------------------------------
    Mutation("extend-past-the-cap", "lua/extend.lua",
             "local new_expiry = math.max(math.min(wanted, cap), expires_at)",
             "local new_expiry = math.max(wanted, expires_at)",
             ("tests/test_hold_extend.py",),
             "an extension keeps a hold past hold_max_total_s"),
    Mutation("receipt-not-idempotent", "lua/receive.lua",
             "if seen_fp then", "if false and seen_fp then",
             ("tests/test_incoming_property.py",),
             "a repeated receipt adds its units to on_hand again"),
    Mutation("no-preorder-room", "lua/_common.lua",
             "return left >= 0 or left + preorder_room(c) >= 0", "return left >= 0",
             ("tests/test_incoming_property.py",),
             "pre-order selling against incoming stock sells nothing"),
    Mutation("no-preorder-alert", "workers/preorders.py",
             "    if uncovered <= 0:\n        return", "    if True:\n        return",
             ("tests/test_gateway_incoming.py",),
             "a cancel that strands pre-ordered units names no order"),
    # --- review 5: pre-order budget, alert sizes, hold lifetime ---------------------------
    Mutation("preorder-limit-per-location", "lua/_common.lua",
             "  return math.max(0, math.min(incoming, limit - others))",
             "  return math.max(0, math.min(incoming, limit))",
             ("tests/test_review5_preorders.py", "tests/test_incoming_property.py"),
             "a SKU pre-sells its preorder_limit once per location"),
    Mutation("preorder-alert-recorded-size", "workers/preorders.py",
             "at_risk = min(int(qty), left.setdefault(who, open_units))",
             "at_risk = int(qty); left.setdefault(who, open_units)",
             ("tests/test_review5_preorders.py",),
             "an order edited down hides older orders whose pre-ordered units are at risk"),
    Mutation("hold-ttl-unclamped", "stockgate/stock.py",
             "ttl_ms = min(ttl_s or self.settings.hold_ttl_s, self.settings.hold_max_total_s)",
             "ttl_ms = (ttl_s or self.settings.hold_ttl_s)",
             ("tests/test_review5_preorders.py",),
             "a hold made with a long ttl_s lives past hold_max_total_s"),
    # --- issue 12: Redis Cluster --------------------------------------------------------
    Mutation("cluster-replica-wait-ignored", "stockgate/stock.py",
             "wait_replicas=settings.replica_wait,", "wait_replicas=0,",
             ("tests/test_cluster_failover.py",),
             "holds acknowledged while replication lags are lost when the primary dies"),
    Mutation("cluster-wait-result-ignored", "stockgate/scripts.py",
             "confirmed = all(self._confirmed(c.result) for c in confirms)",
             "confirmed = True",
             ("tests/test_cluster_failover.py",),
             "a hold no replica has is acknowledged"),
    Mutation("cluster-one-read-for-all-tenants", "workers/outbox.py",
             "            return await self._read_cluster()",
             "            pass",
             ("tests/test_cluster.py",),
             "one XREADGROUP over several tenants' streams: CROSSSLOT, no push ever leaves"),
    Mutation("cluster-unreachable-is-500", "stockgate/cluster.py",
             'raise ClusterError(f"Redis Cluster unavailable: {exc}") from exc',
             "raise",
             ("tests/test_cluster.py",),
             "a Cluster that does not answer stops the gateway's start-up and answers 500s"),
    Mutation("cluster-moving-guard-dropped", "stockgate/stock.py",
             "self.scripts.call(op, [*keys, k.moving_guard()],", "self.scripts.call(op, [*keys],",
             ("tests/test_cluster_review.py",),
             "a script runs on a slot in mid-move, is aborted after its first write, is retried"),
    Mutation("cluster-command-table-reread", "stockgate/cluster.py",
             "        self.commands_parser.__class__ = _CommandTable", "        pass",
             ("tests/test_cluster_review.py",),
             "the death of slot 0's primary fails every call to every shard"),
    Mutation("cluster-outbox-one-round-for-all", "workers/outbox.py",
             "                                      return_exceptions=True)",
             "                                      return_exceptions=False)",
             ("tests/test_cluster_review.py",),
             "one dead shard stops every tenant's pushes"),
    Mutation("cluster-wait-mark-dropped", "stockgate/scripts.py",
             'return ("INCR", key[: key.index("}:") + 2] + "wait-mark")', 'return ("PING",)',
             ("tests/test_cluster_review.py",),
             "a retry after a WAIT timeout is acknowledged while no replica has the write"),
    # --- the operator console (issue 13) ---------------------------------------------------
    Mutation("console-csrf", "gateway/console.py",
             "if not (presented and hmac.compare_digest(presented, expected)):",
             "if False:",
             ("tests/test_console_security.py",),
             "a cross-site page changes stock through a signed-in operator's browser"),
    Mutation("console-origin", "gateway/console_session.py",
             'return bool(sep) and scheme in ("http", "https") and host == '
             'request.headers.get("host")',
             "return True",
             ("tests/test_console_security.py",),
             "a request another site made is taken for the console's own"),
    Mutation("console-csp", "gateway/console.py",
             '    (b"content-security-policy", CSP.encode()),\n', "",
             ("tests/test_console_security.py",),
             "console pages run without a Content-Security-Policy"),
    Mutation("console-signed-out", "gateway/console.py",
             "if await request.app.state.redis.exists(sessions.signed_out_key(token)):",
             "if False:",
             ("tests/test_console_security.py",),
             "a copied cookie outlives the operator's sign-out"),
    Mutation("console-mac", "gateway/console_session.py",
             "    if mac_key is None or not hmac.compare_digest(\n"
             "            mac, hmac.new(mac_key, body, hashlib.sha256).digest()):",
             "    if mac_key is None:",
             ("tests/test_console_security.py",),
             "a forged session cookie reads another tenant's stock"),
    Mutation("console-key-moved", "gateway/console_session.py",
             "settings.api_keys[token.key].tenant != token.tenant", "False",
             ("tests/test_console_security.py",),
             "a key moved to another tenant keeps sessions on the old one"),
    Mutation("console-stream-cap", "gateway/console.py",
             "elif len(streams) >= settings.console_max_streams:", "elif False:",
             ("tests/test_console_api.py",),
             "live consoles hold Redis reads without bound"),
    # --- worker robustness (two CI flakes, 2026-12-07) --------------------------------------
    Mutation("worker-task-not-restarted", "workers/runtime.py",
             "        except Exception as exc:\n            if loop.time() - started",
             "        except RuntimeError as exc:\n            if loop.time() - started",
             ("tests/test_hardening_workers.py",),
             "an outbox or push task that failed once stays dead for the process's life"),
    Mutation("pool-connects-under-lock", "stockgate/redis_pool.py",
             "                connection = self.get_available_connection()\n            try:",
             "                connection = self.get_available_connection()\n"
             "                await self.ensure_connection(connection)\n            try:",
             ("tests/test_hardening_workers.py",),
             "a frozen Redis holds each call for every connect queued ahead of it"),
    Mutation("pool-connects-unbounded", "stockgate/redis_pool.py",
             "asyncio.Semaphore(CONNECT_SLOTS)", "asyncio.Semaphore(1_000_000)",
             ("tests/test_hardening_workers.py",),
             "a burst on an empty pool fails as Too many connections (503s)"),
    Mutation("pool-leaks-failed-connect", "stockgate/redis_pool.py",
             "                await self.release(connection)\n", "",
             ("tests/test_hardening_workers.py",),
             "each failed connect keeps its slot until the pool is full"),
    Mutation("worker-restart-no-backoff", "workers/runtime.py",
             "async with asyncio.timeout(delay):", "async with asyncio.timeout(0):",
             ("tests/test_hardening_workers.py",),
             "a task failing at every start restarts in a loop of tracebacks"),
    Mutation("worker-failing-not-alerted", "workers/runtime.py",
             "if in_a_row != FAILURES_BEFORE_ALERT:", "if True:",
             ("tests/test_hardening_workers.py",),
             "a worker that reads no outbox is only in its logs"),
    Mutation("worker-stop-cancel-lost", "workers/settings.py",
             "        super().handle_sig(signum)\n        self.loop.call_later(",
             "        super().handle_sig(signum)\n        (lambda *a: None)(",
             ("tests/test_hardening_workers.py",),
             "a SIGTERM whose one cancel is lost leaves the worker running until killed"),
    Mutation("live-stream-after-signal", "gateway/console.py",
             "    if state.console_closing:\n", "    if False:\n",
             ("tests/test_review13_console.py",),
             "a console asking for its stream as the signal lands holds the shutdown 10 s"),
    Mutation("live-stream-holds-shutdown", "gateway/app.py",
             "when_asked_to_exit(end_live_streams)", "when_asked_to_exit(lambda: None)",
             ("tests/test_review13_console.py",),
             "an open console holds every gateway shutdown for uvicorn's 10 s limit"),
)


def run(m: Mutation, timeout_s: float = 600) -> tuple[bool, float, str]:
    """(killed, seconds, the first failing test line) for one mutation."""
    path = ROOT / m.path
    original = path.read_text(encoding="utf-8")
    if original.count(m.old) != 1:
        raise SystemExit(f"{m.name}: the text to mutate occurs {original.count(m.old)} times "
                         f"in {m.path}; update the mutation")
    start = time.monotonic()
    try:
        path.write_text(original.replace(m.old, m.new), encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:warnings", "-rf",
             *m.tests], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
            check=False)
    finally:
        path.write_text(original, encoding="utf-8")
    failed = next((ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED")), "")
    return proc.returncode != 0, time.monotonic() - start, failed


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    survived = 0
    for m in chosen:
        killed, seconds, failed = run(m)
        survived += not killed
        verdict = "killed" if killed else "SURVIVED"
        print(f"{verdict:8} {m.name:32} {seconds:6.1f}s  {failed[:110]}", flush=True)
    print(f"{len(chosen) - survived} of {len(chosen)} mutations killed")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
