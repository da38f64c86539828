-- May the account make one WeChat call of an API now? Checks, on Redis's clock, the
-- account's pause, the API's pause (WeChat counts daily quotas per API), the daily budget
-- (Asia/Shanghai days) and the rate (GCRA), and reserves a call slot.
-- Slots are handed out in the order they are asked for: a caller told to wait keeps its
-- reserved slot and comes back for it (ARGV[5]), so tags waiting for slots take turns.
-- Every call is counted, budget or not (`tagsync status` shows calls today and the rate in
-- use from the count): once, when its slot is reserved; coming back for it counts nothing.
-- KEYS[1] rate (string: theoretical arrival time, ms)  KEYS[2] account pause (hash)
-- KEYS[3] budget (hash: day, used: the Shanghai day and the calls counted in it)
-- KEYS[4] the API's pause (hash)  KEYS[5] limits set at run time (hash: rate, burst,
--         daily_budget; `tagsync limits set`): they win over ARGV's at once, in every process
--         alike (a process rebuilds its gate within 2 s; until then its slots would be spaced
--         at the old rate, and reserved ones keep that spacing long after)
-- ARGV[1] emission interval ms (1000 / rate)  ARGV[2] burst  ARGV[3] longest sleep, ms
-- ARGV[4] daily budget (0: none)  ARGV[5] a slot reserved earlier, ms ('' for none)
-- ARGV[6] how late a reserved slot may still be used, ms
-- ARGV[7] calls one second allows, if a late reserved slot may be reused (0: it may not)
-- ARGV[8] the account's rate as configured, calls/s (kept in KEYS[3] with the burst and
--         budget: `tagsync status` shows the limits the workers use, not its own settings)
-- ARGV[9] the rate's safety factor (RATE_SAFETY)  ARGV[10] LATE_ACCOUNTING_RATE, calls/s
-- ARGV[11] LOW_RATE_SLACK_MS: below ARGV[10], each second keeps this much free of calls
-- Returns {'go', wait_ms, slot_ms, now_ms}: the call may go at slot_ms, wait_ms from now;
--         {'wait', wait_ms, slot_ms, now_ms}: a slot is reserved at slot_ms, further than
--           the longest sleep: come back shortly before it and pass it as ARGV[5];
--         {'paused', ms_left, reason, scope}: scope is 'account' or 'api';
--         {'go', 0, slot_ms, now_ms, 'moved'}: a reserved slot came back for later than the
--           tolerance, and goes now: the free slots after it moved back by its lateness.
local k_rate, k_pause, k_budget, k_api_pause, k_limits = unpack(KEYS)
local interval, burst, max_sleep, budget =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local reserved, tolerance = tonumber(ARGV[5]), tonumber(ARGV[6])
local late_per_second, rate = tonumber(ARGV[7]), ARGV[8]
local set = redis.call('HMGET', k_limits, 'rate', 'burst', 'daily_budget')
if set[1] then
  rate = set[1]
  local calls = tonumber(rate)
  interval = 1000 / (calls * tonumber(ARGV[9]))
  late_per_second = calls < tonumber(ARGV[10]) and math.max(1, math.floor(calls)) or 0
  if late_per_second > 0 then interval = math.max(interval, (1000 + tonumber(ARGV[11])) / calls) end
end
if set[2] then burst = tonumber(set[2]) end
if set[3] then budget = tonumber(set[3]) end
local now = now_ms()

for _, pair in ipairs({{k_pause, 'account'}, {k_api_pause, 'api'}}) do
  local pause_until = tonumber(redis.call('HGET', pair[1], 'until'))
  if pause_until and pause_until > now then
    return {'paused', math.ceil(pause_until - now), redis.call('HGET', pair[1], 'reason'), pair[2]}
  end
end

local function answer(slot)
  local wait = math.max(0, math.ceil(slot - now))
  return {wait <= max_sleep and 'go' or 'wait', wait, string.format('%.0f', slot),
    string.format('%.0f', now)}
end

if reserved and reserved >= now - tolerance then return answer(reserved) end
-- Late for it (a busy host). A slot nobody used is a call WeChat never saw: it may still go
-- now by the rule of late calls (lib.lua). Else it is given up for a new one.
if reserved and late_per_second > 0
    and late_call_may_go(k_rate, reserved, now, interval, late_per_second, tonumber(ARGV[11])) then
  return {'go', 0, string.format('%.0f', reserved), string.format('%.0f', now), 'moved'}
end

-- Asia/Shanghai is UTC+8 all year: its day starts at 16:00 UTC.
local day = math.floor((now / 1000 + 28800) / 86400)
if tonumber(redis.call('HGET', k_budget, 'day')) ~= day then
  redis.call('HSET', k_budget, 'day', day, 'used', 0)
  redis.call('PEXPIRE', k_budget, 2 * 86400 * 1000)
end
-- A caller back too late for its reserved slot takes a new one for the same call, which
-- was counted (and passed the budget) when the first was reserved.
local counted = reserved ~= nil
if budget > 0 and not counted and tonumber(redis.call('HGET', k_budget, 'used')) >= budget then
  local midnight = ((day + 1) * 86400 - 28800) * 1000
  redis.call('HSET', k_pause, 'reason', 'daily_budget', 'until', midnight, 'errcode', '',
    'message', 'TAGSYNC_DAILY_BUDGET reached')
  redis.call('PEXPIREAT', k_pause, math.ceil(midnight) + 1000)
  return {'paused', math.ceil(midnight - now), 'daily_budget', 'account'}
end

local tat = math.max(tonumber(redis.call('GET', k_rate)) or 0, now)
local slot = math.max(now, tat - (burst - 1) * interval)
local next_tat = tat + interval
redis.call('SET', k_rate, string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now) + 1000)
if not counted then
  redis.call('HINCRBY', k_budget, 'used', 1)
  redis.call('HSET', k_budget, 'rate', rate, 'burst', burst, 'budget', budget)
end
return answer(slot)
