"""The Lua scripts of the Redis broker: each one atomic step that must decide and write at once.

Where a script decides something that sse-fast decides elsewhere too, its Lua function has the name of the rule in
:mod:`sse_fast.broker.rules` (``id_in_use``, ``may_ack``, ``ack_step``, ``redelivery_step``); the conformance model
test keeps the two equal. ``trim_log`` is the one way the log shrinks. Keys and prefixes come from
:mod:`sse_fast.broker.redis.keys`, through ``KEYS`` and ``ARGV``.
"""

from __future__ import annotations

__all__ = ["ACK", "CONNECT", "DUE", "INIT", "MARK_DELIVERED", "PUBLISH", "TRIM_LOG"]

# Creates the epoch and the floor once; returns them. The floor is one below the first seq Redis can still issue.
INIT = """
local t = redis.call('TIME')
local floor = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('SET', KEYS[2], floor)
end
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}
"""

_LIVE = """
local function live(zset, node_prefix)
  local out = {}
  for _, m in ipairs(redis.call('ZRANGE', zset, 0, -1)) do
    local node = string.match(m, '^([^:]+):')
    if node and redis.call('EXISTS', node_prefix .. node) == 1 then
      out[#out + 1] = m
    else
      redis.call('ZREM', zset, m)
    end
  end
  return out
end
"""

# The one way the log shrinks (by count, by bytes, by age), oldest first. It records the newest id it removed in the
# coverage mark: a cursor at or after the mark still has every later entry; one below it lost some. (Redis's own
# ``max-deleted-entry-id`` is not moved by ``MAXLEN``/``MINID`` trimming, so it cannot tell.) A publish keeps at
# least the entry it appended (``keep``), so that every node's reader can still read it; the TTL may empty the log.
# Each entry's first field is its data.
_TRIM = """
local function trim_log(log, mark, size_key, maxlen, maxbytes, min_ms, keep)
  local len = redis.call('XLEN', log)
  local total = tonumber(redis.call('GET', size_key) or '0')
  if len <= maxlen and total <= maxbytes and min_ms <= 0 then return false end
  local last, freed, start, done = nil, 0, '-', false
  while not done and len > keep do
    local batch = redis.call('XRANGE', log, start, '+', 'COUNT', 64)
    if #batch == 0 then break end
    for _, e in ipairs(batch) do
      local old = tonumber(string.match(e[1], '^%d+')) < min_ms
      if len <= keep or (len <= maxlen and total <= maxbytes and not old) then done = true; break end
      local size = string.len(e[2][2])
      last, len, total, freed = e[1], len - 1, total - size, freed + size
    end
    if last then start = '(' .. last end
  end
  if last then
    local ms, n = string.match(last, '^(%d+)-(%d+)$')
    redis.call('XTRIM', log, 'MINID', ms .. '-' .. string.format('%d', tonumber(n) + 1))
    redis.call('SET', mark, last)
    redis.call('DECRBY', size_key, freed)
  end
  return last
end
"""

# KEYS: log, dedupe, presence, mailbox, ack hash, ack due, trimmed mark, log bytes.
# ARGV: maxlen, dedupe window (0: none), mailbox ('1' when targeted), node prefix, mailbox size, mailbox ttl,
#       ack ('1'), ack deadline ms, ack key ttl, max pending acks, data, event, priority, exclude, max log bytes,
#       then XADD fields.
PUBLISH = (
    _LIVE
    + _TRIM
    + """
local function id_in_use(held, source)
  return held ~= false and held ~= nil and cjson.decode(held)['source'] ~= source
end
if ARGV[7] == '1' and id_in_use(redis.call('HGET', KEYS[5], 'env'), cjson.decode(ARGV[11])['source']) then
  return {'in_use', 0, 0}  -- the rule id_in_use: refused, nothing written
end
if ARGV[2] ~= '0' and not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  return {'', 0, 0}
end
local fields = {}
for i = 16, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('INCRBY', KEYS[8], string.len(ARGV[11]))
trim_log(KEYS[1], KEYS[7], KEYS[8], tonumber(ARGV[1]), tonumber(ARGV[15]), 0, 1)
local queued, dropped = 0, 0
if ARGV[3] == '1' and #live(KEYS[3], ARGV[4]) == 0 then
  local size = tonumber(ARGV[5])
  local n = redis.call('LPUSH', KEYS[4], id .. '\\n' .. ARGV[13] .. '\\n' .. ARGV[12] .. '\\n' .. ARGV[11])
  if n > size then dropped = n - size; redis.call('LTRIM', KEYS[4], 0, size - 1) end
  redis.call('EXPIRE', KEYS[4], ARGV[6])
  queued = 1
end
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[5], 'env', ARGV[11], 'status', 'pending', 'attempts', 1, 'exclude', ARGV[14], 'by', '')
  redis.call('EXPIRE', KEYS[5], ARGV[9])
  redis.call('ZADD', KEYS[6], ARGV[8], string.sub(KEYS[5], 9))
  local extra = redis.call('ZCARD', KEYS[6]) - tonumber(ARGV[10])
  if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[6], 0, extra - 1) end
end
return {id, queued, dropped}
"""
)

