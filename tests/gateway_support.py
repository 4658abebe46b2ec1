"""Constants and helpers shared by the gateway tests (keys, channel secrets, small calls)."""

from __future__ import annotations

import base64
import contextlib
import subprocess
import time
from pathlib import Path

import httpx
import msgspec

from stockgate.settings import ApiKey, Channel, Settings

STOREFRONT = "sf-secret-acme-0123456789"
OPERATOR = "op-secret-acme-0123456789"
OTHER_TENANT = "sf-secret-globex-0123456789"
LIMITED = "sf-secret-limited-0123456789"
SHOPIFY_SECRET = "shpss_0123456789abcdef"
WOO_SECRET = "wc-secret-0123456789"
BC_SECRET = "bc-shared-0123456789"
STD_KEY = bytes(range(32))
STD_SECRET = "whsec_" + base64.b64encode(STD_KEY).decode()


def gateway_settings(base: Settings) -> Settings:
    return msgspec.structs.replace(
        base,
        max_body_bytes=64 * 1024,
        api_keys={
            "sf": ApiKey(secret=STOREFRONT, tenant="acme", scopes=("storefront",)),
            "op": ApiKey(secret=OPERATOR, tenant="acme", scopes=("operator",)),
            "globex": ApiKey(secret=OTHER_TENANT, tenant="globex", scopes=("operator",)),
            "limited": ApiKey(secret=LIMITED, tenant="acme", rate_limit_per_s=2),
        },
        channels={
            "shop": Channel(kind="shopify", secret=SHOPIFY_SECRET, tenant="acme",
                            variant_skus={"4455": "SKU-V"},
                            inventory_item_skus={"7001": "SKU-1"},
                            location_map={"9001": "main"}),
            "woo": Channel(kind="woocommerce", secret=WOO_SECRET, tenant="acme",
                           variant_skus={"88": "SKU-V"}),
            "bc": Channel(kind="bigcommerce", secret=BC_SECRET, tenant="acme"),
            "std": Channel(kind="standard", secret=STD_SECRET, tenant="acme"),
        },
    )


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def receive(client: httpx.AsyncClient, sku: str, qty: int, location: str = "main",
                  key: str | None = None) -> None:
    r = await client.post(f"/v1/stock/{sku}/adjust", headers=bearer(OPERATOR), json={
        "location": location, "delta": qty, "reason": "receipt",
        "idempotency_key": key or f"rcv-{sku}-{location}-{qty}"})
    assert r.status_code == 200, r.text


async def cell(client: httpx.AsyncClient, sku: str, location: str = "main") -> dict[str, int]:
    r = await client.get(f"/v1/stock/{sku}", headers=bearer(OPERATOR))
    assert r.status_code == 200, r.text
    return r.json()["locations"][location]


def wait_until_serving(serve: subprocess.Popen[bytes], client: httpx.Client, log_path: Path,
                       within_s: float = 30) -> None:
    """Until a `stockgate serve` subprocess answers /healthz; its log if it died first."""
    deadline = time.monotonic() + within_s
    while True:
        assert serve.poll() is None, log_path.read_text()
        with contextlib.suppress(httpx.TransportError):
            if client.get("/healthz").status_code == 200:
                return
        assert time.monotonic() < deadline, "serve did not start"
        time.sleep(0.1)
