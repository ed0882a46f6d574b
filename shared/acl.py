"""One Redis user per service, generated from the stream contracts (``users.acl``).

Each service may touch only the streams it consumes and produces, the dead-letter
stream, and its own keys; anything else is refused by Redis with ``NOPERM``. The
passwords are made on first use and kept beside the file, one per user, readable by
the owner only; ``users.acl`` holds only their SHA-256. ``convo up`` starts its Redis
with this file, and compose has an init container write it into a shared volume.
"""

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

from shared.schemas import (
    AdapterMessage,
    AudioSegmentMessage,
    ConversationMessage,
    EncounterMessage,
    FaceMessage,
    FrameMessage,
    PartialSegmentMessage,
    PartialTranscriptMessage,
    RecallMessage,
    StreamMessage,
    TranscriptMessage,
    VoiceMessage,
)
from shared.settings import ServiceSettings
from shared.streams import (
    ADMIN_TOKEN_KEY,
    KEY_PREFIX,
    MemoryKeys,
    TrainerKeys,
    TranscriberKeys,
    done_key,
    heartbeat_key,
)

ADMIN = "admin"

# The commands of the shared consumer loop (shared/consumer.py, shared/runtime.py). Its
# commit script runs XADD and SET; Redis checks the script's calls against the same user.
# redis-py's CLIENT SETINFO on connect is left out: it ignores the refusal, and Redis 7.0 has no such command.
LOOP = (
    "ping", "scan",
    "xreadgroup", "xack", "xautoclaim", "xpending", "xinfo|groups", "xgroup|create",
    "xadd", "set", "get", "mget", "exists",
    "eval", "evalsha", "script|load", "script|exists", "multi", "exec", "discard",
)  # fmt: skip
GROUP_BOOKKEEPING = ("+xack", "+xautoclaim", "+xclaim", "+xgroup|create")
# Capture only appends, and reads its streams' groups for backpressure and retention.
PRODUCER = (
    "ping", "scan", "set", "del",
    "xadd", "xinfo|groups", "xpending", "xtrim", "xlen", "xrange", "sadd",
)  # fmt: skip
# Services that keep records of their own (persons, the adapter registry) get the data-type
# categories, on their own keys only; never the dangerous ones (KEYS, FLUSHALL, CONFIG, ...).
RECORDS = ("@hash", "@set", "@sortedset", "@string", "@stream", "@keyspace", "@scripting", "@transaction")
MEMORY_KEYS = (
    MemoryKeys.PERSONS, f"{MemoryKeys.PERSONS}:*", f"{KEY_PREFIX}:person:*", f"{KEY_PREFIX}:encounter:*",
    f"{KEY_PREFIX}:frame:*", MemoryKeys.SESSIONS, f"{KEY_PREFIX}:session:*", f"{KEY_PREFIX}:sessions:*",
    MemoryKeys.NEW_PERSON_LOCK, f"{KEY_PREFIX}:lock:session:*", MemoryKeys.WEARER_VOICE,
)  # fmt: skip


@dataclass(frozen=True)
class Grant:
    """What one service may do: the stream contract plus the keys it keeps."""

    user: str
    consumes: tuple[type[StreamMessage], ...] = ()
    """Read through a consumer group. The group's own bookkeeping (XACK, XAUTOCLAIM, XCLAIM, XGROUP
    CREATE) needs write access to the stream; a selector grants it to those commands only, so no XADD."""
    produces: tuple[type[StreamMessage], ...] = ()
    """Appended to, never read."""
    follows: tuple[type[StreamMessage], ...] = ()
    """Read without a group (XREAD, XRANGE)."""
    keys: tuple[str, ...] = ()
    """Other key patterns, read and write."""
    read_keys: tuple[str, ...] = ()
    """Other key patterns, read only."""
    watches: tuple[type[StreamMessage], ...] = ()
    """Streams whose groups' progress it may read (XINFO GROUPS, XPENDING), never their entries."""
    forgets: bool = False
    """Person admin's forget: find and delete a person's entries on every stream (XRANGE, XDEL),
    in a selector of its own, so that this grants no XADD to streams the user does not own."""
    commands: tuple[str, ...] = LOOP


