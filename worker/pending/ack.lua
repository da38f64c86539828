-- Openids of a batch (in flight or being split) were applied: note each in the fan's
-- history, take them out of the batch, forget their attempts; clear the failure streak;
-- keep the split's plan up to date. (Each fan's event time for ordering was noted when the
-- batch was taken: take.lua.)
-- KEYS[1] batch (inflight or split:<op>)  KEYS[2] lease
-- KEYS[3] failures  KEYS[4] attempts  KEYS[5] first_seen
-- KEYS[6] history (hash: "<openid> ok" -> "op ts applied_ms call", for `tagsync explain`)
-- KEYS[7] pending:tag  KEYS[8] pending:untag (counted for the answer)
-- ARGV[1] lease owner  ARGV[2] plan JSON ('' to leave it)
-- ARGV[3] op  ARGV[4] call id  ARGV[5] history kept ms (0: none)
-- ARGV[6..] openids (none: every openid of the batch)
-- Returns {acked, waiting}: the openids acknowledged and the openids left pending (both
-- ops), so a flush knows whether to reserve another call slot without asking; or {-1} if
-- the lease was lost meanwhile (the next holder resends them: tagging is idempotent).
local k_batch, k_lease, k_failures, k_attempts, k_first, k_hist, k_tag, k_untag = unpack(KEYS)
if not owns(k_lease, ARGV[1]) then return {-1} end
-- Variadic commands, not one per openid: an ack of 50 is 6 commands inside the script, not 250.
local openids, stamps, seen = {}, {}, {}
if #ARGV > 5 then
  local named = {}
  for i = 6, #ARGV do
    if not seen[ARGV[i]] then
      seen[ARGV[i]] = true
      named[#named + 1] = ARGV[i]
    end
  end
  local ts = redis.call('HMGET', k_batch, unpack(named))
  for i = 1, #named do
    if ts[i] then
      openids[#openids + 1] = named[i]
      stamps[#stamps + 1] = ts[i]
    end
  end
else
  local entries = redis.call('HGETALL', k_batch)
  for i = 1, #entries, 2 do
    if not is_meta(entries[i]) then
      openids[#openids + 1] = entries[i]
      stamps[#stamps + 1] = entries[i + 1]
    end
  end
end
if #openids > 0 then
  -- Only into a history the ingest made (it holds the TTL): never a key without an end.
  if tonumber(ARGV[5]) > 0 and redis.call('EXISTS', k_hist) == 1 then
    -- The parts shared by every entry are joined once: a number in a concatenation is
    -- formatted again each time (50 times an ack, a sixth of its time in a loop of acks).
    local done, head, tail = {}, ARGV[3] .. ' ', ' ' .. now_ms() .. ' ' .. ARGV[4]
    for i = 1, #openids do
      done[#done + 1] = openids[i] .. ' ok'
      done[#done + 1] = head .. stamps[i] .. tail
    end
    redis.call('HSET', k_hist, unpack(done))
  end
  if #ARGV > 5 then
    redis.call('HDEL', k_batch, unpack(openids))
  else
    -- Every openid of the batch: one DEL, not HDELs that each search the small hash's
    -- packed encoding and close its gap (prune below would delete what is left anyway).
    redis.call('DEL', k_batch)
  end
  -- Both hashes exist only while the tag has failed calls: no 50 arguments for nothing.
  if redis.call('EXISTS', k_attempts) == 1 then redis.call('HDEL', k_attempts, unpack(openids)) end
  if redis.call('EXISTS', k_first) == 1 then redis.call('HDEL', k_first, unpack(openids)) end
end
local acked = #openids
if ARGV[2] ~= '' and redis.call('EXISTS', k_batch) == 1 then
  redis.call('HSET', k_batch, '~plan', ARGV[2])
end
prune(k_batch)
redis.call('DEL', k_failures)
return {acked, redis.call('ZCARD', k_tag) + redis.call('ZCARD', k_untag)}
