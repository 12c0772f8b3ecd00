-- Frees the tombstones of generations that no change reads any more, at most ARGV[3] hashes.
-- What it reads is bounded by that budget too, however many pairs the account lists.
--
-- KEYS[1]  au:gone-due:{A}    ("<iid>:<generation>" for each pair that has tombstones,
--                              scored by its generation)
-- KEYS[2]  au:gone-gens:{A}   (the same pairs as a set, as versions before the sorted set
--                              wrote them: moved into it, a budget at a time)
-- ARGV     tag, the oldest generation still read, hash budget, tombstone hashes per pair
-- Returns  {pairs older than that still to free, pairs listed in all}
local tag, oldest_read, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local TOMBSTONE_HASHES = tonumber(ARGV[4])
local positions = 'au:gone-pos:' .. tag
local older = '(' .. oldest_read

for _, pair in ipairs(redis.call('SPOP', KEYS[2], budget)) do
  redis.call('ZADD', KEYS[1], string.match(pair, ':(%d+)$'), pair)
end

-- Each pair freed takes at least one hash of the budget.
for _, pair in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', older, 'LIMIT', 0, budget)) do
  if budget == 0 then
    break
  end
  local iid, generation = string.match(pair, '^(%d+):(%d+)$')
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
    redis.call('ZREM', KEYS[1], pair)
    redis.call('HDEL', positions, pair)
  else
    redis.call('HSET', positions, pair, last + 1)
  end
end

local listed = redis.call('ZCARD', KEYS[1]) + redis.call('SCARD', KEYS[2])
return {redis.call('ZCOUNT', KEYS[1], '-inf', older), listed}
