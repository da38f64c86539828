-- Acknowledge a whole in-flight batch, then take the tag's next work: ack.lua, then
-- take.lua, in one round trip. A flush calling back to back (an account whose next call
-- slot is near) saves one round trip per call. Both run as local functions of this script
-- (``COMPOSED`` in keys.py: each as `local function ack(KEYS, ARGV)`...), so each keeps
-- its own KEYS, ARGV and answer.
-- KEYS[1..8] ack.lua's (its batch: the in-flight hash)  KEYS[9..20] take.lua's
-- ARGV[1..5] ack.lua's (no openids: the whole batch)  ARGV[6..12] take.lua's
-- Returns {-1} if the lease was lost, else {acked, waiting, <take.lua's answer>...}.
local ack_keys, take_keys = {}, {}
for i = 1, #KEYS do
  if i <= 8 then ack_keys[i] = KEYS[i] else take_keys[i - 8] = KEYS[i] end
end
local acked = ack(ack_keys, {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]})
if acked[1] < 0 then return acked end
local took = take(take_keys, {ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]})
local answer = {acked[1], acked[2]}
for i = 1, #took do answer[#answer + 1] = took[i] end
return answer
