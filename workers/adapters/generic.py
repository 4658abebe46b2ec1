"""A generic JSON channel (kind "standard"): PUT {api_url}/inventory/{sku} with
{"location", "available"}; GET returns {"available"}. Bearer token auth.

The SKU (or its mapped id) is one path segment, percent-encoded whole (quote with safe=""),
so "/", "?", "#" and "%" stay inside it. "." and ".." are refused unsent: they encode to
themselves, and a client or proxy that normalises dot segments would send the call to
another path."""

from __future__ import annotations

from urllib.parse import quote

from workers.adapters.base import ChannelAdapter, PushError


class GenericAdapter(ChannelAdapter):
    def headers(self) -> dict[str, str]:
        token = self.channel.access_token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _path(self, sku: str) -> str:
        segment = self.item_id(sku)
        if segment in ("", ".", ".."):
            raise PushError(f"{self.name}: SKU {sku!r} cannot be a URL path segment",
                            status=400)
        return f"/inventory/{quote(segment, safe='')}"

    async def set_available(self, sku: str, location: str, available: int) -> None:
        await self.call("PUT", self._path(sku),
                        json={"location": self.location_id(location), "available": available})

    async def get_available(self, sku: str, location: str) -> int | None:
        body = await self.call("GET", self._path(sku),
                               params={"location": self.location_id(location)})
        return (body or {}).get("available")
