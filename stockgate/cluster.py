"""Redis Cluster support: the one URL form Stockgate accepts for a Cluster, the client for
either kind of store, and the errors a Cluster raises while its topology changes.

A Cluster URL is `redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster`
for TLS): one or more seed nodes, any node of the Cluster will do; the client learns the rest
(and every later change) from CLUSTER SLOTS. Every key Stockgate writes carries its tenant as
the hash tag (`sg:{tenant}:...`), so one tenant lives on one shard and every script's keys
share a slot.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, NodesManager, RedisCluster, get_node_name
from redis.exceptions import ClusterError, RedisClusterException, SlotNotCoveredError, TryAgainError

from stockgate.redis_pool import plain_redis

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS

# What a Cluster raises while a shard has no primary (the gap between a primary's death and
# its replica's promotion: CLUSTERDOWN, MASTERDOWN, redirections past redis-py's limit) or a
# slot is being moved (TRYAGAIN): try again. Not RedisClusterException as a whole: redis-py
# raises it for misuse too (a blocked command, keys in several slots), which is a bug.
CLUSTER_UNAVAILABLE: tuple[type[Exception], ...] = (ClusterError, SlotNotCoveredError,
                                                    TryAgainError)

Store = Redis | RedisCluster


class StockCluster(RedisCluster):
    """redis-py's RedisCluster (5.3.1) with its defects under a topology change worked around,
    each found by tests/test_cluster.py or a review against a real local Cluster:

    - After a MOVED storm or a lost connection the client resets its topology, leaving no
      default node until the next call re-reads it; a pipeline meeting an error meanwhile
      reads `get_default_node().name` and fails with AttributeError, 500s to shoppers while a
      tenant moved (open upstream: redis/redis-py#3835, PR #3458). Callers only compare the
      default node or look it up by name, so a placeholder matching no node answers then.
    - Every re-read of the topology also re-reads the command table (COMMAND) from the
      default node, the first primary in CLUSTER SLOTS: while that primary is dead and not
      yet replaced, every re-read failed, and so did every call to every shard. The table
      does not change with the topology: it is read once.
    - A MOVED applied twice (see _SlotMap).
    - On a connection error redis-py drops the node from its seed list before it re-reads the
      topology; calls failing together on every node (cut by its own aclose()) emptied the
      list, and the client never reconnected, even once the Cluster was whole again. Every
      node it has known is put back before a re-read.
    """

    _NO_NODE = ClusterNode("0.0.0.0", 0)  # never connected, only compared

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nodes_manager.__class__ = _SlotMap
        self.commands_parser.__class__ = _CommandTable
        self._known = {n.name: (n.host, n.port)
                       for n in self.nodes_manager.startup_nodes.values()}

    def refresh_slots(self) -> None:
        """Read the topology again on the next call, keeping the open connections (redis-py's
        own reaction to an error, aclose(), also drops every in-flight call to every node)."""
        self._initialize = True

    def get_default_node(self) -> ClusterNode:
        return self.nodes_manager.default_node or self._NO_NODE

    async def initialize(self) -> StockCluster:
        """redis-py raises RedisClusterException, which is no RedisError, when no seed node
        answers or the slots are not all served yet: the Cluster is unavailable (a 503, and a
        gateway that starts anyway), not misused. Only a node without cluster mode is a
        configuration error and stays one."""
        slot_map = self.nodes_manager
        rereading = self._initialize
        if rereading:
            for name, (host, port) in self._known.items():
                if name not in slot_map.startup_nodes:
                    slot_map.startup_nodes[name] = ClusterNode(
                        host, port, **slot_map.connection_kwargs)
        try:
            await super().initialize()
        except RedisClusterException as exc:
            if "not enabled" in str(exc):
                raise
            raise ClusterError(f"Redis Cluster unavailable: {exc}") from exc
        if rereading:
            self._known.update((n.name, (n.host, n.port)) for n in slot_map.nodes_cache.values())
        return self


class _CommandTable(AsyncCommandsParser):
    __slots__ = ()  # AsyncCommandsParser's layout, so that the client's instance can take it

    async def initialize(self, node: ClusterNode | None = None) -> None:
        if not self.commands:  # read once: COMMAND's table does not change with the topology
            await super().initialize(node)


class _SlotMap(NodesManager):
    """redis-py's slot map, safe under concurrent MOVED replies. redis-py records one pending
    MOVED and applies it on the next lookup; when many calls meet the same MOVED at once (a
    burst during a resharding or a failover) it is applied twice, and the second time the new
    owner, already first in the slot's list, is taken for the old primary of a failover and
    marked a replica. SCRIPT LOAD then skips it (it goes to primaries only) and every call
    there fails with NOSCRIPT (tests/test_cluster.py, a tenant moved under load)."""

    __slots__ = ()  # NodesManager's layout, so that the client's instance can take this class

    def _update_moved_slots(self) -> None:
        moved = self._moved_exception
        owners = self.slots_cache.get(moved.slot_id) if moved is not None else None
        if owners and owners[0].name == get_node_name(moved.host, moved.port):  # type: ignore[union-attr]
            self._moved_exception = None  # applied already by a concurrent call
            return
        super()._update_moved_slots()


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def is_cluster(redis: object) -> bool:
    return isinstance(redis, RedisCluster)


def cluster_seeds(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Seed nodes and connection options of a Cluster URL; ValueError names what is wrong."""
    scheme, rest = url.split("://", 1)
    tls = CLUSTER_SCHEMES[scheme.lower()]
    auth, _, location = rest.rpartition("@")
    hosts, _, path = location.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ValueError("a Cluster URL has no database number (a Cluster has only db 0)")
    seeds: list[tuple[str, int]] = []
    for part in filter(None, hosts.split(",")):
        parsed = urlsplit(f"//{part}")
        if not parsed.hostname or parsed.port is None:
            raise ValueError(f"Cluster seed {part!r} needs host:port")
        seeds.append((parsed.hostname, parsed.port))
    if not seeds:
        raise ValueError("a Cluster URL names at least one seed node (host:port)")
    options: dict[str, Any] = {"ssl": tls} if tls else {}
    # As redis:// URLs read in redis-py: `user@` names a user, `:password@` or
    # `user:password@` carry a password (so the URL's masking in logs finds it).
    user, sep, password = auth.partition(":")
    if user:
        options["username"] = unquote(user)
    if sep:
        options["password"] = unquote(password)
    return seeds, options


def connect(url: str, **options: Any) -> Store:
    """A client for `url`: RedisCluster for a Cluster URL, Redis otherwise. `options` are
    redis-py connection options (timeouts, max_connections: per node on a Cluster)."""
    if not is_cluster_url(url):
        return plain_redis(url, **options)
    seeds, from_url = cluster_seeds(url)
    # Several tries on a connection error let a call ride out a replica's promotion; each
    # refreshes the slot map. Past them the caller answers 503 and the client retries.
    # reinitialize_steps=0: a MOVED patches the slot map (_SlotMap applies it once) instead
    # of redis-py's aclose() every 5th MOVED, which disconnected connections other calls were
    # writing on mid-move (AttributeError, a 500, in a clean-clone run of tests/test_cluster.py).
    return StockCluster(startup_nodes=[ClusterNode(host, port) for host, port in seeds],
                        reinitialize_steps=0,
                        connection_error_retry_attempts=3, cluster_error_retry_attempts=3,
                        **from_url, **options)

