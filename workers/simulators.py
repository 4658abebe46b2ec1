"""Channel simulators for tests and the demo: small HTTP servers on 127.0.0.1 speaking enough
of each channel's inventory API to be pushed to and read from, keeping their own counts.

Each can be told to fail (a share of calls answer 500), slow down, or rate-limit (429 with
Retry-After, token bucket), and records what it received so tests can assert on it.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stockgate.embedded import free_port

Key = tuple[str, str]


class ChannelState:
    """Counts and knobs of one simulated channel. Plain attributes: tests set them directly
    (the server runs in a thread of the same process)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.counts: dict[Key, int] = {}
        # Every value accepted, in order: (unix ms, item, location, value), e.g. to measure
        # propagation lag.
        self.received: list[tuple[float, str, str, int]] = []
        self.fail_ratio = 0.0
        self.delay_s = 0.0
        self.rate_limit_per_s = 0.0
        self.calls = 0
        self.writes = 0
        self.failed = 0
        self.limited = 0
        # BigCommerce orders: id -> {"status_id", "products": [{"sku", "quantity"}]}
        self.orders: dict[str, dict[str, Any]] = {}
        self._tokens = 0.0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def store(self, item: str, location: str, value: int) -> None:
        """A pushed value: the channel's count from now on."""
        self.counts[item, location] = value
        self.received.append((time.time() * 1000, item, location, value))

    def count(self, item: str, location: str = "") -> int | None:
        return self.counts.get((item, "" if self.kind == "woocommerce" else location))

    def _take_token(self) -> float:
        """0 if the call may proceed, else seconds until a token is free."""
        with self._lock:
            rate = self.rate_limit_per_s
            if rate <= 0:
                return 0.0
            now = time.monotonic()
            burst = max(rate, 1.0)
            self._tokens = min(burst, self._tokens + (now - self._last) * rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / rate

    async def gate(self) -> Response | None:
        """Applies the knobs; a response means the call is refused."""
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        wait = self._take_token()
        if wait:
            self.limited += 1
            return JSONResponse({"errors": "rate limited"}, status_code=429,
                                headers={"Retry-After": f"{wait:.3f}"})
        if self.fail_ratio and random.random() < self.fail_ratio:
            self.failed += 1
            return JSONResponse({"errors": "simulated failure"}, status_code=500)
        return None


def _shopify(state: ChannelState) -> list[Route]:
    async def set_level(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        body = await request.json()
        key = (str(body["inventory_item_id"]), str(body["location_id"]))
        state.store(*key, int(body["available"]))
        state.writes += 1
        return JSONResponse({"inventory_level": {
            "inventory_item_id": body["inventory_item_id"], "location_id": body["location_id"],
            "available": state.counts[key]}})

    async def get_levels(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        item, loc = request.query_params["inventory_item_ids"], request.query_params["location_ids"]
        levels = [] if (item, loc) not in state.counts else [
            {"inventory_item_id": item, "location_id": loc, "available": state.counts[item, loc]}]
        return JSONResponse({"inventory_levels": levels})

    return [Route("/inventory_levels/set.json", set_level, methods=["POST"]),
            Route("/inventory_levels.json", get_levels, methods=["GET"])]


def _woocommerce(state: ChannelState) -> list[Route]:
    async def product(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        p = request.path_params
        item = f"{p['product']}/{p['variation']}" if "variation" in p else p["product"]
        if request.method == "PUT":
            body = await request.json()
            state.store(item, "", int(body["stock_quantity"]))
            state.writes += 1
        return JSONResponse({"id": item, "manage_stock": True,
                             "stock_quantity": state.counts.get((item, ""))})

    return [Route("/products/{product}", product, methods=["GET", "PUT"]),
            Route("/products/{product}/variations/{variation}", product,
                  methods=["GET", "PUT"])]


def _bigcommerce(state: ChannelState) -> list[Route]:
    async def absolute(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        body = await request.json()
        for item in body["items"]:
            state.store(str(item["variant_id"]), str(item["location_id"]),
                        int(item["quantity"]))
        state.writes += 1
        return JSONResponse({"transaction_id": str(time.time_ns())})

    async def items(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        item = request.query_params["variant_id:in"]
        loc = request.query_params["location_id:in"]
        data = [] if (item, loc) not in state.counts else [{
            "identity": {"variant_id": item},
            "locations": [{"location_id": loc, "available_to_sell": state.counts[item, loc]}]}]
        return JSONResponse({"data": data})

    async def order(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        order = state.orders.get(request.path_params["order_id"])
        if order is None:
            return JSONResponse({"status": 404}, status_code=404)
        return JSONResponse({"id": request.path_params["order_id"],
                             "status_id": order["status_id"]})

    async def products(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        order = state.orders.get(request.path_params["order_id"])
        if order is None:
            return JSONResponse({"status": 404}, status_code=404)
        return JSONResponse(order["products"])

    return [Route("/v3/inventory/adjustments/absolute", absolute, methods=["PUT"]),
            Route("/v3/inventory/items", items, methods=["GET"]),
            Route("/v2/orders/{order_id}", order, methods=["GET"]),
            Route("/v2/orders/{order_id}/products", products, methods=["GET"])]


def _generic(state: ChannelState) -> list[Route]:
    async def inventory(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        sku = request.path_params["sku"]
        if request.method == "PUT":
            body = await request.json()
            loc = str(body.get("location", ""))
            state.store(sku, loc, int(body["available"]))
            state.writes += 1
        else:
            loc = request.query_params.get("location", "")
        return JSONResponse({"sku": sku, "location": loc,
                             "available": state.counts.get((sku, loc))})

    return [Route("/inventory/{sku}", inventory, methods=["GET", "PUT"])]


ROUTES = {"shopify": _shopify, "woocommerce": _woocommerce, "bigcommerce": _bigcommerce,
          "standard": _generic}


def simulator_app(state: ChannelState) -> Starlette:
    return Starlette(routes=ROUTES[state.kind](state))


class SimulatorServer:
    """One simulated channel served by uvicorn in a background thread."""

    def __init__(self, kind: str, port: int = 0) -> None:
        self.state = ChannelState(kind)
        self.port = port or free_port()
        config = uvicorn.Config(simulator_app(self.state), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True,
                                       name=f"sim-{kind}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> SimulatorServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"{self.state.kind} simulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
