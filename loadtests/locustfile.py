"""Flash-sale scenario for locust: storefront shoppers and signed channel webhooks hitting a
few hot SKUs with limited stock and a long tail of ordinary ones.

Run headless against a running Stockgate (the demo sets all of this up itself):

    SG_API_KEY=... SG_SKUS_HOT=DROP-1,DROP-2 SG_SKUS_TAIL=TEE-1,TEE-2 \\
    SG_SHOPIFY=shopify-main:secret SG_WOO=woo-main:secret \\
    locust -f loadtests/locustfile.py --headless -u 40 -r 20 -t 30s --host http://127.0.0.1:8000

Locust runs in its own process, so its configuration comes from the environment (read once,
below) rather than from the Stockgate settings object. Only stdlib and locust are imported:
gevent is monkey-patched before this module loads and nothing here should fight it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from locust import between, events, task
from locust.contrib.fasthttp import FastHttpUser

# The TikTok Shop simulator's shop id (workers/simulators/tiktok.py SHOP_ID): the demo
# channel's tiktok.shop_id, so its webhooks are this shop's.
TIKTOK_SHOP_ID = "7495540735365777507"

# Outcome names the demo reads back from the latency file.
HOLD, COMMIT, RELEASE, WEBHOOK = "hold", "commit", "release", "webhook"


@dataclass(frozen=True)
class ScenarioConfig:
    api_key: str
    hot: tuple[str, ...]
    tail: tuple[str, ...]
    # (channel id, secret) or None when the demo configured no such channel.
    shopify: tuple[str, str] | None
    woo: tuple[str, str] | None
    hold_ttl_s: int
    hot_share: float
    latency_out: str
    # TikTok Shop: (channel id, app secret, app key, simulator URL), or None.
    tiktok: tuple[str, ...] | None = None

    @classmethod
    def from_env(cls, env: dict[str, str]) -> ScenarioConfig:
        def pair(name: str) -> tuple[str, str] | None:
            value = env.get(name, "")
            if ":" not in value:
                return None
            channel, secret = value.split(":", 1)
            return channel, secret

        def skus(name: str, default: str) -> tuple[str, ...]:
            return tuple(s for s in env.get(name, default).split(",") if s)

        return cls(
            api_key=env.get("SG_API_KEY", "demo-storefront-key"),
            hot=skus("SG_SKUS_HOT", "DROP-1"),
            tail=skus("SG_SKUS_TAIL", "TEE-1"),
            shopify=pair("SG_SHOPIFY"),
            woo=pair("SG_WOO"),
            hold_ttl_s=int(env.get("SG_HOLD_TTL_S", "5")),
            hot_share=float(env.get("SG_HOT_SHARE", "0.7")),
            latency_out=env.get("SG_LATENCY_OUT", ""),
            tiktok=tuple(env["SG_TIKTOK"].split("|", 3)) if env.get("SG_TIKTOK") else None,
        )


CONFIG = ScenarioConfig.from_env(dict(os.environ))


@dataclass
class Recorder:
    """Every request's latency and outcome, by category, for exact percentiles across the
    several request names that make up "webhooks" (locust's CSV only has per-name figures)."""

    started: float = field(default_factory=time.time)
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)

    def sample(self, category: str, ms: float) -> None:
        self.samples.setdefault(category, []).append((time.time(), ms))

    def count(self, outcome: str, n: int = 1) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n

    def dump(self, path: str) -> None:
        body = {
            "started": self.started,
            "outcomes": self.outcomes,
            # [unix seconds, milliseconds] pairs, rounded to keep the file small.
            "samples": {k: [[round(t, 3), round(ms, 2)] for t, ms in v]
                        for k, v in self.samples.items()},
        }
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(body, fh)


RECORDER = Recorder()


@events.request.add_listener
def _record(request_type: str, name: str, response_time: float, exception: Any,
            context: dict[str, Any], **_: Any) -> None:
    category = context.get("category") if context else None
    if category and exception is None:
        RECORDER.sample(category, response_time)


@events.quitting.add_listener
def _dump(environment: Any, **_: Any) -> None:
    if CONFIG.latency_out:
        RECORDER.dump(CONFIG.latency_out)


