"""eBay's channel settings (Channel.ebay), kept apart from stockgate/settings.py so that each
marketplace's block merges on its own. What each value is for: docs/marketplace-ebay.md."""

from __future__ import annotations

from typing import Annotated

import msgspec


class EbayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The app's OAuth credentials and the seller's refresh token (minted once by the
    authorization code grant), each an `env:` reference in the config file."""

    client_id: str
    client_secret: str
    refresh_token: str
    # The scopes the refresh grant asks for: the same as, or fewer than, the seller consented
    # to (https://developer.ebay.com/api-docs/static/oauth-refresh-token-request.html).
    # sell.inventory: bulkUpdatePriceQuantity and getInventoryItem; sell.fulfillment:
    # getOrders (sell.fulfillment.readonly also reads orders).
    scopes: tuple[str, ...] = ("https://api.ebay.com/oauth/api_scope/sell.inventory",
                               "https://api.ebay.com/oauth/api_scope/sell.fulfillment")
    # eBay inventory item SKU -> Stockgate SKU, only where they differ: the one table pushes
    # and reads map through. The channel's variant_skus is for order lines only (an eBay
    # SKU, legacyVariationId or legacyItemId -> SKU): a listing id there must never become
    # the SKU a push sets, so it is not reversed for pushes.
    inventory_skus: dict[str, str] = {}
    # Where the token endpoint lives; empty: `<api_url>/identity/v1/oauth2/token`
    # (https://api.ebay.com/identity/v1/oauth2/token in production).
    token_url: str = ""
    # Orders come in by polling getOrders: at most one call every poll_interval_s per channel
    # (plus pages), each asking again for the last poll_overlap_s of changes so that a change
    # eBay indexes late is still read; a change already applied is recognised and skipped.
    # The worker's cron looks once a second: under 1 s this polls once a second.
    poll_interval_s: Annotated[float, msgspec.Meta(ge=0.5, le=3600)] = 5.0
    poll_overlap_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 120.0
    # With no cursor yet (the channel's first poll), orders modified this long ago are read.
    initial_lookback_s: Annotated[float, msgspec.Meta(ge=0, le=90 * 86_400)] = 900.0
