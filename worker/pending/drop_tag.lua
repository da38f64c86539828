-- After a gone tag's intents were dead-lettered: forget its buffers.
-- KEYS[1] lease  KEYS[2..] pending:tag, pending:untag, inflight, split:tag, split:untag,
-- attempts, first_seen, since
-- ARGV[1] lease owner
-- Returns the number of keys deleted, or -1 if the lease was lost.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local keys = {}
for i = 2, #KEYS do keys[#keys + 1] = KEYS[i] end
return redis.call('DEL', unpack(keys))
