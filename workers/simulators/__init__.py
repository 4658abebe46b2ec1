"""Channel simulators for tests and the demo: small HTTP servers on 127.0.0.1 speaking enough
of each channel's inventory API to be pushed to and read from, keeping their own counts.

Each can be told to fail (a share of calls answer 500), slow down, or rate-limit (429 with
Retry-After, token bucket), and records what it received so tests can assert on it.
"""

from __future__ import annotations

import threading
import time

import uvicorn
from starlette.applications import Starlette

from stockgate.embedded import free_port
from workers.simulators import amazon, bigcommerce, ebay, generic, shopify, tiktok, woocommerce
from workers.simulators.state import ChannelState

__all__ = ["ChannelState", "SimulatorServer", "simulator_app"]

ROUTES = {"shopify": shopify.routes, "woocommerce": woocommerce.routes,
          "bigcommerce": bigcommerce.routes, "standard": generic.routes,
          "tiktok": tiktok.routes, "amazon": amazon.routes, "ebay": ebay.routes}


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
