"""The Lua scripts of the Redis feature store (:class:`serving.feature_store.RedisStore`):
the backfill's compare-and-set and the atomic observe of one transaction."""

from __future__ import annotations

import hashlib

# Compare-and-set (the backfill): write ARGV[2] (token + state) only if the stored token
# is ARGV[1] ('' when the key must be absent). GETRANGE of a missing key is ''. Sent
# with EVAL (Redis caches the compiled script; no NOSCRIPT handling after a restart).
CAS_SCRIPT = """
if redis.call('GETRANGE', KEYS[1], 0, 7) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


# One transaction (KEYS: its N entity keys), what EntityFeatures.observe and the store's
# rules do, atomically: read every state, decide each one's status, write nothing if any
# is too late, else write each recorded one (the event inserted in time order after its
# ties, the events at or below the new watermark minus the retention evicted), and
# return {status, prior value or false} per key (0 recorded, 1 duplicate, 2 too late).
# A value is the version token (8 bytes), the state header (8) and one row of R bytes
# per event (time, id, flags, values; 8 bytes each): an insert splices the event's row
# in. Lua numbers are doubles, so an int64 time is handled as two exact halves: h, the
# signed high 32 bits, and l, the unsigned low 32 bits ((h, l) compare as the time;
# h may leave the int32 range after a subtraction or addition, still exactly). ARGV,
# 11 per key: the expected state header prefix (magic, version, value columns), the
# event's row (R bytes), its id (8 bytes), the new version token, the TTL (ms), then h
# and l of the event time, of the event time + allowed lateness and of the retention.
# A value with another header or length is an error reply, and nothing is written.
OBSERVE_SCRIPT = """
local byte, sub, floor, find = string.byte, string.sub, math.floor, string.find
local function time(v, at)
  local b1, b2, b3, b4, b5, b6, b7, b8 = byte(v, at, at + 7)
  local h = ((b8 * 256 + b7) * 256 + b6) * 256 + b5
  if b8 >= 128 then h = h - 4294967296 end
  return h, ((b4 * 256 + b3) * 256 + b2) * 256 + b1
end
local function upto(v, r, n, h, l)
  local lo, hi = 0, n
  while lo < hi do
    local mid = floor((lo + hi) / 2)
    local th, tl = time(v, 17 + r * mid)
    if th < h or (th == h and tl <= l) then lo = mid + 1 else hi = mid end
  end
  return lo
end
local function u32(x)
  return string.char(x % 256, floor(x / 256) % 256, floor(x / 65536) % 256,
    floor(x / 16777216) % 256)
end
local plan, out, late = {}, {}, false
for i = 1, #KEYS do
  local a = (i - 1) * 11
  local v = redis.call('GET', KEYS[i])
  local r = #ARGV[a + 2]
  local status, n, pos, first = 0, 0, 0, 0
  if v then
    if #v < 16 or sub(v, 9, 12) ~= ARGV[a + 1] then
      return redis.error_reply('STATE ' .. KEYS[i] .. ': not a state of this layout')
    end
    local c1, c2, c3, c4 = byte(v, 13, 16)
    n = ((c4 * 256 + c3) * 256 + c2) * 256 + c1
    if #v ~= 16 + n * r then
      return redis.error_reply('STATE ' .. KEYS[i] .. ': ' .. #v .. ' bytes do not hold '
        .. n .. ' events')
    end
    if n > 0 then
      local eh, el = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
      local lh, ll = tonumber(ARGV[a + 8]), tonumber(ARGV[a + 9])
      local wh, wl = time(v, 17 + r * (n - 1))
      local at = find(v, ARGV[a + 3], 25, true)
      while at and (at - 25) % r ~= 0 do
        at = find(v, ARGV[a + 3], at + 1, true)
      end
      if wh > lh or (wh == lh and wl > ll) then
        status, late = 2, true
      elseif at then
        status = 1
      else
        if eh > wh or (eh == wh and el >= wl) then
          pos, wh, wl = n, eh, el
        else
          pos = upto(v, r, n, eh, el)
        end
        local ch, cl = wh - tonumber(ARGV[a + 10]), wl - tonumber(ARGV[a + 11])
        if cl < 0 then ch, cl = ch - 1, cl + 4294967296 end
        local fh, fl = time(v, 17)
        if fh < ch or (fh == ch and fl <= cl) then first = upto(v, r, n, ch, cl) end
        if first > pos then first = pos end
      end
    end
  end
  plan[i] = {status, n, pos, first, r}
  out[2 * i - 1] = status
  out[2 * i] = v
end
if late then return out end
for i = 1, #KEYS do
  local p = plan[i]
  if p[1] == 0 then
    local a = (i - 1) * 11
    local v, n, pos, first, r = out[2 * i], p[2], p[3], p[4], p[5]
    local value = ARGV[a + 4] .. ARGV[a + 1] .. u32(n - first + 1)
    if v then
      value = value .. sub(v, 17 + r * first, 16 + r * pos) .. ARGV[a + 2]
        .. sub(v, 17 + r * pos, 16 + r * n)
    else
      value = value .. ARGV[a + 2]
    end
    redis.call('SET', KEYS[i], value, 'PX', ARGV[a + 5])
  end
end
return out
"""
OBSERVE_SHA = hashlib.sha1(OBSERVE_SCRIPT.encode()).hexdigest()
