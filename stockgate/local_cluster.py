"""A Redis Cluster on 127.0.0.1 from the same server binary as the embedded server: N
primaries, each with one replica, formed with CLUSTER MEET / ADDSLOTSRANGE / REPLICATE (no
redis-cli needed). For the tests, the benchmarks and `stockgate up --cluster`."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Literal

from redis import Redis as SyncRedis
from redis.crc import key_slot

from stockgate.embedded import EmbeddedRedis, free_ports

SLOTS = 16384


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """The slots LocalCluster gives each primary, in order."""
    step = SLOTS // primaries
    return [(i * step, SLOTS - 1 if i == primaries - 1 else (i + 1) * step - 1)
            for i in range(primaries)]


def spread_tenants(primaries: int = 3, prefix: str = "shop") -> list[str]:
    """One tenant name per primary of a fresh LocalCluster (a tenant's keys hash on its
    name: `sg:{tenant}:...`), so a test can load every shard."""
    found: list[str] = []
    for first, last in slot_ranges(primaries):
        n = 0
        while not first <= key_slot(f"{prefix}-{n}".encode()) <= last:
            n += 1
        found.append(f"{prefix}-{n}")
    return found


class LocalCluster:
    def __init__(self, data_dir: str | os.PathLike[str], primaries: int = 3,
                 replicas: int = 1, node_timeout_ms: int = 2000,
                 durability: Literal["strict", "everysec"] = "everysec") -> None:
        self.data_dir = Path(data_dir)
        self.primaries = primaries
        self.replicas = replicas
        # How long a primary may be silent before its replica takes over: the failover gap.
        self.node_timeout_ms = node_timeout_ms
        self.durability = durability
        self.nodes: list[EmbeddedRedis] = []
        self.bus_ports: dict[int, int] = {}  # node index -> cluster bus port

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def _server(self, index: int, port: int, bus: int) -> EmbeddedRedis:
        self.bus_ports[index] = bus
        return EmbeddedRedis(
            self.data_dir / f"node-{index}", port=port, durability=self.durability,
            extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", str(self.node_timeout_ms),
                        # The bus port is port + 10000 by default, past 65535 for the high
                        # ports free_port() hands out.
                        "--cluster-port", str(bus),
                        # A replica with a stale link may still be promoted: without this a
                        # shard whose replica lagged would stay down, not fail over.
                        "--cluster-replica-validity-factor", "0",
                        # The rest of the Cluster keeps serving while one shard is down.
                        "--cluster-require-full-coverage", "no",
                        # A replica's first full sync starts at once, not after Redis's
                        # default 5 s wait for more replicas to share one transfer: the
                        # Cluster forms in about 2 s instead of 6 (tests, `demo --cluster`).
                        "--repl-diskless-sync-delay", "0"))

    def start(self, timeout: float = 30.0) -> LocalCluster:
        total = self.primaries * (1 + self.replicas)
        for attempt in range(3):
            # Every node's port and bus port at once, all distinct; another process may
            # still take one before its node binds it: then start again on new ports.
            ports = free_ports(2 * total)
            self.nodes = [self._server(i, ports[i], ports[total + i]) for i in range(total)]
            try:
                for node in self.nodes:
                    node.start()
            except RuntimeError:
                self.stop()
                if attempt == 2:
                    raise
                for i in range(total):  # a node that did start wrote its nodes.conf
                    shutil.rmtree(self.data_dir / f"node-{i}", ignore_errors=True)
                continue
            break
        try:
            self._form(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _client(self, node: EmbeddedRedis) -> SyncRedis:
        return SyncRedis(host="127.0.0.1", port=node.port, socket_timeout=5)

    def _form(self, timeout: float) -> None:
        first = self._client(self.nodes[0])
        for i, node in enumerate(self.nodes[1:], start=1):
            first.execute_command("CLUSTER MEET", "127.0.0.1", node.port, self.bus_ports[i])
        for node, (first_slot, last_slot) in zip(self.nodes[: self.primaries],
                                                 slot_ranges(self.primaries), strict=True):
            self._client(node).execute_command("CLUSTER ADDSLOTSRANGE", first_slot, last_slot)
        ids = [self._node_id(n) for n in self.nodes]
        deadline = time.monotonic() + timeout
        self._until(deadline, lambda: all(
            self._known(n) >= len(self.nodes) for n in self.nodes), "every node meets the rest")
        for r in range(self.replicas):
            for i in range(self.primaries):
                replica = self.nodes[self.primaries * (1 + r) + i]
                self._client(replica).execute_command("CLUSTER REPLICATE", ids[i])
        self._until(deadline, self._formed, "cluster_state:ok with every replica in sync")

    def _known(self, node: EmbeddedRedis) -> int:
        # redis-py parses CLUSTER NODES into {address: {"flags": ..., ...}}.
        nodes = self._client(node).execute_command("CLUSTER NODES")
        return sum(1 for n in nodes.values() if "handshake" not in n["flags"])

    def _healthy(self) -> bool:
        for node in self.nodes:
            if node.process is None:
                continue
            client = self._client(node)
            if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                return False
            role = client.info("replication")
            if role.get("role") == "slave" and role.get("master_link_status") != "up":
                return False
        return True

    def _formed(self) -> bool:
        """Healthy, and every node has heard which nodes are replicas (clients learn the
        replicas from any node's CLUSTER SLOTS)."""
        expected = self.primaries * self.replicas
        return self._healthy() and all(
            sum("slave" in n["flags"] for n in
                self._client(node).execute_command("CLUSTER NODES").values()) == expected
            for node in self.nodes)

    @staticmethod
    def _until(deadline: float, check: object, what: str) -> None:
        while time.monotonic() < deadline:
            try:
                if check():  # type: ignore[operator]
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"local cluster not ready: {what}")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        self._until(time.monotonic() + timeout, self._healthy, "cluster_state:ok")

    def primary_for(self, key: str) -> EmbeddedRedis:
        """The node serving `key`'s slot now (after a failover: the promoted replica)."""
        return self._owner_of(key_slot(key.encode()))

    def replicas_of(self, primary: EmbeddedRedis) -> list[EmbeddedRedis]:
        # CLUSTER NODES, not SLOTS: SLOTS leaves out a replica with no replicated write yet.
        nodes = self._client(self._any_live()).execute_command("CLUSTER NODES")
        primary_id = nodes[f"127.0.0.1:{primary.port}"]["node_id"]
        ports = {int(address.rsplit(":", 1)[1]) for address, n in nodes.items()
                 if n["master_id"] == primary_id}
        return [n for n in self.nodes if n.port in ports]

    def move_slot(self, slot: int, target: EmbeddedRedis) -> int:
        """Move one slot (a tenant: its keys all hash to one slot) to `target` with every key
        in one MIGRATE, and return how many keys moved. While the slot is marked, the stock
        scripts are refused before they run (their guard key, stockgate/keys.py), so none
        runs on a node holding part of the tenant."""
        source = self._owner_of(slot)
        ids = {n.port: self._node_id(n) for n in (source, target)}
        src, dst = self._client(source), self._client(target)
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source.port])
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target.port])
        count = int(src.execute_command("CLUSTER COUNTKEYSINSLOT", slot))
        keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, max(count, 1))
        if keys:
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 60_000,
                                "KEYS", *keys)
        # The target first: once the source lets go, the target must already own the slot.
        for node in (target, source):
            self._client(node).execute_command("CLUSTER SETSLOT", slot, "NODE",
                                               ids[target.port])
        return len(keys)

    def _owner_of(self, slot: int) -> EmbeddedRedis:
        for start, end, primary, *_ in self._slots():
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(primary[1]))
        raise RuntimeError(f"slot {slot} not served")

    def _node_id(self, node: EmbeddedRedis) -> str:
        raw = self._client(node).execute_command("CLUSTER MYID")
        return raw.decode() if isinstance(raw, bytes) else raw

    def _slots(self) -> list[list[object]]:
        return self._client(self._any_live()).execute_command("CLUSTER SLOTS")

    def _any_live(self) -> EmbeddedRedis:
        return next(n for n in self.nodes if n.process is not None)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
