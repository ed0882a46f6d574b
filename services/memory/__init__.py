"""Memory: the person store, encounters, extraction and recall (not built yet).

See docs/ARCHITECTURE.md.
"""
