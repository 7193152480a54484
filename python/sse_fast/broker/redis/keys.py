"""Every Redis key and channel sse-fast uses, in one place: each family has its own namespace.

A key that holds a client-chosen part (a client id, a message id) puts it last, after a prefix that no other
family shares; a key with two such parts length-prefixes the first (:func:`sse_fast.broker.rules.dedupe_key`),
so no two families and no two values can name the same key. Lua scripts receive their keys (and the prefixes
they need) from here.
"""

from __future__ import annotations

from typing import Final

from sse_fast.broker import rules as rules

__all__ = [
    "ACK_DUE",
    "ACK_PREFIX",
    "CONTROL",
    "EPHEMERAL",
    "EPOCH",
    "FAILOVER",
    "FLOOR",
    "LOG",
    "LOG_BYTES",
    "MAILBOX_BYTES",
    "MAILBOX_INDEX",
    "MAILBOX_PREFIX",
    "MAILBOX_SIZES",
    "NODES",
    "NODE_PREFIX",
    "PRIMARY",
    "TASKS_ALL",
    "TASK_NODES",
    "TRIMMED",
    "ack",
    "command",
    "dedupe",
    "mailbox",
    "node",
    "presence",
    "rows",
    "task",
    "tasks_of",
    "tasks_on",
]

#: The replay log and the fan-out: one Redis Stream.
LOG: Final = "sse:log"
#: The newest log id ever trimmed away (by count, bytes or age): the coverage mark of a resume.
TRIMMED: Final = "sse:log:trimmed"
#: The bytes of the data the log holds (its byte bound, ``SSE_FAST_REPLAY_BYTES``).
LOG_BYTES: Final = "sse:log:bytes"
#: The log's epoch (a random token: the first part of every cursor) and its floor (the seq it starts from).
EPOCH: Final = "sse:epoch"
FLOOR: Final = "sse:floor"
#: The primary the cluster last saw (``<run_id> <replid>``), and the floor the last failover set (a failover raises
#: the floor: cursors below it are ``failover``, not ``expired``).
PRIMARY: Final = "sse:primary"
FAILOVER: Final = "sse:failover"
#: Pub/sub channels: ephemeral messages, and controls between nodes (``replaced`` closes, task controls).
EPHEMERAL: Final = "sse:eph"
CONTROL: Final = "sse:control"
#: The live nodes, a sorted set by last heartbeat.
NODES: Final = "sse:nodes"
#: requireAck deadlines, a sorted set of message ids by deadline.
ACK_DUE: Final = "sse:acks:due"
#: The prefix of a requireAck message's hash (the due script builds the key from it).
ACK_PREFIX: Final = "sse:ack:"
#: The prefix of a node's heartbeat key (the scripts that read presence build the key from it).
NODE_PREFIX: Final = "sse:node:"
#: The prefix of a client's mailbox (the publish script builds other clients' mailbox keys from it, to drop them).
MAILBOX_PREFIX: Final = "sse:mbox:"
#: The clients that hold a mailbox, a sorted set by when each was last filled (the least recently filled is dropped
#: first past ``SSE_FAST_MAILBOX_CLIENTS`` or the total bytes), with the bytes each holds in a hash, and the bytes of
#: all of them (``SSE_FAST_REPLAY_BYTES`` bounds it, as the memory broker's mailboxes).
MAILBOX_INDEX: Final = "sse:mbidx"
MAILBOX_SIZES: Final = "sse:mbsize"
MAILBOX_BYTES: Final = "sse:mbbytes"
#: Every task's id, a sorted set by ``createdAt``.
TASKS_ALL: Final = "sse:tasks:all"
#: The nodes that hold live tasks, a set (each node's ids in :func:`tasks_on`): where a dead node's tasks are found.
TASK_NODES: Final = "sse:tasks:nodes"


def ack(message_id: str) -> str:
    """A requireAck message's state: ``{env, status, attempts, exclude, by, n}``. (The publish script finds the
    message id again by cutting :data:`ACK_PREFIX`, 8 characters, off this key.)"""
    return ACK_PREFIX + message_id


def command(client_id: str, command_id: str) -> str:
    """The task id of a client's ``execute`` with ``command_id``: one task per ``(client, commandId)`` in a cluster."""
    return "sse:cmd:" + rules.dedupe_key(client_id, command_id)


def dedupe(source: str, message_id: str) -> str:
    """The idempotency entry of ``(source, id)``."""
    return "sse:dd:" + rules.dedupe_key(source, message_id)


def mailbox(client_id: str) -> str:
    """A client's offline mailbox, a list (newest first) of ``<entry id>\\n<priority>\\n<event>\\n<data>``."""
    return MAILBOX_PREFIX + client_id


def presence(client_id: str) -> str:
    """A client's connections in the cluster, a sorted set of ``<node>:<conn>`` by connect time."""
    return "sse:pres:" + client_id


def node(node_id: str) -> str:
    """A node's heartbeat (its connection count), expiring when the node stops beating."""
    return NODE_PREFIX + node_id


def rows(node_id: str) -> str:
    """A node's connection rows (``GET /api/connections``), a hash by connection id."""
    return "sse:conns:" + node_id


def task(task_id: str) -> str:
    """A task's record and the node that runs it."""
    return "sse:task:" + task_id


def tasks_of(client_id: str) -> str:
    """A client's task ids, a sorted set by ``createdAt`` (``c:`` keeps it apart from :data:`TASKS_ALL`)."""
    return "sse:tasks:c:" + client_id


def tasks_on(node_id: str) -> str:
    """The ids of the live tasks a node runs, a set (``n:`` keeps it apart from :func:`tasks_of`)."""
    return "sse:tasks:n:" + node_id
