"""Dead letters on a real local cluster, where the letter and its hold (the {posting} slot) and the entry's
stream (its partition's slot) cannot be changed in one script: an entry that cannot be booked becomes one
letter with one hold and leaves its stream; a replay puts it back (it fails again: still one letter, the
hold moved over); a discard releases the hold; good entries around it are booked."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from adapters import redis_keys as keys
from adapters.embedded_cluster import EmbeddedCluster
from adapters.ledger.store import Ledger
from adapters.redis_topology import sync_client
from gateway.posting import deadletters as dl
from gateway.posting.worker import GROUP, PostingWorker, WorkerConfig
from gateway.server import Gateway

from ..posting.test_worker import add_persons, settle_many

pytestmark = pytest.mark.asyncio
POISON_PARTITION = 201


def run_for(worker: PostingWorker, seconds: float) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(15)


async def test_a_poison_entry_becomes_one_letter_and_is_replayed_and_discarded_per_slot(
    cluster: EmbeddedCluster, cluster_gateway: Gateway, tmp_path: Path
) -> None:
    r = sync_client(cluster.url_for("admin"))
    await add_persons(cluster_gateway)
    sids = await settle_many(cluster_gateway, 30)
    stream = keys.stream_key(POISON_PARTITION)
    poison_id = r.xadd(stream, {"type": "settle", "sid": "S201-x", "event": json.dumps({"sid": "S201-x"})})
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    config = WorkerConfig(consumer="w1", attempts_max=2, lease_renew_every_ms=200, poll_ms=20, retention=None)
    worker = PostingWorker(sync_client(cluster.url_for("worker")), ledger, config)
    assert worker.cluster and worker.leases is not None
    run_for(worker, 3.0)
    assert worker.stats.booked == len(sids), "the good entries around it are booked"
    letters = dl.unhandled(r)
    assert [(x.stream, x.entry_id, x.settlement_id) for x in letters] == [
        (stream, poison_id.decode(), "S201-x")
    ]
    assert "malformed" in letters[0].reason or "event" in letters[0].reason, letters[0].reason
    summary = dl.summary(r)
    assert (summary.unhandled, summary.held, summary.oldest_held_ms) == (
        1,
        1,
        dl.entry_ms(poison_id.decode()),
    )
    assert r.xlen(stream) == 0 and r.xpending(stream, GROUP)["pending"] == 0, "acknowledged and deleted"
    # replayed: back in its stream, fails again, one letter still, the hold at the entry's first time
    new_id = dl.replay(r, letters[0].id, "tester")
    assert new_id is not None
    run_for(worker, 2.0)
    again = dl.unhandled(r)
    assert len(again) == 1 and again[0].id != letters[0].id
    summary = dl.summary(r)
    assert (summary.unhandled, summary.held, summary.oldest_held_ms) == (
        1,
        1,
        dl.entry_ms(poison_id.decode()),
    )
    assert [h["action"] for h in dl.handled(r)] == ["replay"]
    assert dl.discard(r, again[0].id, "tester", "garbage written by hand")
    assert dl.summary(r) == dl.Summary(0, 0, None)
    ledger.close()
