"""The one commit step: outputs, done marks, dead letters and acks written in one Lua call.

The consumer loop and its ticker commit with it, and the overlay files dead letters with it.
A done key is set with NX and the outputs it guards are written only when it was not set
before, so work committed twice (a redelivery, two replicas) is written once.

A MULTI does not roll back: a command that fails inside EXEC leaves the others applied, so
acks after a refused write would acknowledge entries whose outputs were never written. The
script instead checks every write and ack against the caller's ACL before it makes any
(``redis.acl_check_cmd``), and acks last: it writes and acks all of it, or nothing. Under
``maxmemory`` Redis refuses a script's first write, which is the first thing it does.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import redis

Entry = tuple[str, int, Mapping[str, bytes | str]]
"""One stream entry to write: stream, MAXLEN cap, fields."""
Work = Sequence[tuple[str, Sequence[Entry]]]
"""Per done key, the entries it guards; an empty key writes them unconditionally (a dead letter)."""
Acks = Sequence[tuple[str, str, Sequence[bytes | str]]]
"""Per stream and group, the entry ids to acknowledge once everything is written."""

REFUSED = "COMMIT_REFUSED"
"""The start of the error the script answers when the caller may not do all of it."""

# ARGV[1] is one MessagePack array: {ttl, items, acks}. An item is {done key, outputs}, an
# output {stream, maxlen, {field, value, ...}}, an ack {stream, group, {id, ...}}. One packed
# argument instead of hundreds: packing, sending and parsing them cost more than the writes
# (bench/bus.py). The old MessagePack format (use_bin_type=False) is the one Redis's cmsgpack
# reads; Lua strings do not tell text from bytes anyway.
# A permission depends only on the command and its keys, so each stream is checked once, with
# a stand-in field: checking every XADD with its own fields cost more than the writes.
# Returns 1 per item whose outputs it wrote, 0 per duplicate.
COMMIT_SCRIPT = """
local work = cmsgpack.unpack(ARGV[1])
local ttl, items, acks = work[1], work[2], work[3]
local checked = {}
local function check(...)
  if not redis.acl_check_cmd(...) then
    local cmd = {...}
    error({err = 'COMMIT_REFUSED ' .. cmd[1] .. ' ' .. cmd[2] .. ': no permission'})
  end
end
for _, item in ipairs(items) do
  if item[1] ~= '' then check('SET', item[1], '1') end
  for _, out in ipairs(item[2]) do
    if not checked[out[1]] then check('XADD', out[1], '*', 'f', 'v'); checked[out[1]] = true end
  end
end
for _, ack in ipairs(acks) do check('XACK', ack[1], ack[2], unpack(ack[3])) end
local written = {}
for m, item in ipairs(items) do
  local fresh = item[1] == '' or redis.call('SET', item[1], '1', 'NX', 'EX', ttl)
  if fresh then
    for _, out in ipairs(item[2]) do
      redis.call('XADD', out[1], 'MAXLEN', '~', out[2], '*', unpack(out[3]))
    end
  end
  written[m] = fresh and 1 or 0
end
for _, ack in ipairs(acks) do redis.call('XACK', ack[1], ack[2], unpack(ack[3])) end
return written
"""


def commit_payload(ttl_s: int, work: Work, acks: Acks = ()) -> bytes:
    """The one argument of ``COMMIT_SCRIPT``."""
    items = [
        [
            key,
            [[stream, cap, [x for pair in fields.items() for x in pair]] for stream, cap, fields in entries],
        ]
        for key, entries in work
    ]
    return msgpack.packb([ttl_s, items, [[s, g, list(ids)] for s, g, ids in acks]], use_bin_type=False)


def refused(exc: redis.ResponseError) -> bool:
    """Whether the commit was refused as a whole (no permission, out of memory): nothing was written."""
    text = str(exc)
    return text.startswith(REFUSED) or text.startswith("OOM") or "NOPERM" in text


class Committer:
    """Runs the commit script on one client (sync or asyncio) with one done-key lifetime."""

    def __init__(self, client: redis.Redis | Any, ttl_s: int) -> None:
        self.client = client
        self.script = client.register_script(COMMIT_SCRIPT)
        self.ttl_s = ttl_s

    def __call__(self, work: Work, acks: Acks = ()) -> Any:
        """1 per done key whose entries it wrote, 0 per duplicate (a coroutine on an asyncio client)."""
        return self.script(args=[commit_payload(self.ttl_s, work, acks)])

    def then_read(
        self, work: Work, acks: Acks, group: str, consumer: str, streams: Mapping[str, str], count: int
    ) -> tuple[list[int] | redis.ResponseError, Any]:
        """The commit, then an XREADGROUP that does not block, in one round trip (sync clients).
        Each answer is its value or the error Redis gave for it: the entries read are delivered
        to ``consumer`` whether or not the commit went through."""
        payload = commit_payload(self.ttl_s, work, acks)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.evalsha(self.script.sha, 0, payload)
            pipe.xreadgroup(group, consumer, streams, count=count)
            written, read = pipe.execute(raise_on_error=False)
        if isinstance(written, redis.exceptions.NoScriptError):  # a restarted Redis: it ran nothing
            try:
                written = self.script(args=[payload])
            except redis.ResponseError as exc:
                written = exc
        return written, read
