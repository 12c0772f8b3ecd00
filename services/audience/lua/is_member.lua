-- Whether an MPID is in an audience.
--
-- KEYS[1]  au:idx:{A}
-- KEYS[2]  au:usr:{A}:<mpid>
-- ARGV     audience id
-- Returns  1 or 0
local iid = redis.call('HGET', KEYS[1], ARGV[1])
if not iid then
  return 0
end
return redis.call('HEXISTS', KEYS[2], iid)
