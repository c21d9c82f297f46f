-- Applies a batch of events to the feature store atomically and at most once.
-- KEYS[1]: the shard's watermark key, which routes the call on a Redis Cluster; every key the
--       script builds from the prefix shares its hash tag, hence its slot (features/shards.py).
-- ARGV: prefix, dedupe_window (seconds an event_id mark lives; 0: none), key_ttl, recent_n,
--       session_gap, trend_tau, pop_tau, ranking_size, catalog_size, covisit_window, covisit_keep,
--       acted_keep (items kept per user in {p}acted:{user}; 0: none), uc_window (the window,
--       1-based, of the (user, category) counters; 0: none), nwin, then
--       (name, bucket_s, slots) per window, then one JSON array of events, each
--       [event_id, ts, user, item, action, positive (1/0), category ("" if none)] or, for an event
--       read from Kafka, the same plus [range (1-based index into the ranges), offset];
--       then one JSON array of ranges, each ["topic:partition", from, to]: the offsets [from, to)
--       of that partition this call covers (its events, and the messages between them that were
--       not events: dead letters); then one JSON array of the actions the (user, category)
--       counters count (the ones features read); then one JSON array of the actions whose rings
--       each item's ranking vector holds ({p}v:i:{item}; [] for none); then, optionally, one JSON array of catalogue
--       notes [item, category ("" if none)]: items of the batch's events that other shards apply,
--       entered in this shard's catalogue before its own events (features/shards.py: every
--       shard's catalogue holds every item, so a user's shard knows each item's category).
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
-- Reads are bulk, one command per call: one HMGET for the catalogue entries of the call's items,
-- one MGET for every ring string, one ZMSCORE per ranking; the catalogue and rankings are written
-- with one HSET / ZADD per call (each redis.call from Lua costs ~2-5 us on a shared 2-core
-- machine: ~7 commands per event became ~4). All is updated here in event order, so the result
-- is the one of applying the events one by one (tests/features/test_apply_in_bulk.py).
local p = ARGV[1]
local dedupe_window, key_ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local recent_n, session_gap = tonumber(ARGV[4]), tonumber(ARGV[5])
local taus = {{p .. 'trending', tonumber(ARGV[6])}, {p .. 'popular', tonumber(ARGV[7])}}
local ranking_size, catalog_size = tonumber(ARGV[8]), tonumber(ARGV[9])
local covisit_window, covisit_keep = tonumber(ARGV[10]), tonumber(ARGV[11])
local acted_keep = tonumber(ARGV[12])
local uc_window = tonumber(ARGV[13])
local nwin = tonumber(ARGV[14])
local wins = {}
local i = 15
for w = 1, nwin do
  wins[w] = {ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])}
  i = i + 3
end

-- Window counts: one binary string per (entity, action) holding every window's ring
-- (features/windows.py RingLayout: per window the newest bucket + 1, then its slots, uint32).
-- Each string the call touches is read once, updated here event by event, written once at the end.
local function layout_of(windows)
  local layout, off = {wins = {}, words = 0}, 1
  for _, w in ipairs(windows) do
    table.insert(layout.wins, {w[2], w[3], off})  -- bucket_s, slots, index of the newest-bucket word
    off = off + 1 + w[3]
  end
  layout.words = off - 1
  layout.nbytes = 4 * layout.words
  layout.fmt = '<' .. string.rep('I4', layout.words)
  layout.blank = function()
    local v = {}
    for k = 1, layout.words do v[k] = 0 end
    return v
  end
  return layout
end
local full_layout = layout_of(wins)
local uc_layout = uc_window > 0 and layout_of({wins[uc_window]}) or nil
local rings, ring_order = {}, {}
local unpack = unpack or table.unpack

