-- What serving's first round trip needs of each user: the items they acted on last (serving blocks
-- them and the user tower reads them) and the items most co-visited with their last `query` ones
-- (a retrieval channel beside the user vector: "users who liked these also liked").
-- KEYS[1]: a key of the shard (routes the call on a cluster; the keys built here share its tag).
-- ARGV: prefix, query, top, ttl_ms, the users as ONE JSON array, and optionally their recent lists
-- as ONE JSON array (newest first), read elsewhere: a sharded store keeps a user's list in the
-- user's shard and partial co-visit counts in every shard (features/shards.py).
-- Returns per user {recent items (newest first), {item, score, item, score, ...}}: at most `top`
-- items, best first (ties by name), none of them in the user's recent list; an item's score is the
-- sum over the user's last `query` items h of the times h and the item were co-visited
-- (features/apply_events.lua keeps the counts; the ranking feature `pair_log_covisits` is the same
-- sum, covisits.lua).
-- The sums and the order are Redis's own: ZUNIONSTORE (weights -1, so that ascending order is best
-- first, ties by name) into the user's `covsum:` key, which is kept `ttl_ms` so that the ranking
-- read of the same request takes its pair sums from it (covisits.lua) instead of summing the same
-- sets again; the member '' (no item ID is empty) marks the key even where no item was co-visited.
-- Summing and sorting the up to 5 x 200 entries in Lua cost 4x more, and a script blocks every
-- other client while it runs.
local p, query, top, ttl_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local unpack = unpack or table.unpack
local given = ARGV[6] and cjson.decode(ARGV[6])
local out = {}
for n, user in ipairs(cjson.decode(ARGV[5])) do
  local recent = given and given[n] or redis.call('LRANGE', p .. 'recent:' .. user, 0, -1)
  local best = {}
  local q = top > 0 and math.min(query, #recent) or 0  -- the channel off: recent items only
  if q > 0 then
    local sums, args = p .. 'covsum:' .. user, {}
    for k = 1, q do
      args[k] = p .. 'cov:' .. recent[k]
      args[q + 1 + k] = -1
    end
    args[q + 1] = 'WEIGHTS'
    redis.call('ZUNIONSTORE', sums, q, unpack(args, 1, 2 * q + 1))
    redis.call('ZADD', sums, 0, '')  -- no item: says "summed, nothing co-visited" when that is all
    redis.call('PEXPIRE', sums, ttl_ms)
    local seen = {['']=true}
    for _, item in ipairs(recent) do seen[item] = true end
    local rows = redis.call('ZRANGE', sums, 0, top + #recent, 'WITHSCORES')
    for j = 1, #rows, 2 do
      if #best >= 2 * top then break end
      if not seen[rows[j]] then
        best[#best + 1] = rows[j]
        best[#best + 1] = -tonumber(rows[j + 1])
      end
    end
  end
  out[n] = {recent, best}
end
return out
