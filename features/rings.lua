-- KEYS[1]: a key of the shard (routes the call on a cluster; the keys built here share its tag).
-- The window rings of many entities in one call, built into keys here so that the client sends
-- one JSON string instead of thousands of arguments (redis-py packs each argument in Python:
-- 11 % of serving's time at 200 ranked items when it sent MGET keys itself). Sums are left to the
-- reader (features/reader.py RingRead, numpy). ARGV: prefix, kind ("u", "i", "g", or "uc": the
-- ids are [user, item] pairs and the category is the item's in the catalogue), the actions as ONE
-- JSON array, the ids as ONE JSON array. Returns, per id and action, the ring string (false where
-- none). Bulk commands only (MGET, HMGET, in slices of 1000 arguments: Lua's C stack bounds
-- unpack), never one call per entity. Key names follow features/keys.py.
local p, kind = ARGV[1], ARGV[2]
local actions = cjson.decode(ARGV[3])
local ids = cjson.decode(ARGV[4])
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

local entities = {}  -- the key part of each id: false where there is none (an item without category)
if kind == 'uc' then
  local items, index = {}, {}
  for _, pair in ipairs(ids) do
    if not index[pair[2]] then
      items[#items + 1] = pair[2]
      index[pair[2]] = #items
    end
  end
  local categories = bulk('HMGET', p .. 'items', items)
  for n, pair in ipairs(ids) do
    local category = categories[index[pair[2]]]
    entities[n] = category and category ~= '' and pair[1] .. '\31' .. category .. '\31'
  end
else
  for n, id in ipairs(ids) do entities[n] = (kind == 'g' and '' or id) .. '\31' end
end

local out, wanted, where = {}, {}, {}
local base = p .. 'w:' .. kind .. ':'
for n, entity in ipairs(entities) do
  for a, action in ipairs(actions) do
    local k = (n - 1) * #actions + a
    out[k] = false
    if entity then
      wanted[#wanted + 1] = base .. entity .. action
      where[#wanted] = k
    end
  end
end
local got = bulk('MGET', nil, wanted)
for k = 1, #wanted do out[where[k]] = got[k] end
return out
