-- Lost wake-up insurance: claim a flush for a tag that has pending, in-flight or split
-- intents but neither a running flush (lease) nor a scheduled one (sched).
-- KEYS[1] pending:tag  KEYS[2] pending:untag  KEYS[3] inflight  KEYS[4] lease  KEYS[5] sched
-- KEYS[6] split:tag  KEYS[7] split:untag  KEYS[8] held (an operator's hold: left alone)
-- ARGV[1] sched grace ms
-- Returns 1 if the caller must send a flush now, else 0.
local k_tag, k_untag, k_inflight, k_lease, k_sched, k_split_tag, k_split_untag, k_held =
  unpack(KEYS)
local waiting = redis.call('ZCARD', k_tag) + redis.call('ZCARD', k_untag)
  + redis.call('EXISTS', k_inflight, k_split_tag, k_split_untag)
if waiting == 0 or redis.call('EXISTS', k_lease) == 1 or redis.call('EXISTS', k_sched) == 1
    or redis.call('EXISTS', k_held) == 1 then
  return 0
end
redis.call('SET', k_sched, 'now', 'PX', ARGV[1])
return 1
