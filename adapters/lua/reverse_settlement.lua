-- Reverse one settlement atomically: a compensating change, never an edit of the original's record.
-- KEYS: 1 settlement, 2 state, 3 acc (the settlement's year), 4 stream, 5 idem of the reversal message
-- ARGV: 1 payload hash, 2 reversal response bytes, 3 posting event (JSON), 4 settlement id
-- Returns {'OK'} | {'DUP', response} | {'MISMATCH'} | {'NOT_FOUND'}
local idem = redis.call('HMGET', KEYS[5], 'h', 'resp', 'kind')
if idem[1] then
  if idem[1] == ARGV[1] and idem[3] == 'reverse' then return {'DUP', idem[2]} end
  return {'MISMATCH'}
end
local stl = redis.call('HMGET', KEYS[1], 'status', 'rev', 'debit')
if not stl[1] then return {'NOT_FOUND'} end
if stl[1] == 'reversed' then
  -- reversed before (maybe under another message id): the same answer, and nothing changes
  redis.call('HSET', KEYS[5], 'h', ARGV[1], 'resp', stl[2], 'kind', 'reverse', 'sid', ARGV[4])
  return {'DUP', stl[2]}
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'd:' then
    redis.call('HINCRBY', KEYS[3], string.sub(all[i], 3), -tonumber(all[i + 1]))
  end
end
redis.call('HINCRBY', KEYS[2], 'ver', 1)
local debit = tonumber(stl[3])
if debit > 0 then redis.call('HINCRBY', KEYS[2], 'bal', debit) end
redis.call('HSET', KEYS[1], 'status', 'reversed', 'rev', ARGV[2])
redis.call('HSET', KEYS[5], 'h', ARGV[1], 'resp', ARGV[2], 'kind', 'reverse', 'sid', ARGV[4])
redis.call('XADD', KEYS[4], '*', 'type', 'reverse', 'sid', ARGV[4], 'event', ARGV[3])
return {'OK'}
