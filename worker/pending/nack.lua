-- A batch failed (or must wait): return it to pending (newer intents win). With ARGV[2] = 1
-- the failure counts: each intent's attempts grow, and those that reach the maximum stay
-- in flight and are returned, for the caller to dead-letter and then drop.
-- KEYS[1] pending:tag  KEYS[2] pending:untag  KEYS[3] inflight  KEYS[4] lease  KEYS[5] failures
-- KEYS[6] attempts (hash openid -> n)  KEYS[7] first_seen (hash openid -> ms)
-- ARGV[1] lease owner  ARGV[2] 1 to count a failed attempt, 0 to put back as it was
-- ARGV[3] max attempts
-- Returns {restored, failure streak, openid1, ts1, attempts1, first_seen1, ...} (exhausted),
-- or {-1, 0} if the lease was lost meanwhile.
local k_tag, k_untag, k_inflight, k_lease, k_failures, k_attempts, k_first = unpack(KEYS)
if redis.call('GET', k_lease) ~= ARGV[1] then return {-1, 0} end
local exhausted, keep = {}, {}
local streak = 0
if ARGV[2] == '1' then
  local now = now_ms()
  local max_attempts = tonumber(ARGV[3])
  local entries = redis.call('HGETALL', k_inflight)
  for i = 1, #entries, 2 do
    local openid = entries[i]
    if openid ~= '~op' then
      local n = redis.call('HINCRBY', k_attempts, openid, 1)
      redis.call('HSETNX', k_first, openid, now)
      if n >= max_attempts then
        keep[openid] = true
        exhausted[#exhausted + 1] = openid
        exhausted[#exhausted + 1] = entries[i + 1]
        exhausted[#exhausted + 1] = n
        exhausted[#exhausted + 1] = redis.call('HGET', k_first, openid)
      end
    end
  end
  streak = redis.call('INCR', k_failures)
end
local result = {restore(k_tag, k_untag, k_inflight, keep), streak}
for i = 1, #exhausted do result[#result + 1] = exhausted[i] end
return result
