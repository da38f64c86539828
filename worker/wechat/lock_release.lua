-- Release a lock only if this owner still holds it (its lease may have expired and
-- been taken by another process).
-- KEYS[1]  the lock key
-- ARGV[1]  the owner token that took the lock
-- Returns 1 if released, 0 if the lock was no longer ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
