-- Creates a connector unless the account already has one of that name.
--
-- KEYS[1]  sg:con:{A}    connector id -> JSON {"name", "created"}
-- KEYS[2]  sg:name:{A}   name -> connector id
-- ARGV     connector id, name, JSON record
-- Returns  1 when created, 0 when the name is taken
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
