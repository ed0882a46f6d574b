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

import redis

Entry = tuple[str, int, Mapping[str, bytes | str]]
"""One stream entry to write: stream, MAXLEN cap, fields."""
Work = Sequence[tuple[str, Sequence[Entry]]]
"""Per done key, the entries it guards; an empty key writes them unconditionally (a dead letter)."""
Acks = Sequence[tuple[str, str, Sequence[bytes | str]]]
"""Per stream and group, the entry ids to acknowledge once everything is written."""

REFUSED = "COMMIT_REFUSED"
"""The start of the error the script answers when the caller may not do all of it."""

# ARGV: ttl, n; per item: done key, n outputs; per output: stream, maxlen, n fields, the
# field names and values. Then n acks; per ack: stream, group, n ids, the ids.
# Returns 1 per item whose outputs it wrote, 0 per duplicate.
COMMIT_SCRIPT = """
local ttl, pos, items, acks = ARGV[1], 3, {}, {}
for m = 1, tonumber(ARGV[2]) do
  local item = {key = ARGV[pos], outs = {}}
  local n_out = tonumber(ARGV[pos + 1])
  pos = pos + 2
  for o = 1, n_out do
    local n = tonumber(ARGV[pos + 2])
    local cmd = {'XADD', ARGV[pos], 'MAXLEN', '~', ARGV[pos + 1], '*'}
    for f = pos + 3, pos + 2 + 2 * n do cmd[#cmd + 1] = ARGV[f] end
    item.outs[o] = cmd
    pos = pos + 3 + 2 * n
  end
  items[m] = item
end
local n_acks = tonumber(ARGV[pos])
pos = pos + 1
for a = 1, n_acks do
  local n = tonumber(ARGV[pos + 2])
  local cmd = {'XACK', ARGV[pos], ARGV[pos + 1]}
  for i = pos + 3, pos + 2 + n do cmd[#cmd + 1] = ARGV[i] end
  acks[a] = cmd
  pos = pos + 3 + n
end
local function check(cmd)
  if not redis.acl_check_cmd(unpack(cmd)) then
    error({err = 'COMMIT_REFUSED ' .. cmd[1] .. ' ' .. cmd[2] .. ': no permission'})
  end
end
for _, item in ipairs(items) do
  if item.key ~= '' then check({'SET', item.key, '1', 'NX', 'EX', ttl}) end
  for _, cmd in ipairs(item.outs) do check(cmd) end
end
for _, cmd in ipairs(acks) do check(cmd) end
local written = {}
for m, item in ipairs(items) do
  local fresh = item.key == '' or redis.call('SET', item.key, '1', 'NX', 'EX', ttl)
  if fresh then
    for _, cmd in ipairs(item.outs) do redis.call(unpack(cmd)) end
  end
  written[m] = fresh and 1 or 0
end
for _, cmd in ipairs(acks) do redis.call(unpack(cmd)) end
return written
"""


def commit_args(ttl_s: int, work: Work, acks: Acks = ()) -> list[bytes | str | int]:
    """Arguments of ``COMMIT_SCRIPT``."""
    args: list[bytes | str | int] = [ttl_s, len(work)]
    for key, entries in work:
        args += [key, len(entries)]
        for stream, cap, fields in entries:
            args += [stream, cap, len(fields)]
            for name, value in fields.items():
                args += [name, value]
    args.append(len(acks))
    for stream, group, ids in acks:
        args += [stream, group, len(ids), *ids]
    return args


def refused(exc: redis.ResponseError) -> bool:
    """Whether the commit was refused as a whole (no permission, out of memory): nothing was written."""
    text = str(exc)
    return text.startswith(REFUSED) or text.startswith("OOM") or "NOPERM" in text


class Committer:
    """Runs the commit script on one client (sync or asyncio) with one done-key lifetime."""

    def __init__(self, client: redis.Redis | Any, ttl_s: int) -> None:
        self.script = client.register_script(COMMIT_SCRIPT)
        self.ttl_s = ttl_s

    def __call__(self, work: Work, acks: Acks = ()) -> Any:
        """1 per done key whose entries it wrote, 0 per duplicate (a coroutine on an asyncio client)."""
        return self.script(args=commit_args(self.ttl_s, work, acks))
