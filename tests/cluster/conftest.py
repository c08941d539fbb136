"""A real local Redis Cluster (three masters, a replica each: adapters/embedded_cluster.py) shared by the
session and emptied before each test, the gateway on it with the demo data, and fresh clusters (or a
Sentinel deployment) for the tests that kill a master."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from adapters.embedded_cluster import EmbeddedCluster
from gateway.config import Config
from gateway.data_loading import load_citydata_dir
from gateway.server import Gateway, redis_client

from ..conftest import INDEX, INDEX_KEY, NOW, empty


@pytest.fixture
def cluster(local_cluster: EmbeddedCluster) -> EmbeddedCluster:
    empty(local_cluster)
    return local_cluster


async def start_gateway(url: str, durability: object | None = None) -> Gateway:
    config = Config(
        listen="127.0.0.1:0", redis_url=url, health_interval_ms=100, tls=None, index_key=INDEX_KEY
    )
    client = redis_client(url, config)
    await load_citydata_dir(client, config.citydata, index=INDEX)
    await client.aclose()
    gw = Gateway(config, url, now=lambda: NOW)
    if durability is not None:
        gw.durability = durability  # type: ignore[assignment]
    return await gw.start()


@pytest_asyncio.fixture
async def cluster_gateway(cluster: EmbeddedCluster) -> AsyncIterator[Gateway]:
    gw = await start_gateway(cluster.url_for("admin"))
    yield gw
    await gw.stop()


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A cluster of its own: the test kills one of its masters."""
    with EmbeddedCluster(tmp_path) as c:
        yield c
