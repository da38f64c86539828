-- Forget the shared access token only if it is still the one that failed, so that a
-- process reporting an old failure never throws away a token another process just fetched.
-- KEYS[1]  the token hash (fields: token, refresh_below_ms)
-- KEYS[2]  the "last failed token" key, read by the next fetcher
-- ARGV[1]  the token that failed
-- ARGV[2]  how long to remember the failed token, in ms
-- Returns 1 if the token was forgotten, 0 if it had already been replaced.
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
