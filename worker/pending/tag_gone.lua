-- WeChat says the tag does not exist (45159, and tags/get does not list it): mark it gone,
-- so ingest dead-letters new intents for it, and hand back everything pending, in flight
-- or being split, for dead-lettering.
-- KEYS[1] pending:tag  KEYS[2] pending:untag  KEYS[3] inflight  KEYS[4] gone  KEYS[5] lease
-- KEYS[6] split:tag  KEYS[7] split:untag
-- ARGV[1] lease owner
-- Returns {op1, openid1, ts1, op2, ...}, or {'lost'} if the lease was lost.
local k_tag, k_untag, k_inflight, k_gone, k_lease, k_split_tag, k_split_untag = unpack(KEYS)
if not owns(k_lease, ARGV[1]) then return {'lost'} end
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
for _, k in ipairs({k_inflight, k_split_tag, k_split_untag}) do
  local op = redis.call('HGET', k, '~op')
  local flat = entries_of(k)
  for i = 1, #flat, 2 do
    result[#result + 1] = op
    result[#result + 1] = flat[i]
    result[#result + 1] = flat[i + 1]
  end
end
return result
