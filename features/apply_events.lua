-- Applies a batch of events to the feature store atomically and at most once.
-- ARGV: prefix, dedupe_window (seconds an event_id mark lives; 0: none), key_ttl, recent_n,
--       session_gap, trend_tau, pop_tau, ranking_size, catalog_size, covisit_window, covisit_keep,
--       uc_window (the window, 1-based, of the (user, category) counters; 0: none), nwin, then
--       (name, bucket_s, slots) per window, then one JSON array of events, each
--       [event_id, ts, user, item, action, positive (1/0), category ("" if none)] or, for an event
--       read from Kafka, the same plus [range (1-based index into the ranges), offset];
--       then one JSON array of ranges, each ["topic:partition", from, to]: the offsets [from, to)
--       of that partition this call covers (its events, and the messages between them that were
--       not events: dead letters).
--       (One JSON argument instead of 7 per event: packing thousands of arguments costs the
--       client more than decoding one string costs Redis.)
-- At most once: an event with an offset below its partition's applied offset (hash {p}offsets:
-- "topic:partition" -> next offset to apply, updated here to each range's `to`) is a duplicate
-- (a redelivery); any other event is a duplicate if its event_id was marked within the dedupe
-- window (a producer that sent it twice), and is marked otherwise.
-- A range whose `from` lies beyond its partition's applied offset means the store lost writes
-- (Redis restarted from an AOF that lacked its last second, or an older snapshot): then nothing
-- is applied and the call returns {0, 0, range, applied offset, range, applied offset...} (every
-- such range), so the caller re-applies the gap from Kafka first. Otherwise it returns {applied, duplicates}. Key names follow features/keys.py.
local p = ARGV[1]
local dedupe_window, key_ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local recent_n, session_gap = tonumber(ARGV[4]), tonumber(ARGV[5])
local taus = {{p .. 'trending', tonumber(ARGV[6])}, {p .. 'popular', tonumber(ARGV[7])}}
local ranking_size, catalog_size = tonumber(ARGV[8]), tonumber(ARGV[9])
local covisit_window, covisit_keep = tonumber(ARGV[10]), tonumber(ARGV[11])
local uc_window = tonumber(ARGV[12])
local nwin = tonumber(ARGV[13])
local wins = {}
local i = 14
for w = 1, nwin do
  wins[w] = {ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])}
  i = i + 3
end

local function bump(key, field, b, n)
  -- slot value "bucket:count": same bucket counts up, an older one is replaced, a newer one wins
  local cur = redis.call('HGET', key, field)
  if cur then
    local sep = string.find(cur, ':', 1, true)
    local eb = tonumber(string.sub(cur, 1, sep - 1))
    if eb == b then
      redis.call('HSET', key, field, string.format('%d:%d', b, tonumber(string.sub(cur, sep + 1)) + n))
    elseif eb < b then
      redis.call('HSET', key, field, string.format('%d:%d', b, n))
    end
  else
    redis.call('HSET', key, field, string.format('%d:%d', b, n))
  end
end

-- Keys touched by this call get their TTL once, at the end, not once per event.
local touched = {}
-- Stream-wide counts are summed per (field, bucket) and applied once per call: applying the
-- groups in ascending bucket order leaves the same slots as applying the events one by one.
local stream_counts, stream_order = {}, {}

-- The item catalogue: item -> category in a hash, and a log (sorted set) of the items whose entry
-- was added or changed, scored by a sequence number taken once per call, so a reader (serving)
-- can fetch what changed since the last number it saw.
local cat_hash, cat_log, cat_seq = p .. 'items', p .. 'items:log', p .. 'items:seq'
local seq = false

local function note_item(item, category)
  -- returns the item's category: the event's, else the catalogue's ('' if neither knows one)
  local old = redis.call('HGET', cat_hash, item)
  if old == false or (category ~= '' and old ~= category) then
    redis.call('HSET', cat_hash, item, category)
    if not seq then seq = redis.call('INCR', cat_seq) end
    redis.call('ZADD', cat_log, seq, item)
  end
  if category ~= '' then return category end
  return old or ''
end

local function log_add(zkey, item, x)
  -- forward decay: score = log(sum exp(ts / tau)), ranked identically to the decayed count at any time
  local old = redis.call('ZSCORE', zkey, item)
  local new = x
  if old then
    old = tonumber(old)
    local m = math.max(old, x)
    new = m + math.log(math.exp(old - m) + math.exp(x - m))
  end
  redis.call('ZADD', zkey, new, item)
end

-- Co-visitation: a positive action on `item` pairs it with the user's last `covisit_window`
-- positive items, counted both ways in one sorted set per item (item -> times co-visited).
-- Each set touched is trimmed once, at the end, to its `covisit_keep` most co-visited items
-- when it has grown past twice that (new pairs get a chance to grow before a trim).
local covisited = {}
local function covisit(rkey, item)
  for _, h in ipairs(redis.call('LRANGE', rkey, 0, covisit_window - 1)) do
    if h ~= item then
      local hkey, ikey = p .. 'cov:' .. h, p .. 'cov:' .. item
      redis.call('ZINCRBY', hkey, 1, item)
      redis.call('ZINCRBY', ikey, 1, h)
      covisited[hkey] = true
      covisited[ikey] = true
    end
  end
