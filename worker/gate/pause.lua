-- Pause an account's calls, or one API's, on Redis's clock; a longer pause in place stays.
-- KEYS[1] pause (hash: reason, errcode, until, message)
-- ARGV[1] reason  ARGV[2] errcode  ARGV[3] how: 'minute' (to the next minute), 'day' (to
-- 00:00 Asia/Shanghai) or 'for' (ARGV[4] ms from now)  ARGV[4] ms  ARGV[5] message
-- Returns the pause's end, ms since the epoch.
local k_pause = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local how = ARGV[3]
local ends
if how == 'minute' then
  ends = (math.floor(now / 60000) + 1) * 60000
elseif how == 'day' then
  local day = math.floor((now / 1000 + 28800) / 86400)
  ends = ((day + 1) * 86400 - 28800) * 1000
else
  ends = now + tonumber(ARGV[4])
end
local current = tonumber(redis.call('HGET', k_pause, 'until'))
if current and current > ends then return current end
redis.call('HSET', k_pause, 'reason', ARGV[1], 'errcode', ARGV[2], 'until', ends, 'message', ARGV[5])
redis.call('PEXPIREAT', k_pause, ends + 1000)
return ends
