-- Applies one batch of membership changes for one account, atomically.
--
-- KEYS[1]  au:idx:{A}   (names the account's hash slot; every key touched carries {A})
-- ARGV     tag ("{A}"), now (ms), connector id, audience count, the changes' source time
--          (ms), the current ordering generation, the TTL of ordering stamps (s), then for
--          each audience: audience id, name (used if the audience is new), MPIDs added,
--          MPIDs deleted, the MPIDs being canonical decimal strings separated by spaces.
-- Returns  {memberships added, removed, changes ignored as stale}
--
-- Ordering: each change stamps its (audience, MPID) with its source time in a hash of the
-- current generation, au:ts:{A}:<iid>:<generation>:<0-255>, kept for two generations. A
-- change older than the stamp it finds is ignored. While a batch is at least as new as
-- every change the audience has seen (its high-water mark, "hw"), no stamp can be newer,
-- so none is read.
local tag, now, connector = ARGV[1], ARGV[2], ARGV[3]
local count, source_time = tonumber(ARGV[4]), ARGV[5]
local time_value, generation, stamp_ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local idx = KEYS[1]
local users = 'au:usr:' .. tag .. ':'
local removals = 'au:removed:' .. tag
local added, removed, stale = 0, 0, 0

local function words(text)
  local n = 0
  for _ in string.gmatch(text, '%S+') do
    n = n + 1
  end
  return n
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
    redis.call('HSET', meta, 'connectors', connectors == '' and connector or connectors .. ' ' .. connector)
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
    local high_water = tonumber(redis.call('HGET', meta, 'hw') or '0')
    local in_order = time_value >= high_water
    if time_value > high_water then
      redis.call('HSET', meta, 'hw', source_time)
    end

    local members = 'au:mem:' .. tag .. ':' .. iid .. ':'
    local stamps = 'au:ts:' .. tag .. ':' .. iid .. ':'
    local current, previous = stamps .. generation .. ':', stamps .. (generation - 1) .. ':'
    local touched = {}

    -- Returns the member-set bucket of an MPID and stamps the change, or returns nil when
    -- a newer change to the same membership was applied already.
    local function admit(mpid)
      local digits = tonumber(string.sub(mpid, -12))
      local stamp_key = current .. (digits % 256)
      if not in_order then
        local last = redis.call('HGET', stamp_key, mpid)
          or redis.call('HGET', previous .. (digits % 256), mpid)
        if last and tonumber(last) > time_value then
          return nil
        end
      end
      redis.call('HSET', stamp_key, mpid, source_time)
      touched[stamp_key] = true
      return tostring(digits % 4096)
    end

    local delta_added, delta_removed = 0, 0
    for mpid in string.gmatch(adds, '%S+') do
      local bucket = admit(mpid)
      if not bucket then
        stale = stale + 1
      elseif redis.call('SADD', members .. bucket, mpid) == 1 then
        redis.call('SADD', users .. mpid, iid)
        delta_added = delta_added + 1
      end
    end
    for mpid in string.gmatch(deletes, '%S+') do
      local bucket = admit(mpid)
      if not bucket then
        stale = stale + 1
      elseif redis.call('SREM', members .. bucket, mpid) == 1 then
        redis.call('SREM', users .. mpid, iid)
        delta_removed = delta_removed + 1
      end
    end

    for key in pairs(touched) do
      redis.call('EXPIRE', key, stamp_ttl)
    end
    if delta_added + delta_removed > 0 then
      redis.call('HINCRBY', meta, 'members', delta_added - delta_removed)
      redis.call('HSET', meta, 'updated', now, 'connector', connector)
    end
    added = added + delta_added
    removed = removed + delta_removed
  end
end

return {added, removed, stale}
