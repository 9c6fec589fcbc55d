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

# ------------------------------------------------------------------------------------------ windows
#
# A windowed view's keys of one entity share a cluster slot (hash tag), and every script below gets them as
# KEYS = [state hash, numeric rings (only when k > 0), list 1 .. list m] (`TileCodec.keys`), then the view's
# layout in ARGV (`TileCodec.script_config`): k rings, m lists, slot size, number of summed columns, the
# coarsest hop (micros), per ring (hop micros, slots, byte offset in the numeric string), per list (keep,
# span micros, entry size: 16, or 0 for length-prefixed strings).
# State hash fields: "<topic>:<partition>" -> highest applied offset; "bt" -> batch through (micros,
# exclusive: the batch wrote every event before it); "sf" -> stream from (the oldest event time the stream
# applied); "w" -> the batch wrote the entity's values (with "sf": whether any ring or list may exist). A slot is [tile_start '<i8', count '<i8', per summed column: sum '<d', non-null count '<i8'];
# all-zero = empty. List entries are ('<i8' ts, 8 value bytes) or ('<i8' ts, '<I4' n, n bytes), oldest first.

_CONFIG = r"""
local k, m, slot_size, nsum, coarsest = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]),
  tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
a = a + 5
local hop, slots, roff, keep, span, esize = {}, {}, {}, {}, {}, {}
for i = 1, k do hop[i] = tonumber(ARGV[a]); slots[i] = tonumber(ARGV[a + 1]); roff[i] = tonumber(ARGV[a + 2]); a = a + 3 end
local kk = 0  -- keys of numeric rings per entity (one string holds every ring)
local numeric_size = 0
if k > 0 then kk = 1; numeric_size = roff[k] + slots[k] * slot_size end
for j = 1, m do keep[j] = tonumber(ARGV[a]); span[j] = tonumber(ARGV[a + 1]); esize[j] = tonumber(ARGV[a + 2]); a = a + 3 end

-- lists: parsed as (times, entry strings), oldest first
local function parse_list(L, e)
  local ts, ents = {}, {}
  local p = 1
  local n = #L
  while p <= n do
    local t = struct.unpack('<i8', L, p)
    local len = e
    if e == 0 then len = 12 + struct.unpack('<I4', L, p + 8) end
    ts[#ts + 1] = t
    ents[#ents + 1] = string.sub(L, p, p + len - 1)
    p = p + len
  end
  return ts, ents
end

-- keep the `kp` newest entries, none older than `sp` before the newest
local function trim_list(ts, ents, kp, sp)
  local n = #ts
  if n == 0 then return '' end
  local first = math.max(1, n - kp + 1)
  local limit = ts[n] - sp
  while first <= n and ts[first] < limit do first = first + 1 end
  return table.concat(ents, '', first, n)
end
"""

