-- Everything a settlement needs to know about a person, in one command, in the person's slot.
-- KEYS: 1 person record, 2 state, 3 the person's year (every plan-year of it), 4 message record (optional)
-- ARGV: 1 the slot's settlement key prefix (a message record names its settlement by id),
--       2 the idempotency window in ms: a message record found is kept that much longer (each resend
--       restarts its window, so a terminal that keeps retrying keeps getting its first answer)
-- Returns {record, ver, bal, {year field, value, ...}, {message field, value, ...}, stored answer or false}
local message = {}
local answer = false
if KEYS[4] then
  message = redis.call('HGETALL', KEYS[4])
  if #message > 0 then redis.call('PEXPIRE', KEYS[4], ARGV[2]) end
  local sid, field, inline
  for i = 1, #message, 2 do
    if message[i] == 'sid' then sid = message[i + 1]
    elseif message[i] == 'f' then field = message[i + 1]
    elseif message[i] == 'resp' then inline = message[i + 1] end
  end
  if sid and field then
    answer = redis.call('HGET', ARGV[1] .. sid, field)  -- same slot: the id carries the partition
  elseif inline then
    answer = inline
  end
end
local state = redis.call('HMGET', KEYS[2], 'ver', 'bal')
return {redis.call('GET', KEYS[1]), state[1], state[2], redis.call('HGETALL', KEYS[3]), message, answer}
