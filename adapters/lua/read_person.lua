-- Everything a settlement needs to know about a person, in one command, in the person's slot.
-- KEYS: 1 person record, 2 state, 3 accumulators (year of care), 4 idempotency record (optional)
-- Returns {record, ver, bal, {acc name, value, ...}, earlier payload hash, kind, response}
local idem = {false, false, false}
if KEYS[4] then idem = redis.call('HMGET', KEYS[4], 'h', 'kind', 'resp') end
local state = redis.call('HMGET', KEYS[2], 'ver', 'bal')
return {redis.call('GET', KEYS[1]), state[1], state[2], redis.call('HGETALL', KEYS[3]), idem[1], idem[2], idem[3]}
