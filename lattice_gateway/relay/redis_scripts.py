"""Lua scripts of the Redis broker: each relay step is one atomic round trip.

Keys (``P`` = the key prefix): ``P job:<id>`` hash {state queued|leased, env, owner,
rt, session}; ``P q:<rt>`` list of queued job ids; ``P s:<sid>`` hash {rt};
``P sj:<sid>`` set of leased job ids; ``P sc:<sid>`` list of pending cancel notices;
``P rs:<rt>`` set of session ids; ``P sessions`` zset session -> last activity;
``P seen:<rt>`` last activity (unix s); ``P revoked:<rt>`` flag; ``P evs:<replica>``
stream of events and failures for the replica holding the app's request (entries
{j job id, n per-job count, e event} or {j, f code, m message}; the job hash counts its
events in ``n``). Channel ``P wake``: ``j <rt>`` job queued, ``c <sid>`` cancel, ``d <sid>``
session ended, ``r <rt>`` revoked. A single Redis (not Cluster): scripts touch keys they
compute.
"""

# Bounds of a replica's event stream (the replica trims what it has read, every sweep):
# at most ~EVENTS_MAXLEN entries, and the key goes EVENTS_TTL_SECONDS after its last
# write (a replica that died). Both far beyond what a reading replica leaves behind.
EVENTS_MAXLEN = 20_000
EVENTS_TTL_SECONDS = 600

_DELIVER = f"""
local function deliver(P, owner, ...)
  local key = P..'evs:'..owner
  redis.call('XADD', key, 'MAXLEN', '~', {EVENTS_MAXLEN}, '*', ...)
  redis.call('EXPIRE', key, {EVENTS_TTL_SECONDS})
end
"""

# Shared by the scripts that end sessions or fail jobs (prepended to their text: a
# script cannot call another).
_ENDING = _DELIVER + """
local function fail_job(P, id, code, message)
  local jk = P..'job:'..id
  local owner = redis.call('HGET', jk, 'owner')
  if owner then
    deliver(P, owner, 'j', id, 'f', code, 'm', message)
  end
  redis.call('DEL', jk)
end

local function end_session(P, rt, sid, code, message)
  local jobs = redis.call('SMEMBERS', P..'sj:'..sid)
  for _, id in ipairs(jobs) do fail_job(P, id, code, message) end
  redis.call('SREM', P..'rs:'..rt, sid)
  redis.call('ZREM', P..'sessions', sid)
  redis.call('DEL', P..'s:'..sid, P..'sj:'..sid, P..'sc:'..sid)
  redis.call('PUBLISH', P..'wake', 'd '..sid)
  return jobs
end
"""

# 1 if a session of runtime rt other than sid, active after cutoff, was registered by
# another daemon instance than sid (a second machine with a copy of the pairing).
_INSTANCE_CONFLICT = """
local function instance_conflict(P, rt, sid, cutoff)
  local mine = redis.call('HGET', P..'s:'..sid, 'inst') or ''
  if mine == '' then return 0 end
  for _, other in ipairs(redis.call('SMEMBERS', P..'rs:'..rt)) do
    if other ~= sid then
      local inst = redis.call('HGET', P..'s:'..other, 'inst') or ''
      local score = redis.call('ZSCORE', P..'sessions', other)
      if inst ~= '' and inst ~= mine and score and tonumber(score) > cutoff then
        return 1
      end
    end
  end
  return 0
end
"""

INSTANCE_CONFLICT = _INSTANCE_CONFLICT + """
local P, rt, sid = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', P..'s:'..sid, 'rt') ~= rt then return false end
return instance_conflict(P, rt, sid, tonumber(ARGV[4]))
"""

# For each runtime in ARGV[3..]: 1 if one of its sessions was active after ARGV[2].
REACHABLE = """
local P, cutoff = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV do
  local live = 0
  for _, sid in ipairs(redis.call('SMEMBERS', P..'rs:'..ARGV[i])) do
    local score = redis.call('ZSCORE', P..'sessions', sid)
    if score and tonumber(score) > cutoff then live = 1 break end
  end
  table.insert(out, live)
end
return out
"""

