"""The demo's TikTok Shop channel: its simulator with a catalogue for the demo's SKUs, and the
channel config that maps them (docs/marketplace-tiktok.md): one TikTok product per SKU, one
warehouse for the demo's location, the app key, refresh token and shop cipher."""

from __future__ import annotations

import msgspec

from loadtests.stack import LOCATION, SimulatedChannel
from workers.simulators import tiktok as sim_tiktok

# Made-up TikTok ids (decimal, as TikTok's are): product n, its one SKU, one warehouse.
PRODUCT_BASE = 1729592969712200000
WAREHOUSE_ID = "7068517275539719942"
TIKTOK_APP_KEY = sim_tiktok.APP_KEY


def item_of(n: int) -> str:
    product = PRODUCT_BASE + 10 * n
    return f"{product}/{product + 1}"


def tiktok_channel(name: str, skus: list[str], rate_limit_per_s: float) -> SimulatedChannel:
    channel = SimulatedChannel(name, "tiktok", sim_tiktok.APP_SECRET, rate_limit_per_s)
    state = channel.state
    items = {sku: item_of(n) for n, sku in enumerate(sorted(skus))}
    state.sku_items.update(items)
    state.aliases.update({item: sku for sku, item in items.items()})
    state.location_names[WAREHOUSE_ID] = LOCATION
    sim_tiktok.sim_of(state)  # the token endpoint's credentials: the module's defaults
    env_name = "SG_DEMO_TIKTOK_REFRESH_TOKEN"
    mapped = ", ".join(f'"{item}" = "{sku}"' for sku, item in items.items())
    toml = "\n".join([
        f"variant_skus = {{ {mapped} }}",
        f'location_map = {{ "{WAREHOUSE_ID}" = "{LOCATION}" }}',
        "",
        f"[channels.{name}.tiktok]",
        f'app_key = "{sim_tiktok.APP_KEY}"',
        f'refresh_token = "env:{env_name}"',
        f'shop_cipher = "{sim_tiktok.SHOP_CIPHER}"',
        f'shop_id = "{sim_tiktok.SHOP_ID}"',
        f'auth_url = "{channel.server.url}"',
    ])
    channel.spec = msgspec.structs.replace(channel.spec, extra_toml=toml,
                                           extra_env={env_name: sim_tiktok.REFRESH_TOKEN})
    return channel
