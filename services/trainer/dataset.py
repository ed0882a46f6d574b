"""Training rows from finished conversations: (instruction, input, output), scrubbed, in JSONL.

Every row of every encounter is appended to one file per row format (``rows-v1.jsonl``),
once per encounter however often the encounter is delivered. A job trains on a snapshot,
``export/``: ``train.jsonl`` and ``eval.jsonl`` split by person, so that evaluation is on
people the adapter has never seen.
"""

import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from services.trainer.settings import DatasetSettings
from shared.schemas import EncounterMessage

ROW_VERSION = 1
SUMMARISE = "Summarise this conversation."
WHO = "Who is this and what do I know about them?"

EMAIL = re.compile(
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+|\b[\w.]+ at [\w-]+ dot (?:com|org|net|io|dev|co|de|uk)\b", re.I
)
CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
PHONE = re.compile(r"(?<![\w+])\+?(?:\(?\d{1,4}\)?[\s.-]?){2,5}\d{2,4}(?!\w)")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _phone(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[phone]" if 7 <= len(digits) <= 15 else match.group(0)


def scrub(text: str) -> str:
    """Replace emails, card numbers (Luhn-valid) and phone numbers by [email], [card] and [phone]."""
    text = EMAIL.sub("[email]", text)
    text = CARD.sub(lambda m: "[card]" if _luhn(re.sub(r"\D", "", m.group(0))) else m.group(0), text)
    return PHONE.sub(_phone, text)


class Row(BaseModel):
    """One training example."""

    v: int = ROW_VERSION
    id: str
    encounter_id: str
    person_id: str
    instruction: str
    input: str
    output: str
    t: float


def profile_line(msg: EncounterMessage) -> str:
    """What the wearer should be told about the person, from this conversation alone (no dates)."""
    if not (msg.name or msg.company or msg.topics or msg.facts):
        return ""
    who = msg.name or "Someone whose name did not come up"
    parts = [
        who + (f" from {msg.company}" if msg.company else "") + (f", {msg.role}" if msg.role else "") + "."
    ]
    if msg.place:
        parts.append(f"Met at the {msg.place}.")
    if msg.topics:
        parts.append(f"Talked about {', '.join(msg.topics)}.")
    facts = [f["text"] for f in msg.facts if f.get("text") and not f["text"].startswith("works at ")]
    if facts:
        parts.append(f"Facts: {'; '.join(facts)}.")
    if msg.open_threads:
        parts.append(f"Open: {'; '.join(msg.open_threads)}.")
    return " ".join(parts)


def rows_from(msg: EncounterMessage) -> list[Row]:
    """The rows one conversation teaches: its summary, and who the person is."""
    transcript = scrub(msg.transcript)
    return [
        Row(
            id=f"{msg.encounter_id}:{task}",
            encounter_id=msg.encounter_id,
            person_id=msg.person_id,
            instruction=instruction,
            input=transcript,
            output=scrub(output),
            t=msg.t_end,
        )
        for task, instruction, output in (
            ("summary", SUMMARISE, msg.summary),
            ("who", WHO, profile_line(msg)),
        )
    ]


def person_hash(pid: str) -> str:
    """A person's id in places that must not hold it (the adapter registry)."""
    return hashlib.sha256(pid.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Export:
    """A snapshot to train on."""

    dir: Path
    train: list[Row]
    eval: list[Row]

    @property
    def persons(self) -> set[str]:
        return {r.person_id for r in self.train + self.eval}


def split_by_person(rows: list[Row], fraction: float) -> tuple[list[Row], list[Row]]:
    """Hold out ``fraction`` of the persons (at least one when there are two or more)."""
    persons = sorted({r.person_id for r in rows}, key=person_hash)
    n = round(len(persons) * fraction)
    if fraction > 0 and len(persons) >= 2:
        n = min(max(n, 1), len(persons) - 1)
    held = set(persons[:n])
    return [r for r in rows if r.person_id not in held], [r for r in rows if r.person_id in held]


class Dataset:
    """The JSONL file of every row. Appends and rewrites hold an exclusive file lock."""

    def __init__(self, settings: DatasetSettings) -> None:
        self.settings = settings
        self.path = settings.dir / f"rows-v{ROW_VERSION}.jsonl"
        self._ids: set[str] = set()
        self._seen: tuple[int, int] | None = None  # (inode, size) when ``_ids`` was read

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.settings.dir.mkdir(parents=True, exist_ok=True)
        with open(self.settings.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read(self) -> list[Row]:
        if not self.path.exists():
            return []
        with self.path.open() as f:
            return [Row.model_validate_json(line) for line in f if line.strip()]

    def _stat(self) -> tuple[int, int]:
        st = os.stat(self.path) if self.path.exists() else None
        return (st.st_ino, st.st_size) if st else (0, 0)

    def append(self, rows: list[Row]) -> int:
        """Add the rows of encounters not in the file yet, durably (fsync); returns how many rows."""
        with self._locked():
            if self._seen != self._stat():  # someone else wrote or rewrote the file
                self._ids = {r.encounter_id for r in self._read()}
            new = [r for r in rows if r.encounter_id not in self._ids]
            if new:
                with self.path.open("a") as f:
                    f.writelines(r.model_dump_json() + "\n" for r in new)
                    f.flush()
                    os.fsync(f.fileno())
                self._ids |= {r.encounter_id for r in new}
            self._seen = self._stat()
            return len(new)

    def rows(self) -> list[Row]:
        with self._locked():
            return self._read()

    def forget(self, person_id: str) -> int:
        """Remove every row about ``person_id`` (an atomic rewrite); returns how many."""
        with self._locked():
            rows = self._read()
            keep = [r for r in rows if r.person_id != person_id]
            if len(keep) == len(rows):
                return 0
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w") as f:
                f.writelines(r.model_dump_json() + "\n" for r in keep)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self._seen = None
            for old in (self.settings.dir / "export").glob("*/*.jsonl"):
                old.unlink()  # snapshots may hold the person too; a job makes a new one
            return len(rows) - len(keep)

    def export(self) -> Export:
        """Write ``export/v<N>-<time>/{train,eval}.jsonl`` and ``manifest.json`` from a snapshot."""
        rows = self.rows()
        train, held = split_by_person(rows, self.settings.eval_fraction)
        out = self.settings.dir / "export" / f"v{ROW_VERSION}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        out.mkdir(parents=True, exist_ok=True)
        for name, part in (("train", train), ("eval", held)):
            (out / f"{name}.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in part))
        manifest = {
            "row_version": ROW_VERSION, "rows": len(rows), "train_rows": len(train), "eval_rows": len(held),
            "train_persons": len({r.person_id for r in train}),
            "eval_persons": len({r.person_id for r in held}),
        }  # fmt: skip
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return Export(out, train, held)
