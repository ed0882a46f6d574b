"""The one commit step: outputs, done marks and dead letters written in one Lua call.

The consumer loop runs it inside its MULTI with the XACKs; the overlay files dead letters
with it. A done key is set with NX and the outputs it guards are written only when it was
not set before, so work committed twice (a redelivery, two replicas) is written once.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import redis

Entry = tuple[str, int, Mapping[str, bytes | str]]
"""One stream entry to write: stream, MAXLEN cap, fields."""
Work = Sequence[tuple[str, Sequence[Entry]]]
"""Per done key, the entries it guards."""

# ARGV: ttl, n; then per message: done_key, n_outputs; per output: stream, maxlen, n_fields,
# then the field names and values. Returns 1 per message whose outputs it wrote, 0 per duplicate.
COMMIT_SCRIPT = """
local pos, written = 3, {}
for m = 1, tonumber(ARGV[2]) do
  local fresh = redis.call('SET', ARGV[pos], '1', 'NX', 'EX', ARGV[1])
  local n_out = tonumber(ARGV[pos + 1])
  pos = pos + 2
  for o = 1, n_out do
    local n = tonumber(ARGV[pos + 2])
    if fresh then
      local cmd = {'XADD', ARGV[pos], 'MAXLEN', '~', ARGV[pos + 1], '*'}
      for f = pos + 3, pos + 2 + 2 * n do cmd[#cmd + 1] = ARGV[f] end
      redis.call(unpack(cmd))
    end
    pos = pos + 3 + 2 * n
  end
  written[m] = fresh and 1 or 0
end
return written
"""


def commit_args(ttl_s: int, work: Work) -> list[bytes | str | int]:
    """Arguments of ``COMMIT_SCRIPT``: per done key, the entries (stream, cap, fields) it guards."""
    args: list[bytes | str | int] = [ttl_s, len(work)]
    for key, entries in work:
        args += [key, len(entries)]
        for stream, cap, fields in entries:
            args += [stream, cap, len(fields)]
            for name, value in fields.items():
                args += [name, value]
    return args


class Committer:
    """Runs the commit script on one client (sync or asyncio) with one done-key lifetime."""

    def __init__(self, client: redis.Redis | Any, ttl_s: int) -> None:
        self.script = client.register_script(COMMIT_SCRIPT)
        self.ttl_s = ttl_s

    def __call__(self, work: Work, pipe: redis.client.Pipeline | None = None) -> Any:
        """1 per done key whose entries it wrote, 0 per duplicate (a coroutine on an asyncio client;
        nothing until ``pipe`` executes when one is given)."""
        return self.script(args=commit_args(self.ttl_s, work), client=pipe)
