-- The audiences an MPID is in: one read of its own hash, one of the live-audience map.
--
-- KEYS[1]  au:usr:{A}:<mpid>   hash: audience incarnation -> source time of its last add
-- KEYS[2]  au:live:{A}         live incarnation -> audience id
-- Returns  one audience id per incarnation, false for incarnations being cleaned up
local incarnations = redis.call('HKEYS', KEYS[1])
local CHUNK = 4000 -- stays below Lua's limit on unpacked values
if #incarnations <= CHUNK then
  if #incarnations == 0 then
    return {}
  end
  return redis.call('HMGET', KEYS[2], unpack(incarnations))
end

local result = {}
for first = 1, #incarnations, CHUNK do
  local last = math.min(first + CHUNK - 1, #incarnations)
  local ids = redis.call('HMGET', KEYS[2], unpack(incarnations, first, last))
  for i = 1, #ids do
    result[#result + 1] = ids[i]
  end
end
return result
