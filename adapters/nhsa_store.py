"""Redis state of the national front end: visits (mdtrt_id) with their fee details, the answers kept
under each message id, and operator sign-ins. No business rule: these scripts check what must be
checked atomically (a visit open, a fee detail not uploaded twice, a limit on lines, one settlement
in flight per visit) and write.

    ms:{p017}:nhsa:visit:<mdtrt_id>       hash: `meta` (JSON: person, institution, certificate, type,
                                          dates), `l:<feedetl_sn>` a fee detail (JSON), `s:<feedetl_sn>`
                                          the settlement id that settled it, `x:<setl_id>` the details a
                                          settlement covered, `m:<msgid>` the settlement a msgid made,
                                          `pend` the settlement in flight (JSON:
                                          msgid, details), `n` details held; in the person's slot (the
                                          mdtrt_id carries the partition), expires visit_retention_days
                                          after its last write
    ms:{p017}:nhsa:vmsg:<inst>:<msgid>    string: the mdtrt_id a settling message id was for (2601)
    ms:{c042}:nhsa:ans:<inst>:<msgid>     string: JSON {h: request hash, a: the answer} or {h, p: 1}
                                          while it is being answered; the claim slot of the message id
    ms:{c042}:nhsa:sign:<inst>:<sign_no>  string: the operator signed in (9001), until 9002 or expiry
"""

from __future__ import annotations

import json
import secrets
import zlib
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from adapters import redis_keys as keys
from adapters.redis_batch import ScriptBatcher

ADD_LINES = """
local meta = redis.call('HGET', KEYS[1], 'meta')
if not meta then return {'missing'} end
if cjson.decode(meta)['status'] ~= 'open' then return {'closed'} end
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local count = (#ARGV - 2) / 2
if n + count > tonumber(ARGV[2]) then return {'full', tostring(n)} end
for i = 3, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], 'l:' .. ARGV[i]) == 1 then return {'duplicate', ARGV[i]} end
end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], 'l:' .. ARGV[i], ARGV[i + 1]) end
redis.call('HINCRBY', KEYS[1], 'n', count)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {'ok'}
"""

REMOVE_LINES = """
local meta = redis.call('HGET', KEYS[1], 'meta')
if not meta then return {'missing'} end
local pend = redis.call('HGET', KEYS[1], 'pend')
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[1], 'l:' .. ARGV[i]) == 0 then return {'unknown', ARGV[i]} end
  local s = redis.call('HGET', KEYS[1], 's:' .. ARGV[i])
  if s then return {'settled', ARGV[i], s} end
  if pend and string.find(cjson.decode(pend)['sns'], '|' .. ARGV[i] .. '|', 1, true) then
    return {'settling', ARGV[i], cjson.decode(pend)['msgid']}
  end
end
for i = 2, #ARGV do redis.call('HDEL', KEYS[1], 'l:' .. ARGV[i]) end
redis.call('HINCRBY', KEYS[1], 'n', -(#ARGV - 1))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {'ok'}
"""

CLAIM = """
local meta = redis.call('HGET', KEYS[1], 'meta')
if not meta then return {'missing'} end
if cjson.decode(meta)['status'] ~= 'open' then return {'closed'} end
local pend = redis.call('HGET', KEYS[1], 'pend')
if pend then
  local p = cjson.decode(pend)
  if p['msgid'] == ARGV[2] then return {'same', p['sns']} end
  return {'busy', p['msgid']}
end
for sn in string.gmatch(ARGV[3], '[^|]+') do
  if redis.call('HEXISTS', KEYS[1], 'l:' .. sn) == 0 then return {'unknown', sn} end
  local s = redis.call('HGET', KEYS[1], 's:' .. sn)
  if s then return {'settled', sn, s} end
end
redis.call('HSET', KEYS[1], 'pend', cjson.encode({msgid = ARGV[2], sns = ARGV[3]}))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[1])
return {'ok'}
"""

