"""``convo eval``: scenes replayed through the real stages, scored; a wrong expectation scores 0."""

import shutil
from pathlib import Path

from typer.testing import CliRunner

from services.cli import app
from services.evaluation import Line, evaluate, me_them, word_errors

SCENES = Path(__file__).parents[1] / "scenes"


def test_word_errors() -> None:
    assert word_errors("Hi, I'm Sarah Chen.", "hi i'm sarah chen") == (0, 4)
    assert word_errors("Dana, great match today!", "They look great match today.") == (2, 4)


def test_me_them_marks_are_scored_against_the_line_they_heard() -> None:
    lines = [Line(text="Hello, I am Alex.", wearer=True), Line(text="Hi Alex, I'm Sarah Chen from Stripe.")]
    marked = [
        {"speaker": "me", "text": "Hello, I'm Alex."},
        {"speaker": "me", "text": "Hi Alex. I'm Sarah Chen from Stripe."},  # her line, marked as the wearer's
        {"speaker": "", "text": "I work on rate limits."},  # no voice known: not counted
    ]
    assert me_them(lines, marked) == (1, 2)
    assert me_them(lines, [{**marked[1], "speaker": "them"}]) == (1, 1)


def test_scenes_are_scored_and_a_wrong_expectation_fails(tmp_path: Path) -> None:
    for name in ("01-meet-sarah.yaml", "03-sarah-again.yaml"):
        shutil.copy(SCENES / name, tmp_path / name)
    (tmp_path / "04-not-tom.yaml").write_text(
        "lines: [{voice: en-us, text: 'Hello again.'}]\n"
        "frames: [{image: astronaut}]\n"
        "expect: {person: tom, card: tom, not_card: [sarah]}\n"  # it is Sarah: this scene must score 0
    )
    card = evaluate(tmp_path)
    first, again, wrong = card.scores
    assert (first.identity, first.attribution, first.names, first.companies) == (
        1.0,
        1.0,
        (1, 1, 1),
        (1, 1, 1),
    )
    assert (again.identity, again.attribution) == (1.0, 1.0), again.notes
    assert wrong.identity == 0.0 and wrong.attribution == 0.0
    figures = card.figures()
    assert figures["name_recall"] == 1.0 and 0 <= figures["wer"] < 0.3


def test_convo_eval_prints_the_scorecard(tmp_path: Path) -> None:
    shutil.copy(SCENES / "01-meet-sarah.yaml", tmp_path)
    result = CliRunner().invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "identity_accuracy=1" in result.output and "01-meet-sarah" in result.output


def test_voice_scenes_name_a_speaker_out_of_frame_only_with_the_voice_stage(tmp_path: Path) -> None:
    """Real recorded voices: the card reader met face to face, then heard with no one in view.
    With the voice stage her card shows (by voice) and the conversation is hers; without it,
    neither."""
    for name in ("23-meet-the-card-reader.yaml", "24-the-card-reader-out-of-frame.yaml"):
        shutil.copy(SCENES / name, tmp_path / name)
    met, heard = evaluate(tmp_path).scores
    assert (met.identity, met.attribution) == (1.0, 1.0), met.notes
    assert met.me_them[1] >= 2 and met.me_them[0] == met.me_them[1], "the enrolled wearer's line is me"
    assert (heard.identity, heard.attribution) == (1.0, 1.0), heard.notes
    _, unheard = evaluate(tmp_path, voice=False).scores
    assert (unheard.identity, unheard.attribution) == (0.0, 0.0), unheard.notes
