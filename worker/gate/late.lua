-- A call is about to go later than its slot: may it still go? Spaced slots leave 20 ms of
-- slack in any second; a call later than that could share a second with the slots after
-- it. It may go when fewer slots are reserved after it than the calls one second allows:
-- the account's next free slot then moves back as far as needed for no second to see more
-- calls than the rate.
-- KEYS[1] rate (string: theoretical arrival time, ms)
-- ARGV[1] emission interval ms  ARGV[2] lateness ms  ARGV[3] calls one second allows
-- Returns 1 (go: the free slots moved back) or 0 (do not call: too many slots follow it).
local k_rate = KEYS[1]
local interval, late, per_second = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', k_rate)) or now
-- The call's slot was about `late` ago; the reserved slots after it end at tat.
local after = math.floor((tat - (now - late)) / interval + 0.5) - 1
if after >= per_second then return 0 end
-- The per_second-th call after this one must come 1 s (+10 ms) after it: the free
-- slots move back as far as that needs (not at all when the lateness fits the slack).
local next_tat = math.max(tat, now + 1010 - (per_second - after - 1) * interval)
redis.call('SET', k_rate, string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now) + 1000)
return 1
