"""``convo wearer``: the wearer's own voice, so that memory tells their lines from the other
person's."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="The wearer's voice: enroll, show, forget.", no_args_is_help=True)
console = Console()
CHUNK_S = 8.0  # a long recording gives one view per this many seconds of it


@app.command()
def enroll(
    audio: Annotated[list[Path], typer.Option(help="Recordings of the wearer alone speaking (any format).")],
) -> None:
    """Store the wearer's voice from recordings of them speaking: one view per 8 s of speech."""
    from faster_whisper import decode_audio

    from services.memory.settings import MemorySettings
    from services.memory.wearer import Wearer
    from services.voice.model import VoiceEncoderModel
    from services.voice.settings import VoiceModelSettings
    from shared.runtime import admin_client

    model = VoiceEncoderModel(VoiceModelSettings()).load()
    rate = model.settings.sample_rate
    vectors = []
    for path in audio:
        if not path.is_file():
            raise typer.BadParameter(f"no such file: {path}")
        samples = decode_audio(str(path), sampling_rate=rate)
        step = int(CHUNK_S * rate)
        found = [model.embed(samples[i : i + step])[0] for i in range(0, max(len(samples) - rate, 1), step)]
        if not any(len(v) for v in found):
            raise typer.BadParameter(f"{path}: no speech found to learn the voice from")
        vectors += [v for v in found if len(v)]
    client, _ = admin_client()
    total = Wearer(client, MemorySettings().voice_match.wearer_threshold).enroll(vectors)
    console.print(f"enrolled {len(vectors)} views of the wearer's voice ({total} in all)")


@app.command()
def show() -> None:
    """How many views of the wearer's voice are enrolled."""
    from shared.runtime import admin_client
    from shared.streams import MemoryKeys

    client, _ = admin_client()
    console.print(f"{client.hlen(MemoryKeys.WEARER_VOICE)} views of the wearer's voice enrolled")


@app.command()
def forget() -> None:
    """Remove the wearer's enrolled voice."""
    from services.memory.settings import MemorySettings
    from services.memory.wearer import Wearer
    from shared.runtime import admin_client

    client, _ = admin_client()
    gone = Wearer(client, MemorySettings().voice_match.wearer_threshold).forget()
    console.print(f"removed {gone} views of the wearer's voice")
