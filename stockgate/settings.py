"""Settings: one typed object built once from the TOML file in STOCKGATE_CONFIG and the environment.

Values of the form ``env:NAME`` are read from the environment, so secrets stay out of the file.
A reference to a variable that is unset (or empty) is an error, never an empty value: an unset
`redis_url` would quietly start an empty embedded server in production. Every field has a
default: the system runs with no file at all.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from stockgate.allocation import AllocationRule
from stockgate.cluster import is_cluster_url
from stockgate.ebay_settings import EbayConfig

ChannelKind = Literal["shopify", "woocommerce", "bigcommerce", "standard", "tiktok", "amazon",
                      "ebay"]
Scope = Literal["storefront", "operator"]
NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]


class ConfigError(Exception):
    """The configuration file or an ``env:`` reference is invalid."""


class ApiKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    secret: str
    tenant: Name = "default"
    scopes: tuple[Scope, ...] = ("storefront",)
    # Requests per second allowed for this key (token bucket); 0 disables the limit.
    rate_limit_per_s: float = 0.0


class TikTokConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """TikTok Shop Partner API credentials (docs/marketplace-tiktok.md). The app secret is the
    channel's `secret`: TikTok signs webhooks and API requests with the same one."""

    app_key: str
    # Long-lived; exchanged for access tokens (GET <auth_url>/api/v2/token/refresh).
    refresh_token: str
    # Identifies the shop on every shop-scoped call (Get Authorized Shops' `cipher`).
    shop_cipher: str = ""
    # The shop's id (Get Authorized Shops' `id`; webhooks carry it as `shop_id`). One app
    # signs every shop's webhooks with the same secret, so a body signed for another shop of
    # the app (a partner app serves many merchants) is ignored on this channel. Required.
    shop_id: str = ""
    auth_url: str = "https://auth.tiktok-shops.com"


class AmazonConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Amazon Selling Partner API ids and Login with Amazon credentials
    (docs/marketplace-amazon.md); secrets as `env:` references. The channel's `api_url` is the
    SP-API regional endpoint (https://sellingpartnerapi-na.amazon.com, -eu, -fe); its `secret`
    and `secret_header` are the API key an EventBridge connection sends with each
    order-change notification."""

    seller_id: str
    marketplace_id: str  # e.g. ATVPDKIKX0DER (amazon.com); patchListingsItem takes one
    lwa_client_id: str
    lwa_client_secret: str
    lwa_refresh_token: str
    lwa_token_url: str = "https://api.amazon.com/auth/o2/token"
    # The listings' Amazon product type, required in a patchListingsItem body. "PRODUCT" (as
    # offer-only tools send) is not confirmed by the docs found: set the catalogue's own
    # product type if Amazon answers INVALID naming it.
    product_type: str = "PRODUCT"


class Channel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: ChannelKind
    secret: str
    tenant: Name = "default"
    # Where this channel's admin API lives and how to authenticate to it (pushes, fetches).
    api_url: str = ""
    access_token: str = ""
    # BigCommerce: the custom header carrying the shared secret set when the hook was created.
    secret_header: str = "X-Stockgate-Secret"
    # Locations whose stock this channel sells; empty means the tenant's default location.
    locations: tuple[Name, ...] = ()
    # Channel variant id -> SKU, for variants the channel sends without a SKU.
    variant_skus: dict[str, str] = {}
    # Shopify inventory item id -> SKU: inventory_levels/update names only the inventory item.
    inventory_item_skus: dict[str, str] = {}
    # Channel's location id -> Stockgate location name.
    location_map: dict[str, Name] = {}
    # Shopify: the GraphQL Admin API version pushes and reads use (api_url is the shop's
    # address; a REST base ending in /admin/api/<version> is accepted, its version ignored).
    api_version: str = "2026-10"
    # Calls per second the channel's API accepts (each call carries a batch of targets).
    rate_limit_per_s: float = 2.0
    # A WooCommerce `refunded` status or a BigCommerce refund/dispute status cannot say which
    # units came back, so by default nothing is restocked and an alert asks for review. Set
    # this when this shop's refunds always mean the goods came back (or never left).
    restock_refunds: bool = False
    # Show this channel the units pre-order selling may still take against incoming stock
    # on top of available (StockView.incoming[...].preorderable); off: available only.
    show_preorders: bool = False
    # What this channel is shown of each SKU unless the SKU sets its own rule
    # (stockgate/allocation.py); none: the whole pool.
    allocation: AllocationRule | None = None
    # TikTok Shop (kind "tiktok"): app key, refresh token, shop cipher.
    tiktok: TikTokConfig | None = None
    # Amazon (kind "amazon"): seller, marketplace and LWA credentials.
    amazon: AmazonConfig | None = None
    ebay: EbayConfig | None = None  # kind "ebay": OAuth credentials and polling

    def location_for(self, channel_location: object) -> str | None:
        """Stockgate location of one of the channel's location ids (None: the channel's own
        selling location, else the tenant's default).

        Unmapped ids fall back to the default: an order must not be lost because the mapping
        table is incomplete (reconcile will show the drift).
        """
        if channel_location is not None and (
                found := self.location_map.get(str(channel_location))):
            return found
        return self.locations[0] if self.locations else None


class Tenant(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    default_location: Name = "main"


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Empty: start an embedded Redis-compatible server in data_dir. A Redis Cluster is
    # `redis+cluster://host:port[,host:port...]` (stockgate/cluster.py).
    redis_url: str = ""
    # Where arq's job queue lives. arq has no Cluster client and its keys span slots, so with
    # a Cluster redis_url the queue needs a plain Redis of its own (`stockgate up` starts an
    # embedded one when this is empty). Empty: the queue shares a plain redis_url.
    queue_redis_url: str = ""
    data_dir: str = ".stockgate"
    hold_ttl_s: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 900
    # The longest a hold may live from its creation, however often PATCH /v1/holds/{id}
    # extends it (a 3-D Secure challenge or a wallet payment in progress): one hour by
    # default, so an abandoned payment page cannot keep units off sale for long.
    hold_max_total_s: Annotated[int, msgspec.Meta(ge=1, le=7 * 86_400)] = 3600
    # Idempotency records outlive any channel's retry window (Shopify retries for 48 h).
    idempotency_ttl_s: Annotated[int, msgspec.Meta(ge=86_400)] = 3 * 86_400
    # An order's stock state (open, shipped, restocked units) lives while any unit is open, and
    # this long after its last change once none is, so a late return still finds its lines.
    # Separate from the idempotency TTL: backorders, slow shipping and 30-day returns all
    # outlive 3 days.
    return_window_s: Annotated[int, msgspec.Meta(ge=1)] = 90 * 86_400
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1024 * 1024
    # A request body must arrive in full within this long after its headers (408 and the
    # connection closed otherwise): a client that stalls mid-body holds a connection and a
    # task for no longer than this.
    body_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    # Connections plus requests in flight per gateway process (uvicorn's limit_concurrency);
    # past it a new request is answered 503 at once instead of queueing without bound.
    max_connections: Annotated[int, msgspec.Meta(ge=16)] = 4096
    max_lines: Annotated[int, msgspec.Meta(ge=1)] = 1000
    # strict: acknowledge a change only once it is on disk; everysec: fsync once a second.
    durability: Literal["strict", "everysec"] = "strict"
    # With your own Redis 7.2+ (appendonly yes): acknowledge a change only after WAITAOF
    # confirms it reached the server's disk (check that the server's WAITAOF waits for the
    # fsync: tests/test_power_loss.py; the embedded Valkey's does not under everysec). The
    # embedded server needs no such wait in strict mode: it fsyncs before it answers.
    wait_aof: bool = False
    # Acknowledge a change only once this many replicas of its shard have it (WAIT after each
    # batch of scripts, at most replica_wait_ms): a replica promoted after its primary's crash
    # then holds every acknowledged hold. Past the wait the call is a 503 (retried with its
    # idempotency key), so a shard whose replicas are all down stops taking writes.
    replica_wait: Annotated[int, msgspec.Meta(ge=0, le=5)] = 0
    replica_wait_ms: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    # Standard Webhooks timestamp tolerance.
    webhook_tolerance_s: int = 300
    # A count a channel reports (not an echo of ours) is judged this long after it arrives,
    # once the order webhook of a sale that moved it has landed (workers/channel_counts.py).
    channel_count_settle_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    audit_dsn: str = ""
    log_level: str = "INFO"
    # Set: GET /metrics requires `Authorization: Bearer <metrics_token>` (the numbers show
    # sell-through per route). Empty: /metrics is open, for a scraper on a private network.
    metrics_token: str = ""
    # Where the gateway processes of one `stockgate serve --workers N` share their counters,
    # so that one scrape sums them all (gateway/metrics.py). `serve` sets it, through
    # STOCKGATE_METRICS_DIR, to a directory of its own for the run; empty: this process only.
    metrics_dir: str = ""
    # The operator console (/console): how long a sign-in lasts, and how many live streams
    # one gateway process serves at once (each holds a Redis read every second).
    console_session_ttl_s: Annotated[int, msgspec.Meta(ge=60, le=7 * 86_400)] = 8 * 3600
    console_max_streams: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32
    console_max_streams_per_tenant: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 8
    # Send the console's session cookie without `Secure`: only for a plain-http gateway on
    # another host than the browser's (a lab); loopback and https need nothing.
    console_insecure_cookie: bool = False
    # Addresses of the reverse proxies in front of the gateway (uvicorn's
    # forwarded_allow_ips, e.g. "10.0.0.5,10.0.0.6"): their X-Forwarded-For/-Proto are then
    # believed, so the console sees the client's address (its sign-in guard) and https.
    trusted_proxies: str = ""
    tenants: dict[Name, Tenant] = {}
    api_keys: dict[Name, ApiKey] = {}
    channels: dict[Name, Channel] = {}

    def queue_url(self) -> str:
        """The plain Redis of arq's queue; empty when none is known yet (a Cluster alone)."""
        if self.queue_redis_url:
            return self.queue_redis_url
        return "" if is_cluster_url(self.redis_url) else self.redis_url

    def tenant(self, name: str) -> Tenant:
        return self.tenants.get(name, Tenant())

    def tenant_names(self) -> list[str]:
        names = {"default", *self.tenants}
        names.update(k.tenant for k in self.api_keys.values())
        names.update(c.tenant for c in self.channels.values())
        return sorted(names)


_ENV_REF = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")

# Environment variables that override a top-level setting when the file does not set it.
_ENV_OVERRIDES = {
    "REDIS_URL": "redis_url",
    "QUEUE_REDIS_URL": "queue_redis_url",
    "AUDIT_DSN": "audit_dsn",
    "STOCKGATE_DATA_DIR": "data_dir",
    "STOCKGATE_DURABILITY": "durability",
    "STOCKGATE_LOG_LEVEL": "log_level",
    "STOCKGATE_METRICS_DIR": "metrics_dir",
}


def _resolve(value: Any, env: Mapping[str, str], path: str, unset: list[str]) -> Any:
    """`value` with every ``env:NAME`` replaced by the variable's value; the config path of
    each reference to an unset or empty variable is added to `unset` (all of them are
    reported at once, so one failed start names everything to fix)."""
    if isinstance(value, dict):
        return {k: _resolve(v, env, f"{path}.{k}" if path else k, unset)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, env, f"{path}[{i}]", unset) for i, v in enumerate(value)]
    if isinstance(value, str) and (match := _ENV_REF.match(value)):
        name = match.group(1)
        found = env.get(name, "")
        if not found:
            # An empty variable counts as unset: `KEY=${KEY}` in a compose file or unit
            # produces one when the host does not define it.
            unset.append(f"{path} (env:{name})")
        return found
    return value


