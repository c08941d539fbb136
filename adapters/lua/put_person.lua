-- Write one person from the core system's export, atomically in the person's slot. The static record
-- always replaces the old one (the old one is kept under its digest while settlements may name it); the
-- balance and the opening accumulators are taken only for a person new to the gateway: after that the
-- gateway's own state is the truth.
-- KEYS: 1 record, 2 state, 3 the year of the opening accumulators
-- ARGV: 1 record JSON, 2 balance (fen), 3 key prefix of earlier record versions,
--       4 when the opening year's hash leaves Redis (unix seconds: the end of its correction window),
--       5 how long an earlier record version is kept (ms: as long as a settlement may name it),
--       6.. opening accumulator fields of the year hash (field, value pairs)
-- Returns {earlier record or false, 1 if the person is new else 0} | {'REFUSED', reason}
local types = {{KEYS[1], 'string'}, {KEYS[2], 'hash'}, {KEYS[3], 'hash'}}
for _, kt in ipairs(types) do
  local actual = redis.call('TYPE', kt[1])['ok']
  if actual ~= 'none' and actual ~= kt[2] then return {'REFUSED', kt[1] .. ' is a ' .. actual} end
end
if not string.match(ARGV[2], '^%d+$') or #ARGV[2] > 15 then return {'REFUSED', 'bad balance'} end
if not string.match(ARGV[4], '^%d+$') or not string.match(ARGV[5], '^%d+$') then
  return {'REFUSED', 'bad expiry'}
end
for j = 7, #ARGV, 2 do
  if not string.match(ARGV[j], '^%d+$') or #ARGV[j] > 15 then return {'REFUSED', 'bad accumulator'} end
end
local old = redis.call('GET', KEYS[1])
local new = redis.call('EXISTS', KEYS[2]) == 0
if old and old ~= ARGV[1] then
  redis.call('SET', ARGV[3] .. string.sub(redis.sha1hex(old), 1, 16), old, 'PX', ARGV[5])
end
redis.call('SET', KEYS[1], ARGV[1])
if new then
  redis.call('HSET', KEYS[2], 'ver', 0, 'bal', ARGV[2], 'bal0', ARGV[2])
  if #ARGV > 5 then
    redis.call('HSET', KEYS[3], unpack(ARGV, 6))
    redis.call('EXPIREAT', KEYS[3], ARGV[4])
  end
end
return {old or false, new and 1 or 0}
