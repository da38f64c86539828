-- A batch failed transiently: return it to pending (newer intents win) and count the
-- tag's failure streak, which sets the backoff.
-- KEYS[1] pending:tag  KEYS[2] pending:untag  KEYS[3] inflight  KEYS[4] lease  KEYS[5] failures
-- ARGV[1] lease owner
-- Returns {restored, failures in a row}, or {-1, 0} if the lease was lost meanwhile.
local k_tag, k_untag, k_inflight, k_lease, k_failures = unpack(KEYS)
if redis.call('GET', k_lease) ~= ARGV[1] then return {-1, 0} end
local restored = restore(k_tag, k_untag, k_inflight)
return {restored, redis.call('INCR', k_failures)}
