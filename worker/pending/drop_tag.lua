-- After a gone tag's intents were dead-lettered: forget its buffers.
-- KEYS: pending:tag, pending:untag, inflight, attempts, first_seen, since
return redis.call('DEL', unpack(KEYS))