SUBMIT = """
local P, rt, id = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', P..'revoked:'..rt) == 1 then return 0 end
if redis.call('LLEN', P..'q:'..rt) >= tonumber(ARGV[7]) then return -1 end
local jk = P..'job:'..id
redis.call('HSET', jk, 'state', 'queued', 'env', ARGV[4], 'owner', ARGV[5], 'rt', rt)
redis.call('EXPIRE', jk, tonumber(ARGV[6]))
redis.call('RPUSH', P..'q:'..rt, id)
redis.call('PUBLISH', P..'wake', 'j '..rt)
return 1
"""

# Sessions of runtime ARGV[2] under another daemon key than ARGV[3] (an older pairing)
# end, their leased jobs failing with ARGV[4]/ARGV[5] at their owners.
END_OTHER_PAIRINGS = _ENDING + """
local P, rt, key = ARGV[1], ARGV[2], ARGV[3]
for _, other in ipairs(redis.call('SMEMBERS', P..'rs:'..rt)) do
  if (redis.call('HGET', P..'s:'..other, 'key') or '') ~= key then
    end_session(P, rt, other, ARGV[4], ARGV[5])
  end
end
return 1
"""

# A new session (ARGV[6]: its daemon key; the caller ended other pairings' sessions).
REGISTER = _ENDING + """
local P, rt, sid, now, max = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local key = ARGV[6]
if redis.call('EXISTS', P..'revoked:'..rt) == 1 then return 0 end
if redis.call('SCARD', P..'rs:'..rt) >= max then
  -- End the least recently active session without leased jobs (a daemon restarting in
  -- a loop must not pile sessions up); refuse when every one is busy.
  local oldest, oldest_score = nil, nil
  for _, other in ipairs(redis.call('SMEMBERS', P..'rs:'..rt)) do
    local score = tonumber(redis.call('ZSCORE', P..'sessions', other) or '0')
    if redis.call('SCARD', P..'sj:'..other) == 0 and (not oldest or score < oldest_score) then
      oldest, oldest_score = other, score
    end
  end
  if not oldest then return -1 end
  end_session(P, rt, oldest, '', '')  -- it holds no jobs: nothing fails
end
redis.call('HSET', P..'s:'..sid, 'rt', rt, 'key', key, 'inst', ARGV[7] or '')
redis.call('SADD', P..'rs:'..rt, sid)
redis.call('ZADD', P..'sessions', now, sid)
redis.call('SET', P..'seen:'..rt, now)
return 1
"""

# Touch the session, take its cancel notices, lease up to ARGV[4] queued jobs to it;
# whether another daemon instance is live on the runtime (ARGV[6]: presence cutoff).
POLL = _INSTANCE_CONFLICT + """
local P, rt, sid, n, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
if redis.call('HGET', P..'s:'..sid, 'rt') ~= rt then return false end
redis.call('ZADD', P..'sessions', now, sid)
redis.call('SET', P..'seen:'..rt, now)
local ck = P..'sc:'..sid
local cancels = redis.call('LRANGE', ck, 0, -1)
if #cancels > 0 then redis.call('DEL', ck) end
local jobs = {}
local q = P..'q:'..rt
while #jobs < n do
  local id = redis.call('LPOP', q)
  if not id then break end
  local jk = P..'job:'..id
  if redis.call('HGET', jk, 'state') == 'queued' then
    redis.call('HSET', jk, 'state', 'leased', 'session', sid)
    redis.call('SADD', P..'sj:'..sid, id)
    table.insert(jobs, redis.call('HGET', jk, 'env'))
  end
end
return {jobs, cancels, instance_conflict(P, rt, sid, tonumber(ARGV[6]))}
"""

