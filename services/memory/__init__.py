"""Memory: who each face is, each session's conversation, extraction and the recall card.

``person_store.py`` is the entry point; see docs/ARCHITECTURE.md for its parts.
"""
