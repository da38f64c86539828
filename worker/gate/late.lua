-- A call is about to go later than its slot: may it still go? (the rule is
-- late_call_may_go in lib.lua, shared with admit.lua's late reserved slots)
-- KEYS[1] rate (string: theoretical arrival time, ms)
-- ARGV[1] emission interval ms  ARGV[2] lateness ms  ARGV[3] calls one second allows
-- ARGV[4] slack ms: the per_second-th call after it comes 1 s and this much after it
-- Returns 1 (go: the free slots moved back) or 0 (do not call: too many slots follow it).
local interval, late, per_second = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
return late_call_may_go(KEYS[1], now - late, now, interval, per_second, tonumber(ARGV[4])) and 1 or 0