# Order and refund ids must be unique across users and runs: Shopify ids are large integers.
_ids = itertools.count(int(time.time() * 1000) * 1000)


def _pick_sku(rng: random.Random) -> str:
    if CONFIG.hot and (not CONFIG.tail or rng.random() < CONFIG.hot_share):
        return rng.choice(CONFIG.hot)
    return rng.choice(CONFIG.tail)


def sign(secret: str, body: bytes) -> str:
    """Shopify and WooCommerce both sign with base64(HMAC-SHA256(secret, raw body))."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


class Shopper(FastHttpUser):
    """A storefront checkout: hold the cart, then commit it, walk away, or empty it."""

    weight = 4
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.auth = {"Authorization": f"Bearer {CONFIG.api_key}"}

    @task
    def checkout(self) -> None:
        rng = self.rng
        lines = [{"sku": _pick_sku(rng), "qty": 1 if rng.random() < 0.85 else 2}]
        if rng.random() < 0.15:  # a cart with a second, different item
            extra = _pick_sku(rng)
            if extra != lines[0]["sku"]:
                lines.append({"sku": extra, "qty": 1})
        hold_id = uuid.uuid4().hex
        body = {"hold_id": hold_id, "ttl_s": CONFIG.hold_ttl_s, "lines": lines}
        with self.client.post("/v1/holds", json=body, headers=self.auth, name="POST /v1/holds",
                              context={"category": HOLD}, catch_response=True) as resp:
            if resp.status_code == 201:
                RECORDER.count("holds_accepted")
            elif resp.status_code == 409:
                # Sold out is the expected answer for most shoppers in a drop, not an error.
                resp.success()
                RECORDER.count("holds_rejected")
                return
            else:
                resp.failure(f"hold: {resp.status_code} {resp.text[:200]}")
                return
        # Time spent on the payment page; short so that commits land well within the TTL.
        self.wait_pause(rng.uniform(0.0, 0.2))
        fate = rng.random()
        if fate < 0.75:
            self._commit(hold_id)
        elif fate < 0.90:
            with self.client.delete(f"/v1/holds/{hold_id}", headers=self.auth,
                                    name="DELETE /v1/holds/{id}", context={"category": RELEASE},
                                    catch_response=True) as resp:
                if resp.status_code not in (200, 204):
                    resp.failure(f"release: {resp.status_code} {resp.text[:200]}")
                else:
                    RECORDER.count("holds_released")
        else:
            RECORDER.count("holds_abandoned")  # left to expire after its TTL

    def _commit(self, hold_id: str) -> None:
        order_id = f"web-{next(_ids)}"
        with self.client.post(f"/v1/holds/{hold_id}/commit", json={"order_id": order_id},
                              headers=self.auth, name="POST /v1/holds/{id}/commit",
                              context={"category": COMMIT}, catch_response=True) as resp:
            if resp.status_code in (200, 201):
                RECORDER.count("holds_committed")
            else:
                resp.failure(f"commit: {resp.status_code} {resp.text[:200]}")

    def wait_pause(self, seconds: float) -> None:
        import gevent  # locust's own dependency; imported here to keep module import light

        gevent.sleep(seconds)


class ChannelTraffic(FastHttpUser):
    """Orders placed on Shopify and WooCommerce arriving as signed webhooks: some delivered
    twice (channels retry), some later cancelled or refunded with restock."""

    weight = 1
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.rng = random.Random()
        kinds = []
        if CONFIG.shopify:
            kinds.append(self._shopify_order)
        if CONFIG.woo:
            kinds.append(self._woo_order)
        if CONFIG.tiktok:
            kinds.append(self._tiktok_order)
        self.kinds = kinds

    @task
    def channel_order(self) -> None:
        if self.kinds:
            self.rng.choice(self.kinds)()

    def _post(self, channel: str, body: bytes, headers: dict[str, str], name: str) -> bool:
        headers = {"Content-Type": "application/json", **headers}
        with self.client.post(f"/webhooks/{channel}", data=body, headers=headers, name=name,
                              context={"category": WEBHOOK}, catch_response=True) as resp:
            if resp.status_code in (200, 202):
                return True
            resp.failure(f"{name}: {resp.status_code} {resp.text[:200]}")
            return False

    def _lines(self) -> list[tuple[str, int]]:
        first = _pick_sku(self.rng)
        lines = [(first, 1 if self.rng.random() < 0.8 else 2)]
        if self.rng.random() < 0.2:
            second = _pick_sku(self.rng)
            if second != first:
                lines.append((second, 1))
        return lines

    # ---- Shopify ----------------------------------------------------------------------------

    def _shopify(self, topic: str, payload: dict[str, Any], name: str,
                 webhook_id: str | None = None) -> tuple[bool, bytes, str]:
        assert CONFIG.shopify is not None
        channel, secret = CONFIG.shopify
        body = json.dumps(payload, separators=(",", ":")).encode()
        webhook_id = webhook_id or str(uuid.uuid4())
        headers = {
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": sign(secret, body),
            "X-Shopify-Webhook-Id": webhook_id,
            "X-Shopify-Shop-Domain": "flash-demo.myshopify.com",
            "X-Shopify-API-Version": "2025-10",
            "X-Shopify-Triggered-At": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return self._post(channel, body, headers, name), body, webhook_id

    def _shopify_order(self) -> None:
        rng = self.rng
        order_id = next(_ids)
        items = [
            {"id": next(_ids), "variant_id": None, "product_id": None, "sku": sku,
             "quantity": qty, "fulfillable_quantity": qty, "name": sku, "price": "49.00",
             "requires_shipping": True}
            for sku, qty in self._lines()
        ]
        order = {
            "id": order_id, "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
            "name": f"#{order_id % 1_000_000}", "email": "shopper@example.com",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "currency": "USD", "financial_status": "paid", "fulfillment_status": None,
            "cancelled_at": None, "cancel_reason": None, "location_id": None,
            "line_items": items,
        }
        ok, body, webhook_id = self._shopify("orders/create", order, "shopify orders/create")
        if not ok:
            return
        fate = rng.random()
        if fate < 0.10:
            # Shopify retries a delivery it thinks failed: same body, same webhook id.
            channel, secret = CONFIG.shopify  # type: ignore[misc]
            headers = {"X-Shopify-Topic": "orders/create",
                       "X-Shopify-Hmac-Sha256": sign(secret, body),
                       "X-Shopify-Webhook-Id": webhook_id}
            if self._post(channel, body, headers, "shopify duplicate delivery"):
                RECORDER.count("webhooks_duplicated")
        elif fate < 0.18:
            cancelled = {**order, "cancelled_at": order["created_at"],
                         "cancel_reason": "customer", "financial_status": "refunded"}
            if self._shopify("orders/cancelled", cancelled, "shopify orders/cancelled")[0]:
                RECORDER.count("orders_cancelled")
        elif fate < 0.24:
            refund_id = next(_ids)
            item = items[0]
            refund = {
                "id": refund_id, "order_id": order_id, "restock": True,
                "created_at": order["created_at"], "note": "changed mind",
                "admin_graphql_api_id": f"gid://shopify/Refund/{refund_id}",
                "refund_line_items": [{
                    "id": next(_ids), "line_item_id": item["id"], "quantity": item["quantity"],
                    "restock_type": "cancel", "location_id": None,
                    "line_item": {"id": item["id"], "sku": item["sku"],
                                  "variant_id": None, "quantity": item["quantity"]},
                }],
            }
            if self._shopify("refunds/create", refund, "shopify refunds/create")[0]:
                RECORDER.count("orders_refunded")

    # ---- WooCommerce ------------------------------------------------------------------------

    def _woo(self, topic: str, payload: dict[str, Any], name: str,
             delivery_id: str | None = None) -> tuple[bool, bytes, str]:
        assert CONFIG.woo is not None
        channel, secret = CONFIG.woo
        body = json.dumps(payload, separators=(",", ":")).encode()
        delivery_id = delivery_id or str(next(_ids))
        resource, event = topic.split(".", 1)
        headers = {
            "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Resource": resource,
            "X-WC-Webhook-Event": event,
            "X-WC-Webhook-Signature": sign(secret, body),
            "X-WC-Webhook-Delivery-ID": delivery_id,
            "X-WC-Webhook-ID": "7",
            "X-WC-Webhook-Source": "https://flash-demo.example/",
        }
        return self._post(channel, body, headers, name), body, delivery_id

    def _woo_order(self) -> None:
        rng = self.rng
        order_id = next(_ids) % 2_000_000_000  # WooCommerce post ids are 32-bit-ish
        now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        order = {
            "id": order_id, "parent_id": 0, "status": "processing", "currency": "USD",
            "date_created": now, "date_created_gmt": now, "date_modified": now,
            "customer_id": 0, "payment_method": "stripe", "total": "49.00",
            "line_items": [
                {"id": next(_ids) % 2_000_000_000, "name": sku, "product_id": 0,
                 "variation_id": 0, "quantity": qty, "sku": sku, "price": 49,
                 "total": f"{49 * qty}.00"}
                for sku, qty in self._lines()
            ],
            "refunds": [],
        }
        ok, _body, delivery_id = self._woo("order.created", order, "woo order.created")
        if not ok:
            return
        fate = rng.random()
        if fate < 0.10:
            # WooCommerce re-sends a delivery it believes failed with the same delivery id.
            if self._woo("order.created", order, "woo duplicate delivery", delivery_id)[0]:
                RECORDER.count("webhooks_duplicated")
        elif fate < 0.18:
            if self._woo("order.updated", {**order, "status": "cancelled"},
                         "woo order.updated cancelled")[0]:
                RECORDER.count("orders_cancelled")
        elif fate < 0.24:
            refunded = {**order, "status": "refunded",
                        "refunds": [{"id": next(_ids) % 2_000_000_000, "reason": "",
                                     "total": f"-{order['total']}"}]}
            if self._woo("order.updated", refunded, "woo order.updated refunded")[0]:
                RECORDER.count("orders_refunded")

    # ---- TikTok Shop ------------------------------------------------------------------------

    def _tiktok(self, order_id: str, status: str, name: str,
                body: bytes | None = None) -> tuple[bool, bytes]:
        """The order's ORDER_STATUS_CHANGE, signed as TikTok signs it: Authorization = hex
        HMAC-SHA256(app secret, app key + raw body). It names the order only: the worker
        reads the lines from the simulator's Get Order Detail."""
        assert CONFIG.tiktok is not None
        channel, secret, app_key, _ = CONFIG.tiktok
        now = int(time.time())
        body = body or json.dumps({
            "type": 1, "tts_notification_id": str(next(_ids)),
            "shop_id": TIKTOK_SHOP_ID, "timestamp": now,
            "data": {"order_id": order_id, "order_status": status, "update_time": now,
                     "is_on_hold_order": False}}, separators=(",", ":")).encode()
        digest = hmac.new(secret.encode(), app_key.encode() + body, hashlib.sha256).hexdigest()
        return self._post(channel, body, {"Authorization": digest}, name), body

    def _tiktok_state(self, order_id: str, status: str,
                      lines: list[tuple[str, int]] | None = None) -> bool:
        assert CONFIG.tiktok is not None
        payload = {"order_id": order_id, "status": status,
                   "lines": [{"sku": sku, "qty": qty} for sku, qty in lines or []]}
        with self.client.post(f"{CONFIG.tiktok[3]}/_sim/orders", json=payload,
                              name="tiktok checkout (simulator)", catch_response=True) as resp:
            if resp.status_code == 200:
                return True
            resp.failure(f"tiktok simulator: {resp.status_code}")
            return False

    def _tiktok_order(self) -> None:
        order_id = str(576_000_000_000_000_000 + next(_ids) % 10**15)
        if not self._tiktok_state(order_id, "AWAITING_SHIPMENT", self._lines()):
            return
        ok, body = self._tiktok(order_id, "AWAITING_SHIPMENT", "tiktok ORDER_STATUS_CHANGE")
        if not ok:
            return
        fate = self.rng.random()
        if fate < 0.10:
            # TikTok retries a notification it thinks failed: the same body.
            if self._tiktok(order_id, "", "tiktok duplicate delivery", body)[0]:
                RECORDER.count("webhooks_duplicated")
        elif fate < 0.18 and self._tiktok_state(order_id, "CANCELLED"):
            if self._tiktok(order_id, "CANCELLED", "tiktok ORDER_STATUS_CHANGE cancelled")[0]:
                RECORDER.count("orders_cancelled")
