"""Review 14, eBay / settings / scrub findings (2, 6, 8, 11 of REVIEW14.md): each test
reproduces one finding and asserts the expected behaviour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from redis.asyncio import Redis
from test_channel_amazon import amazon_channel
from test_channel_ebay import CH, ebay_channel, stock
from test_channel_ebay import cell as ebay_cell
from test_channel_ebay import poll as ebay_poll
from test_channel_tiktok import CATALOGUE

from stockgate.settings import Channel, ConfigError, TikTokConfig, load_settings
from stockgate.stock import StockEngine
from workers.adapters.base import PushItem
from workers.adapters.ebay import TOKENS, EbayAdapter
from workers.simulators import SimulatorServer
from workers.simulators.amazon import AmazonSim
from workers.simulators.ebay import book_of

TT_KEY, TT_SECRET = "tt-app-key", "tt-app-secret-0123456789"


def tt_channel(shop_cipher: str) -> Channel:
    return Channel(kind="tiktok", secret=TT_SECRET, tenant="acme",
                   tiktok=TikTokConfig(app_key=TT_KEY, refresh_token="r",
                                       shop_cipher=shop_cipher),
                   variant_skus={item: sku for sku, item in CATALOGUE.items()})


@pytest.fixture
def sim(sim_factory: Any) -> SimulatorServer:
    TOKENS.forget()
    return sim_factory("ebay")


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


# ---- 2. eBay: a listing-id mapping in variant_skus hijacks the push target ----------------

async def test_ebay_listing_id_mapping_does_not_redirect_the_push(
        sim: SimulatorServer, http: httpx.AsyncClient) -> None:
    """docs/marketplace-ebay.md: variant_skus maps "an order line without a SKU by its
    legacyVariationId or legacyItemId". The push reverses the same table, so SKU A is
    then pushed to eBay SKU "110" (the listing id) and eBay's real SKU A is never set."""
    adapter = EbayAdapter(CH, msgspec.structs.replace(
        ebay_channel(sim), variant_skus={"110": "A"}), http)
    [result] = await adapter.push_batch([PushItem("A", "main", 5)])
    assert result.status == "ok"
    assert book_of(sim.state).bulk_calls[-1] == ["A"], book_of(sim.state).bulk_calls


# ---- 6. Settings: kinds without their tables start anyway -----------------------------------

@pytest.mark.parametrize("kind", ["tiktok", "amazon"])
def test_a_marketplace_kind_without_its_table_is_refused_at_load(tmp_path: Path,
                                                                 kind: str) -> None:
    path = tmp_path / "sg.toml"
    path.write_text(f'[channels.m]\nkind = "{kind}"\nsecret = "s"\n'
                    'api_url = "https://example.invalid"\n')
    # eBay's rule (stockgate/settings.py): "kind ebay needs a [channels.x.ebay] table".
    with pytest.raises(ConfigError, match=kind):
        load_settings(str(path), {})


def test_a_tiktok_channel_without_a_shop_cipher_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "sg.toml"
    path.write_text('[channels.m]\nkind = "tiktok"\nsecret = "s"\n'
                    '[channels.m.tiktok]\napp_key = "k"\nrefresh_token = "r"\n')
    with pytest.raises(ConfigError):
        load_settings(str(path), {})


def test_an_ebay_channel_without_api_url_is_refused_not_silently_unpolled(
        tmp_path: Path) -> None:
    from workers.ebay_orders import ebay_channels
    path = tmp_path / "sg.toml"
    path.write_text('[channels.eb]\nkind = "ebay"\nsecret = "x"\n'
                    '[channels.eb.ebay]\nclient_id = "i"\nclient_secret = "s"\n'
                    'refresh_token = "r"\n')
    try:
        settings = load_settings(str(path), {})
    except ConfigError:
        return  # refused at start: fine
    # Accepted: then it must at least be polled (an api_url default, as TikTok has).
    assert ebay_channels(settings), "eBay channel loaded, but its orders are never polled"


