import re
from pathlib import Path

import pytest

from stockgate.settings import ConfigError, load_settings

CONFIG = """
redis_url = "env:SG_TEST_REDIS"
hold_ttl_s = 120
[tenants.acme]
default_location = "warehouse-1"
[api_keys.storefront-key-1]
tenant = "acme"
secret = "env:SG_STOREFRONT_KEY"
scopes = ["storefront"]
[channels.shopify-main]
tenant = "acme"
kind = "shopify"
secret = "env:SHOPIFY_MAIN_SECRET"
api_url = "https://example.myshopify.com/admin/api/2025-10"
access_token = "env:SHOPIFY_MAIN_TOKEN"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "stockgate.toml"
    path.write_text(text)
    return str(path)


def test_defaults_without_a_file() -> None:
    settings = load_settings(env={})
    assert settings.redis_url == ""
    assert settings.hold_ttl_s == 900
    assert settings.tenant("default").default_location == "main"


def test_env_references_are_resolved(tmp_path: Path) -> None:
    env = {"SG_TEST_REDIS": "redis://127.0.0.1:1/0", "SG_STOREFRONT_KEY": "k-secret",
           "SHOPIFY_MAIN_SECRET": "s-secret", "SHOPIFY_MAIN_TOKEN": "tok"}
    settings = load_settings(write(tmp_path, CONFIG), env=env)
    assert settings.redis_url == "redis://127.0.0.1:1/0"
    assert settings.api_keys["storefront-key-1"].secret == "k-secret"
    assert settings.channels["shopify-main"].access_token == "tok"
    assert settings.tenant("acme").default_location == "warehouse-1"
    assert settings.tenant_names() == ["acme", "default"]


def test_unset_secret_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("api_keys.storefront-key-1.secret")):
        load_settings(write(tmp_path, CONFIG), env={})


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hold_tll_s"):
        load_settings(write(tmp_path, "hold_tll_s = 5\n"), env={})


def test_environment_overrides_when_file_is_silent() -> None:
    settings = load_settings(env={"REDIS_URL": "redis://127.0.0.1:2/0"})
    assert settings.redis_url == "redis://127.0.0.1:2/0"


def test_channel_locations_resolve_through_the_map_then_its_own_location() -> None:
    from stockgate.settings import Channel

    eu = Channel(kind="standard", secret="s", locations=("eu", "eu-2"),
                 location_map={"9001": "main"})
    assert eu.location_for(9001) == "main"
    assert eu.location_for(None) == "eu"
    assert eu.location_for("unmapped-id") == "eu"  # never lose an order to a gap in the map
    assert Channel(kind="standard", secret="s").location_for(None) is None  # tenant default
