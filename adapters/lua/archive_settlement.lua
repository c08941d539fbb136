-- Retention: one settlement of a plan-year past the correction window leaves Redis, the ledger holding
-- its record (gateway/posting/retention.py checked). Atomic in the person's slot, so the personal
-- account's audit stays exact: what the settlement paid from the account moves from the live
-- settlements to the state's 'arch' total (balance = bal0 - live account payments - arch).
-- KEYS: 1 the settlement, 2 the person's state, 3 the slot's index of the plan-year's settlements
-- ARGV: 1 settlement id, 2 its status as read, 3 its correction count (xn) as read,
--       4 what it pays from the personal account now (fen; 0 once reversed)
-- Returns 'OK' | 'GONE' (removed before) | 'CHANGED' (corrected since it was read: next sweep)
--       | {'REFUSED', reason}
if not string.match(ARGV[4], '^%-?%d+$') or #ARGV[4] > 16 then return {'REFUSED', 'bad amount'} end
local seen = redis.call('HMGET', KEYS[1], 'status', 'xn')
if not seen[1] then
  redis.call('SREM', KEYS[3], ARGV[1])
  return 'GONE'
end
if seen[1] ~= ARGV[2] or (seen[2] or '0') ~= ARGV[3] then return 'CHANGED' end
if redis.call('TYPE', KEYS[2])['ok'] ~= 'hash' then return {'REFUSED', KEYS[2] .. ' is not a hash'} end
redis.call('HINCRBY', KEYS[2], 'arch', ARGV[4])
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
return 'OK'
