-- Renew a flush's lease before a call (a split may outlast one lease).
-- KEYS[1] lease  ARGV[1] lease owner  ARGV[2] lease ms
-- Returns 1 if renewed, 0 if the lease was lost (the caller must stop at once).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
