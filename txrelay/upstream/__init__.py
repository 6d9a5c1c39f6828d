"""Backends: the generic HTTP backend, its codec contracts, the kinds demo and openai-chat."""
