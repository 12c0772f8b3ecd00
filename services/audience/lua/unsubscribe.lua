-- Removes an audience (mParticle's subscription "remove"). It leaves every list and lookup
-- at once; its members are queued for cleanup in small steps (cleanup_step.lua), so a large
-- audience never blocks Redis. The removal's time is kept, so that changes older than it
-- that arrive late cannot bring the audience back.
--
-- KEYS[1]  au:idx:{A}
-- KEYS[2]  au:gc:{A}    list of incarnations waiting for cleanup
-- ARGV     tag, audience id, the change's source time (ms)
-- Returns  {1 when applied or 0 when stale, the length of the cleanup list}
local tag, audience, source_time = ARGV[1], ARGV[2], ARGV[3]
local meta = 'au:meta:' .. tag .. ':' .. audience
local removals = 'au:removed:' .. tag

local iid = redis.call('HGET', KEYS[1], audience)
if iid then
  local subscribed_at = redis.call('HGET', meta, 'subts')
  if subscribed_at and tonumber(subscribed_at) > tonumber(source_time) then
    return {0, redis.call('LLEN', KEYS[2])}
  end

  local members = tonumber(redis.call('HGET', meta, 'members') or '0')
  redis.call('HDEL', KEYS[1], audience)
  redis.call('HDEL', 'au:live:' .. tag, iid)
  redis.call('DEL', meta)
  if members > 0 then
    redis.call('RPUSH', KEYS[2], iid)
  end
end

local removed_at = redis.call('HGET', removals, audience)
if not removed_at or tonumber(removed_at) < tonumber(source_time) then
  redis.call('HSET', removals, audience, source_time)
end
return {1, redis.call('LLEN', KEYS[2])}
