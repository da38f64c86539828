-- Append dead letters to the stream, each intent once: a crash or a lost lease between
-- writing a dead letter and dropping its intent makes the next flush write it again, and
-- the seen set turns that second write into nothing.
-- KEYS[1] the stream  KEYS[2] seen (zset intent id -> ms; in the stream's slot)
-- ARGV[1] stream max length (approximate)  ARGV[2] how long an id is remembered, ms
-- ARGV[3] most ids remembered  ARGV[4..] per letter: intent id, n fields, k1, v1, ...
-- Returns, per letter, 1 if it was written and 0 if it had been already.
local k_stream, k_seen = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', k_seen, '-inf', now - tonumber(ARGV[2]))
local written = {}
local i = 4
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local fields = {}
  for j = i + 2, i + 1 + 2 * n do fields[#fields + 1] = ARGV[j] end
  i = i + 2 + 2 * n
  if redis.call('ZADD', k_seen, 'NX', now, id) == 1 then
    redis.call('XADD', k_stream, 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
    written[#written + 1] = 1
  else
    written[#written + 1] = 0
  end
end
local excess = redis.call('ZCARD', k_seen) - tonumber(ARGV[3])
if excess > 0 then redis.call('ZREMRANGEBYRANK', k_seen, 0, excess - 1) end
return written
