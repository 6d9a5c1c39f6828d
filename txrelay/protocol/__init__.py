"""
The sans-IO protocol core of txrelay.

Nothing in this package imports Twisted or performs I/O: request models and translators,
the incremental SSE parser and encoder, and the stream state machines are driven with bytes
and events, so they can be tested exhaustively and in microseconds.
"""
