"""The Lua scripts of the Redis broker: each one atomic step that must decide and write at once.

Where a script decides something that sse-fast decides elsewhere too, its Lua function has the name of the rule in
:mod:`sse_fast.broker.rules` (``id_in_use``, ``may_ack``, ``ack_step``, ``redelivery_step``); the conformance model
test keeps the two equal (``mailbox_overflow`` and ``mailboxes_overflow`` are the mailbox bounds, in ``_MAILBOX``).
``trim_log`` is the one way the log shrinks. Keys and prefixes come from
:mod:`sse_fast.broker.redis.keys`, through ``KEYS`` and ``ARGV``.
"""

from __future__ import annotations

__all__ = [
    "ACK",
    "CONNECT",
    "DUE",
    "INIT",
    "MARK_DELIVERED",
    "PUBLISH",
    "REISSUE",
    "RELEASE_COMMAND",
    "TAKE_LOST_TASKS",
    "TRIM_LOG",
]

# Creates the epoch and the floor once; returns them, with the floor the last failover set (or false). The floor is
# one below the first seq Redis can still issue. KEYS: epoch, floor, primary, failover.
#
# A failover raises the floor: when the primary is no longer the one the cluster last saw (its run_id) and it is a
# replica of that one that took over (its master_replid2 is the old primary's replid), the old primary's last writes
# may never have reached it (replication is asynchronous), and no cursor from before can show that it holds every
# write after it. So every cursor from before the change is below the new floor (``failover``), and each node that
# sees the floor move closes its streams. A primary restarted with its own data (a new run_id, no replid2 of the old
# one) keeps the floor: what it lost, if anything, is what its persistence lost. ``INFO`` works in a script.
INIT = """
local t = redis.call('TIME')
local floor = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local info = redis.call('INFO', 'server') .. redis.call('INFO', 'replication')
local primary = string.match(info, 'run_id:(%x+)') .. ' ' .. string.match(info, 'master_replid:(%x+)')
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('SET', KEYS[2], floor)
  redis.call('DEL', KEYS[4])
else
  local known = redis.call('GET', KEYS[3])
  if known and known ~= primary then
    local run_id, replid = string.match(known, '^(%x+) (%x+)$')
    local took_over = string.match(info, 'master_replid2:(%x+)') == replid
    if run_id ~= string.match(primary, '^%x+') and took_over then
      redis.call('SET', KEYS[2], floor)
      redis.call('SET', KEYS[4], floor)
    end
  end
end
redis.call('SET', KEYS[3], primary)
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), redis.call('GET', KEYS[4])}
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

# Mailboxes and their bounds, the rules ``mailbox_overflow`` and ``mailboxes_overflow`` (sse_fast.broker.rules), as
# the memory broker applies them. A mailbox is a list, newest first, of ``<id>\n<priority>\n<event>\n<data>``; its
# bytes (the data's, as the memory broker counts) are kept in the sizes hash, the bytes of all in the total, and the
# index orders clients by when each mailbox was last filled. A list key expires by its TTL on its own: a client
# whose index entry is older than the TTL is forgotten (its bytes leave the total) the next time a mailbox is filled.
_MAILBOX = """
local function mailbox_overflow(count, nbytes, size, max_bytes)
  return count > size or nbytes > max_bytes
end
local function mailboxes_overflow(clients, nbytes, max_clients, max_bytes)
  return clients > max_clients or nbytes > max_bytes
end
local function mail_bytes(entry)
  local at = 0
  for _ = 1, 3 do at = string.find(entry, '\\n', at + 1, true) end
  return string.len(entry) - at
end
local function mailbox_forget(index, sizes, total, client)
  local held = tonumber(redis.call('HGET', sizes, client) or '0')
  redis.call('HDEL', sizes, client)
  redis.call('ZREM', index, client)
  if held ~= 0 then redis.call('DECRBY', total, held) end
