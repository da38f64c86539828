-- Store a split's plan after an answer that settled no openid (a refused part).
-- KEYS[1] lease  KEYS[2] split:<op>
-- ARGV[1] lease owner  ARGV[2] plan JSON
-- Returns 1, 0 if the split is gone (superseded fans emptied it), or -1 if the lease was lost.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], '~plan', ARGV[2])
return 1
