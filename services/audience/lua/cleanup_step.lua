-- Frees part of a removed audience: at most ARGV[2] members, at most ARGV[3] buckets.
--
-- KEYS[1]  au:gc:{A}
-- ARGV     tag, member budget, bucket budget
-- Returns  the number of incarnations still waiting, this one included if unfinished
local tag = ARGV[1]
local budget, buckets_left = tonumber(ARGV[2]), tonumber(ARGV[3])
local BUCKETS = 4096

local iid = redis.call('LINDEX', KEYS[1], 0)
if not iid then
  return 0
end

local positions = 'au:gcpos:' .. tag
local users = 'au:usr:' .. tag .. ':'
local b = tonumber(redis.call('HGET', positions, iid) or '0')

while b < BUCKETS and budget > 0 and buckets_left > 0 do
  local key = 'au:mem:' .. tag .. ':' .. iid .. ':' .. b
  local members = redis.call('SPOP', key, budget)
  for _, mpid in ipairs(members) do
    redis.call('HDEL', users .. mpid, iid)
  end
  budget = budget - #members
  if redis.call('EXISTS', key) == 0 then
    b = b + 1
    buckets_left = buckets_left - 1
  end
end

if b >= BUCKETS then
  redis.call('LPOP', KEYS[1])
  redis.call('HDEL', positions, iid)
else
  redis.call('HSET', positions, iid, b)
end
return redis.call('LLEN', KEYS[1])
