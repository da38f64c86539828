-- A batch was applied: remember each fan's applied event time (for stale detection within
-- the ordering window), clear the in-flight batch and the tag's failure streak.
-- KEYS[1] inflight  KEYS[2] applied (zset openid -> ts)  KEYS[3] lease  KEYS[4] failures
-- ARGV[1] lease owner  ARGV[2] ordering window s
-- Returns the number of openids acknowledged, or -1 if the lease was lost meanwhile
-- (the next holder resends the batch: tagging is idempotent).
local k_inflight, k_applied, k_lease, k_failures = unpack(KEYS)
if redis.call('GET', k_lease) ~= ARGV[1] then return -1 end
local entries = redis.call('HGETALL', k_inflight)
local acked = 0
for i = 1, #entries, 2 do
  if entries[i] ~= '~op' then
    redis.call('ZADD', k_applied, 'GT', entries[i + 1], entries[i])
    acked = acked + 1
  end
end
redis.call('DEL', k_inflight, k_failures)
-- The window is in event time: forget fans applied a window before the newest event.
local newest = redis.call('ZRANGE', k_applied, -1, -1, 'WITHSCORES')[2]
if newest then
  redis.call('ZREMRANGEBYSCORE', k_applied, '-inf', '(' .. (tonumber(newest) - tonumber(ARGV[2])))
end
return acked
