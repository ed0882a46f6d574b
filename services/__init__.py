"""Conversationalist services; each is a handler plus settings on the shared consumer loop."""
