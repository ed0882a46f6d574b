"""The transcriber service."""
