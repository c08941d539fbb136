"""Dead letters: posting entries the worker could not book, kept until an operator handles them.

    ms:{posting}:deadletter         stream: the unhandled dead letters, each with the entry's fields
                                    (f:<name>), where it came from (stream, id), why, when (t0: the entry's
                                    time, at: when it was dead-lettered) and by which consumer
    ms:{posting}:held               sorted set: dead letters not booked yet, scored by their entry's time
                                    (ms). The posted-through watermark never passes the lowest score, so
                                    Reconcile and GetStatement never say a dead-lettered settlement "is
                                    not on the gateway"
    ms:{posting}:deadletter:handled stream: what operators did (replay, discard), who and why

A replay puts the entry back into its partition stream (new id, fields `dl` and `dl_t0` added) and
keeps its hold: the worker releases the hold in the same script that acknowledges the booked entry, so
the watermark stays at the entry's original time until it is really in the ledger. A discard releases
the hold at once: the operator has decided the entry is not to be booked (it was booked by hand, or is
garbage), and says why.

    ms:{posting}:dlof:<stream>:<id> string: the dead letter an entry became (cluster mode: see below)

Each change is one Lua script, so no crash can leave a dead letter without its hold or a hold that
nothing will release. The keys above share one slot ({posting}); on one node (or Sentinel's master) the
scripts also acknowledge the partition stream's entry in the same script. A cluster refuses a script over
two slots, so there each change is two steps in an order a crash between them cannot make wrong:
dead-lettering records the letter and its hold first (once per entry: the dlof marker), then acknowledges
the entry (a crash in between redelivers it, and it is dead-lettered again as the same letter); a replay
adds the entry to its stream first, then removes the letter (a crash in between leaves both: the entry
is booked once, by the ledger's key, and the letter can be discarded). Before these names had the
{posting} tag they were ms:posting:*; the worker renames them at start (adopt_old_names)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from adapters.redis_topology import is_cluster

DEADLETTER = "ms:{posting}:deadletter"
HELD = "ms:{posting}:held"
HANDLED = "ms:{posting}:deadletter:handled"
OLD_NAMES = {
    "ms:posting:deadletter": DEADLETTER, "ms:posting:held": HELD, "ms:posting:deadletter:handled": HANDLED
}  # fmt: skip
MARKER_TTL_MS = 30 * 86_400_000  # an entry redelivered after a crash within this long is one letter


def marker_key(stream: str, entry_id: str) -> str:
    return f"ms:{{posting}}:dlof:{stream}:{entry_id}"


LIST_MAX = 10_000  # dead letters read at once by `list`; more means something else is badly wrong

# KEYS: deadletter, held, partition stream. ARGV: group, entry id, t0 ms, the hold it replaces (a replayed
# entry's earlier dead letter, or ''), then field/value pairs of the record.
DEAD_LETTER_LUA = """
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[3], id)
if ARGV[4] ~= '' then redis.call('ZREM', KEYS[2], ARGV[4]) end
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[3], ARGV[2])
return id
"""

# Cluster, first step. KEYS: deadletter, held, the entry's marker. ARGV: entry id, t0 ms, the hold it
# replaces ('' if none), the marker's ttl ms, then the record's field/value pairs. Returns the letter's
# id (the same one if the entry was dead-lettered before).
DEAD_LETTER_RECORD_LUA = """
local seen = redis.call('GET', KEYS[3])
if seen then return seen end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[2], id)
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[2], ARGV[3]) end
redis.call('SET', KEYS[3], id, 'PX', ARGV[4])
return id
"""

# Cluster, second step of a replay. KEYS: deadletter, handled. ARGV: dead letter id, stream, entry id, new
# id, operator, now ms.
REPLAYED_LUA = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'action', 'replay', 'dead_letter', ARGV[1], 'stream', ARGV[2], 'id', ARGV[3],
  'new_id', ARGV[4], 'operator', ARGV[5], 'at', ARGV[6])
return 1
"""

