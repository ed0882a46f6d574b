"""``python -m services.memory [--check] [--burst]``: faces, transcripts and voices into person memory;
ended conversations to the scribe."""

from services.memory.handler import MemoryHandler
from services.memory.settings import MemorySettings
from shared.runtime import Stage, connect, stage_app
from shared.streams import Groups


def build(settings: MemorySettings) -> Stage:
    client = connect(settings, Groups.MEMORY)
    handler = MemoryHandler(client, settings)
    return Stage(handler.handlers, ticker=handler)


app = stage_app(MemorySettings, Groups.MEMORY, build)

if __name__ == "__main__":
    app()
