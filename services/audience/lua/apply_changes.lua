-- Applies one step of membership changes for one account, atomically.
--
-- KEYS[1]  au:idx:{A}   (names the account's hash slot; every key touched carries {A})
-- ARGV     tag ("{A}"), now (ms), connector id, audience count, the changes' source time
--          (ms, > 0), the current ordering generation, the newest source time a tombstone
--          of the previous generation can have (ms), then for each audience: audience id,
--          name (used if the audience is new), MPIDs added, MPIDs deleted, each list being
--          words separated by spaces, two for each MPID: its canonical decimal string and
--          its bucket (0-4095, see store.py), so that no number is converted here.
-- Returns  {memberships added, removed, changes ignored as stale, 1 if it wrote tombstones}
--
-- Ordering: a member's field in its user hash holds the source time of the change that
-- made it a member; a deletion leaves a tombstone (MPID -> source time) in a hash of the
-- current generation, au:gone:{A}:<iid>:<generation>:<bucket>; au:gone-due:{A} lists the
-- (incarnation, generation) pairs that have tombstones, by generation, which the cleanup loop frees once
-- two generations old (tombstone_cleanup.lua), so that no write pays for an expiry. A
-- change older than the stamp or tombstone it finds is ignored. While a step is at least as
-- new as every change its audience has seen (the audience's high-water mark, "hw"), nothing
-- newer can exist, so nothing is read before writing.
local tag, now, connector = ARGV[1], ARGV[2], ARGV[3]
local count, source_time = tonumber(ARGV[4]), ARGV[5]
local time_value, generation = tonumber(ARGV[5]), tonumber(ARGV[6])
local check_previous = time_value <= tonumber(ARGV[7])
local idx = KEYS[1]
local users = 'au:usr:' .. tag .. ':'
local removals = 'au:removed:' .. tag
local generations = 'au:gone-due:' .. tag
local added, removed, stale, tombstones = 0, 0, 0, 0

local function words(text)
  local n = 0
  for _ in string.gmatch(text, '%S+') do
    n = n + 1
  end
  return n / 2
end

local function ensure_audience(audience, name, meta)
  local iid = redis.call('HGET', idx, audience)
  if not iid then
    iid = tostring(redis.call('INCR', 'au:seq:' .. tag))
    redis.call('HSET', meta, 'iid', iid, 'name', name, 'connector', connector,
      'connectors', connector, 'subscribed', '0', 'members', '0', 'hw', '0',
      'created', now, 'updated', now)
    redis.call('HSET', idx, audience, iid)
    redis.call('HSET', 'au:live:' .. tag, iid, audience)
    return iid
  end

  -- Every connector the audience arrived through lists it (space-separated ids).
  local connectors = redis.call('HGET', meta, 'connectors') or ''
  if not string.find(' ' .. connectors .. ' ', ' ' .. connector .. ' ', 1, true) then
    local listed = connectors == '' and connector or connectors .. ' ' .. connector
    redis.call('HSET', meta, 'connectors', listed)
  end
  return iid
end

for a = 0, count - 1 do
  local base = 8 + 4 * a
  local audience, name, adds, deletes = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local meta = 'au:meta:' .. tag .. ':' .. audience

  local removed_at = redis.call('HGET', removals, audience)
  if removed_at and tonumber(removed_at) > time_value then
    -- The audience was removed after these changes happened.
    stale = stale + words(adds) + words(deletes)
  else
    local iid = ensure_audience(audience, name, meta)
    local marks = redis.call('HMGET', meta, 'hw', 'dhw')
    local high_water, deleted_water = tonumber(marks[1] or '0'), tonumber(marks[2] or '0')
    local in_order = time_value >= high_water
    if time_value > high_water then
      redis.call('HSET', meta, 'hw', source_time)
    end
    -- Only a tombstone newer than this step could overrule it: none exists when this step
    -- is at least as new as every removal the audience has seen ("dhw").
    local check_tombstones = time_value < deleted_water

    local members = 'au:mem:' .. tag .. ':' .. iid .. ':'
    local gone = 'au:gone:' .. tag .. ':' .. iid .. ':'
    local gone_now, gone_before = gone .. generation .. ':', gone .. (generation - 1) .. ':'
    local wrote_tombstones = false

    -- Whether a removal newer than this step was applied to a non-member.
    local function removed_later(mpid, bucket)
      if not check_tombstones then
        return false
      end
      local tombstone = redis.call('HGET', gone_now .. bucket, mpid)
      if not tombstone and check_previous then
        tombstone = redis.call('HGET', gone_before .. bucket, mpid)
      end
      return tombstone and tonumber(tombstone) > time_value
    end

    -- Whether a member was added by a change newer than this step.
    local function added_later(user)
      local stamp = redis.call('HGET', user, iid)
      return stamp and tonumber(stamp) > time_value
    end

    -- Buckets keep each member set small enough for Redis's compact intset encoding, and
    -- each tombstone hash short.
    -- A member always has its stamp in its user hash, so a membership that SADD or SREM
    -- finds absent has no stamp to read; a member's stamp is newer than any tombstone of it.
    -- Out of order, each change is applied first and undone in the rare case it was stale.
    local delta_added, delta_removed = 0, 0
    local next_add = string.gmatch(adds, '%S+')
    for mpid in next_add do
      local bucket = next_add()
      local user, set = users .. mpid, members .. bucket
      if redis.call('SADD', set, mpid) == 1 then
        if not in_order and removed_later(mpid, bucket) then
          redis.call('SREM', set, mpid)
          stale = stale + 1
        else
          redis.call('HSET', user, iid, source_time)
          delta_added = delta_added + 1
        end
      elseif not in_order and added_later(user) then
        stale = stale + 1
      else
        redis.call('HSET', user, iid, source_time)
      end
    end
    local next_delete = string.gmatch(deletes, '%S+')
    for mpid in next_delete do
      local bucket = next_delete()
      local user, set = users .. mpid, members .. bucket
      local applied = true
      if redis.call('SREM', set, mpid) == 1 then
        if not in_order and added_later(user) then
          redis.call('SADD', set, mpid)
          applied = false
        else
          redis.call('HDEL', user, iid)
          delta_removed = delta_removed + 1
        end
      elseif not in_order and removed_later(mpid, bucket) then
        applied = false
      end
      if applied then
        redis.call('HSET', gone_now .. bucket, mpid, source_time)
        wrote_tombstones = true
      else
        stale = stale + 1
      end
    end

    if wrote_tombstones then
      if time_value > deleted_water then
        redis.call('HSET', meta, 'dhw', source_time)
      end
      redis.call('ZADD', generations, generation, iid .. ':' .. generation)
      tombstones = 1
    end
    if delta_added + delta_removed > 0 then
      redis.call('HINCRBY', meta, 'members', delta_added - delta_removed)
      redis.call('HSET', meta, 'updated', now, 'connector', connector)
    end
    added = added + delta_added
    removed = removed + delta_removed
  end
end

return {added, removed, stale, tombstones}
