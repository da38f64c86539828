-- May the account make one WeChat call now? Checks, on Redis's clock, the account's pause,
-- its daily budget (Asia/Shanghai days) and its rate (GCRA), and reserves a slot.
-- KEYS[1] rate (string: theoretical arrival time, ms)  KEYS[2] pause (hash)
-- KEYS[3] budget (hash: day, used)
-- ARGV[1] emission interval ms (1000 / rate)  ARGV[2] burst  ARGV[3] longest wait to reserve, ms
-- ARGV[4] daily budget (0: none)
-- Returns {'go', wait_ms}: a slot is reserved wait_ms from now (sleep, then call);
--         {'wait', wait_ms}: no slot within the longest wait; nothing reserved;
--         {'paused', ms_left, reason}.
local k_rate, k_pause, k_budget = unpack(KEYS)
local interval, burst, max_wait, budget =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000

local pause_until = tonumber(redis.call('HGET', k_pause, 'until'))
if pause_until and pause_until > now then
  return {'paused', math.ceil(pause_until - now), redis.call('HGET', k_pause, 'reason')}
end

if budget > 0 then
  -- Asia/Shanghai is UTC+8 all year: its day starts at 16:00 UTC.
  local day = math.floor((now / 1000 + 28800) / 86400)
  if tonumber(redis.call('HGET', k_budget, 'day')) ~= day then
    redis.call('HSET', k_budget, 'day', day, 'used', 0)
    redis.call('PEXPIRE', k_budget, 2 * 86400 * 1000)
  end
  if tonumber(redis.call('HGET', k_budget, 'used')) >= budget then
    local midnight = ((day + 1) * 86400 - 28800) * 1000
    redis.call('HSET', k_pause, 'reason', 'daily_budget', 'until', midnight, 'errcode', '',
      'message', 'TAGSYNC_DAILY_BUDGET reached')
    redis.call('PEXPIREAT', k_pause, math.ceil(midnight) + 1000)
    return {'paused', math.ceil(midnight - now), 'daily_budget'}
  end
end

local tat = math.max(tonumber(redis.call('GET', k_rate)) or 0, now)
local wait = tat - now - (burst - 1) * interval
if wait > max_wait then return {'wait', math.ceil(wait)} end
local next_tat = tat + interval
redis.call('SET', k_rate, string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now) + 1000)
if budget > 0 then redis.call('HINCRBY', k_budget, 'used', 1) end
return {'go', math.max(0, math.ceil(wait))}
