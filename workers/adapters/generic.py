"""A generic JSON channel (kind "standard"): PUT {api_url}/inventory/{sku} with
{"location", "available"}; GET returns {"available"}. Bearer token auth."""

from __future__ import annotations

from urllib.parse import quote

from workers.adapters.base import ChannelAdapter


class GenericAdapter(ChannelAdapter):
    def headers(self) -> dict[str, str]:
        token = self.channel.access_token
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def set_available(self, sku: str, location: str, available: int) -> None:
        await self.call("PUT", f"/inventory/{quote(self.item_id(sku), safe='')}",
                        json={"location": self.location_id(location), "available": available})

    async def get_available(self, sku: str, location: str) -> int | None:
        body = await self.call("GET", f"/inventory/{quote(self.item_id(sku), safe='')}",
                               params={"location": self.location_id(location)})
        return (body or {}).get("available")
