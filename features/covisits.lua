-- The co-visitation score of (user, item) pairs, summed inside Redis so a reader gets one number
-- per pair instead of whole sets: the sum, over the user's last `query` positive items h (h ~= item),
-- of the times h and the item were co-visited (features/apply_events.lua keeps the counts; it never
-- pairs an item with itself, so the term h == item is 0 and the sums covisited.lua keeps are these).
-- KEYS[1]: a key of the shard (routes the call on a cluster; the keys built here share its tag).
-- ARGV: prefix, query, kept (1: read a user's sums from the `covsum:` key serving's recall kept,
-- covisited.lua, where it is still there), the users as ONE JSON array, the pairs as ONE JSON array
-- of [user index (1-based), item], and optionally the users' recent lists as ONE JSON array (newest
-- first), read elsewhere (a sharded store, features/shards.py). Returns one integer per pair.
-- A user with kept sums costs one ZMSCORE over that user's pair items; otherwise one ZMSCORE per
-- recent item (in slices of 1000: Lua's C stack bounds unpack): a request ranking 200 items for one
-- user makes 5 calls, not 1,000.
local p, query, kept = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local users = cjson.decode(ARGV[4])
local pairs_ = cjson.decode(ARGV[5])
local unpack = unpack or table.unpack
local given = ARGV[6] and cjson.decode(ARGV[6])
local items_of, rows_of = {}, {}
for n, pair in ipairs(pairs_) do
  local u = pair[1]
  if not items_of[u] then items_of[u], rows_of[u] = {}, {} end
  table.insert(items_of[u], pair[2])
  table.insert(rows_of[u], n)
end
local out = {}
for n = 1, #pairs_ do out[n] = 0 end

-- adds `sign` times the scores of `items` in the sorted set `key` to their pairs' sums
local function add(key, items, rows, sign, skip)
  for lo = 1, #items, 1000 do
    local hi = math.min(lo + 999, #items)
    local scores = redis.call('ZMSCORE', key, unpack(items, lo, hi))
    for k = lo, hi do
      local s = scores[k - lo + 1]
      if s and items[k] ~= skip then out[rows[k]] = out[rows[k]] + sign * tonumber(s) end
    end
  end
end

for u, items in pairs(items_of) do
  local sums = p .. 'covsum:' .. users[u]
  if kept and redis.call('EXISTS', sums) == 1 then
    add(sums, items, rows_of[u], -1, '')  -- kept negated (ascending order is best first there)
  else
    local recent = given and {unpack(given[u], 1, math.min(query, #given[u]))}
      or redis.call('LRANGE', p .. 'recent:' .. users[u], 0, query - 1)
    for _, h in ipairs(recent) do
      add(p .. 'cov:' .. h, items, rows_of[u], 1, h)
    end
  end
end
return out
