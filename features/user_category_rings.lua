-- The (user, item category) window rings of (user, item) pairs: the category is the item's in the
-- catalogue, looked up here so that a reader needs no round trip for it. Sums are left to the
-- reader (features/reader.py RingRead, numpy). ARGV: prefix, the actions as ONE JSON array, the
-- pairs as ONE JSON array of [user, item]. Returns, per pair and action, the ring string (false
-- where the item has no category or the user no such counts). Key names follow features/keys.py.
-- Two commands in all, HMGET of the catalogue and MGET of the rings, each in slices of 1000
-- arguments (Lua's C stack bounds unpack).
local p = ARGV[1]
local actions = cjson.decode(ARGV[2])
local pairs_ = cjson.decode(ARGV[3])
local unpack = unpack or table.unpack

local function sliced(cmd, head, args)
  local out = {}
  for lo = 1, #args, 1000 do
    local hi = math.min(lo + 999, #args)
    local got = head and redis.call(cmd, head, unpack(args, lo, hi)) or redis.call(cmd, unpack(args, lo, hi))
    for k = 1, #got do out[lo + k - 1] = got[k] end
  end
  return out
end

local items, index = {}, {}
for _, pair in ipairs(pairs_) do
  if not index[pair[2]] then
    items[#items + 1] = pair[2]
    index[pair[2]] = #items
  end
end
local categories = sliced('HMGET', p .. 'items', items)
local out, wanted, where = {}, {}, {}
local n = 0
for _, pair in ipairs(pairs_) do
  local category = categories[index[pair[2]]]
  for _, action in ipairs(actions) do
    n = n + 1
    out[n] = false
    if category and category ~= '' then
      wanted[#wanted + 1] = p .. 'w:uc:' .. pair[1] .. '\31' .. category .. '\31' .. action
      where[#wanted] = n
    end
  end
end
local got = sliced('MGET', nil, wanted)
for k = 1, #wanted do out[where[k]] = got[k] end
return out
