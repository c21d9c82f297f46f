-- KEYS[1]: a key of the shard (routes the call on a cluster; the keys built here share its tag).
-- Items' ranking vectors ({p}v:i:{item}, features/windows.py VectorLayout) as ONE string: the
-- vectors back to back in the order of the ids, the blank vector where an item has none (or one
-- of another layout), so the reader decodes all of them with one numpy.frombuffer and parses one
-- reply instead of one per item (measured: the same CPU in Redis as a plain MGET, half of it in
-- the client). ARGV: prefix, the ids as ONE JSON array, the blank vector, then "1" to also return
-- the items' catalogue categories (false where unknown). Returns {vectors, categories or {}}.
-- Bulk commands only (MGET, HMGET, in slices of 1000 arguments: Lua's C stack bounds unpack).
local p, ids, blank = ARGV[1], cjson.decode(ARGV[2]), ARGV[3]
local unpack = unpack or table.unpack

local function bulk(cmd, head, args)
  local out = {}
  for lo = 1, #args, 1000 do
    local hi = math.min(lo + 999, #args)
    local got = head and redis.call(cmd, head, unpack(args, lo, hi)) or redis.call(cmd, unpack(args, lo, hi))
    for k = 1, #got do out[lo + k - 1] = got[k] end
  end
  return out
end

local names = {}
for n, id in ipairs(ids) do names[n] = p .. 'v:i:' .. id end
local got = bulk('MGET', nil, names)
for n = 1, #names do
  local v = got[n]
  if not v or #v ~= #blank then got[n] = blank end
end
local categories = {}
if ARGV[4] == '1' and #ids > 0 then categories = bulk('HMGET', p .. 'items', ids) end
return {table.concat(got), categories}
