-- WeChat says the tag does not exist (45159): mark it gone, so ingest dead-letters new
-- intents for it, and hand back everything pending or in flight for dead-lettering.
-- KEYS[1] pending:tag  KEYS[2] pending:untag  KEYS[3] inflight  KEYS[4] gone
-- Returns {op1, openid1, ts1, op2, ...}.
local k_tag, k_untag, k_inflight, k_gone = unpack(KEYS)
local t = redis.call('TIME')
redis.call('SET', k_gone, t[1])
local result = {}
for _, pair in ipairs({{'tag', k_tag}, {'untag', k_untag}}) do
  local members = redis.call('ZRANGE', pair[2], 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do
    result[#result + 1] = pair[1]
    result[#result + 1] = members[i]
    result[#result + 1] = members[i + 1]
  end
end
local op = redis.call('HGET', k_inflight, '~op')
local entries = redis.call('HGETALL', k_inflight)
for i = 1, #entries, 2 do
  if entries[i] ~= '~op' then
    result[#result + 1] = op
    result[#result + 1] = entries[i]
    result[#result + 1] = entries[i + 1]
  end
end
return result
