-- Applies one batch of membership changes for one account, atomically.
--
-- KEYS[1]  au:idx:{A}   (names the account's hash slot; every key touched carries {A})
-- ARGV     tag ("{A}"), now (ms), connector id, audience count, then for each audience:
--          audience id, name (used if the audience is new), MPIDs added, MPIDs deleted,
--          the MPIDs being canonical decimal strings separated by single spaces.
-- Returns  {memberships added, memberships removed}
local tag, now, connector = ARGV[1], ARGV[2], ARGV[3]
local count = tonumber(ARGV[4])
local idx = KEYS[1]
local live = 'au:live:' .. tag
local users = 'au:usr:' .. tag .. ':'
local added, removed = 0, 0

-- Buckets keep each member set small enough for Redis's compact intset encoding. The
-- bucket is any fixed function of the MPID's canonical string: its last 12 digits mod 4096.
local function bucket(mpid)
  return tostring(tonumber(string.sub(mpid, -12)) % 4096)
end

for a = 0, count - 1 do
  local base = 5 + 4 * a
  local audience, name, adds, deletes = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local meta = 'au:meta:' .. tag .. ':' .. audience

  local iid = redis.call('HGET', idx, audience)
  if not iid then
    iid = tostring(redis.call('INCR', 'au:seq:' .. tag))
    redis.call('HSET', meta, 'iid', iid, 'name', name, 'connector', connector,
      'subscribed', '0', 'members', '0', 'created', now, 'updated', now)
    redis.call('HSET', idx, audience, iid)
    redis.call('HSET', live, iid, audience)
  end

  local members = 'au:mem:' .. tag .. ':' .. iid .. ':'
  local delta_added, delta_removed = 0, 0
  for mpid in string.gmatch(adds, '%S+') do
    if redis.call('SADD', members .. bucket(mpid), mpid) == 1 then
      redis.call('SADD', users .. mpid, iid)
      delta_added = delta_added + 1
    end
  end
  for mpid in string.gmatch(deletes, '%S+') do
    if redis.call('SREM', members .. bucket(mpid), mpid) == 1 then
      redis.call('SREM', users .. mpid, iid)
      delta_removed = delta_removed + 1
    end
  end

  if delta_added + delta_removed > 0 then
    redis.call('HINCRBY', meta, 'members', delta_added - delta_removed)
    redis.call('HSET', meta, 'updated', now, 'connector', connector)
  end
  added = added + delta_added
  removed = removed + delta_removed
end

return {added, removed}