end

-- The applied offsets: checked for a gap before anything changes, so a call applies all or nothing.
local okey = p .. 'offsets'
local ranges = cjson.decode(ARGV[i + 1])
local next_of, gaps = {}, {0, 0}
for r, range in ipairs(ranges) do
  local mark = redis.call('HGET', okey, range[1])
  if mark and tonumber(mark) < range[2] then
    table.insert(gaps, r)
    table.insert(gaps, tonumber(mark))
  end
  next_of[r] = tonumber(mark or '0')
end
if #gaps > 2 then return gaps end

local function fresh(eid, r, off)
  -- true if the event was not applied before: by its offset, else (and also) by its event_id
  if r then
    if off < next_of[r] then return false end
    next_of[r] = off + 1
  end
  if dedupe_window > 0 then
    return redis.call('SET', p .. 'seen:' .. eid, '1', 'NX', 'EX', dedupe_window) ~= false
  end
  return true
end

local wm = tonumber(redis.call('GET', p .. 'wm') or '0')
local applied, dup = 0, 0
for _, ev in ipairs(cjson.decode(ARGV[i])) do
  local eid, ts, user, item = ev[1], tonumber(ev[2]), ev[3], ev[4]
  local action, positive, category = ev[5], ev[6], ev[7]
  if fresh(eid, ev[8], ev[9]) then
    applied = applied + 1
    if ts > wm then wm = ts end
    local ukey, ikey = p .. 'c:u:' .. user, p .. 'c:i:' .. item
    for w = 1, nwin do
      local b = math.floor(ts / wins[w][2])
      local field = wins[w][1] .. ':' .. action .. ':' .. (b % wins[w][3])
      bump(ukey, field, b, 1)
      bump(ikey, field, b, 1)
      local group = field .. '@' .. b
      if stream_counts[group] then
        stream_counts[group][3] = stream_counts[group][3] + 1
      else
        stream_counts[group] = {field, b, 1}
        table.insert(stream_order, stream_counts[group])
      end
    end
    touched[ukey] = true
    touched[ikey] = true
    if category ~= '' then redis.call('HSET', ikey, 'category', category) end
    local known = note_item(item, category)
    if uc_window > 0 and known ~= '' then
      -- the user's actions on the item's category, in one window: the (user, category) affinity
      local w = wins[uc_window]
      local b = math.floor(ts / w[2])
      local uckey = p .. 'c:uc:' .. user .. '\31' .. known
      bump(uckey, w[1] .. ':' .. action .. ':' .. (b % w[3]), b, 1)
      touched[uckey] = true
    end
    if positive == 1 then
      local last = tonumber(redis.call('HGET', ukey, 'last_ts') or '0')
      local skey = p .. 'sess:' .. user
      if ts - last > session_gap then redis.call('DEL', skey) end
      redis.call('RPUSH', skey, item)
      redis.call('LTRIM', skey, -recent_n, -1)
      redis.call('EXPIRE', skey, math.floor(session_gap) + 1)
      if ts > last then redis.call('HSET', ukey, 'last_ts', ts) end
      local rkey = p .. 'recent:' .. user
      if covisit_window > 0 then covisit(rkey, item) end
      redis.call('LPUSH', rkey, item)
      redis.call('LTRIM', rkey, 0, recent_n - 1)
      touched[rkey] = true
      for _, z in ipairs(taus) do log_add(z[1], item, ts / z[2]) end
    end
  else
    dup = dup + 1
  end
end
table.sort(stream_order, function(x, y) return x[2] < y[2] end)
for _, g in ipairs(stream_order) do bump(p .. 'c:g', g[1], g[2], g[3]) end
touched[p .. 'c:g'] = true
for key in pairs(covisited) do
  local n = redis.call('ZCARD', key)
  if n > 2 * covisit_keep then redis.call('ZREMRANGEBYRANK', key, 0, n - covisit_keep - 1) end
  touched[key] = true
end
for key in pairs(touched) do redis.call('EXPIRE', key, key_ttl) end
redis.call('SET', p .. 'wm', string.format('%.6f', wm), 'EX', key_ttl)  -- expires like every key
if seq then
  local over = redis.call('ZCARD', cat_log) - catalog_size
  if over > 0 then  -- the least recently changed entries leave the catalogue
    local popped = redis.call('ZPOPMIN', cat_log, over)
    for k = 1, #popped, 2 do redis.call('HDEL', cat_hash, popped[k]) end
  end
end
if applied > 0 then
  for _, key in ipairs({cat_hash, cat_log, cat_seq}) do redis.call('EXPIRE', key, key_ttl) end
end
for _, z in ipairs(taus) do
  local n = redis.call('ZCARD', z[1])
  if n > ranking_size then redis.call('ZREMRANGEBYRANK', z[1], 0, n - ranking_size - 1) end
  redis.call('EXPIRE', z[1], key_ttl)
end
for r, range in ipairs(ranges) do
  redis.call('HSET', okey, range[1], string.format('%.0f', math.max(next_of[r], range[3])))
end
if #ranges > 0 then redis.call('EXPIRE', okey, key_ttl) end
return {applied, dup}
