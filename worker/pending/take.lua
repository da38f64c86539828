-- Take the next batch of one (account, tag) under its lease: up to max_batch openids of
-- one op, moved from pending to in-flight. A batch left in flight by a dead flush is
-- first returned to pending. A partial batch is only taken once it has lingered.
-- KEYS[1] pending:tag  KEYS[2] pending:untag  KEYS[3] inflight  KEYS[4] lease  KEYS[5] since
-- KEYS[6] failures (the tag's failure streak: the batch's attempt is one more)
-- ARGV[1] lease owner  ARGV[2] linger_ms  ARGV[3] max batch  ARGV[4] lease ms
-- Returns {'lost'} | {'empty', restored} | {'wait', ms, restored}
--       | {'batch', op, restored, attempt, openid1, ts1, openid2, ts2, ...}
local k_tag, k_untag, k_inflight, k_lease, k_since, k_failures = unpack(KEYS)
local owner, linger, max_batch, lease_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
if redis.call('GET', k_lease) ~= owner then return {'lost'} end
redis.call('PEXPIRE', k_lease, lease_ms)

local restored = 0
if redis.call('EXISTS', k_inflight) == 1 then
  restored = restore(k_tag, k_untag, k_inflight)
end

local n_tag, n_untag = redis.call('ZCARD', k_tag), redis.call('ZCARD', k_untag)
if n_tag + n_untag == 0 then
  redis.call('DEL', k_since)
  return {'empty', restored}
end
local now = now_ms()
if n_tag < max_batch and n_untag < max_batch then
  local since = tonumber(redis.call('GET', k_since)) or 0
  if now - since < linger then return {'wait', since + linger - now, restored} end
end

local op, key = 'tag', k_tag
if n_untag > n_tag then op, key = 'untag', k_untag end
local taken = redis.call('ZRANGE', key, 0, max_batch - 1, 'WITHSCORES')
redis.call('ZREMRANGEBYRANK', key, 0, max_batch - 1)
local fields = {'~op', op}
for i = 1, #taken do fields[#fields + 1] = taken[i] end
redis.call('HSET', k_inflight, unpack(fields))

-- The remainder has waited since the later of the old mark and its own oldest event.
local oldest = nil
for _, k in ipairs({k_tag, k_untag}) do
  local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
  if first[2] and (not oldest or tonumber(first[2]) < oldest) then oldest = tonumber(first[2]) end
end
if oldest then
  local since = tonumber(redis.call('GET', k_since)) or 0
  redis.call('SET', k_since, math.min(now, math.max(since, math.floor(oldest * 1000))))
else
  redis.call('DEL', k_since)
end

local result = {'batch', op, restored, (tonumber(redis.call('GET', k_failures)) or 0) + 1}
for i = 1, #taken do result[#result + 1] = taken[i] end
return result
