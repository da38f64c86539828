-- Openids of the in-flight batch were applied (all of them, or those named): remember
-- each fan's applied event time (stale detection within the ordering window), take them
-- out of flight, forget their attempts; clear the failure streak.
-- KEYS[1] inflight  KEYS[2] applied (zset openid -> ts)  KEYS[3] lease  KEYS[4] failures
-- KEYS[5] attempts  KEYS[6] first_seen
-- ARGV[1] lease owner  ARGV[2] ordering window s  ARGV[3..] openids (none: the whole batch)
-- Returns the number of openids acknowledged, or -1 if the lease was lost meanwhile
-- (the next holder resends the batch: tagging is idempotent).
local k_inflight, k_applied, k_lease, k_failures, k_attempts, k_first = unpack(KEYS)
if redis.call('GET', k_lease) ~= ARGV[1] then return -1 end
local openids = {}
if #ARGV > 2 then
  for i = 3, #ARGV do openids[#openids + 1] = ARGV[i] end
else
  for _, field in ipairs(redis.call('HKEYS', k_inflight)) do
    if field ~= '~op' then openids[#openids + 1] = field end
  end
end
local acked = 0
for _, openid in ipairs(openids) do
  local ts = redis.call('HGET', k_inflight, openid)
  if ts then
    redis.call('ZADD', k_applied, 'GT', ts, openid)
    redis.call('HDEL', k_inflight, openid)
    redis.call('HDEL', k_attempts, openid)
    redis.call('HDEL', k_first, openid)
    acked = acked + 1
  end
end
if redis.call('HLEN', k_inflight) <= 1 then redis.call('DEL', k_inflight) end
redis.call('DEL', k_failures)
-- The window is in event time: forget fans applied a window before the newest event.
local newest = redis.call('ZRANGE', k_applied, -1, -1, 'WITHSCORES')[2]
if newest then
  redis.call('ZREMRANGEBYSCORE', k_applied, '-inf', '(' .. (tonumber(newest) - tonumber(ARGV[2])))
end
return acked
