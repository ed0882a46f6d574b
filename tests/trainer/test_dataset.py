"""Encounters into training rows on real Redis: one row set per encounter, scrubbed, split by person."""

import json

import redis

from services.memory.admin import PersonAdmin
from services.memory.person_store import PersonStore
from services.memory.settings import MatchSettings
from services.trainer.dataset import SUMMARISE, WHO, Dataset, rows_from, scrub, split_by_person
from services.trainer.handler import TrainerHandler
from services.trainer.registry import AdapterRegistry
from services.trainer.settings import TrainerSettings
from shared.consumer import Consumer
from shared.schemas import AdapterMessage, EncounterMessage
from shared.streams import StreamNames, TrainerKeys
from tests.trainer.conftest import encounter


def feed(r: redis.Redis, settings: TrainerSettings, *msgs: EncounterMessage) -> TrainerHandler:
    for msg in msgs:
        r.xadd("encounters", msg.to_fields())
    handler = TrainerHandler(r, settings)
    Consumer(r, settings, "trainer", {EncounterMessage: handler}).run(burst=True)
    return handler


def test_thirty_encounters_become_the_right_rows_once(
    r: redis.Redis, trainer_settings: TrainerSettings
) -> None:
    msgs = [encounter(i) for i in range(30)]
    feed(r, trainer_settings, *msgs, msgs[7])  # the 8th arrives twice
    rows = Dataset(trainer_settings.dataset).rows()
    assert len(rows) == 60 and len({row.id for row in rows}) == 60
    first = {row.instruction: row for row in rows if row.encounter_id == "e-000"}
    assert first[SUMMARISE].output == "Met Sarah Chen from Stripe. Talked about rate limits."
    assert (
        first[WHO].output == "Sarah Chen from Stripe. Talked about rate limits. Facts: works on rate limits."
    )
    assert first[SUMMARISE].input.startswith("Hi, I'm Sarah Chen from Stripe.")
    assert int(r.get(TrainerKeys.NEW_ROWS) or 0) == 60
    assert r.xinfo_groups("encounters")[0]["pending"] == 0, "acked once appended"

    feed(r, trainer_settings, msgs[3])  # a later redelivery, by a new process, still adds nothing
    assert len(Dataset(trainer_settings.dataset).rows()) == 60


def test_scrub_removes_planted_secrets() -> None:
    text = (
        "Mail sarah.chen+work@stripe.com or sarah at stripe dot com, "
        "call +1 (415) 555-0132 or 020 7946 0958. "
        "My card is 4111 1111 1111 1111 and order 1234 5678 9012 3456 shipped; we met in 2024 at 10:30."
    )
    clean = scrub(text)
    for secret in ("sarah.chen", "stripe.com", "stripe dot com", "555-0132", "7946", "4111"):
        assert secret not in clean, secret
    assert clean.count("[email]") == 2 and clean.count("[phone]") == 2 and clean.count("[card]") == 1
    assert "1234 5678 9012 3456" in clean, "a number that is not a card (Luhn) stays"
    assert "in 2024 at 10:30" in clean
    # and rows are scrubbed on the way in
    assert all("@" not in row.input and "555" not in row.input for row in rows_from(encounter(0)))


def test_split_holds_out_whole_persons(r: redis.Redis, trainer_settings: TrainerSettings) -> None:
    feed(r, trainer_settings, *[encounter(i) for i in range(30)])
    export = Dataset(trainer_settings.dataset).export()
    train_people = {row.person_id for row in export.train}
    eval_people = {row.person_id for row in export.eval}
    assert train_people and eval_people and not train_people & eval_people
    assert len(eval_people) == 2  # 34 % of six persons
    manifest = json.loads((export.dir / "manifest.json").read_text())
    assert manifest["train_rows"] + manifest["eval_rows"] == 60 and manifest["row_version"] == 1
    assert (export.dir / "eval.jsonl").read_text().count("\n") == len(export.eval)
    again, _ = split_by_person(export.train + export.eval, 0.34)
    assert {row.person_id for row in again} == train_people, "the split is stable"


def test_forget_removes_rows_and_flags_adapters(r: redis.Redis, trainer_settings: TrainerSettings) -> None:
    feed(r, trainer_settings, *[encounter(i) for i in range(12)])
    registry = AdapterRegistry(r)
    adapter = AdapterMessage(
        version=1, base_model="b", path="/x", rows=24, eval_loss_before=2.0, eval_loss_after=1.0, t=1.0
    )
    registry.register(adapter, {f"p-{i}" for i in range(6)})
    store = PersonStore(r, MatchSettings())
    r.sadd("convo:persons", "p-0")
    r.hset("convo:person:p-0", mapping={"id": "p-0", "name": "Sarah Chen", "company": "", "role": "",
                                        "first_seen": "1", "last_seen": "2", "encounters": 0})  # fmt: skip
    counts = PersonAdmin(store, StreamNames(), trainer_settings.dataset).forget("p-0")
    assert counts["training rows"] == 4 and counts["adapters with forgotten data"] == 1
    rows = Dataset(trainer_settings.dataset).rows()
    assert len(rows) == 20 and all(row.person_id != "p-0" for row in rows)
    assert "p-0" not in Dataset(trainer_settings.dataset).path.read_text()
    [entry] = registry.list()
    assert entry["forgotten"] and entry["persons"] == 5
    assert b"p-0" not in r.hget(TrainerKeys.adapter(1), "persons")  # type: ignore[operator]