# KEYS: the keys (as above) of one or more entities, one group after the other. ARGV[1]: batch-through known to
# the caller ('' = none; per entity the larger of it and the state's "bt" applies); ARGV[2..]: layout; then per
# entity: its offsets field ('' = no exactly-once guard) and its events packed back to back, in increasing
# offset order (`TileCodec.event_packer`): '<i8' offset, '<i8' ts micros, per summed column a flag byte
# (1 = value, 0 = null) and '<d', per last-n column a flag byte and 8 value bytes (INT64/FLOAT lists) or
# '<i4' length (-1 = null) and the utf-8 bytes (strings).
# Per entity: an event at or below the field's applied offset is a duplicate: skipped. An event before the
# batch-through is the batch's: skipped ("covered"). Any other event is added to the one slot of its tile in
# every ring (a slot holding an older tile is reset first; a slot holding a newer tile means the event is too
# old for that ring: dropped there, and the event counts as "late"), and inserted in every last-n list (after
# entries of equal time), trimmed. Only touched slots are read (GETRANGE) and written (SETRANGE): O(1) per
# event, whatever the ring size. Returns {applied, late, duplicates, covered, oldest applied ts or -1}.
ADD_EVENTS = r"""
local bt_arg = tonumber(ARGV[1])
local a = 2
""" + _CONFIG + r"""
local g = 1 + kk + m
local applied, late, dup, covered = 0, 0, 0, 0
local oldest = nil
local e = 0
local nargs = #ARGV
local unpack8, pack8 = struct.unpack, struct.pack
local slotfmt = '<i8i8' .. string.rep('di8', nsum)
local sv, sf_ = {}, {}  -- one event's summed values and null flags
local cache, dirty = {}, {}  -- per ring: slot -> unpacked slot; slot -> true
for i = 1, k do cache[i] = {}; dirty[i] = {} end
local lts, lents, lstr, ldirty, lv = {}, {}, {}, {}, {}
while a <= nargs do
  local field, blob = ARGV[a], ARGV[a + 1]
  a = a + 2
  local base = e * g
  e = e + 1
  local state = KEYS[base + 1]
  local top, bt, sf, w
  if field ~= '' then
    local r = redis.call('HMGET', state, field, 'bt', 'sf', 'w')
    top, bt, sf, w = tonumber(r[1]) or -1, tonumber(r[2]), tonumber(r[3]), r[4]
  else
    local r = redis.call('HMGET', state, 'bt', 'sf', 'w')
    top, bt, sf, w = -1, tonumber(r[1]), tonumber(r[2]), r[3]
  end
  local fresh = not (w or sf)  -- neither path wrote this entity yet: no ring or list to read
  if bt_arg and (not bt or bt_arg > bt) then bt = bt_arg end
  -- per-entity scratch tables are reused (cleared), not re-created: less garbage for Lua's collector
  for i = 1, k do
    local ci, di = cache[i], dirty[i]
    for sl in pairs(di) do di[sl] = nil end
    for sl in pairs(ci) do ci[sl] = nil end
  end
  local missing = fresh  -- the numeric string does not exist (yet)
  local numkey = KEYS[base + 2]
  for j = 1, m do lts[j] = nil; lents[j] = nil; lstr[j] = nil; ldirty[j] = false end
  local newtop, eold = top, nil
  local p = 1
  local nb = #blob
  while p <= nb do
    local off, ts = unpack8('<i8i8', blob, p)
    p = p + 16
    for c = 1, nsum do
      sf_[c], sv[c], p = unpack8('<Bd', blob, p)
    end
    if m > 0 then
      for j = 1, m do
        if esize[j] > 0 then
          if string.byte(blob, p) == 1 then lv[j] = string.sub(blob, p + 1, p + 8) else lv[j] = false end
          p = p + 9
        else
          local n = unpack8('<i4', blob, p)
          if n >= 0 then lv[j] = string.sub(blob, p + 4, p + 3 + n); p = p + 4 + n else lv[j] = false; p = p + 4 end
        end
      end
    end
    if field ~= '' and off <= top then
      dup = dup + 1
    elseif bt and ts < bt then
      covered = covered + 1
      if off > newtop then newtop = off end
    else
      local is_late = false
      for i = 1, k do
        local h = hop[i]
        local t0 = ts - ts % h
        local sl = (t0 / h) % slots[i]
        local ci = cache[i]
        local v = ci[sl]  -- the slot unpacked: {tile_start, count, sum 1, non-null 1, ..}, or false: empty
        if v == nil then
          v = false
          if not missing then
            local pos = roff[i] + sl * slot_size
            local cur = redis.call('GETRANGE', numkey, pos, pos + slot_size - 1)
            if #cur < slot_size then missing = true else v = {unpack8(slotfmt, cur)} end  -- no rings yet
          end
          ci[sl] = v
        end
        if v and v[1] > t0 then
          is_late = true
        else
          if not v or v[1] < t0 then
            v = {t0, 0}
            for c = 1, nsum do v[1 + 2 * c] = 0.0; v[2 + 2 * c] = 0 end
            ci[sl] = v
          end
          v[2] = v[2] + 1
          for c = 1, nsum do
            if sf_[c] == 1 then v[1 + 2 * c] = v[1 + 2 * c] + sv[c]; v[2 + 2 * c] = v[2 + 2 * c] + 1 end
          end
          dirty[i][sl] = true
        end
      end
      for j = 1, m do
        local v = lv[j]
        if v then
          local ej = esize[j]
          if ej > 0 then  -- fixed-size entries: string operations, no parsing
            local L = lstr[j]
            if L == nil then
              if fresh then L = '' else L = redis.call('GET', KEYS[base + 1 + kk + j]) or '' end
            end
            local q = #L / ej
            while q > 0 and unpack8('<i8', L, (q - 1) * ej + 1) > ts do q = q - 1 end
            lstr[j] = string.sub(L, 1, q * ej) .. pack8('<i8', ts) .. v .. string.sub(L, q * ej + 1)
          else
            if lts[j] == nil then
              lts[j], lents[j] = parse_list(fresh and '' or (redis.call('GET', KEYS[base + 1 + kk + j]) or ''), 0)
            end
            local tsj, entj = lts[j], lents[j]
            local q = #tsj
            while q > 0 and tsj[q] > ts do q = q - 1 end
            table.insert(tsj, q + 1, ts)
            table.insert(entj, q + 1, pack8('<i8I4', ts, #v) .. v)
          end
          ldirty[j] = true
        end
      end
      if is_late then late = late + 1 else applied = applied + 1 end
      if off > newtop then newtop = off end
      if eold == nil or ts < eold then eold = ts end
    end
  end
  local padded = false
  for i = 1, k do
    local di = dirty[i]
    if next(di) ~= nil then
      if missing and not padded then  -- new rings: every slot empty (zeros)
        redis.call('SETRANGE', numkey, numeric_size - 1, '\0')
        padded = true
      end
      local ci, o = cache[i], roff[i]
      for sl, _ in pairs(di) do redis.call('SETRANGE', numkey, o + sl * slot_size, pack8(slotfmt, unpack(ci[sl], 1, 2 + 2 * nsum))) end
    end
  end
  for j = 1, m do
    if ldirty[j] then
      local L
      local ej = esize[j]
      if ej > 0 then
        L = lstr[j]
        local n = #L / ej
        local first = math.max(1, n - keep[j] + 1)
        local limit = unpack8('<i8', L, (n - 1) * ej + 1) - span[j]
        while first <= n and unpack8('<i8', L, (first - 1) * ej + 1) < limit do first = first + 1 end
        if first > 1 then L = string.sub(L, (first - 1) * ej + 1) end
      else
        L = trim_list(lts[j], lents[j], keep[j], span[j])
      end
      redis.call('SET', KEYS[base + 1 + kk + j], L)
    end
  end
  local move_top = field ~= '' and newtop > top
  local move_sf = eold ~= nil and (sf == nil or eold < sf)
  if move_top and move_sf then
    redis.call('HSET', state, field, string.format('%d', newtop), 'sf', string.format('%d', eold))
  elseif move_top then
    redis.call('HSET', state, field, string.format('%d', newtop))
  elseif move_sf then
    redis.call('HSET', state, 'sf', string.format('%d', eold))
  end
  if eold ~= nil and (oldest == nil or eold < oldest) then oldest = eold end
end
return {applied, late, dup, covered, oldest or -1}
"""