FINISH = """
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6]) end  -- the answer, whatever follows
local pend = redis.call('HGET', KEYS[1], 'pend')
if not pend then return 0 end
local p = cjson.decode(pend)
if p['msgid'] ~= ARGV[2] then return 0 end
for sn in string.gmatch(p['sns'], '[^|]+') do redis.call('HSET', KEYS[1], 's:' .. sn, ARGV[3]) end
redis.call('HSET', KEYS[1], 'x:' .. ARGV[3], p['sns'])
redis.call('HSET', KEYS[1], 'm:' .. ARGV[2], ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'meta', ARGV[4]) end
redis.call('HDEL', KEYS[1], 'pend')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

RELEASE = """
local pend = redis.call('HGET', KEYS[1], 'pend')
if pend and cjson.decode(pend)['msgid'] == ARGV[1] then redis.call('HDEL', KEYS[1], 'pend') return 1 end
return 0
"""

UNSETTLE = """
local sns = redis.call('HGET', KEYS[1], 'x:' .. ARGV[1])
if not sns then return 0 end
for sn in string.gmatch(sns, '[^|]+') do
  if redis.call('HGET', KEYS[1], 's:' .. sn) == ARGV[1] then redis.call('HDEL', KEYS[1], 's:' .. sn) end
end
redis.call('HDEL', KEYS[1], 'x:' .. ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'meta', ARGV[2]) end
return 1
"""

CLOSE = """
local meta = redis.call('HGET', KEYS[1], 'meta')
if not meta then return {'missing'} end
if redis.call('HEXISTS', KEYS[1], 'pend') == 1 then return {'settling'} end
local fields = redis.call('HKEYS', KEYS[1])
for _, f in ipairs(fields) do
  if string.sub(f, 1, 2) == 'x:' then return {'settled', string.sub(f, 3)} end
