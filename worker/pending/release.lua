-- End a flush: give up the lease and, if anything is left, mark the next flush scheduled
-- (atomically with the look at pending, so intents that landed meanwhile are never missed).
-- KEYS[1] pending:tag  KEYS[2] pending:untag  KEYS[3] inflight  KEYS[4] lease
-- KEYS[5] sched  KEYS[6] since  KEYS[7] split:tag  KEYS[8] split:untag
-- KEYS[9] held (an operator's hold: no next flush until it is lifted)
-- ARGV[1] lease owner  ARGV[2] linger_ms  ARGV[3] sched grace ms  ARGV[4] max batch
-- ARGV[5] delay ms (-1: none; the linger decides)  ARGV[6] why the delay: backoff|slot
-- Returns the delay in ms of the flush to send, or -1 when none is needed.
local k_tag, k_untag, k_inflight, k_lease, k_sched, k_since, k_split_tag, k_split_untag,
  k_held = unpack(KEYS)
local linger, grace, max_batch, delay_ms =
  tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if not owns(k_lease, ARGV[1]) then return -1 end
redis.call('DEL', k_lease)
local n_tag, n_untag = redis.call('ZCARD', k_tag), redis.call('ZCARD', k_untag)
local busy = redis.call('EXISTS', k_inflight, k_split_tag, k_split_untag)
if n_tag + n_untag + busy == 0 or redis.call('EXISTS', k_held) == 1 then
  redis.call('DEL', k_sched)
  return -1
end
local delay, mode = 0, 'now'
if delay_ms >= 0 then
  delay, mode = delay_ms, ARGV[6]
elseif n_tag < max_batch and n_untag < max_batch and busy == 0 then
  local now = now_ms()
  local since = tonumber(redis.call('GET', k_since)) or 0
  delay = math.max(0, since + linger - now)
  if delay > 0 then mode = 'later' end
end
redis.call('SET', k_sched, mode, 'PX', delay + grace)
return delay
