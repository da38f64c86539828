-- Take the next work of one (account, tag) under its lease: a split to resume, or up to
-- max_batch openids of one op moved from pending to in-flight. A batch left in flight by
-- a dead flush is first returned to pending. A partial batch is only taken once it has
-- lingered. Ops whose API is paused are skipped.
-- KEYS[1] pending:tag  KEYS[2] pending:untag  KEYS[3] inflight  KEYS[4] lease  KEYS[5] since
-- KEYS[6] failures (the tag's failure streak: the batch's attempt is one more)
-- KEYS[7] split:tag  KEYS[8] split:untag  KEYS[9] gone  KEYS[10] held (an operator's hold)
-- KEYS[11] sent  KEYS[12] sent:old (hashes openid -> ts: see below)
-- ARGV[1] lease owner  ARGV[2] linger_ms  ARGV[3] max batch  ARGV[4] lease ms
-- ARGV[5] paused ops: '', 'tag', 'untag' or 'tag,untag'
-- ARGV[6] hold ms: while intents still wait in the queue, no batch leaves before its
--         oldest intent has waited this long (0: no backlog, no hold)
-- ARGV[7] ordering window, s of event time
-- Returns {'lost'} | {'gone'} | {'held', restored} | {'empty', restored} | {'paused', restored}
--       | {'wait', ms, restored} | {'hold', ms, restored}
--       | {'batch', op, restored, attempt, plan, 'openid1 ts1 openid2 ts2 ...'}
--         (plan = '' for a fresh batch, else the JSON of a split being resumed; the batch
--         as one string: 100 reply elements cost Redis and the worker more than a join)
local k_tag, k_untag, k_inflight, k_lease, k_since, k_failures, k_split_tag, k_split_untag,
  k_gone, k_held, k_sent, k_sent_old = unpack(KEYS)
local owner, linger, max_batch, lease_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local paused = {}
for op in string.gmatch(ARGV[5], '[^,]+') do paused[op] = true end
if not owns(k_lease, owner) then return {'lost'} end
redis.call('PEXPIRE', k_lease, lease_ms)

local restored = 0
if redis.call('EXISTS', k_inflight) == 1 then
  restored = restore(k_tag, k_untag, k_inflight)
end
if redis.call('EXISTS', k_gone) == 1 then return {'gone'} end
if redis.call('EXISTS', k_held) == 1 then return {'held', restored} end
local attempt = (tonumber(redis.call('GET', k_failures)) or 0) + 1

-- A split goes first: its openids were waiting longest, and no other batch of the op may
-- carry them meanwhile (ingest removes a fan from a split when a newer intent arrives).
for _, pair in ipairs({{'tag', k_split_tag}, {'untag', k_split_untag}}) do
  if not paused[pair[1]] and redis.call('EXISTS', pair[2]) == 1 then
    return {'batch', pair[1], restored, attempt, redis.call('HGET', pair[2], '~plan') or '',
      table.concat(entries_of(pair[2]), ' ')}
  end
end

local n_tag, n_untag = redis.call('ZCARD', k_tag), redis.call('ZCARD', k_untag)
if n_tag + n_untag == 0 then
  redis.call('DEL', k_since)
  if redis.call('EXISTS', k_split_tag) + redis.call('EXISTS', k_split_untag) > 0 then
    return {'paused', restored}
  end
  return {'empty', restored}
end
if paused['tag'] then n_tag = 0 end
if paused['untag'] then n_untag = 0 end
if n_tag + n_untag == 0 then return {'paused', restored} end
local now = now_ms()
local since = tonumber(redis.call('GET', k_since)) or 0
local hold = tonumber(ARGV[6])
if hold > 0 and now - since < hold then
  -- More intents for this tag may still be in the queue: merged first, they fill batches
  -- and supersede older intents instead of following them in a second call.
  return {'hold', since + hold - now, restored}
end
if n_tag < max_batch and n_untag < max_batch then
  if now - since < linger then return {'wait', since + linger - now, restored} end
end

local op, key = 'tag', k_tag
if n_untag > n_tag then op, key = 'untag', k_untag end
local taken = redis.call('ZRANGE', key, 0, max_batch - 1, 'WITHSCORES')
redis.call('ZREMRANGEBYRANK', key, 0, max_batch - 1)
redis.call('HSET', k_inflight, '~op', op, unpack(taken))

-- Taken is as good as sent for ordering: from now on ingest drops an older intent of these
-- fans as stale, whatever becomes of this call (restored, its newer intent still wins;
-- dead-lettered, the older one must not come back). Written here, from ZRANGE's answer as
-- it is (openid, ts pairs), not when the call is acked: a hash takes 50 in half the time
-- of the zset it was (``applied``, ZADDed by the ack; left unread by this version, so a
-- deployment upgraded from it never meets a zset where it expects a hash). The ordering window is two generations of it in event time: once a
-- batch is newer than the window past the current one's first, the current becomes the old
-- one and the old one goes, so a fan is remembered at least the window past its intent.
local newest = tonumber(taken[#taken])
local from = tonumber(redis.call('HGET', k_sent, '~from'))
if from and newest - from > tonumber(ARGV[7]) then
  redis.call('RENAME', k_sent, k_sent_old)
  from = nil
end
if from then
  redis.call('HSET', k_sent, unpack(taken))
else
  redis.call('HSET', k_sent, '~from', newest, unpack(taken))
end

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

return {'batch', op, restored, attempt, '', table.concat(taken, ' ')}
