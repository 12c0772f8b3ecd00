-- Frees the tombstones of generations that no change reads any more, at most ARGV[3] hashes.
--
-- KEYS[1]  au:gone-gens:{A}   ("<iid>:<generation>" for each pair that has tombstones)
-- ARGV     tag, the oldest generation still read, hash budget, tombstone hashes per pair
-- Returns  {pairs older than that still to free, pairs listed in all}
local tag, oldest_read, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local TOMBSTONE_HASHES = tonumber(ARGV[4])
local positions = 'au:gone-pos:' .. tag
local pending = 0

for _, pair in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local iid, generation = string.match(pair, '^(%d+):(%d+)$')
  if tonumber(generation) < oldest_read and budget == 0 then
    pending = pending + 1
  elseif tonumber(generation) < oldest_read then
    local n = tonumber(redis.call('HGET', positions, pair) or '0')
    local last = math.min(n + budget, TOMBSTONE_HASHES) - 1
    local prefix = 'au:gone:' .. tag .. ':' .. iid .. ':' .. generation .. ':'
    local keys = {}
    for i = n, last do
      keys[#keys + 1] = prefix .. i
    end
    redis.call('UNLINK', unpack(keys))
    budget = budget - #keys
    if last + 1 >= TOMBSTONE_HASHES then
      redis.call('SREM', KEYS[1], pair)
      redis.call('HDEL', positions, pair)
    else
      redis.call('HSET', positions, pair, last + 1)
      pending = pending + 1
    end
  end
end

return {pending, redis.call('SCARD', KEYS[1])}
