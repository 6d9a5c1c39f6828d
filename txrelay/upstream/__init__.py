"""Backends: the Twisted side of each upstream kind (demo, openai-chat)."""
