"""``python -m services.scribe [--check] [--burst]``: ended conversations written down as encounters."""

from services.memory.extract import build_extractor
from services.memory.settings import MemorySettings
from services.scribe.handler import Scribe
from shared.runtime import Stage, connect, stage_app
from shared.schemas import ConversationMessage
from shared.streams import Groups


def build(settings: MemorySettings) -> Stage:
    client = connect(settings, Groups.SCRIBE)
    scribe = Scribe(client, settings, build_extractor(settings, client))
    return Stage({ConversationMessage: scribe}, ticker=scribe, committed=scribe.committed)


app = stage_app(MemorySettings, Groups.SCRIBE, build)

if __name__ == "__main__":
    app()
