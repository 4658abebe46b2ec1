"""One module per channel kind, each with the same two functions (see base.py): `verify`
(signature over the raw body) and `decode` (payload -> stock operations)."""

from __future__ import annotations

from types import ModuleType

from gateway.channels import amazon, bigcommerce, ebay, shopify, standard, tiktok, woocommerce

KINDS: dict[str, ModuleType] = {
    "shopify": shopify,
    "woocommerce": woocommerce,
    "bigcommerce": bigcommerce,
    "standard": standard,
    "tiktok": tiktok,
    "amazon": amazon,
    "ebay": ebay,
}