# KEYS: the keys (as above) of several entities, one group after the other. ARGV[1]: the cut C (micros,
# exclusive: the batch state holds exactly the events before it; '' = unknown, record none); ARGV[2..]:
# layout; then per entity: its whole numeric string (every ring; only when k > 0), m whole list blobs (what
# the batch computed as of C).
# Ownership: the stream owns every tile starting at or after floor(sf / coarsest hop) -- what it applied
# there is the only copy -- and the batch everything before. So per entity, with
# c = min(C, floor(sf / coarsest) * coarsest) (c = C without stream state):
#   * skipped if the stored "bt" is newer than C (a later batch already wrote it), or c < stored "bt";
#   * without stream state, rings and lists are replaced whole (overwrites whole rings);
#   * else per slot: the stored slot stays when it holds a tile starting at or after c, or when the batch
#     tile there starts at or after c (the stream's to fill); otherwise the batch slot replaces it. Lists:
#     the batch entries before c, then the stored ones from c on, trimmed;
#   * "bt" := c when C is given, so the stream skips what the batch now holds.
# Keys whose bytes do not change are not written. Returns the number of entities whose state changed.
PUT_STATE = r"""
local C = tonumber(ARGV[1])
local a = 2
""" + _CONFIG + r"""
local g = 1 + kk + m
local changed = 0
local e = 0
local nargs = #ARGV
while a <= nargs do
  local base = e * g
  local r = redis.call('HMGET', KEYS[base + 1], 'bt', 'sf')
  local bt, sf = tonumber(r[1]), tonumber(r[2])
  local c = C or math.huge
  if sf then
    local f = sf - sf % coarsest
    if f < c then c = f end
  end
  local skip = (C and bt and bt > C) or (bt and c < bt)
  if not skip then
    local any = false
    if kk == 1 then
      local new = ARGV[a]
      local key = KEYS[base + 2]
      local old = redis.call('GET', key)
      local merged = new
      if sf then
        local parts = {}
        local keep_old = old and #old == #new
        for i = 1, k do
          for sl = 0, slots[i] - 1 do
            local p = roff[i] + sl * slot_size + 1
            local tn = struct.unpack('<i8', new, p)
            local to = 0
            if keep_old then to = struct.unpack('<i8', old, p) end
            if to >= c or tn >= c then
              if keep_old then parts[#parts + 1] = string.sub(old, p, p + slot_size - 1)
              else parts[#parts + 1] = string.rep('\0', slot_size) end
            else
              parts[#parts + 1] = string.sub(new, p, p + slot_size - 1)
            end
          end
        end
        merged = table.concat(parts)
      end
      if merged ~= old then redis.call('SET', key, merged); any = true end
    end
    for j = 1, m do
      local new = ARGV[a + kk + j - 1]
      local key = KEYS[base + 1 + kk + j]
      local old = redis.call('GET', key)
      local merged = new
      if sf and old then
        local nts, nents = parse_list(new, esize[j])
        local ots, oents = parse_list(old, esize[j])
        local ts, ents = {}, {}
        for x = 1, #nts do
          if nts[x] < c then ts[#ts + 1] = nts[x]; ents[#ents + 1] = nents[x] end
        end
        for x = 1, #ots do
          if ots[x] >= c then ts[#ts + 1] = ots[x]; ents[#ents + 1] = oents[x] end
        end
        merged = trim_list(ts, ents, keep[j], span[j])
      end
      if merged ~= old then redis.call('SET', key, merged); any = true end
    end
    if C and bt ~= c then redis.call('HSET', KEYS[base + 1], 'bt', string.format('%d', c), 'w', '1')
    elseif any then redis.call('HSET', KEYS[base + 1], 'w', '1') end
    if any then changed = changed + 1 end
  end
  a = a + kk + m
  e = e + 1
end
return changed
"""

# KEYS[1]: a view's stream-from key. ARGV[1]: an event time (micros). Lowers the stored time to it (or sets it).
LOWER_TO = r"""
local cur = tonumber(redis.call('GET', KEYS[1]))
local v = tonumber(ARGV[1])
if cur == nil or v < cur then redis.call('SET', KEYS[1], ARGV[1]); return 1 end
return 0
"""