def load_settings(
    path: str | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """The settings from the TOML file (`path`, else STOCKGATE_CONFIG) and `env`.

    Raises ConfigError for an unreadable or invalid file, a reference to an unset variable,
    an empty secret, or two API keys with the same secret. Messages name settings and
    variables, never a value.
    """
    env = os.environ if env is None else env
    path = path if path is not None else env.get("STOCKGATE_CONFIG", "")
    raw: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    for var, field in _ENV_OVERRIDES.items():
        if field not in raw and env.get(var):
            raw[field] = env[var]
    unset: list[str] = []
    resolved = _resolve(raw, env, "", unset)
    if unset:
        raise ConfigError("unset environment variables referenced by the config: "
                          + ", ".join(unset))
    try:
        settings = msgspec.convert(resolved, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config: {exc}") from exc
    if settings.hold_max_total_s < settings.hold_ttl_s:
        # Every hold would start past the cap, and no extension could ever extend one.
        raise ConfigError("hold_max_total_s must be at least hold_ttl_s")
    for name, key in settings.api_keys.items():
        if not key.secret:
            raise ConfigError(f"api_keys.{name}.secret is empty")
    for name, channel in settings.channels.items():
        if not channel.secret:
            raise ConfigError(f"channels.{name}.secret is empty")
        _check_marketplace(name, channel)
    settings = _with_marketplace_defaults(settings)
    _refuse_shared_secrets(settings)
    _one_channel_per_tiktok_shop(settings)
    return settings


# Each marketplace kind's own table, and the fields of it that must not be empty: without
# them the adapter fails at its first call (or, for Amazon, the worker at start), long after
# a deploy looked healthy.
_MARKETPLACE_TABLES: dict[str, tuple[str, ...]] = {
    "tiktok": ("app_key", "refresh_token", "shop_cipher", "shop_id"),
    "amazon": ("seller_id", "marketplace_id", "lwa_client_id", "lwa_client_secret",
               "lwa_refresh_token"),
    "ebay": ("client_id", "client_secret", "refresh_token"),
}
# Where eBay's and TikTok Shop's production APIs live: a channel without api_url would
# otherwise load and then be neither polled nor pushed to (propagation and the eBay poller
# skip a channel without api_url), silently. TikTok's adapter has the same default
# (workers/adapters/tiktok.py API_URL); settings may not import the workers.
DEFAULT_API_URLS = {"ebay": "https://api.ebay.com",
                    "tiktok": "https://open-api.tiktokglobalshop.com"}


def _check_marketplace(name: str, channel: Channel) -> None:
    """Refuse a marketplace kind without its table (or with an empty required value), and a
    marketplace table on a channel of another kind (a typo in `kind` would otherwise leave
    the table unused and the channel run as something else)."""
    for kind, required in _MARKETPLACE_TABLES.items():
        table = getattr(channel, kind)
        if channel.kind != kind:
            if table is not None:
                raise ConfigError(f"channels.{name}: a [channels.{name}.{kind}] table needs "
                                  f"kind {kind}, not {channel.kind}")
            continue
        if table is None:
            raise ConfigError(f"channels.{name}: kind {kind} needs a "
                              f"[channels.{name}.{kind}] table")
        empty = [field for field in required if not getattr(table, field)]
        if empty:
            raise ConfigError(f"channels.{name}.{kind}: empty "
                              + ", ".join(empty))
    if channel.kind == "amazon" and not channel.api_url:
        # SP-API has one endpoint per region and no default: without one the channel would
        # load and then never be pushed to (or fail every order fetch).
        raise ConfigError(f"channels.{name}: kind amazon needs api_url (the SP-API regional "
                          "endpoint, e.g. https://sellingpartnerapi-na.amazon.com)")


def _with_marketplace_defaults(settings: Settings) -> Settings:
    """The settings with each eBay and TikTok channel's empty api_url set to the
    marketplace's production API, so that the eBay poller and the pushes (which skip a
    channel without api_url) run."""
    channels = {name: msgspec.structs.replace(channel, api_url=DEFAULT_API_URLS[channel.kind])
                if channel.kind in DEFAULT_API_URLS and not channel.api_url else channel
                for name, channel in settings.channels.items()}
    if channels == settings.channels:
        return settings
    return msgspec.structs.replace(settings, channels=channels)


def _one_channel_per_tiktok_shop(settings: Settings) -> None:
    """TikTok signs every shop's webhooks with the app's one secret, so only `shop_id` tells
    which shop a body is for. Two channels naming one shop (one app twice, or two apps the
    shop authorised, as while moving apps) would each apply the shop's orders: one sale
    committed twice. A padded id would never match a body: every order ignored, unsaid."""
    seen: dict[str, str] = {}
    for name, channel in settings.channels.items():
        if channel.kind != "tiktok" or channel.tiktok is None:
            continue
        shop = channel.tiktok.shop_id
        if any(c.isspace() for c in shop):
            raise ConfigError(f"channels.{name}.tiktok.shop_id {shop!r} has white space: "
                              "webhooks carry the bare id")
        first = seen.setdefault(shop, name)
        if first != name:
            raise ConfigError(f"channels.{first} and channels.{name} name the same TikTok "
                              f"shop ({shop}): one channel per shop")


def _refuse_shared_secrets(settings: Settings) -> None:
    """Keys are told apart by their secret alone: two keys with one secret would resolve to
    whichever comes last, e.g. one tenant's operator key acting as another's storefront key."""
    owner: dict[str, str] = {}
    clashes: list[str] = []
    for name, key in settings.api_keys.items():
        first = owner.setdefault(key.secret, name)
        if first != name:
            clashes.append(f"api_keys.{first} and api_keys.{name}")
    if clashes:
        raise ConfigError("API keys must have distinct secrets; these share one: "
                          + "; ".join(clashes))
