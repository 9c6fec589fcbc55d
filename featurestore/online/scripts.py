"""Server-side Lua of the online store: atomic compare-and-write, many rows per call.

Every script touches only its KEYS, so in a cluster the store calls it once per
hash slot. Lua numbers are doubles: timestamps (micros) and tile indexes are
exact below 2**53 (year 2255).
"""

# KEYS: row keys (distinct within a call); ARGV[i]: packed row for KEYS[i] (event_ts big-endian int64 in
# its first 8 bytes). A row is written unless the stored one is newer, or equally new and identical (so
# re-runs write nothing; an equally new but different row is a correction and replaces it).
# Returns the number of rows written.
SET_IF_NEWER = r"""
local old = redis.call('MGET', unpack(KEYS))
local ts = struct.unpack
local out = {}
local n = 0
for i = 1, #KEYS do
  local new = ARGV[i]
  local cur = old[i]
  local write = true
  if cur then
    local nts, cts = ts('>i8', new), (ts('>i8', cur))
    write = nts > cts or (nts == cts and cur ~= new)
  end
  if write then
    n = n + 1
    out[2 * n - 1] = KEYS[i]
    out[2 * n] = new
  end
end
if n > 0 then redis.call('MSET', unpack(out)) end
return n
"""

# Shared by the tile scripts: parse a ring blob into slot strings and segment bodies, and back.
_RING = r"""
local ring = tonumber(ARGV[1])
local slot_size = tonumber(ARGV[2])
local nlast = tonumber(ARGV[3])
local empty_slot = ARGV[4]
local nseg = ring * nlast

local function parse(blob)
  local slots, bodies = {}, {}
  if not blob then
    for r = 1, ring do slots[r] = empty_slot end
    for k = 1, nseg do bodies[k] = '' end
    return slots, bodies
  end
  for r = 1, ring do slots[r] = string.sub(blob, (r - 1) * slot_size + 1, r * slot_size) end
  local tbl = ring * slot_size
  local base = tbl + 4 * nseg
  local prev = 0
  for k = 1, nseg do
    local e = struct.unpack('<I4', blob, tbl + 4 * (k - 1) + 1)
    bodies[k] = string.sub(blob, base + prev + 1, base + e)
    prev = e
  end
  return slots, bodies
end

local function dump(slots, bodies)
  local ends = {}
  local acc = 0
  for k = 1, nseg do
    acc = acc + #bodies[k]
    ends[k] = struct.pack('<I4', acc)
  end
  return table.concat(slots) .. table.concat(ends) .. table.concat(bodies)
end

local function slot_tile(s)
  return (struct.unpack('<i8', s))
end
"""

# KEYS: ring keys. ARGV[1..4]: ring, slot size, n_last, empty slot bytes; then per key: m, then m x
# (tile index, numeric slot bytes, n_last '<u4'-length-prefixed segment bodies).
# A tile replaces its ring slot unless the slot holds a newer tile. Returns the number of tiles changed.
PUT_TILES = _RING + r"""
local a = 5
local changed = 0
for _, key in ipairs(KEYS) do
  local m = tonumber(ARGV[a]); a = a + 1
  local slots, bodies = parse(redis.call('GET', key))
  local dirty = false
  for _ = 1, m do
    local idx = tonumber(ARGV[a]); local num = ARGV[a + 1]; local segs = ARGV[a + 2]; a = a + 3
    local s = idx % ring
    if slot_tile(slots[s + 1]) <= idx then
      local diff = slots[s + 1] ~= num
      slots[s + 1] = num
      local p = 1
      for l = 1, nlast do
        local len = struct.unpack('<I4', segs, p)
        local body = string.sub(segs, p + 4, p + 3 + len)
        p = p + 4 + len
        if bodies[s * nlast + l] ~= body then diff = true end
        bodies[s * nlast + l] = body
      end
      if diff then changed = changed + 1; dirty = true end
    end
  end
  if dirty then redis.call('SET', key, dump(slots, bodies)) end
end
return changed
"""

# KEYS[1]: one ring key. ARGV[1..4] as above, ARGV[5]: n_sum, ARGV[6..5+n_last]: n kept per last-n column;
# then events: tile index, ts micros, n_sum values ('' = null, else '<d' bytes), n_last values
# ('' = null, else '\1' .. value bytes). An event adds to its tile (a slot holding an older tile is reset
# first); an event whose slot already holds a newer tile is too late and dropped. Returns events applied.
ADD_EVENTS = _RING + r"""
local nsum = tonumber(ARGV[5])
local keep = {}
for l = 1, nlast do keep[l] = tonumber(ARGV[5 + l]) end
local a = 6 + nlast
local slots, bodies = parse(redis.call('GET', KEYS[1]))
local applied = 0
while a <= #ARGV do
  local idx = tonumber(ARGV[a]); local ts = tonumber(ARGV[a + 1]); a = a + 2
  local s = idx % ring
  local sl = slots[s + 1]
  local cur = slot_tile(sl)
  if cur > idx then
    a = a + nsum + nlast
  else
    local count = 0
    local sums, nns = {}, {}
    if cur == idx then
      count = struct.unpack('<i8', sl, 9)
      for k = 1, nsum do
        sums[k] = struct.unpack('<d', sl, 17 + (k - 1) * 16)
        nns[k] = struct.unpack('<i8', sl, 25 + (k - 1) * 16)
      end
    else
      for k = 1, nsum do sums[k] = 0.0; nns[k] = 0 end
      for l = 1, nlast do bodies[s * nlast + l] = '' end
    end
    count = count + 1
    for k = 1, nsum do
      local v = ARGV[a + k - 1]
      if v ~= '' then
        sums[k] = sums[k] + struct.unpack('<d', v)
        nns[k] = nns[k] + 1
      end
    end
    a = a + nsum
    local parts = {struct.pack('<i8i8', idx, count)}
    for k = 1, nsum do parts[#parts + 1] = struct.pack('<di8', sums[k], nns[k]) end
    slots[s + 1] = table.concat(parts)
    for l = 1, nlast do
      local v = ARGV[a + l - 1]
      if v ~= '' then
        v = string.sub(v, 2)
        local body = bodies[s * nlast + l]
        local entries = {}
        local p = 1
        local inserted = false
        local new = struct.pack('<i8I4', ts, #v) .. v
        while p <= #body do
          local ets = struct.unpack('<i8', body, p)
          local vlen = struct.unpack('<I4', body, p + 8)
          if not inserted and ets > ts then
            entries[#entries + 1] = new
            inserted = true
          end
          entries[#entries + 1] = string.sub(body, p, p + 11 + vlen)
          p = p + 12 + vlen
        end
        if not inserted then entries[#entries + 1] = new end
        local first = math.max(1, #entries - keep[l] + 1)
        bodies[s * nlast + l] = table.concat(entries, '', first, #entries)
      end
    end
    a = a + nlast
    applied = applied + 1
  end
end
if applied > 0 then redis.call('SET', KEYS[1], dump(slots, bodies)) end
return applied
"""
