-- What serving's first round trip needs of each user: the items they acted on last (serving blocks
-- them and the user tower reads them) and the items most co-visited with their last `query` ones
-- (a retrieval channel beside the user vector: "users who liked these also liked").
-- ARGV: prefix, query, top, the users as ONE JSON array.
-- Returns per user {recent items (newest first), {item, score, item, score, ...}}: at most `top`
-- items, best first, none of them in the user's recent list; an item's score is the sum over the
-- user's last `query` items h of the times h and the item were co-visited (features/apply_events.lua
-- keeps the counts, the same sum the ranking feature `pair_log_covisits` reads in covisits.lua).
local p, query, top = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for n, user in ipairs(cjson.decode(ARGV[4])) do
  local recent = redis.call('LRANGE', p .. 'recent:' .. user, 0, -1)
  local blocked, sums, found = {}, {}, {}
  for _, h in ipairs(recent) do blocked[h] = true end
  for k = 1, (top > 0 and math.min(query, #recent) or 0) do  -- the channel off: recent items only
    local rows = redis.call('ZRANGE', p .. 'cov:' .. recent[k], 0, -1, 'WITHSCORES')
    for j = 1, #rows, 2 do
      local item = rows[j]
      if not blocked[item] then
        if not sums[item] then sums[item] = 0; found[#found + 1] = item end
        sums[item] = sums[item] + tonumber(rows[j + 1])
      end
    end
  end
  table.sort(found, function(a, b) return sums[a] > sums[b] or (sums[a] == sums[b] and a < b) end)
  local best = {}
  for k = 1, math.min(top, #found) do
    best[2 * k - 1] = found[k]
    best[2 * k] = sums[found[k]]
  end
  out[n] = {recent, best}
end
return out
