"""Overlay: the live recall card page, the people page and its admin API (FastAPI, SSE)."""