GRANTS = (
    Grant(
        "capture", produces=(AudioSegmentMessage, PartialSegmentMessage, FrameMessage),
        keys=(MemoryKeys.SESSIONS, MemoryKeys.speaking("*")),  # speech still being cut, for memory
        # backpressure reads the face group's lag; retention trims what every group has acked
        follows=(AudioSegmentMessage, PartialSegmentMessage, FrameMessage), commands=PRODUCER,
    ),
    Grant(
        "transcriber", consumes=(AudioSegmentMessage, PartialSegmentMessage),
        produces=(TranscriptMessage, PartialTranscriptMessage),
        read_keys=(MemoryKeys.context("*"),),  # hotwords: the names of the people in view
        keys=(TranscriberKeys.live("*"),),  # live words' agreement, shared by the replicas
    ),
    Grant("face", consumes=(FrameMessage,), produces=(FaceMessage,)),
    Grant("voice", consumes=(AudioSegmentMessage,), produces=(VoiceMessage,)),
    Grant(
        "memory", consumes=(TranscriptMessage, PartialTranscriptMessage, FaceMessage, VoiceMessage),
        produces=(RecallMessage, ConversationMessage),
        # it waits for the transcriber's backlog before it ends a conversation
        watches=(AudioSegmentMessage,), keys=MEMORY_KEYS,
        forgets=True,  # an expired candidate's face goes from every stream
        # conversations are stamped with the server's clock; what was just said is a short list
        commands=(*LOOP, *RECORDS, "@list", "time"),
    ),
    Grant(
        # the local backend loads the newest adapter the trainer announced
        "scribe", consumes=(ConversationMessage,), produces=(EncounterMessage,),
        follows=(AdapterMessage,), keys=MEMORY_KEYS, read_keys=(f"{KEY_PREFIX}:trainer:*",),
        commands=(*LOOP, *RECORDS, "@list", "time"),
    ),
    Grant(
        # The people page is person admin: rename, merge, and forget across every stream.
        "overlay", follows=(RecallMessage, TranscriptMessage, PartialTranscriptMessage),
        keys=(*MEMORY_KEYS, ADMIN_TOKEN_KEY, f"{KEY_PREFIX}:trainer:*"),
        forgets=True, commands=(*LOOP, *RECORDS, "xread"),
    ),
    Grant(
        "trainer", consumes=(EncounterMessage,), produces=(AdapterMessage,),
        keys=(f"{KEY_PREFIX}:trainer:*", TrainerKeys.JOB_LOCK), commands=(*LOOP, *RECORDS),
    ),
)  # fmt: skip
USERS = tuple(g.user for g in GRANTS)


def rules(grant: Grant, settings: ServiceSettings) -> str:
    """The ACL rules of one user, without its password."""

    def stream(model: type[StreamMessage]) -> str:
        return getattr(settings.streams, model.STREAM)

    own = [done_key(grant.user, "*"), heartbeat_key(grant.user), *grant.keys]
    consumed = [stream(m) for m in grant.consumes]
    write = [stream(m) for m in grant.produces] + [settings.streams.dlq]
    read = consumed + [stream(m) for m in grant.follows] + list(grant.read_keys)
    full = own + [k for k in write if k in read]
    parts = ["resetkeys", "resetchannels", "-@all"]
    parts += [f"~{k}" for k in dict.fromkeys(full)]
    parts += [f"%W~{k}" for k in dict.fromkeys(write) if k not in full]
    parts += [f"%R~{k}" for k in dict.fromkeys(read) if k not in full]
    parts += [f"+{c}" for c in grant.commands if not c.startswith("@")]
    parts += [f"+{c}" for c in grant.commands if c.startswith("@")]
    if any(c.startswith("@") for c in grant.commands):
        parts.append("-@dangerous")
    if consumed:
        parts.append("(" + " ".join([*(f"~{s}" for s in consumed), *GROUP_BOOKKEEPING]) + ")")
    if grant.watches:
        parts.append(
            "(" + " ".join([*(f"%R~{stream(m)}" for m in grant.watches), "+xinfo|groups", "+xpending"]) + ")"
        )
    if grant.forgets:
        streams = [getattr(settings.streams, name) for name in type(settings.streams).model_fields]
        parts.append("(" + " ".join([*(f"~{s}" for s in streams), "+xrange", "+xrevrange", "+xdel"]) + ")")
    return " ".join(parts)


def password(acl_dir: Path, user: str) -> str:
    """The user's password, made on first use (``<acl_dir>/<user>.pass``, mode 0600)."""
    path = Path(acl_dir) / f"{user}.pass"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


def render(settings: ServiceSettings, acl_dir: Path) -> str:
    """The whole ``users.acl``: the default user off, ``admin`` for operators, one user per service."""

    def secret(user: str) -> str:
        return "#" + hashlib.sha256(password(acl_dir, user).encode()).hexdigest()

    # An ACL file has no comments: it is made by `convo acl` from shared/acl.py, and edits are overwritten.
    # The default user is off: no connection can use it. It keeps every permission because Redis
    # replays the AOF's MULTI/EXEC blocks as that user, and drops them (data loss on restart)
    # when it may not run them: redis/redis#14541, fixed after 8.4; seen here on 7.0.
    lines = [
        "user default off ~* &* +@all",
        f"user {ADMIN} on {secret(ADMIN)} ~* &* +@all",
    ]
    lines += [f"user {g.user} on {secret(g.user)} {rules(g, settings)}" for g in GRANTS]
    return "\n".join(lines) + "\n"


def write(settings: ServiceSettings, acl_dir: Path) -> Path:
    """Write ``<acl_dir>/users.acl``, keeping the passwords already there."""
    path = Path(acl_dir) / "users.acl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(settings, acl_dir))
    return path
