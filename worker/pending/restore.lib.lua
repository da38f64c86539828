-- Prepended to every script of worker.pending when it is loaded.
-- A missing `since` key with intents pending means they were returned by a failed or dead
-- flush: they have waited already, so every script reads a missing `since` as 0.

-- Returns an in-flight batch to pending, except openids that got a newer intent meanwhile:
-- ingest drops anything older than the in-flight intent as stale, so whatever is pending
-- for such an openid is newer and wins. Openids in `keep` (a set) stay in flight.
local function restore(k_tag, k_untag, k_inflight, keep)
  local op = redis.call('HGET', k_inflight, '~op')
  local entries = redis.call('HGETALL', k_inflight)
  local restored = 0
  local kept = {}
  for i = 1, #entries, 2 do
    local openid = entries[i]
    if openid ~= '~op' then
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
  redis.call('DEL', k_inflight)
  if #kept > 0 then redis.call('HSET', k_inflight, '~op', op, unpack(kept)) end
  return restored
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