# ---- 8. eBay restock_refunds: a refund before shipment restocks units that then ship --------

async def partly_refunded_order(sim: SimulatorServer, http: httpx.AsyncClient, redis: Redis,
                                engine: StockEngine, order_id: str) -> EbayAdapter:
    """5 A in stock; an order of 2 polled, then partly refunded (e.g. a shipping overcharge:
    the order goes on) and polled again, on a channel that restocks refunds."""
    book = book_of(sim.state)
    adapter = EbayAdapter(CH, msgspec.structs.replace(ebay_channel(sim),
                                                      restock_refunds=True), http)
    await stock(engine, A=5)
    book.add_order(order_id, [("A", 2)])
    await ebay_poll(redis, engine, adapter)
    book.refund(order_id, full=False)
    await ebay_poll(redis, engine, adapter)
    return adapter


async def test_ebay_refund_before_shipment_does_not_put_shipped_units_back_on_sale(
        sim: SimulatorServer, http: httpx.AsyncClient, redis: Redis,
        engine: StockEngine) -> None:
    adapter = await partly_refunded_order(sim, http, redis, engine, "21-001")
    book_of(sim.state).ship("21-001")
    await ebay_poll(redis, engine, adapter)
    # Reference: 2 units left with the buyer; 3 are on the shelf.
    assert await ebay_cell(engine, "A") == {"on_hand": 3, "committed": 0, "available": 3}


# ---- 11. The error scrubber does not know the marketplace credentials -----------------------

def test_scrub_redacts_marketplace_credentials() -> None:
    """stockgate/activity.py scrub() redacts channel.secret/access_token only; the LWA,
    eBay and TikTok refresh tokens and client secrets live in the kind's table."""
    from stockgate.activity import scrub
    from stockgate.ebay_settings import EbayConfig
    amz = amazon_channel("http://127.0.0.1:9", AmazonSim())
    assert amz.amazon is not None
    eb = Channel(kind="ebay", secret="unused-secret-0123", api_url="http://x",
                 ebay=EbayConfig(client_id="id", client_secret="ebay-cert-0123456789",
                                 refresh_token="v^1.1#i^1#ebay-refresh-0123456789"))
    tt = tt_channel("cipher")
    assert tt.tiktok is not None
    for channel, secret in ((amz, amz.amazon.lwa_refresh_token),
                            (amz, amz.amazon.lwa_client_secret),
                            (eb, "ebay-cert-0123456789"),
                            (eb, "v^1.1#i^1#ebay-refresh-0123456789")):
        text = scrub(f"channel echoed: {secret}", channel)
        assert secret not in text, (channel.kind, text)


async def test_ebay_listing_ids_still_map_order_lines_and_inventory_skus_map_pushes(
        sim: SimulatorServer, http: httpx.AsyncClient, redis: Redis,
        engine: StockEngine) -> None:
    """The fix's other half: variant_skus keeps mapping order lines by listing id, and a
    SKU that differs on eBay is pushed through ebay.inventory_skus; the simulator, like eBay,
    refuses a SKU the seller has no inventory item of."""
    book = book_of(sim.state)
    channel = ebay_channel(sim)
    assert channel.ebay is not None
    adapter = EbayAdapter(CH, msgspec.structs.replace(
        channel, variant_skus={"110": "A"},
        ebay=msgspec.structs.replace(channel.ebay, inventory_skus={"EB-B": "B"})), http)
    sim.state.mint_unknown_skus = False
    sim.state.counts[("A", "")] = 0
    sim.state.counts[("EB-B", "")] = 0
    results = await adapter.push_batch([PushItem("A", "main", 5), PushItem("B", "main", 4),
                                        PushItem("110", "main", 1)])
    assert [r.status for r in results] == ["ok", "ok", "failed"], results
    assert book.bulk_calls[-1] == ["A", "EB-B", "110"]
    assert (sim.state.count("A"), sim.state.count("EB-B")) == (5, 4)
    await stock(engine, A=5, B=5)
    order = book.add_order("30-001", [("", 1), ("EB-B", 2)])
    assert order["lineItems"][0]["legacyItemId"] == "110"
    await ebay_poll(redis, engine, adapter)
    assert (await ebay_cell(engine, "A"))["committed"] == 1
    assert (await ebay_cell(engine, "B"))["committed"] == 2