# KEYS: deadletter, handled, partition stream. ARGV: dead letter id, operator, now ms.
REPLAY_LUA = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return false end
local f = found[1][2]
local out, t0, stream, entry = {}, '0', '', ''
for i = 1, #f, 2 do
  local k, v = f[i], f[i + 1]
  if string.sub(k, 1, 2) == 'f:' and k ~= 'f:dl' and k ~= 'f:dl_t0' then
    out[#out + 1] = string.sub(k, 3); out[#out + 1] = v
  elseif k == 't0' then t0 = v
  elseif k == 'stream' then stream = v
  elseif k == 'id' then entry = v end
end
if stream ~= KEYS[3] then
  return redis.error_reply('dead letter ' .. ARGV[1] .. ' is not from ' .. KEYS[3])
end
out[#out + 1] = 'dl'; out[#out + 1] = ARGV[1]
out[#out + 1] = 'dl_t0'; out[#out + 1] = t0
local new = redis.call('XADD', KEYS[3], '*', unpack(out))
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], '*', 'action', 'replay', 'dead_letter', ARGV[1], 'stream', stream, 'id', entry,
  'new_id', new, 'operator', ARGV[2], 'at', ARGV[3])
return new
"""

# KEYS: deadletter, held, handled. ARGV: dead letter id, operator, reason, now ms.
DISCARD_LUA = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return false end
local f = found[1][2]
local stream, entry = '', ''
for i = 1, #f, 2 do
  if f[i] == 'stream' then stream = f[i + 1] elseif f[i] == 'id' then entry = f[i + 1] end
end
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], '*', 'action', 'discard', 'dead_letter', ARGV[1], 'stream', stream, 'id', entry,
  'operator', ARGV[2], 'reason', ARGV[3], 'at', ARGV[4])
return 1
"""


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def entry_ms(entry_id: str) -> int:
    """The time a stream entry was added: the first part of its id."""
    return int(entry_id.split("-", 1)[0])


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    stream: str
    entry_id: str
    reason: str
    t0_ms: int  # when the settlement (or correction) was committed
    at_ms: int  # when it was dead-lettered
    consumer: str
    fields: dict[str, bytes]  # the entry's own fields (type, sid, event)

    @property
    def kind(self) -> str:
        return text(self.fields.get("type", b""))

    @property
    def settlement_id(self) -> str:
        return text(self.fields.get("sid", b""))

    def event(self) -> Any:
        """The posting event (JSON), or its raw text when it is not JSON (what made it poison)."""
        raw = text(self.fields.get("event", b""))
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def as_json(self) -> dict[str, Any]:
        return {
            "dead_letter": self.id, "stream": self.stream, "entry_id": self.entry_id, "type": self.kind,
            "settlement_id": self.settlement_id, "reason": self.reason, "committed_ms": self.t0_ms,
            "dead_lettered_ms": self.at_ms, "consumer": self.consumer,
            "fields": {k: text(v) for k, v in self.fields.items()},
        }  # fmt: skip


def parse(dl_id: Any, raw: Any) -> DeadLetter:
    fields = {text(k): v for k, v in raw.items()}
    entry_id = text(fields.get("id", b"0-0"))
    t0 = text(fields.get("t0", b"")) or str(entry_ms(entry_id))
    return DeadLetter(
        text(dl_id),
        text(fields.get("stream", b"")),
        entry_id,
        text(fields.get("reason", b"")),
        int(t0),
        int(text(fields.get("at", b"")) or entry_ms(text(dl_id))),
        text(fields.get("consumer", b"")),
        {k[2:]: v for k, v in fields.items() if k.startswith("f:")},
    )


def unhandled(client: redis.Redis, count: int = LIST_MAX) -> list[DeadLetter]:
    found: Any = client.xrange(DEADLETTER, count=count)
    return [parse(i, f) for i, f in found]


def find(client: redis.Redis, dl_id: str) -> DeadLetter | None:
    found: Any = client.xrange(DEADLETTER, dl_id, dl_id)
    return parse(*found[0]) if found else None


def replay(client: redis.Redis, dl_id: str, operator: str) -> str | None:
    """Back into its partition stream for booking; returns the new entry id, None if no such dead letter."""
    letter = find(client, dl_id)
    if letter is None:
        return None
    if is_cluster(client):
        fields: list[Any] = []
        for k, v in letter.fields.items():
            if k not in ("dl", "dl_t0"):
                fields += [k, v]
        fields += ["dl", dl_id, "dl_t0", str(letter.t0_ms)]
        added = text(client.execute_command("XADD", letter.stream, "*", *fields))  # type: ignore[no-untyped-call]
        client.eval(
            REPLAYED_LUA, 2, DEADLETTER, HANDLED, dl_id, letter.stream, letter.entry_id, added, operator,
            str(int(time.time() * 1000)),
        )  # fmt: skip
        return added
    new = client.eval(
        REPLAY_LUA, 3, DEADLETTER, HANDLED, letter.stream, dl_id, operator, str(int(time.time() * 1000))
    )
    return text(new) if new else None


def discard(client: redis.Redis, dl_id: str, operator: str, reason: str) -> bool:
    if not reason.strip():
        raise ValueError("a discard needs a reason")
    done = client.eval(
        DISCARD_LUA, 3, DEADLETTER, HELD, HANDLED, dl_id, operator, reason, str(int(time.time() * 1000))
    )
    return bool(done)


def handled(client: redis.Redis, count: int = 100) -> list[dict[str, str]]:
    """The latest handling records, newest first."""
    found: Any = client.xrevrange(HANDLED, count=count)
    return [{text(k): text(v) for k, v in f.items()} for _, f in found]


@dataclass(frozen=True, slots=True)
class Summary:
    unhandled: int  # dead letters no operator has handled
    held: int  # entries holding the watermark: the unhandled plus replayed ones not booked yet
    oldest_held_ms: int | None  # the watermark cannot pass this


def summary(client: redis.Redis) -> Summary:
    pipe = client.pipeline(transaction=False)
    pipe.xlen(DEADLETTER)
    pipe.zcard(HELD)
    pipe.zrange(HELD, 0, 0, withscores=True)
    length, held, lowest = pipe.execute()
    return Summary(int(length), int(held), int(lowest[0][1]) if lowest else None)


def adopt_old_names(client: redis.Redis) -> list[str]:
    """One node that ran a version before the {posting} tag: its dead letters, holds and handling
    records move to the new names (RENAME: same node, atomic). Returns the names moved."""
    moved: list[str] = []
    if is_cluster(client):
        return moved  # a cluster never ran the old names (they could not work on one)
    for old, new in OLD_NAMES.items():
        if client.exists(old) and not client.exists(new):
            client.rename(old, new)
            moved.append(old)
    return moved
