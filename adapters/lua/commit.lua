-- One atomic commit in a person's slot: compare, check everything, then write. Redis does not roll a
-- script back on an error, so every check (key types, numbers, versions, records that must not exist)
-- runs before the first write: an error cannot leave half a commit behind. No business rule lives here:
-- the pure core decided what to write; this script compares versions and writes.
--
-- ARGV is a list of operations, each a letter and its operands; k is an index into KEYS:
--   V k expected new        the person's version: HGET k 'ver' (absent: 0) must equal expected; set new
--   A k                     k (a message record) must not exist yet
--   C k value ms            k (an institution-wide message claim) must be absent or hold value; SET it
--                           to expire in ms milliseconds (the idempotency window)
--   H k n f1 v1 .. fn vn    HSET n text fields
--   I k n f1 v1 .. fn vn    HSET n integer fields, each a decimal integer within +/- 10^15
--   N k n f1 d1 .. fn dn    HINCRBY n integer fields by d (within +/- 10^15): a total others add to too
--   D k n f1 .. fn          HDEL n fields
--   X k n f1 v1 .. fn vn    XADD k * with n fields
--   S k n m1 .. mn          SADD n members (the index of a plan-year's settlements, for retention)
--   E k ms                  PEXPIRE k ms (a message record leaves Redis after the idempotency window)
--   K k                     DEL k, a settlement hash (retention: the ledger holds it now)
--   R k n m1 .. mn          SREM n members (retention: from the index of a plan-year's settlements)
-- Returns {'OK'} | {'CONFLICT'} | {'EXISTS', k, {field, value, ...}} | {'CLAIMED', value}
--       | {'REFUSED', reason}  (malformed operations or keys of the wrong type: nothing written)
local ops = {}
local i = 1
local want = {}  -- key index -> the type it must have when it exists
local function refuse(reason) return {'REFUSED', reason} end
local function key(n)
  local k = tonumber(n)
  if not k or k < 1 or k > #KEYS or k % 1 ~= 0 then return nil end
  return k
end
local function expect_type(k, t)
  if want[k] and want[k] ~= t then return false end
  want[k] = t
  return true
end
while i <= #ARGV do
  local op = ARGV[i]
  local k = key(ARGV[i + 1])
  if not k then return refuse('operation ' .. i .. ': bad key index') end
  if op == 'V' then
    local expected, new = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    if not expected or not new or new ~= expected + 1 then return refuse('bad version operands') end
    if not expect_type(k, 'hash') then return refuse('key ' .. k .. ' used as two types') end
    ops[#ops + 1] = {op, k, ARGV[i + 2], ARGV[i + 3]}
    i = i + 4
  elseif op == 'A' or op == 'K' then
    if not expect_type(k, 'hash') then return refuse('key ' .. k .. ' used as two types') end
    ops[#ops + 1] = {op, k}
    i = i + 2
  elseif op == 'C' then
    local ms = tonumber(ARGV[i + 3])
    if not ARGV[i + 2] or not ms or ms < 1 or ms % 1 ~= 0 or not expect_type(k, 'string') then
      return refuse('bad claim operands')
    end
    ops[#ops + 1] = {op, k, ARGV[i + 2], ARGV[i + 3]}
    i = i + 4
  elseif op == 'E' then
    local ms = tonumber(ARGV[i + 2])
    if not ms or ms < 1 or ms % 1 ~= 0 then return refuse('operation ' .. i .. ': bad expiry') end
    ops[#ops + 1] = {op, k, ARGV[i + 2]}
    i = i + 3
  elseif op == 'H' or op == 'I' or op == 'N' or op == 'D' or op == 'X' or op == 'S' or op == 'R' then
    local n = tonumber(ARGV[i + 2])
    if not n or n < 0 or n % 1 ~= 0 then return refuse('operation ' .. i .. ': bad count') end
    local width = (op == 'D' or op == 'S' or op == 'R') and 1 or 2
    local first, last = i + 3, i + 2 + n * width
    if last > #ARGV then return refuse('operation ' .. i .. ': too few operands') end
    if op == 'I' or op == 'N' then
      for j = first + 1, last, 2 do
        local v = ARGV[j]
        if not string.match(v, '^%-?%d+$') or #v > 16 then
          return refuse('field ' .. ARGV[j - 1] .. ': not an integer within +/- 10^15: ' .. v)
        end
      end
    end
    local kind = (op == 'X') and 'stream' or ((op == 'S' or op == 'R') and 'set' or 'hash')
    if not expect_type(k, kind) then
      return refuse('key ' .. k .. ' used as two types')
    end
    ops[#ops + 1] = {op, k, first, last}
    i = last + 1
  else
    return refuse('unknown operation ' .. tostring(op))
  end
end
for k, t in pairs(want) do
  local actual = redis.call('TYPE', KEYS[k])['ok']
  if actual ~= 'none' and actual ~= t then
    return refuse(KEYS[k] .. ' is a ' .. actual .. ', not a ' .. t)
  end
end
for _, o in ipairs(ops) do  -- the comparisons, still before any write
  if o[1] == 'V' then
    if tonumber(redis.call('HGET', KEYS[o[2]], 'ver') or '0') ~= tonumber(o[3]) then return {'CONFLICT'} end
  elseif o[1] == 'A' then
    if redis.call('EXISTS', KEYS[o[2]]) == 1 then
      return {'EXISTS', o[2], redis.call('HGETALL', KEYS[o[2]])}
    end
  elseif o[1] == 'C' then
    local held = redis.call('GET', KEYS[o[2]])
    if held and held ~= o[3] then return {'CLAIMED', held} end
  end
end
for _, o in ipairs(ops) do
  local op, k = o[1], KEYS[o[2]]
  if op == 'V' then
    redis.call('HSET', k, 'ver', o[4])
  elseif op == 'C' then
    redis.call('SET', k, o[3], 'PX', o[4])
  elseif op == 'E' then
    redis.call('PEXPIRE', k, o[3])
  elseif op == 'S' then
    if o[4] >= o[3] then redis.call('SADD', k, unpack(ARGV, o[3], o[4])) end
  elseif op == 'R' then
    if o[4] >= o[3] then redis.call('SREM', k, unpack(ARGV, o[3], o[4])) end
  elseif op == 'K' then
    redis.call('DEL', k)
  elseif op == 'N' then
    for j = o[3], o[4], 2 do redis.call('HINCRBY', k, ARGV[j], ARGV[j + 1]) end
  elseif op == 'H' or op == 'I' then
    if o[4] >= o[3] then redis.call('HSET', k, unpack(ARGV, o[3], o[4])) end
  elseif op == 'D' then
    if o[4] >= o[3] then redis.call('HDEL', k, unpack(ARGV, o[3], o[4])) end
  elseif op == 'X' then
    redis.call('XADD', k, '*', unpack(ARGV, o[3], o[4]))
  end
end
return {'OK'}