async def test_ebay_full_refund_after_shipment_restocks_once_and_a_partial_one_asks_review(
        sim: SimulatorServer, http: httpx.AsyncClient, redis: Redis,
        engine: StockEngine) -> None:
    from test_channel_ebay import T

    from stockgate.alerts import list_alerts
    book = book_of(sim.state)
    adapter = await partly_refunded_order(sim, http, redis, engine, "22-001")
    assert [a.ref for a in await list_alerts(redis, T, type="refund_needs_review")] == [
        f"{CH}:22-001"]
    book.ship("22-001")
    await ebay_poll(redis, engine, adapter)
    book.refund("22-001", full=True)  # the goods came back
    await ebay_poll(redis, engine, adapter)
    book.touch("22-001")  # read again later: restocked once only
    await ebay_poll(redis, engine, adapter)
    assert await ebay_cell(engine, "A") == {"on_hand": 5, "committed": 0, "available": 5}


def test_scrub_redacts_marketplace_credentials_in_their_sent_forms() -> None:
    """The forms a token call sends them in: eBay's Basic auth of client_id:client_secret,
    a refresh token percent-encoded in a form body; TikTok's refresh token."""
    import base64
    from urllib.parse import quote, quote_plus

    from stockgate.activity import redact
    from stockgate.ebay_settings import EbayConfig
    refresh = "v^1.1#i^1#ebay refresh+0123456789"
    eb = Channel(kind="ebay", secret="unused-secret-0123", api_url="http://x",
                 ebay=EbayConfig(client_id="app-id", client_secret="ebay-cert-0123456789",
                                 refresh_token=refresh))
    basic = base64.b64encode(b"app-id:ebay-cert-0123456789").decode()
    for form in (basic, quote(refresh, safe=""), quote_plus(refresh)):
        assert form not in redact(f"echo: Basic {form}&x", eb), form
    tt = tt_channel("cipher")
    tt = msgspec.structs.replace(tt, tiktok=msgspec.structs.replace(
        tt.tiktok, refresh_token="tt-refresh-0123456789"))
    assert "tt-refresh-0123456789" not in redact("echo tt-refresh-0123456789", tt)
    assert redact("channel eb says hello", eb) == "channel eb says hello"


def test_marketplace_api_urls_default_or_are_required(tmp_path: Path) -> None:
    """A TikTok channel without api_url gets TikTok's (pushes skip a channel without one);
    Amazon has one endpoint per region and no default: refused; a table on another kind
    is refused."""
    path = tmp_path / "sg.toml"
    path.write_text('[channels.t]\nkind = "tiktok"\nsecret = "s"\n'
                    '[channels.t.tiktok]\napp_key = "k"\nrefresh_token = "r"\n'
                    'shop_cipher = "c"\nshop_id = "1"\n')
    assert load_settings(str(path), {}).channels["t"].api_url == (
        "https://open-api.tiktokglobalshop.com")
    path.write_text('[channels.a]\nkind = "amazon"\nsecret = "s"\n'
                    '[channels.a.amazon]\nseller_id = "S"\nmarketplace_id = "M"\n'
                    'lwa_client_id = "i"\nlwa_client_secret = "c"\nlwa_refresh_token = "r"\n')
    with pytest.raises(ConfigError, match="api_url"):
        load_settings(str(path), {})
    path.write_text('[channels.s]\nkind = "shopify"\nsecret = "s"\n'
                    '[channels.s.ebay]\nclient_id = "i"\nclient_secret = "c"\n'
                    'refresh_token = "r"\n')
    with pytest.raises(ConfigError, match="needs kind ebay"):
        load_settings(str(path), {})
