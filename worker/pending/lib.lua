-- Prepended to every script of worker.pending when it is loaded.
-- A missing `since` key with intents pending means they were returned by a failed or dead
-- flush: they have waited already, so every script reads a missing `since` as 0.
-- A batch hash (inflight, split:tag, split:untag) maps openid -> event ts; fields that
-- start with '~' are its metadata: '~op' (tag|untag) and, in a split, '~plan' (JSON).

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function is_meta(field)
  return string.byte(field, 1) == 126  -- '~' (a number: no new string per field)
end

-- Delete a batch hash once no openid is left in it (only metadata).
local function prune(k_batch)
  local meta = redis.call('HEXISTS', k_batch, '~op') + redis.call('HEXISTS', k_batch, '~plan')
  if redis.call('HLEN', k_batch) <= meta then redis.call('DEL', k_batch) end
end

-- Returns a batch hash's openids to pending, except openids that got a newer intent
-- meanwhile: ingest drops anything older than the batch's intent as stale, so whatever is
-- pending for such an openid is newer and wins. Openids in `keep` (a set) stay.
local function restore(k_tag, k_untag, k_batch, keep)
  local op = redis.call('HGET', k_batch, '~op')
  local entries = redis.call('HGETALL', k_batch)
  local restored = 0
  local kept = {}
  for i = 1, #entries, 2 do
    local openid = entries[i]
    if not is_meta(openid) then
      if keep and keep[openid] then
        kept[#kept + 1] = openid
        kept[#kept + 1] = entries[i + 1]
      else
        local same = (op == 'untag') and k_untag or k_tag
        local other = (op == 'untag') and k_tag or k_untag
        if not redis.call('ZSCORE', same, openid) and not redis.call('ZSCORE', other, openid) then
          redis.call('ZADD', same, entries[i + 1], openid)
          restored = restored + 1
        end
      end
    end
  end
  local plan = redis.call('HGET', k_batch, '~plan')
  redis.call('DEL', k_batch)
  if #kept > 0 then
    redis.call('HSET', k_batch, '~op', op, unpack(kept))
    if plan then redis.call('HSET', k_batch, '~plan', plan) end
  end
  return restored
end

-- The openids and ts of a batch hash, flat: {openid1, ts1, ...}.
local function entries_of(k_batch)
  local flat = {}
  local entries = redis.call('HGETALL', k_batch)
  for i = 1, #entries, 2 do
    if not is_meta(entries[i]) then
      flat[#flat + 1] = entries[i]
      flat[#flat + 1] = entries[i + 1]
    end
  end
  return flat
end

local function owns(k_lease, owner)
  return redis.call('GET', k_lease) == owner
end