# KEYS: presence, mailbox, epoch, floor. ARGV: member, now ms, node prefix, presence ttl.
CONNECT = (
    _LIVE
    + """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local members = live(KEYS[1], ARGV[3])
local mail = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return {redis.call('GET', KEYS[3]) or '', redis.call('GET', KEYS[4]) or '0', members, mail}
"""
)

# KEYS: ack hash. ARGV: client id, admin ('1'), max ackers. The rules ``may_ack`` and ``ack_step`` (sse_fast.rules),
# repeated here so that the check and the change are one atomic step. Returns {known, new, env}.
ACK = """
local function may_ack(target, client_id, admin)
  return admin == '1' or type(target) ~= 'string' or target == client_id
end
local function ack_step(status, by, client_id)
  for c in string.gmatch(by, '[^,]+') do
    if c == client_id then return false, status end
  end
  if status == 'pending' or status == 'delivered' then return true, 'acked' end
  return true, status
end
local env = redis.call('HGET', KEYS[1], 'env')
if not env then return {0, 0, ''} end
if not may_ack(cjson.decode(env)['target'], ARGV[1], ARGV[2]) then return {0, 0, ''} end
local by = redis.call('HGET', KEYS[1], 'by') or ''
local new, status = ack_step(redis.call('HGET', KEYS[1], 'status'), by, ARGV[1])
if not new then return {1, 0, ''} end
local count = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
if count < tonumber(ARGV[3]) then
  if by == '' then by = ARGV[1] else by = by .. ',' .. ARGV[1] end
end
redis.call('HSET', KEYS[1], 'by', by, 'status', status, 'n', count + 1)
return {1, 1, env}
"""

# KEYS: ack due. ARGV: now ms, timeout ms, retries, limit, hash prefix. Claims due entries (one node gets each).
DUE = """
local function redelivery_step(attempts, retries)
  if attempts > retries then return 'expire' end
  return 'redeliver'
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[4])
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[5] .. id
  local status = redis.call('HGET', key, 'status')
  if status == 'pending' or status == 'delivered' then
    local attempts = tonumber(redis.call('HGET', key, 'attempts'))
    if redelivery_step(attempts, tonumber(ARGV[3])) == 'expire' then
      redis.call('HSET', key, 'status', 'expired')
      out[#out + 1] = {id, '', ''}
    else
      redis.call('HSET', key, 'attempts', attempts + 1)
      redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
      out[#out + 1] = {id, redis.call('HGET', key, 'env'), redis.call('HGET', key, 'exclude') or ''}
    end
  end
end
return out
"""

# KEYS: log, trimmed mark, log bytes. ARGV: max frames, max bytes, min ms (older entries leave: the TTL).
# Returns the coverage mark after trimming.
TRIM_LOG = (
    _TRIM
    + """
trim_log(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), 0)
return redis.call('GET', KEYS[2])
"""
)

MARK_DELIVERED = """
if redis.call('HGET', KEYS[1], 'status') == 'pending' then redis.call('HSET', KEYS[1], 'status', 'delivered') end
return 0
"""
