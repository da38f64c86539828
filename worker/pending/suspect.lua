-- The in-flight batch was refused for a bad openid: it becomes a split (kept with the tag
-- until every openid is applied or dead-lettered, whatever waits come between).
-- KEYS[1] inflight  KEYS[2] lease  KEYS[3] split:<op of the batch>
-- ARGV[1] lease owner  ARGV[2] plan JSON
-- Returns the number of openids moved, or -1 if the lease was lost.
local k_inflight, k_lease, k_split = unpack(KEYS)
if not owns(k_lease, ARGV[1]) then return -1 end
local op = redis.call('HGET', k_inflight, '~op')
local flat = entries_of(k_inflight)
redis.call('DEL', k_inflight)
if #flat == 0 then return 0 end
redis.call('HSET', k_split, '~op', op, '~plan', ARGV[2], unpack(flat))
return #flat / 2