end
local function mailbox_put(box, index, sizes, total, prefix, entry, size, ttl, client_bytes, max_clients, max_bytes)
  local client = string.sub(box, string.len(prefix) + 1)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for _, c in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now - ttl * 1000, 'LIMIT', 0, 64)) do
    if redis.call('EXISTS', prefix .. c) == 0 then mailbox_forget(index, sizes, total, c) end
  end
  local n = redis.call('LPUSH', box, entry)
  if n == 1 then mailbox_forget(index, sizes, total, client) end  -- a new list: a size still recorded is stale
  local nbytes = mail_bytes(entry)
  local held = redis.call('HINCRBY', sizes, client, nbytes)
  redis.call('INCRBY', total, nbytes)
  redis.call('ZADD', index, now, client)
  redis.call('EXPIRE', box, ttl)
  local dropped, freed = 0, 0
  while n > 0 and mailbox_overflow(n, held, size, client_bytes) do
    local b = mail_bytes(redis.call('RPOP', box))
    n, held, freed, dropped = n - 1, held - b, freed + b, dropped + 1
  end
  if freed > 0 then
    redis.call('HINCRBY', sizes, client, -freed)
    redis.call('DECRBY', total, freed)
  end
  if n == 0 then mailbox_forget(index, sizes, total, client) end
  local function all_bytes() return tonumber(redis.call('GET', total) or '0') end
  while mailboxes_overflow(redis.call('ZCARD', index), all_bytes(), max_clients, max_bytes) do
    local oldest = redis.call('ZRANGE', index, 0, 0)[1]
    if not oldest then break end
    dropped = dropped + redis.call('LLEN', prefix .. oldest)
    redis.call('DEL', prefix .. oldest)
    mailbox_forget(index, sizes, total, oldest)
  end
  return dropped
end
"""

# KEYS: log, dedupe, presence, mailbox, ack hash, ack due, trimmed mark, log bytes, mailbox index, mailbox sizes,
#       mailbox total bytes.
# ARGV: maxlen, dedupe window (0: none), mailbox ('1' when targeted), node prefix, mailbox size, mailbox ttl,
#       ack ('1'), ack deadline ms, ack key ttl, max pending acks, data, event, priority, exclude, max log bytes,
#       mailbox prefix, mailbox bytes per client, mailbox clients, mailbox bytes in all, then XADD fields.
PUBLISH = (
    _LIVE
    + _TRIM
    + _MAILBOX
    + """
local function id_in_use(held, held_status, source)
  if held == false or held == nil then return false end
  if held_status ~= 'pending' and held_status ~= 'delivered' then return false end
  return cjson.decode(held)['source'] ~= source
end
if ARGV[7] == '1' then
  local held = redis.call('HMGET', KEYS[5], 'env', 'status')
  if id_in_use(held[1], held[2], cjson.decode(ARGV[11])['source']) then
    return {'in_use', 0, 0}  -- the rule id_in_use: refused, nothing written
  end
end
if ARGV[2] ~= '0' and not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  return {'', 0, 0}
end
local fields = {}
for i = 20, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('INCRBY', KEYS[8], string.len(ARGV[11]))
trim_log(KEYS[1], KEYS[7], KEYS[8], tonumber(ARGV[1]), tonumber(ARGV[15]), 0, 1)
local queued, dropped = 0, 0
if ARGV[3] == '1' and #live(KEYS[3], ARGV[4]) == 0 then
  local entry = id .. '\\n' .. ARGV[13] .. '\\n' .. ARGV[12] .. '\\n' .. ARGV[11]
  dropped = mailbox_put(KEYS[4], KEYS[9], KEYS[10], KEYS[11], ARGV[16], entry, tonumber(ARGV[5]), tonumber(ARGV[6]),
    tonumber(ARGV[17]), tonumber(ARGV[18]), tonumber(ARGV[19]))
  queued = 1
end
if ARGV[7] == '1' then
  redis.call('DEL', KEYS[5])  -- tracked again (its source, or another once it was released): nobody acked it yet
  redis.call('HSET', KEYS[5], 'env', ARGV[11], 'status', 'pending', 'attempts', 1, 'exclude', ARGV[14], 'by', '')
  redis.call('EXPIRE', KEYS[5], ARGV[9])
  redis.call('ZADD', KEYS[6], ARGV[8], string.sub(KEYS[5], 9))
  local extra = redis.call('ZCARD', KEYS[6]) - tonumber(ARGV[10])
  if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[6], 0, extra - 1) end
end
return {id, queued, dropped}
"""
)

# KEYS: presence, mailbox, epoch, floor, mailbox index, mailbox sizes, mailbox total bytes.
# ARGV: member, now ms, node prefix, presence ttl, client id. Takes the whole mailbox: the opening re-issues into the
# log what the replay does not cover (rules.mailbox_seam, then REISSUE), and drops the rest.
CONNECT = (
    _LIVE
    + _MAILBOX
    + """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local members = live(KEYS[1], ARGV[3])
