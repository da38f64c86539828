-- A call failed or must wait. Modes:
--   'count'   (a fresh batch failed): each intent's attempts grow; the batch goes back to
--             pending (newer intents win) except those at the maximum, which stay for the
--             caller to dead-letter and drop;
--   'putback' (it never reached WeChat): back to pending unchanged;
--   'hold'    (a split's call failed): the named openids' attempts grow, everything stays
--             in the split (its plan is kept), those at the maximum are returned.
-- KEYS[1] pending:tag  KEYS[2] pending:untag  KEYS[3] batch (inflight or split:<op>)
-- KEYS[4] lease  KEYS[5] failures  KEYS[6] attempts (hash openid -> n)
-- KEYS[7] first_seen (hash openid -> ms)
-- ARGV[1] lease owner  ARGV[2] mode  ARGV[3] max attempts  ARGV[4..] openids ('hold' only)
-- Returns {restored, failure streak, openid1, ts1, attempts1, first_seen1, ...} (exhausted),
-- or {-1, 0} if the lease was lost meanwhile.
local k_tag, k_untag, k_batch, k_lease, k_failures, k_attempts, k_first = unpack(KEYS)
if not owns(k_lease, ARGV[1]) then return {-1, 0} end
local mode, max_attempts = ARGV[2], tonumber(ARGV[3])
if mode == 'putback' then return {restore(k_tag, k_untag, k_batch), 0} end
local counted = {}
if mode == 'hold' then
  for i = 4, #ARGV do
    local ts = redis.call('HGET', k_batch, ARGV[i])
    if ts then counted[#counted + 1] = {ARGV[i], ts} end
  end
else
  local flat = entries_of(k_batch)
  for i = 1, #flat, 2 do counted[#counted + 1] = {flat[i], flat[i + 1]} end
end
local now = now_ms()
local exhausted, keep = {}, {}
for _, entry in ipairs(counted) do
  local n = redis.call('HINCRBY', k_attempts, entry[1], 1)
  redis.call('HSETNX', k_first, entry[1], now)
  if n >= max_attempts then
    keep[entry[1]] = true
    exhausted[#exhausted + 1] = entry[1]
    exhausted[#exhausted + 1] = entry[2]
    exhausted[#exhausted + 1] = n
    exhausted[#exhausted + 1] = redis.call('HGET', k_first, entry[1])
  end
end
local streak = redis.call('INCR', k_failures)
local restored = 0
if mode == 'count' then restored = restore(k_tag, k_untag, k_batch, keep) end
local result = {restored, streak}
for i = 1, #exhausted do result[#result + 1] = exhausted[i] end
return result
