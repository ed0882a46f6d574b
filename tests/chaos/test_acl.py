"""Least privilege: each service's Redis user may write only the streams it produces."""

import time

import pytest
import redis

from services.transcriber.live import LiveWords
from services.transcriber.settings import WhisperSettings
from shared.acl import ADMIN, GRANTS, USERS, Grant
from shared.consumer import done_of
from shared.redis_server import RedisServer
from shared.runtime import connect
from shared.schemas import AudioSegmentMessage
from shared.settings import ServiceSettings
from shared.streams import MemoryKeys, TranscriberKeys


def client_of(server: RedisServer, user: str) -> redis.Redis:
    return connect(ServiceSettings(redis_url=server.url, acl_dir=server.acl_dir), user)


@pytest.mark.parametrize("grant", GRANTS, ids=USERS)
def test_a_service_is_refused_a_write_to_a_stream_it_does_not_own(
    acl_server: RedisServer, grant: Grant
) -> None:
    settings = ServiceSettings()
    own = {getattr(settings.streams, m.STREAM) for m in grant.produces} | {settings.streams.dlq}
    client = client_of(acl_server, grant.user)
    refused = []
    for stream in settings.streams.model_dump().values():
        if stream in own:
            client.xadd(stream, {"probe": grant.user})  # its own outputs and dead letters: allowed
        else:
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.xadd(stream, {"probe": grant.user})
            refused.append(stream)
    assert len(refused) == len(settings.streams.model_dump()) - len(own) >= 5
    for command in (("FLUSHALL",), ("KEYS", "*"), ("CONFIG", "GET", "*"), ("ACL", "LIST")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    if grant.user not in ("memory", "scribe", "overlay"):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.hgetall("convo:person:p-1")  # the person store is memory's (and the scribe's)


def test_a_consumer_can_run_its_group_on_its_input_but_not_append_to_it(acl_server: RedisServer) -> None:
    admin = acl_server.client()
    admin.xadd("audio:segments", {"x": "1"})
    transcriber = client_of(acl_server, "transcriber")
    transcriber.xgroup_create("audio:segments", "transcriber", id="0")
    [(_, [(entry_id, _)])] = transcriber.xreadgroup("transcriber", "t1", {"audio:segments": ">"})
    assert transcriber.xack("audio:segments", "transcriber", entry_id) == 1
    with pytest.raises(redis.exceptions.NoPermissionError):
        transcriber.xadd("audio:segments", {"x": "2"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        transcriber.xgroup_create("frames", "transcriber", id="0", mkstream=True)  # not its stream


def test_transcriber_replicas_share_live_words_under_their_user(acl_server: RedisServer) -> None:
    """The live words' agreement state (``TranscriberKeys.live``) and the check for a segment
    already transcribed (its own done record) work as the transcriber's user; no decode is needed."""
    transcriber = client_of(acl_server, "transcriber")
    live = LiveWords(WhisperSettings(), None, transcriber)  # type: ignore[arg-type]
    assert live._state("seg-1") == (False, [], [])
    assert live._newer(keys=[TranscriberKeys.live("seg-1")], args=['{"t": 2.0, "words": ["Hi"]}', 2.0, 60])
    assert not live._newer(keys=[TranscriberKeys.live("seg-1")], args=['{"t": 1.0}', 1.0, 60])
    transcriber.set(done_of("transcriber", AudioSegmentMessage, "seg-1"), 1)
    assert live._state("seg-1") == (True, ["Hi"], [])
    with pytest.raises(redis.exceptions.NoPermissionError):
        transcriber.set(MemoryKeys.context("s"), "[]")  # the hotwords are memory's to write


def test_the_default_user_is_off_and_a_wrong_password_is_refused(acl_server: RedisServer) -> None:
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=acl_server.port).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=acl_server.port, username="face", password="guess").ping()
    assert client_of(acl_server, ADMIN).ping()


def test_transactions_written_as_a_service_survive_a_redis_crash(acl_server: RedisServer) -> None:
    memory = client_of(acl_server, "memory")
    with memory.pipeline(transaction=True) as pipe:  # as the person store writes a new person
        pipe.sadd("convo:persons", "p-1")
        pipe.hset("convo:person:p-1", mapping={"name": "Sarah Chen"})
        pipe.execute()
    acl_server.kill()
    acl_server.start()  # replays the AOF
    admin = acl_server.client()
    assert (
        admin.smembers("convo:persons") == {b"p-1"}
        and admin.hget("convo:person:p-1", "name") == b"Sarah Chen"
    )


def test_retention_under_acl(acl_server: RedisServer, admin: redis.Redis) -> None:
    """Capture applies the retention window as its own user, as `make run` starts it."""
    from shared.retention import apply_window

    settings = ServiceSettings()
    old_ms = int((time.time() - 7200) * 1000)
    raw = (("audio_segments", "transcriber"), ("audio_partials", "transcriber"), ("frames", "face"))
    for attr, group in raw:
        stream = getattr(settings.streams, attr)
        for i in range(3):
            admin.xadd(stream, {"x": str(i)}, id=f"{old_ms + i}-0")
        admin.xadd(stream, {"x": "new"})
        admin.xgroup_create(stream, group, id="0")
        entries = admin.xreadgroup(group, "c", {stream: ">"}, count=3)[0][1]  # the three old ones
        admin.xack(stream, group, *[entry_id for entry_id, _ in entries])
    trimmed = apply_window(client_of(acl_server, "capture"), settings, 3600)
    assert [(t.removed, t.held_by) for t in trimmed] == [(3, ())] * 3
    for attr, _ in raw:
        assert [f[b"x"] for _, f in admin.xrange(getattr(settings.streams, attr))] == [b"new"]
