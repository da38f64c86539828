-- Openids of a batch were dead-lettered: take them out of it for good; keep the plan.
-- KEYS[1] batch (inflight or split:<op>)  KEYS[2] lease  KEYS[3] attempts  KEYS[4] first_seen
-- ARGV[1] lease owner  ARGV[2] plan JSON ('' to leave it)  ARGV[3..] openids
-- Returns the number dropped, or -1 if the lease was lost (the next holder settles them;
-- the dead-letter store writes each intent once).
local k_batch, k_lease, k_attempts, k_first = unpack(KEYS)
if not owns(k_lease, ARGV[1]) then return -1 end
local dropped = 0
for i = 3, #ARGV do
  dropped = dropped + redis.call('HDEL', k_batch, ARGV[i])
  redis.call('HDEL', k_attempts, ARGV[i])
  redis.call('HDEL', k_first, ARGV[i])
end
if ARGV[2] ~= '' and redis.call('EXISTS', k_batch) == 1 then
  redis.call('HSET', k_batch, '~plan', ARGV[2])
end
prune(k_batch)
return dropped
