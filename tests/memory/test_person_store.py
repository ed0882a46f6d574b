"""The person store on a real redis-server with real buffalo_s embeddings."""

import numpy as np
import pytest
import redis

from services.memory.person_store import PersonStore
from services.memory.settings import MatchSettings
from shared.schemas import BadMessageError, embedding_to_bytes
from tests.speech import SARAH

DAY = 86400.0


def test_second_meeting_recalls_the_first(store: PersonStore, embeddings: dict[str, np.ndarray]) -> None:
    t0 = 1_700_000_000.0
    first = store.process_encounter(
        embeddings["astronaut"], SARAH + " I work on rate limits for the payments API.", t=t0
    )
    assert first.startswith("First meeting: Met Sarah Chen from Stripe")
    [pid] = store.person_ids()
    second = store.process_encounter(
        embeddings["astronaut-flipped"], "Hi again, how was your week?", t=t0 + 3 * DAY
    )
    assert second.startswith("Sarah Chen from Stripe — last met 3 days ago at the climbing gym")
    assert "talked about rate limits for the payments API" in second
    assert store.person_ids() == [pid]
    person = store.profile(pid)
    assert (person.name, person.company, person.encounters) == ("Sarah Chen", "Stripe", 2)
    facts = {f.text: f for f in person.facts}
    assert facts["works at Stripe"].source == person.encounter_ids[0], "facts keep their source"


def test_different_people_become_different_persons(
    store: PersonStore, embeddings: dict[str, np.ndarray]
) -> None:
    ids = [store.identify(embeddings[f"t1-{i}"]).person_id for i in range(6)]
    assert len(set(ids)) == 6 and len(store.person_ids()) == 6
    again = [store.identify(embeddings[f"t1-{i}"]) for i in range(6)]
    assert [m.person_id for m in again] == ids and all(m.outcome == "match" for m in again)


def test_a_new_look_is_added_to_the_views_up_to_the_cap(
    r: redis.Redis, embeddings: dict[str, np.ndarray]
) -> None:
    store = PersonStore(r, MatchSettings(new_view_below=0.97, max_views=2))
    pid = store.identify(embeddings["astronaut"]).person_id
    assert pid is not None
    store.identify(embeddings["astronaut"])  # the same look: not kept twice
    assert store.profile(pid).views == 1
    store.identify(embeddings["astronaut-flipped"])  # 0.966: a new look
    store.identify(embeddings["astronaut-small"])
    assert store.profile(pid).views == 2


def test_margin_rule_rejects_an_ambiguous_match(r: redis.Redis, embeddings: dict[str, np.ndarray]) -> None:
    store = PersonStore(r, MatchSettings(threshold=0.45, margin=0.08))
    a = store.identify(embeddings["t1-0"]).person_id
    b = store.identify(embeddings["t1-1"]).person_id
    # A face halfway between two known people scores about the same against both.
    between = embeddings["t1-0"] + embeddings["t1-1"]
    between /= np.linalg.norm(between)
    result = store.match(between)
    assert result.outcome == "ambiguous" and result.person_id is None
    assert result.score >= 0.45 and result.score - result.runner_up < 0.08
    assert store.identify(between).person_id is None and set(store.person_ids()) == {a, b}


def test_two_faces_in_one_frame_are_never_the_same_person(
    store: PersonStore, embeddings: dict[str, np.ndarray]
) -> None:
    first = store.identify(embeddings["astronaut"], frame_id="f1")
    second = store.identify(embeddings["astronaut-flipped"], frame_id="f1")  # a mirror, say
    assert first.person_id != second.person_id and second.outcome == "new"
    # Two persons now share one look, so a later view of it is ambiguous rather than a guess.
    assert store.identify(embeddings["astronaut-small"], frame_id="f2").outcome == "ambiguous"


@pytest.mark.parametrize(
    ("embedding", "error"),
    [
        (embedding_to_bytes(np.ones(128) / np.sqrt(128)), "expected 512"),
        (embedding_to_bytes(np.full(512, np.nan)), "NaN"),
        (embedding_to_bytes(np.zeros(512)), "not normed"),
    ],
    ids=["wrong-dimension", "nan", "zero-norm"],
)
def test_unusable_embeddings_are_refused(store: PersonStore, embedding: bytes, error: str) -> None:
    with pytest.raises(BadMessageError, match=error):
        store.identify(embedding)
    assert store.person_ids() == []


def test_empty_transcript_is_refused(store: PersonStore, embeddings: dict[str, np.ndarray]) -> None:
    with pytest.raises(BadMessageError, match="empty transcript"):
        store.process_encounter(embeddings["astronaut"], "  ")


def test_the_same_face_handled_again_gets_the_same_person_not_a_new_one(
    store: PersonStore, embeddings: dict[str, np.ndarray]
) -> None:
    # A replica killed after identifying a face: the face is redelivered and identified again.
    first = store.identify(embeddings["t1-2"], frame_id="f9", face_id="f9:0")
    again = store.identify(embeddings["t1-2"], frame_id="f9", face_id="f9:0")
    assert (first.outcome, again.person_id) == ("new", first.person_id)
    other = store.identify(embeddings["t1-2"], frame_id="f9", face_id="f9:1")  # a second face, same look
    assert other.person_id != first.person_id
    assert len(store.redis.smembers("convo:persons")) == 2
