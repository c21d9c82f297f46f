-- The co-visitation score of (user, item) pairs, summed inside Redis so a reader gets one number
-- per pair instead of whole sets: the sum, over the user's last `query` positive items h (h ~= item),
-- of the times h and the item were co-visited (features/apply_events.lua keeps the counts).
-- KEYS[1]: a key of the shard (routes the call on a cluster; the keys built here share its tag).
-- ARGV: prefix, query, the users as ONE JSON array, the pairs as ONE JSON array of
-- [user index (1-based), item], and optionally the users' recent lists as ONE JSON array (newest
-- first), read elsewhere (a sharded store, features/shards.py). Returns one integer per pair.
-- Per user, one ZMSCORE per recent item over all of that user's pair items (in slices of 1000:
-- Lua's C stack bounds unpack): a request ranking 200 items for one user makes 5 calls, not 1,000.
local p, query = ARGV[1], tonumber(ARGV[2])
local users = cjson.decode(ARGV[3])
local pairs_ = cjson.decode(ARGV[4])
local unpack = unpack or table.unpack
local given = ARGV[5] and cjson.decode(ARGV[5])
local items_of, rows_of = {}, {}
for n, pair in ipairs(pairs_) do
  local u = pair[1]
  if not items_of[u] then items_of[u], rows_of[u] = {}, {} end
  table.insert(items_of[u], pair[2])
  table.insert(rows_of[u], n)
end
local out = {}
for n = 1, #pairs_ do out[n] = 0 end
for u, items in pairs(items_of) do
  local rows = rows_of[u]
  local recent = given and {unpack(given[u], 1, math.min(query, #given[u]))}
    or redis.call('LRANGE', p .. 'recent:' .. users[u], 0, query - 1)
  for _, h in ipairs(recent) do
    local key = p .. 'cov:' .. h
    for lo = 1, #items, 1000 do
      local hi = math.min(lo + 999, #items)
      local scores = redis.call('ZMSCORE', key, unpack(items, lo, hi))
      for k = lo, hi do
        if scores[k - lo + 1] and items[k] ~= h then out[rows[k]] = out[rows[k]] + tonumber(scores[k - lo + 1]) end
      end
    end
  end
end
return out
