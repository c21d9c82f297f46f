-- The co-visitation score of (user, item) pairs, summed inside Redis so a reader gets one number
-- per pair instead of whole sets: the sum, over the user's last `query` positive items h (h ~= item),
-- of the times h and the item were co-visited (features/apply_events.lua keeps the counts).
-- ARGV: prefix, query, the users as ONE JSON array, the pairs as ONE JSON array of
-- [user index (1-based), item]. Returns one integer per pair.
local p, query = ARGV[1], tonumber(ARGV[2])
local recent = {}
for k, u in ipairs(cjson.decode(ARGV[3])) do recent[k] = redis.call('LRANGE', p .. 'recent:' .. u, 0, query - 1) end
local out = {}
for n, pair in ipairs(cjson.decode(ARGV[4])) do
  local total, item = 0, pair[2]
  for _, h in ipairs(recent[pair[1]]) do
    if h ~= item then total = total + tonumber(redis.call('ZSCORE', p .. 'cov:' .. h, item) or '0') end
  end
  out[n] = total
end
return out
