"""Memory: the person store, encounter assembly, extraction and recall (not built yet; see docs/ARCHITECTURE.md)."""
