-- Merge intents of one (account, tag) into its pending buffers, last write wins by ts.
-- KEYS[1] pending:tag (zset openid -> ts)   KEYS[2] pending:untag (zset)
-- KEYS[3] inflight (hash openid -> ts)
-- KEYS[4] sent, KEYS[15] sent:old (hashes openid -> ts of the intent last taken for a
--         call: take.lua; the newer of the two generations of the ordering window)
-- KEYS[5] sched (string: now|later|backoff|slot)  KEYS[6] since (ms the pending buffer filled)
-- KEYS[7] gone (set when WeChat said the tag does not exist)
-- KEYS[8] attempts (hash openid -> n)  KEYS[9] first_seen (hash openid -> ms)
-- KEYS[10] split:tag  KEYS[11] split:untag (openids of a batch being split, see split.py)
-- KEYS[12] held (an operator's hold of the tag: intents are merged, no flush is scheduled)
-- KEYS[13] history (hash openid -> "op ts source accepted_ms"; "<openid> ok" -> see ack.lua)
-- KEYS[14] history_at (zset openid -> accepted_ms: what to forget when, oldest first)
-- ARGV[1] linger_ms  ARGV[2] sched grace ms  ARGV[3] max batch
-- ARGV[4] source of the intents (python|jsonl|http|...)  ARGV[5] history kept ms (0: none)
-- ARGV[6..] triples: op, openid, ts
-- Returns {added, superseded, stale, flush_delay_ms (-1: a flush is already scheduled), gone}:
-- gone = 1 means nothing was merged; the caller dead-letters the intents.
local k_tag, k_untag, k_inflight, k_sent, k_sched, k_since, k_gone, k_attempts, k_first,
  k_split_tag, k_split_untag, k_held, k_hist, k_hist_at, k_sent_old = unpack(KEYS)
if redis.call('EXISTS', k_gone) == 1 then return {0, 0, 0, -1, 1} end
local linger, grace, max_batch = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local was_empty = redis.call('ZCARD', k_tag) + redis.call('ZCARD', k_untag) == 0
local added, superseded, stale = 0, 0, 0
local source, keep_ms = ARGV[4], tonumber(ARGV[5])
-- The fan's last accepted intent, for `tagsync explain` (variadic writes after the loop).
-- `now` as text once: a number is formatted again wherever it is concatenated or passed.
local hist, hist_at, tail, now_text = {}, {}, ' ' .. source .. ' ' .. now, tostring(now)
local function accepted(op, openid, ts)
  if keep_ms > 0 then
    hist[#hist + 1] = openid
    hist[#hist + 1] = op .. ' ' .. ts .. tail
    hist_at[#hist_at + 1] = now_text
    hist_at[#hist_at + 1] = openid
  end
end

for i = 6, #ARGV, 3 do
  local op, openid, ts = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local same = (op == 'untag') and k_untag or k_tag
  local other = (op == 'untag') and k_tag or k_untag
  local applied = redis.call('HGET', k_sent, openid) or redis.call('HGET', k_sent_old, openid)
  local inflight = redis.call('HGET', k_inflight, openid)
  local split_key = k_split_tag
  local in_split = redis.call('HGET', k_split_tag, openid)
  if not in_split then
    split_key = k_split_untag
    in_split = redis.call('HGET', k_split_untag, openid)
  end
  if (applied and ts < tonumber(applied)) or (inflight and ts < tonumber(inflight))
      or (in_split and ts < tonumber(in_split)) then
    -- Older than what was already sent for this fan: applying it would undo a newer one.
    stale = stale + 1
  else
    if in_split then
      -- A split may wait long (a paused API): its older intent for this fan is dropped.
      redis.call('HDEL', split_key, openid)
      prune(split_key)
      redis.call('HDEL', k_attempts, openid)
      redis.call('HDEL', k_first, openid)
      superseded = superseded + 1
    end
    local o = redis.call('ZSCORE', other, openid)
    if o then
      -- The fan has a pending intent of the other op: the later of the two wins.
      superseded = superseded + 1
      if ts >= tonumber(o) then
        redis.call('ZREM', other, openid)
        redis.call('ZADD', same, ARGV[i + 2], openid)
        accepted(op, openid, ARGV[i + 2])
        redis.call('HDEL', k_attempts, openid)  -- a new intent starts its own attempts
        redis.call('HDEL', k_first, openid)
      end
    else
      local s = redis.call('ZSCORE', same, openid)
      if s then
        superseded = superseded + 1
        if ts >= tonumber(s) then
          redis.call('ZADD', same, ARGV[i + 2], openid)
          accepted(op, openid, ARGV[i + 2])
          redis.call('HDEL', k_attempts, openid)
          redis.call('HDEL', k_first, openid)
        end
      else
        redis.call('ZADD', same, ARGV[i + 2], openid)
        accepted(op, openid, ARGV[i + 2])
        if not in_split then added = added + 1 end
      end
    end
  end
end

if #hist > 0 then
  redis.call('HSET', k_hist, unpack(hist))
  redis.call('ZADD', k_hist_at, unpack(hist_at))
  -- Bounded by time: entries older than keep_ms go (a few hundred per run at most), and the
  -- keys themselves expire when the tag gets no intent for that long.
  local old = redis.call('ZRANGEBYSCORE', k_hist_at, '-inf', now - keep_ms, 'LIMIT', 0, 500)
  if #old > 0 then
    local fields = {}
    for _, o in ipairs(old) do
      fields[#fields + 1] = o
      fields[#fields + 1] = o .. ' ok'
    end
    redis.call('HDEL', k_hist, unpack(fields))
    redis.call('ZREM', k_hist_at, unpack(old))
  end
  redis.call('PEXPIRE', k_hist, keep_ms)
  redis.call('PEXPIRE', k_hist_at, keep_ms)
end

local n_tag, n_untag = redis.call('ZCARD', k_tag), redis.call('ZCARD', k_untag)
if n_tag + n_untag == 0 then return {added, superseded, stale, -1, 0} end
if was_empty then redis.call('SET', k_since, now) end
if redis.call('EXISTS', k_held) == 1 then return {added, superseded, stale, -1, 0} end

local sched = redis.call('GET', k_sched)
if n_tag >= max_batch or n_untag >= max_batch then
  if not sched or sched == 'later' then
    redis.call('SET', k_sched, 'now', 'PX', grace)
    return {added, superseded, stale, 0, 0}
  end
elseif not sched then
  local since = tonumber(redis.call('GET', k_since)) or 0
  local delay = math.max(0, since + linger - now)
  redis.call('SET', k_sched, delay == 0 and 'now' or 'later', 'PX', delay + grace)
  return {added, superseded, stale, delay, 0}
end
return {added, superseded, stale, -1, 0}
