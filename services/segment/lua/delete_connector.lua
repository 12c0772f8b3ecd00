-- Deletes a connector and frees its name.
--
-- KEYS[1]  sg:con:{A}
-- KEYS[2]  sg:name:{A}
-- ARGV     connector id
-- Returns  1 when deleted, 0 when there was no such connector
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then
  return 0
end
redis.call('HDEL', KEYS[2], cjson.decode(record)['name'])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
