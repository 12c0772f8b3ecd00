-- Removes an audience (mParticle's subscription "remove"). It leaves every list and lookup
-- at once; its members are queued for cleanup in small steps (cleanup_step.lua), so a large
-- audience never blocks Redis.
--
-- KEYS[1]  au:idx:{A}
-- KEYS[2]  au:gc:{A}    list of incarnations waiting for cleanup
-- ARGV     tag, audience id
-- Returns  the length of the cleanup list
local tag, audience = ARGV[1], ARGV[2]
local meta = 'au:meta:' .. tag .. ':' .. audience

local iid = redis.call('HGET', KEYS[1], audience)
if iid then
  local members = tonumber(redis.call('HGET', meta, 'members') or '0')
  redis.call('HDEL', KEYS[1], audience)
  redis.call('HDEL', 'au:live:' .. tag, iid)
  redis.call('DEL', meta)
  if members > 0 then
    redis.call('RPUSH', KEYS[2], iid)
  end
end

return redis.call('LLEN', KEYS[2])
