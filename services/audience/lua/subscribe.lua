-- Creates or updates an audience's subscription (mParticle's "add" and "update").
--
-- KEYS[1]  au:idx:{A}
-- ARGV     tag, now (ms), connector id, audience id, name, description, settings (JSON),
--          the change's source time (ms)
-- Returns  {1 when applied or 0 when stale, the audience's metadata as a flat list}
local tag, now, connector, audience = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local name, description, settings, source_time = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local meta = 'au:meta:' .. tag .. ':' .. audience
local removals = 'au:removed:' .. tag

local removed_at = redis.call('HGET', removals, audience)
if removed_at and tonumber(removed_at) > tonumber(source_time) then
  return {0, {}}
end
local last = redis.call('HGET', meta, 'subts')
if last and tonumber(last) > tonumber(source_time) then
  return {0, redis.call('HGETALL', meta)}
end

if not redis.call('HGET', KEYS[1], audience) then
  local iid = tostring(redis.call('INCR', 'au:seq:' .. tag))
  redis.call('HSET', meta, 'iid', iid, 'members', '0', 'hw', '0', 'created', now)
  redis.call('HSET', KEYS[1], audience, iid)
  redis.call('HSET', 'au:live:' .. tag, iid, audience)
end

-- The removal's time stays: changes older than it, arriving late, were undone by it and
-- must not come back into the audience added again.
local connectors = redis.call('HGET', meta, 'connectors') or ''
if not string.find(' ' .. connectors .. ' ', ' ' .. connector .. ' ', 1, true) then
  connectors = connectors == '' and connector or connectors .. ' ' .. connector
end
redis.call('HSET', meta, 'name', name, 'description', description, 'settings', settings,
  'connector', connector, 'connectors', connectors, 'subscribed', '1', 'updated', now,
  'subts', source_time)
return {1, redis.call('HGETALL', meta)}
