"""Pure parts: the --redis URL forms and their refusals (each naming what is wrong), and the rendezvous
split of the 256 partitions among live workers (everyone owned once, fair, and only a leaver's or a
joiner's share moving)."""

from __future__ import annotations

import pytest

from adapters.redis_keys import PARTITIONS
from adapters.redis_topology import CLUSTER, SENTINEL, SINGLE, TopologyError, parse
from adapters.secret_files import mask_url
from gateway.posting.leases import share


def test_the_three_url_forms() -> None:
    assert parse("redis://gateway:pw@127.0.0.1:6379/0").kind == SINGLE
    c = parse("redis+cluster://gateway:p%40ss@10.0.0.1:7000,10.0.0.2:7001")
    assert (c.kind, c.nodes, c.username, c.password) == (
        CLUSTER,
        (("10.0.0.1", 7000), ("10.0.0.2", 7001)),
        "gateway",
        "p@ss",
    )
    s = parse("redis+sentinel://worker:pw@10.0.0.1:26379,10.0.0.2:26379/medsettle")
    assert (s.kind, s.master, len(s.nodes)) == (SENTINEL, "medsettle", 2)
    assert "pw" not in s.public and "pw" not in mask_url(s.url) and "10.0.0.2:26379" in mask_url(s.url)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("127.0.0.1:6379", "not a URL"),
        ("memcached://127.0.0.1:11211", "unknown scheme"),
        ("redis+cluster://127.0.0.1", "not host:port"),
        ("redis+cluster://127.0.0.1:0", "not host:port"),
        ("redis+sentinel://127.0.0.1:26379", "master's name is missing"),
        ("redis+cluster://127.0.0.1:7000/3", "database 0 only"),
    ],
)
def test_a_url_that_names_no_deployment_is_refused_saying_why(url: str, says: str) -> None:
    with pytest.raises(TopologyError, match=says):
        parse(url)


def test_every_partition_has_one_owner_and_the_split_is_fair() -> None:
    workers = [f"w{i}" for i in range(4)]
    shares = {w: share(workers, w, range(PARTITIONS)) for w in workers}
    assert sorted(p for s in shares.values() for p in s) == list(range(PARTITIONS))
    assert all(40 <= len(s) <= 90 for s in shares.values()), {w: len(s) for w, s in shares.items()}


def test_a_joiner_takes_only_its_own_share_and_a_leaver_gives_only_its_own() -> None:
    before = {w: share(["a", "b", "c"], w, range(PARTITIONS)) for w in "abc"}
    after = {w: share(["a", "b", "c", "d"], w, range(PARTITIONS)) for w in "abcd"}
    for w in "abc":
        assert after[w] <= before[w], "nobody gains partitions when a worker joins"
    assert after["d"] == (before["a"] | before["b"] | before["c"]) - (after["a"] | after["b"] | after["c"])
    gone = {w: share(["a", "c"], w, range(PARTITIONS)) for w in "ac"}
    assert gone["a"] >= before["a"] and gone["c"] >= before["c"], "a leaver's share goes, nothing else moves"
