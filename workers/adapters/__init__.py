"""Push adapters, one module per channel kind behind the ChannelAdapter interface."""

from __future__ import annotations

import httpx

from stockgate.settings import Channel
from workers.adapters.amazon import AmazonAdapter
from workers.adapters.base import ChannelAdapter, ChannelOrder, OrderLine, PushError
from workers.adapters.bigcommerce import BigCommerceAdapter
from workers.adapters.ebay import EbayAdapter
from workers.adapters.generic import GenericAdapter
from workers.adapters.shopify import ShopifyAdapter
from workers.adapters.tiktok import TikTokAdapter
from workers.adapters.woocommerce import WooCommerceAdapter

ADAPTERS: dict[str, type[ChannelAdapter]] = {
    "shopify": ShopifyAdapter,
    "woocommerce": WooCommerceAdapter,
    "bigcommerce": BigCommerceAdapter,
    "standard": GenericAdapter,
    "tiktok": TikTokAdapter,
    "amazon": AmazonAdapter,
    "ebay": EbayAdapter,
}


def adapter_for(name: str, channel: Channel, client: httpx.AsyncClient) -> ChannelAdapter:
    return ADAPTERS[channel.kind](name, channel, client)


__all__ = ["ADAPTERS", "ChannelAdapter", "ChannelOrder", "OrderLine", "PushError",
           "adapter_for"]
