"""Overlay: the recall card page and person admin (not built yet; see docs/ARCHITECTURE.md)."""
