-- Openids of the in-flight batch were dead-lettered: take them out of flight for good.
-- KEYS[1] inflight  KEYS[2] lease  KEYS[3] attempts  KEYS[4] first_seen
-- ARGV[1] lease owner  ARGV[2..] openids
-- Returns the number dropped, or -1 if the lease was lost (the next holder retries them).
local k_inflight, k_lease, k_attempts, k_first = unpack(KEYS)
if redis.call('GET', k_lease) ~= ARGV[1] then return -1 end
local dropped = 0
for i = 2, #ARGV do
  dropped = dropped + redis.call('HDEL', k_inflight, ARGV[i])
  redis.call('HDEL', k_attempts, ARGV[i])
  redis.call('HDEL', k_first, ARGV[i])
end
if redis.call('HLEN', k_inflight) <= 1 then redis.call('DEL', k_inflight) end
return dropped