end
redis.call('HSET', KEYS[1], 'meta', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {'ok'}
"""


READ_VISIT = """
return redis.call('HGETALL', KEYS[1])
"""

KEEP_ANSWER = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

CLAIM_ANSWER = """
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""


def slot_of(institution: str, message_id: str) -> str:
    slot = zlib.crc32(f"{institution}|{message_id}".encode()) % keys.PARTITIONS
    return f"ms:{{c{slot:03d}}}"


def answer_key(institution: str, message_id: str) -> str:
    return f"{slot_of(institution, message_id)}:nhsa:ans:{institution}:{message_id}"


def sign_key(institution: str, sign_no: str) -> str:
    return f"{slot_of(institution, sign_no)}:nhsa:sign:{institution}:{sign_no}"


def new_visit_id(person_id: str, day: str) -> str:
    """M<partition>-<yymmdd>-<16 hex>: 28 characters (mdtrt_id is char(30)); the partition finds the
    person's slot from the id alone, as settlement ids do."""
    return f"M{keys.partition_of(person_id):03d}-{day}-{secrets.token_hex(8)}"


def partition_of_visit(mdtrt_id: str) -> int | None:
    if len(mdtrt_id) < 5 or mdtrt_id[0] != "M" or not mdtrt_id[1:4].isdigit() or mdtrt_id[4] != "-":
        return None
    value = int(mdtrt_id[1:4])
    return value if value < keys.PARTITIONS else None


def visit_key(mdtrt_id: str) -> str:
    partition = partition_of_visit(mdtrt_id)
    if partition is None:
        raise ValueError(f"not a visit id: {mdtrt_id!r}")
    return f"{keys.tag(partition)}:nhsa:visit:{mdtrt_id}"


def visit_message_key(person_id: str, institution: str, message_id: str) -> str:
    return f"{keys.tag(keys.partition_of(person_id))}:nhsa:vmsg:{institution}:{message_id}"


@dataclass
class Visit:
    mdtrt_id: str
    meta: dict[str, Any]
    lines: dict[str, dict[str, Any]]  # feedetl_sn -> the uploaded detail
    settled: dict[str, str]  # feedetl_sn -> settlement id
    parts: dict[str, list[str]] = field(default_factory=dict)  # settlement id -> its details
    pending: dict[str, Any] | None = None  # {msgid, sns}
    messages: dict[str, str] = field(default_factory=dict)  # msgid -> the settlement it made here

    def open_lines(self) -> list[dict[str, Any]]:
        """Uploaded and not settled, in upload order (`seq`, then the serial number): the same bill line
        numbers for the pre-settlement and the settlement, whatever order Redis lists a hash in."""
        lines = [line for sn, line in self.lines.items() if sn not in self.settled]
        return sorted(lines, key=lambda line: (line.get("seq", 0), line["feedetl_sn"]))


def joined(sns: list[str]) -> str:
    return "|" + "|".join(sns) + "|"


def split_joined(text: str) -> list[str]:
    return [s for s in text.split("|") if s]


class NhsaStore:
    def __init__(
        self,
        client: aioredis.Redis,
        visit_retention_ms: int,
        answer_retention_ms: int,
        answers_inline: bool = True,
    ) -> None:
        self.client = client
        # one Redis node: a settlement's finish and its kept answer are one script (their keys are in
        # different slots, which only a cluster minds); on a cluster, two commands in that order
        self.answers_inline = answers_inline
        self.visit_ttl_ms = visit_retention_ms
        self.answer_ttl_ms = answer_retention_ms
        # every call a script, through the gateway's coalescing batcher: the calls concurrent requests make
        # in one event-loop turn go to Redis as one pipeline, as the settlement store's do
        self._batch = ScriptBatcher(client)
        self._read = client.register_script(READ_VISIT)
        self._keep = client.register_script(KEEP_ANSWER)
        self._claim_answer = client.register_script(CLAIM_ANSWER)
        self._add = client.register_script(ADD_LINES)
        self._remove = client.register_script(REMOVE_LINES)
        self._claim = client.register_script(CLAIM)
        self._finish = client.register_script(FINISH)
        self._release = client.register_script(RELEASE)
        self._unsettle = client.register_script(UNSETTLE)
        self._close = client.register_script(CLOSE)

    async def call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return await self._batch.call(script, keys, args)

    # ---------------------------------------------------------------- answers (msgid idempotency)

    async def claim_answer(
        self, institution: str, message_id: str, digest: str, pending_ms: int
    ) -> dict[str, Any] | None:
        """None: the message id is ours to answer now. Otherwise what is kept under it: {h, a} an
        answer, {h, p} another request answering it at this moment."""
        key = answer_key(institution, message_id)
        mine = json.dumps({"h": digest, "p": 1})
        held = await self.call(self._claim_answer, keys=[key], args=[mine, pending_ms])
        if held is None:
            return None
        out: dict[str, Any] = json.loads(held)
        if "a" in out:  # a resend renews the week, as a gRPC message record does
            await self.client.pexpire(key, self.answer_ttl_ms)
        return out

    async def keep_answer(self, institution: str, message_id: str, digest: str, answer: str) -> None:
        text = json.dumps({"h": digest, "a": answer})
        await self.call(
            self._keep, keys=[answer_key(institution, message_id)], args=[text, self.answer_ttl_ms]
        )

    async def drop_claim(self, institution: str, message_id: str) -> None:
        await self.client.delete(answer_key(institution, message_id))

    # ---------------------------------------------------------------- sign-in

    async def sign_in(self, institution: str, sign_no: str, record: dict[str, Any], ttl_ms: int) -> None:
        await self.client.set(sign_key(institution, sign_no), json.dumps(record), px=ttl_ms)

    async def signed_in(self, institution: str, sign_no: str) -> bool:
        return bool(await self.client.exists(sign_key(institution, sign_no)))

    async def sign_out(self, institution: str, sign_no: str) -> bool:
        return bool(await self.client.delete(sign_key(institution, sign_no)))

    # ---------------------------------------------------------------- visits

    async def create_visit(self, mdtrt_id: str, meta: dict[str, Any]) -> None:
        key = visit_key(mdtrt_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"meta": json.dumps(meta, ensure_ascii=False), "n": 0})
            pipe.pexpire(key, self.visit_ttl_ms)
            await pipe.execute()

    async def visit(self, mdtrt_id: str) -> Visit | None:
        if partition_of_visit(mdtrt_id) is None:
            return None
        flat: list[bytes] = await self.call(self._read, keys=[visit_key(mdtrt_id)], args=[])
        raw = dict(zip(flat[::2], flat[1::2], strict=True))
        if not raw or b"meta" not in raw:
            return None
        visit = Visit(mdtrt_id, json.loads(raw[b"meta"]), {}, {})
        for k, v in raw.items():
            name = k.decode()
            if name.startswith("l:"):
                visit.lines[name[2:]] = json.loads(v)
            elif name.startswith("s:"):
                visit.settled[name[2:]] = v.decode()
            elif name.startswith("x:"):
                visit.parts[name[2:]] = split_joined(v.decode())
            elif name.startswith("m:"):
                visit.messages[name[2:]] = v.decode()
            elif name == "pend":
                p = json.loads(v)
                visit.pending = {"msgid": p["msgid"], "sns": split_joined(p["sns"])}
        return visit

    async def add_lines(self, mdtrt_id: str, lines: list[dict[str, Any]], lines_max: int) -> list[str]:
        args: list[Any] = [self.visit_ttl_ms, lines_max]
        for line in lines:
            args += [line["feedetl_sn"], json.dumps(line, ensure_ascii=False)]
        return decoded(await self.call(self._add, keys=[visit_key(mdtrt_id)], args=args))

    async def remove_lines(self, mdtrt_id: str, sns: list[str]) -> list[str]:
        return decoded(
            await self.call(self._remove, keys=[visit_key(mdtrt_id)], args=[self.visit_ttl_ms, *sns])
        )

    async def claim_settlement(
        self, mdtrt_id: str, person_id: str, institution: str, message_id: str, sns: list[str]
    ) -> list[str]:
        """One settlement in flight per visit: ['ok'], ['same', sns] (a resend), ['busy', msgid],
        ['settled', sn, setl_id], ['unknown', sn], ['missing'] or ['closed']."""
        return decoded(
            await self.call(
                self._claim,
                keys=[visit_key(mdtrt_id), visit_message_key(person_id, institution, message_id)],
                args=[self.visit_ttl_ms, message_id, joined(sns), mdtrt_id],
            )
        )

    async def finish_settlement(
        self,
        mdtrt_id: str,
        message_id: str,
        settlement_id: str,
        answer: tuple[str, str, str] | None = None,
    ) -> None:
        """The details the settlement covered marked settled by it, then (with `answer`: institution,
        request hash, answer text) the answer kept under the message id."""
        args: list[Any] = [self.visit_ttl_ms, message_id, settlement_id, ""]
        script_keys = [visit_key(mdtrt_id)]
        if answer is not None and self.answers_inline:
            institution, digest, text = answer
            script_keys.append(answer_key(institution, message_id))
            args += [json.dumps({"h": digest, "a": text}), self.answer_ttl_ms]
        await self.call(self._finish, keys=script_keys, args=args)
        if answer is not None and not self.answers_inline:
            await self.keep_answer(answer[0], message_id, answer[1], answer[2])

    async def release_settlement(self, mdtrt_id: str, message_id: str) -> None:
        await self.call(self._release, keys=[visit_key(mdtrt_id)], args=[message_id])

    async def unsettle(self, mdtrt_id: str, settlement_id: str, meta: dict[str, Any] | None = None) -> None:
        meta_text = json.dumps(meta, ensure_ascii=False) if meta is not None else ""
        await self.call(self._unsettle, keys=[visit_key(mdtrt_id)], args=[settlement_id, meta_text])

    async def visit_of_message(self, person_id: str, institution: str, message_id: str) -> str | None:
        raw: Any = await self.client.get(visit_message_key(person_id, institution, message_id))
        return raw.decode() if raw is not None else None

    async def update_meta(self, mdtrt_id: str, meta: dict[str, Any]) -> list[str]:
        """Close (cancel) a visit or change its record; refused while a settlement stands or is in
        flight when meta's status is not open."""
        return decoded(
            await self.call(
                self._close,
                keys=[visit_key(mdtrt_id)],
                args=[self.visit_ttl_ms, json.dumps(meta, ensure_ascii=False)],
            )
        )

    async def set_meta(self, mdtrt_id: str, meta: dict[str, Any]) -> None:
        key = visit_key(mdtrt_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, "meta", json.dumps(meta, ensure_ascii=False))
            pipe.pexpire(key, self.visit_ttl_ms)
            await pipe.execute()


def decoded(reply: Any) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in reply]