# A poll answer that could not be delivered (its poll had already ended): back to queue.
UNLEASE = """
local P, rt, sid = ARGV[1], ARGV[2], ARGV[3]
for i = #ARGV, 4, -1 do
  local id = ARGV[i]
  local jk = P..'job:'..id
  if redis.call('HGET', jk, 'state') == 'leased' and redis.call('HGET', jk, 'session') == sid then
    redis.call('HSET', jk, 'state', 'queued')
    redis.call('HDEL', jk, 'session')
    redis.call('SREM', P..'sj:'..sid, id)
    redis.call('LPUSH', P..'q:'..rt, id)
  end
end
redis.call('PUBLISH', P..'wake', 'j '..rt)
return 1
"""

TOUCH = """
local P, rt, sid, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('ZADD', P..'sessions', 'XX', now, sid)
redis.call('SET', P..'seen:'..rt, now)
return 1
"""

# Forward each event whose job is leased to this session to its owner; refuse the rest.
EVENTS = _DELIVER + """
local P, rt, sid, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', P..'s:'..sid, 'rt') ~= rt then return false end
redis.call('ZADD', P..'sessions', now, sid)
redis.call('SET', P..'seen:'..rt, now)
local refused = {}
for i = 5, #ARGV, 2 do
  local id, payload = ARGV[i], ARGV[i + 1]
  local jk = P..'job:'..id
  local st = redis.call('HMGET', jk, 'state', 'session', 'owner')
  if st[1] == 'leased' and st[2] == sid then
    deliver(P, st[3], 'j', id, 'n', redis.call('HINCRBY', jk, 'n', 1), 'e', payload)
  else
    table.insert(refused, id)
  end
end
local ck = P..'sc:'..sid
local cancels = redis.call('LRANGE', ck, 0, -1)
if #cancels > 0 then redis.call('DEL', ck) end
return {refused, cancels}
"""

FINISH = """
local P, id = ARGV[1], ARGV[2]
local jk = P..'job:'..id
local sid = redis.call('HGET', jk, 'session')
if sid then redis.call('SREM', P..'sj:'..sid, id) end
redis.call('DEL', jk)
return 1
"""

CANCEL = """
local P, id, notice = ARGV[1], ARGV[2], ARGV[3]
local jk = P..'job:'..id
local st = redis.call('HMGET', jk, 'state', 'session', 'rt')
if not st[1] then return 0 end
redis.call('DEL', jk)
if st[1] == 'queued' then
  redis.call('LREM', P..'q:'..st[3], 1, id)
  return 1
end
redis.call('SREM', P..'sj:'..st[2], id)
redis.call('RPUSH', P..'sc:'..st[2], notice)
redis.call('PUBLISH', P..'wake', 'c '..st[2])
return 2
"""

PICKUP_EXPIRE = """
local P, id = ARGV[1], ARGV[2]
local jk = P..'job:'..id
local st = redis.call('HMGET', jk, 'state', 'rt')
if st[1] ~= 'queued' then return 0 end
redis.call('LREM', P..'q:'..st[2], 1, id)
redis.call('DEL', jk)
return 1
"""

# End a session (deregister, or reaped when silent past ARGV[3]); its leased jobs fail
# with ARGV[5]/ARGV[6] at their owners. ARGV[4] (if set) must be the session's runtime.
END_SESSION = _ENDING + """
local P, sid, cutoff, want_rt = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local rt = redis.call('HGET', P..'s:'..sid, 'rt')
if want_rt ~= '' and rt ~= want_rt then return false end
if cutoff ~= '' then
  local score = redis.call('ZSCORE', P..'sessions', sid)
  if score and tonumber(score) > tonumber(cutoff) then return {} end
end
if not rt then
  redis.call('ZREM', P..'sessions', sid)
  return {}
end
return end_session(P, rt, sid, ARGV[5], ARGV[6])
"""

REVOKE = _ENDING + """
local P, rt, code, message = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('SET', P..'revoked:'..rt, '1')
for _, id in ipairs(redis.call('LRANGE', P..'q:'..rt, 0, -1)) do
  fail_job(P, id, code, message)
end
redis.call('DEL', P..'q:'..rt)
for _, sid in ipairs(redis.call('SMEMBERS', P..'rs:'..rt)) do
  end_session(P, rt, sid, code, message)
end
redis.call('PUBLISH', P..'wake', 'r '..rt)
return 1
"""
