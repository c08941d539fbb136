-- Commit one settlement atomically, in the person's partition slot.
-- KEYS: 1 idem, 2 state, 3 acc (year of care), 4 settlement, 5 stream
-- ARGV: 1 payload hash, 2 expected state version, 3 account debit (fen), 4 settlement id,
--       5 response bytes, 6 posting event (JSON), 7 year, 8 person id, 9 institution, 10 message id,
--       11.. accumulator name, delta pairs
-- Returns {'OK'} | {'DUP', response} | {'MISMATCH'} | {'CONFLICT'}
local idem = redis.call('HMGET', KEYS[1], 'h', 'resp', 'kind')
if idem[1] then
  if idem[1] == ARGV[1] and idem[3] == 'settle' then return {'DUP', idem[2]} end
  return {'MISMATCH'}
end
local state = redis.call('HMGET', KEYS[2], 'ver', 'bal')
if tonumber(state[1] or '0') ~= tonumber(ARGV[2]) then return {'CONFLICT'} end
local debit = tonumber(ARGV[3])
if debit > tonumber(state[2] or '0') then return {'CONFLICT'} end
redis.call('HINCRBY', KEYS[2], 'ver', 1)
if debit > 0 then redis.call('HINCRBY', KEYS[2], 'bal', -debit) end
local fields = {'resp', ARGV[5], 'status', 'settled', 'pid', ARGV[8], 'year', ARGV[7], 'debit', ARGV[3],
                'inst', ARGV[9], 'msgid', ARGV[10]}
for i = 11, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
  fields[#fields + 1] = 'd:' .. ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
redis.call('HSET', KEYS[4], unpack(fields))
redis.call('HSET', KEYS[1], 'h', ARGV[1], 'resp', ARGV[5], 'kind', 'settle', 'sid', ARGV[4])
redis.call('XADD', KEYS[5], '*', 'type', 'settle', 'sid', ARGV[4], 'event', ARGV[6])
return {'OK'}
