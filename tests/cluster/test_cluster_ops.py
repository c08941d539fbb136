"""Operations on a real local cluster: the durability checks read every master (one master set to evict
is enough to refuse), and the backlog exporter and the dead-letter command work by slot."""

from __future__ import annotations

import subprocess
import sys

from adapters import redis_keys as keys
from adapters.embedded_cluster import EmbeddedCluster, admin
from adapters.redis_topology import sync_client
from gateway.cli import refuse_unfit_redis
from gateway.ops.backlog import BacklogCollector, client_for
from gateway.ops.durability import Durability, RedisFacts, combined, read_facts_sync, version_tuple


def test_every_master_is_checked_and_one_that_would_evict_refuses_the_cluster(
    cluster: EmbeddedCluster,
) -> None:
    url = cluster.url_for("admin")
    facts = read_facts_sync(sync_client(url))
    assert (facts.role, facts.maxmemory_policy, facts.aof_enabled, facts.replicas_connected) == (
        "master", "noeviction", True, 1,
    )  # fmt: skip
    assert facts.cluster and version_tuple(facts.version) >= (7, 0, 0)
    assert refuse_unfit_redis(url, Durability()) == ""
    last_master = cluster.nodes[cluster.primaries - 1]
    with admin(last_master) as c:
        c.config_set("maxmemory-policy", "allkeys-lru")
        try:
            assert "maxmemory-policy is allkeys-lru" in refuse_unfit_redis(url, Durability())
        finally:
            c.config_set("maxmemory-policy", "noeviction")


def test_a_cluster_with_a_master_older_than_redis_7_is_refused_saying_why() -> None:
    # no Redis 6 here to start: the facts as three masters' INFO would give them
    def master(version: str) -> RedisFacts:
        return RedisFacts("noeviction", True, "always", 1, "master", version, cluster=True)

    assert combined([master("7.0.15"), master("7.2.4"), master("7.0.15")]).problems(Durability()) == []
    mixed = combined([master("7.0.15"), master("6.2.14"), master("7.2.4")])
    assert mixed.version == "6.2.14"
    assert mixed.problems(Durability()) == [
        "a master of the Redis Cluster runs Redis 6.2.14: a cluster needs Redis 7 or later (the static"
        " data's change notices go over sharded pub/sub, SSUBSCRIBE); upgrade it"
    ]
    one_node = RedisFacts("noeviction", True, "always", 1, "master", "6.2.14")
    assert one_node.problems(Durability()) == []  # one node or Sentinel: plain pub/sub, not refused for it


def test_the_backlog_exporter_and_dead_letter_listing_on_a_cluster(cluster: EmbeddedCluster) -> None:
    url = cluster.url_for("admin")
    r = sync_client(url)
    for p in (3, 77, 200):  # three partitions in three shards' slots
        r.xadd(keys.stream_key(p), {"type": "settle", "event": "{}"})
    families = {f.name: f for f in BacklogCollector(client_for(url)).collect()}
    assert families["medsettle_redis_reachable"].samples[0].value == 1
    entries = {s.labels["partition"]: s.value for s in families["medsettle_stream_entries"].samples}
    assert (entries["3"], entries["77"], entries["200"], sum(entries.values())) == (1, 1, 1, 3)
    listed = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "deadletters", "--redis", url, "list"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
