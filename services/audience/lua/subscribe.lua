-- Creates or updates an audience's subscription (mParticle's "add" and "update").
--
-- KEYS[1]  au:idx:{A}
-- ARGV     tag, now (ms), connector id, audience id, name, description, settings (JSON)
-- Returns  the audience's metadata hash as a flat list
local tag, now, connector, audience = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local name, description, settings = ARGV[5], ARGV[6], ARGV[7]
local meta = 'au:meta:' .. tag .. ':' .. audience

if not redis.call('HGET', KEYS[1], audience) then
  local iid = tostring(redis.call('INCR', 'au:seq:' .. tag))
  redis.call('HSET', meta, 'iid', iid, 'members', '0', 'created', now)
  redis.call('HSET', KEYS[1], audience, iid)
  redis.call('HSET', 'au:live:' .. tag, iid, audience)
end

redis.call('HSET', meta, 'name', name, 'description', description, 'settings', settings,
  'connector', connector, 'subscribed', '1', 'updated', now)
return redis.call('HGETALL', meta)
