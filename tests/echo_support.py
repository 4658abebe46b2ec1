"""A channel (or the proxy in front of it) whose 500 error page echoes the request's
Authorization header: the console reviews' tests of credential scrubbing use it."""

from __future__ import annotations

from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any


def echoing(page: Callable[[str], str]) -> type[BaseHTTPRequestHandler]:
    """A handler answering every call 500 with `page(<the Authorization header>)`."""

    class Echo(BaseHTTPRequestHandler):
        def _fail(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            raw = page(self.headers["Authorization"]).encode()
            self.send_response(500)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_PUT = do_POST = _fail

        def log_message(self, *args: Any) -> None:
            pass

    return Echo
