-- Shared by the gate's scripts (prepended to admit.lua and late.lua when they are loaded).

-- Redis's clock, in ms.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

-- A call goes at `now` for a slot it was late for (`slot`, ms). Spaced slots leave `slack` ms
-- free in any second; a later call could share a second with the slots after it. It may
-- go if fewer slots are reserved after it than one second allows (`per_second`): the free
-- slots (from the rate key's theoretical arrival time) then move back as far as needed for
-- the per_second-th call after it to come 1 s + `slack` after it (the late call itself
-- reaches WeChat some ms after now), not at all when the lateness fits the slack. Returns
-- true if it may go (and moved them), false if not.
local function late_call_may_go(k_rate, slot, now, interval, per_second, slack)
  local tat = tonumber(redis.call('GET', k_rate)) or now
  local after = math.floor((tat - slot) / interval + 0.5) - 1
  if after >= per_second then return false end
  local moved = math.max(tat, now + 1000 + slack - (per_second - after - 1) * interval)
  redis.call('SET', k_rate, string.format('%.3f', moved), 'PX', math.ceil(moved - now) + 1000)
  return true
end