local function ring_load(key, layout, raw)
  -- the string's values (blank if absent or of another layout), kept for the rest of the call
  local v
  if raw and #raw == layout.nbytes then
    v = {struct.unpack(layout.fmt, raw)}
    v[#v] = nil  -- unpack's last value is the position after the string
  else
    v = layout.blank()
  end
  local r = {v = v, layout = layout}
  rings[key] = r
  table.insert(ring_order, key)
  return r
end

local function ring_add(key, layout, ts, n)
  -- n events at ts: a newer bucket zeroes the slots it passes; one older than the ring is dropped
  local r = rings[key] or ring_load(key, layout, redis.call('GET', key))
  local v = r.v
  for _, w in ipairs(layout.wins) do
    local bucket_s, slots, off = w[1], w[2], w[3]
    local b = math.floor(ts / bucket_s)
    local newest = v[off] - 1  -- -1: nothing yet
    if b > newest then
      if newest < 0 or b - newest >= slots then
        for s = 1, slots do v[off + s] = 0 end
      else
        for x = newest + 1, b do v[off + 1 + x % slots] = 0 end
      end
      v[off] = b + 1
      newest = b
    end
    if b > newest - slots then v[off + 1 + b % slots] = v[off + 1 + b % slots] + n end
  end
end

-- Keys touched by this call get their TTL once, at the end, not once per event.
local touched = {}
local acted, acted_order = {}, {}  -- per user key: ts, item, ts, item... of its positive actions
local actions = {}  -- every action counted by this call, added to the set of actions

-- The item catalogue: item -> category in a hash, and a log (sorted set) of the items whose entry
-- was added or changed, scored by a sequence number taken once per call, so a reader (serving)
-- can fetch what changed since the last number it saw.
local cat_hash, cat_log, cat_seq = p .. 'items', p .. 'items:log', p .. 'items:seq'
local seq = false
-- Entries of the call's items are read with one HMGET (cat_of: item -> category, false if none)
-- and the changed ones written with one HSET and one ZADD, at the end.
local cat_of, cat_changed = {}, {}

local function note_item(item, category)
  -- returns the item's category: the event's, else the catalogue's ('' if neither knows one)
  local old = cat_of[item]
  if old == false or (category ~= '' and old ~= category) then
    cat_of[item] = category
    if not seq then seq = redis.call('INCR', cat_seq) end
    if cat_changed[item] == nil then table.insert(cat_changed, item) end
    cat_changed[item] = category
  end
  if category ~= '' then return category end
  return old or ''
end

local function log_add(z, item, x)
  -- forward decay: score = log(sum exp(ts / tau)), ranked identically to the decayed count at any time
  local old = z.score[item]
  local new = x
  if old then
    old = tonumber(old)
    local m = math.max(old, x)
    new = m + math.log(math.exp(old - m) + math.exp(x - m))
  end
  if not z.changed[item] then
    z.changed[item] = true
    table.insert(z.changed, item)
  end
  z.score[item] = new
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
local uc_actions = {}
for _, action in ipairs(cjson.decode(ARGV[i + 2])) do uc_actions[action] = true end
local vec_actions = cjson.decode(ARGV[i + 3])
local notes = ARGV[i + 4] and cjson.decode(ARGV[i + 4]) or {}

-- An item's ranking vector (features/windows.py VectorLayout): the rings of vec_actions back to
-- back, then the item's trending log-score (double, -inf: none), so that ranking reads each
-- candidate with one GET's worth of work. Its rings are updated by the same events as the item's
-- own rings, its score with the trending ranking (and kept when the ranking trims the item).
local vec_layout, vec_part = nil, {}
if #vec_actions > 0 then
  local ring_words = #vec_actions * full_layout.words
  vec_layout = {words = ring_words + 1, nbytes = 4 * ring_words + 8, score_at = ring_words + 1,
                fmt = '<' .. string.rep('I4', ring_words) .. 'd'}
  vec_layout.blank = function()
    local v = {}
    for k = 1, ring_words do v[k] = 0 end
    v[ring_words + 1] = -math.huge
    return v
  end
  for a, action in ipairs(vec_actions) do
    local part = {wins = {}}
    for _, w in ipairs(full_layout.wins) do
      table.insert(part.wins, {w[1], w[2], w[3] + (a - 1) * full_layout.words})
    end
    vec_part[action] = part
  end
end
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

-- Which events are new: decided first (nothing else the call changes depends on it).
local events, applied, dup = {}, 0, 0
for _, ev in ipairs(cjson.decode(ARGV[i])) do
  if fresh(ev[1], ev[8], ev[9]) then
    applied = applied + 1
    events[applied] = ev
  else
    dup = dup + 1
  end
end

local function each_slice(list, step, fn)
  -- fn(first, last) over `list` in slices of whole `step`s, at most ~4000 long (unpack's C stack)
  local size = 4000 - 4000 % step
  for lo = 1, #list, size do fn(lo, math.min(lo + size - 1, #list)) end
end

-- Bulk reads, one command each: the catalogue entries of the call's items, then (with the category
-- each event sees, in event order) every ring string, then the ranking scores of positive items.
local items, positives = {}, {}
for _, note in ipairs(notes) do
  if cat_of[note[1]] == nil then
    cat_of[note[1]] = false
    table.insert(items, note[1])
  end
end
for _, ev in ipairs(events) do
  local item = ev[4]
  if cat_of[item] == nil then
    cat_of[item] = false
    table.insert(items, item)
  end
  if ev[6] == 1 and positives[item] == nil then
    positives[item] = true
    table.insert(positives, item)
  end
end
each_slice(items, 1, function(lo, hi)
  local got = redis.call('HMGET', cat_hash, unpack(items, lo, hi))
  for k = lo, hi do cat_of[items[k]] = got[k - lo + 1] end
end)
for _, note in ipairs(notes) do note_item(note[1], note[2]) end
local ring_keys, ring_layouts, listed = {}, {}, {}
local function want(key, layout)
  if not listed[key] then
    listed[key] = true
    table.insert(ring_keys, key)
    table.insert(ring_layouts, layout)
  end
end
for _, ev in ipairs(events) do
  local user, item, action = ev[3], ev[4], ev[5]
  ev.known = note_item(item, ev[7])
  ev.ukey = p .. 'w:u:' .. user .. '\31' .. action
  ev.ikey = p .. 'w:i:' .. item .. '\31' .. action
  ev.gkey = p .. 'w:g:\31' .. action
  want(ev.ukey, full_layout)
  want(ev.ikey, full_layout)
  want(ev.gkey, full_layout)
  if uc_layout and ev.known ~= '' and uc_actions[action] then
    ev.uckey = p .. 'w:uc:' .. user .. '\31' .. ev.known .. '\31' .. action
    want(ev.uckey, uc_layout)
  end
  if vec_layout and (vec_part[action] or ev[6] == 1) then
    ev.vkey = p .. 'v:i:' .. item
    want(ev.vkey, vec_layout)
  end
end
each_slice(ring_keys, 1, function(lo, hi)
  local got = redis.call('MGET', unpack(ring_keys, lo, hi))
  for k = lo, hi do ring_load(ring_keys[k], ring_layouts[k], got[k - lo + 1]) end
end)
local zsets = {}
for t, z in ipairs(taus) do
  local zs = {key = z[1], tau = z[2], score = {}, changed = {}}
  each_slice(positives, 1, function(lo, hi)
    local got = redis.call('ZMSCORE', z[1], unpack(positives, lo, hi))
    for k = lo, hi do zs.score[positives[k]] = got[k - lo + 1] end
  end)
  zsets[t] = zs
end

local wm = tonumber(redis.call('GET', p .. 'wm') or '0')
for _, ev in ipairs(events) do
  local ts, user, item = tonumber(ev[2]), ev[3], ev[4]
  local action, positive = ev[5], ev[6]
  if ts > wm then wm = ts end
  local ukey = p .. 'c:u:' .. user
  ring_add(ev.ukey, full_layout, ts, 1)
  ring_add(ev.ikey, full_layout, ts, 1)
  ring_add(ev.gkey, full_layout, ts, 1)
  actions[action] = true
  if ev.uckey then
    -- the user's actions on the item's category, in one window: the (user, category) affinity
    ring_add(ev.uckey, uc_layout, ts, 1)
  end
  if ev.vkey and vec_part[action] then ring_add(ev.vkey, vec_part[action], ts, 1) end
  if positive == 1 then
    local last = tonumber(redis.call('HGET', ukey, 'last_ts') or '0')
    local skey = p .. 'sess:' .. user
    if ts - last > session_gap then redis.call('DEL', skey) end
    redis.call('RPUSH', skey, item)
    redis.call('LTRIM', skey, -recent_n, -1)
    redis.call('EXPIRE', skey, math.floor(session_gap) + 1)
    if ts > last then redis.call('HSET', ukey, 'last_ts', ts) end
    touched[ukey] = true
    local rkey = p .. 'recent:' .. user
    if covisit_window > 0 then covisit(rkey, item) end
    redis.call('LPUSH', rkey, item)
    redis.call('LTRIM', rkey, 0, recent_n - 1)
    touched[rkey] = true
    if acted_keep > 0 then
      local akey = p .. 'acted:' .. user
      if not acted[akey] then acted[akey] = {}; table.insert(acted_order, akey) end
      local a = acted[akey]
      a[#a + 1] = ts
      a[#a + 1] = item
    end
    for _, z in ipairs(zsets) do log_add(z, item, ts / z.tau) end
  end
end
if #cat_changed > 0 then
  local args = {}
  for _, item in ipairs(cat_changed) do
    args[#args + 1] = item
    args[#args + 1] = cat_changed[item]
  end
  each_slice(args, 2, function(lo, hi) redis.call('HSET', cat_hash, unpack(args, lo, hi)) end)
  args = {}
  for _, item in ipairs(cat_changed) do
    args[#args + 1] = seq
    args[#args + 1] = item
  end
  each_slice(args, 2, function(lo, hi) redis.call('ZADD', cat_log, unpack(args, lo, hi)) end)
end
if vec_layout then  -- the items' new trending scores (zsets[1]) into their vectors
  for _, item in ipairs(zsets[1].changed) do
    rings[p .. 'v:i:' .. item].v[vec_layout.score_at] = zsets[1].score[item]
  end
end
for _, z in ipairs(zsets) do
  local args = {}
  for _, item in ipairs(z.changed) do
    args[#args + 1] = z.score[item]
    args[#args + 1] = item
  end
  each_slice(args, 2, function(lo, hi) redis.call('ZADD', z.key, unpack(args, lo, hi)) end)
end
for _, key in ipairs(ring_order) do
  local r = rings[key]
  redis.call('SET', key, struct.pack(r.layout.fmt, unpack(r.v)), 'EX', key_ttl)
end
for action in pairs(actions) do
  redis.call('SADD', p .. 'actions', action)
  touched[p .. 'actions'] = true
end
-- every item a user acted on, by when it last was (serving never recommends them again): one ZADD
-- per user, trimmed to the `acted_keep` latest once it holds twice that many
for _, key in ipairs(acted_order) do
  each_slice(acted[key], 2, function(lo, hi) redis.call('ZADD', key, unpack(acted[key], lo, hi)) end)
  local n = redis.call('ZCARD', key)
  if n > 2 * acted_keep then redis.call('ZREMRANGEBYRANK', key, 0, n - acted_keep - 1) end
  touched[key] = true
end
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
if applied > 0 or #notes > 0 then
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
