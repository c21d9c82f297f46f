-- Sums window counters inside Redis, so a reader gets a few numbers per entity instead of whole
-- hashes to parse. ARGV: prefix, kind ("u", "i" or "g"), n_names, then per name
-- (window_name, action, bucket_s, slots), then the entity ids. Returns one flat array of
-- integers: for each id, one count per name, summed over the slots live at the watermark
-- (features/windows.py explains the ring).
local p, kind, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local wm = tonumber(redis.call('GET', p .. 'wm') or '0')
local names = {}
local i = 4
for k = 1, n do
  local bucket_s, slots = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local last = math.floor(wm / bucket_s)
  local fields = {}
  for s = 0, slots - 1 do fields[s + 1] = ARGV[i] .. ':' .. ARGV[i + 1] .. ':' .. s end
  names[k] = {fields, last - slots + 1, last}
  i = i + 4
end
local out = {}
while i <= #ARGV do
  local key = kind == 'g' and (p .. 'c:g') or (p .. 'c:' .. kind .. ':' .. ARGV[i])
  for k = 1, n do
    local total = 0
    local values = redis.call('HMGET', key, unpack(names[k][1]))
    for _, v in ipairs(values) do
      if v then
        local sep = string.find(v, ':', 1, true)
        local b = tonumber(string.sub(v, 1, sep - 1))
        if b >= names[k][2] and b <= names[k][3] then total = total + tonumber(string.sub(v, sep + 1)) end
      end
    end
    table.insert(out, total)
  end
  i = i + 1
end
return out