local mail = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
mailbox_forget(KEYS[5], KEYS[6], KEYS[7], ARGV[5])
return {redis.call('GET', KEYS[3]) or '', redis.call('GET', KEYS[4]) or '0', members, mail}
"""
)

# KEYS: the ack hashes of a batch of ids. ARGV: client id, admin ('1'), every topic ('1': the acker's grants cover
# every topic), max ackers, then per key the topic the server found the acker's grants cover ('' none). The rules
# ``may_ack`` and ``ack_step`` (sse_fast.broker.rules), repeated here so that the check and the change are one atomic
# step, for the whole batch in one call. The acker's grants are the server's to judge: a topic message it may not
# ack yet is answered {-1, topic} and left alone, and the broker asks again with that topic when the grants cover
# it (the script compares the topic again, so a message replaced meanwhile is not acked on another's grant).
# Ackers are listed in 'by' (for the status) and marked in 'a:<client>' (one lookup for a repeat), both bounded to
# max ackers as the memory broker does; 'n' counts them all. Returns per key {state, env or topic}: 0 unknown or not
# allowed, 1 a repeat, 2 a new ack, 3 a new ack that finished the message.
ACK = """
local function may_ack(target, topic, exclude, client_id, admin, granted)
  if admin then return true end
  if type(target) == 'string' then return target == client_id end
  if type(topic) == 'string' then return granted end
  return exclude ~= client_id
end
local function ack_step(status, key, client_id)
  if redis.call('HEXISTS', key, 'a:' .. client_id) == 1 then return false, status end
  if status == 'pending' or status == 'delivered' then return true, 'acked' end
  return true, status
end
local client_id, admin, every_topic = ARGV[1], ARGV[2] == '1', ARGV[3] == '1'
local max_ackers = tonumber(ARGV[4])
local out = {}
for i, key in ipairs(KEYS) do
  local held = redis.call('HMGET', key, 'env', 'status', 'exclude')
  local env, status = held[1], held[2]
  if not env then
    out[i] = {0, ''}
  else
    local m = cjson.decode(env)
    local granted = every_topic or (type(m['topic']) == 'string' and m['topic'] == ARGV[4 + i])
    if not may_ack(m['target'], m['topic'], held[3] or '', client_id, admin, granted) then
      if not admin and type(m['target']) ~= 'string' and type(m['topic']) == 'string' and ARGV[4 + i] == '' then
        out[i] = {-1, m['topic']}  -- the server judges the acker's grants for this topic
      else
        out[i] = {0, ''}
      end
    else
      local new, after = ack_step(status, key, client_id)
      if not new then
        out[i] = {1, ''}
      else
        local count = tonumber(redis.call('HGET', key, 'n') or '0')
        if count < max_ackers then
          local by = redis.call('HGET', key, 'by') or ''
          if by == '' then by = client_id else by = by .. ',' .. client_id end
          redis.call('HSET', key, 'by', by, 'a:' .. client_id, '1')
        end
        redis.call('HSET', key, 'status', after, 'n', count + 1)
        if after ~= status then out[i] = {3, env} else out[i] = {2, env} end
      end
    end
  end
end
return out
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

# KEYS: log, trimmed mark, log bytes. ARGV: max frames, max bytes, client id, then per entry: data, event, priority.
# An opening's mailbox entries appended to the log again, targeted at their client, after the head (see
# sse_fast.broker.rules, resume): the readers route them live, each with its own cursor. The trim keeps them all,
# so that every node's reader can still read them. Returns their ids.
REISSUE = (
    _TRIM
    + """
local ids, added = {}, 0
for i = 4, #ARGV, 3 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'd', ARGV[i], 'e', ARGV[i + 1], 'p', ARGV[i + 2], 't', ARGV[3])
  added = added + string.len(ARGV[i])
end
redis.call('INCRBY', KEYS[3], added)
trim_log(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), tonumber(ARGV[2]), 0, #ids)
return ids
"""
)

MARK_DELIVERED = """
if redis.call('HGET', KEYS[1], 'status') == 'pending' then redis.call('HSET', KEYS[1], 'status', 'delivered') end
return 0
"""

# Drops a client's claim of a commandId, when it is still the claim of this task (a submit refused after its claim).
RELEASE_COMMAND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Takes the live tasks of the dead nodes: for each node in KEYS[1] (the nodes with live tasks) whose heartbeat key
# (ARGV[1] .. node) is gone, drops its set of live task ids (ARGV[2] .. node) and the node, and returns
# {node, task id, record, ...} for the records still there (ARGV[3] .. id). Atomic: one caller takes each dead node's
# tasks, however many nodes notice the death at once.
TAKE_LOST_TASKS = """
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. node) == 0 then
    for _, id in ipairs(redis.call('SMEMBERS', ARGV[2] .. node)) do
      local rec = redis.call('HGET', ARGV[3] .. id, 'rec')
      if rec then
        out[#out + 1] = node
        out[#out + 1] = id
        out[#out + 1] = rec
      end
    end
    redis.call('DEL', ARGV[2] .. node)
    redis.call('SREM', KEYS[1], node)
  end
end
return out
"""
