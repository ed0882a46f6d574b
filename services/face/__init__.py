"""The face service."""
