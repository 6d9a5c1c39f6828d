"""The interface every backend's sans-IO stream translator implements."""

from __future__ import annotations

from typing import Protocol

from txrelay.protocol.events import Event


class StreamTranslator(Protocol):
    """
    Turns an upstream response body into Anthropic events, driven like h11.

    The transport calls :meth:`start` when the client's response is committed, then
    :meth:`feed` with each chunk of the upstream body as it arrives, then :meth:`finish` at end
    of input. Every call returns the events to send, in order. Once :attr:`done` is true (the
    stream ended with ``message_stop`` or an ``error`` event), the transport stops reading and
    closes the upstream connection.
    """

    @property
    def done(self) -> bool:
        """Whether the translated stream has ended."""

    def start(self) -> list[Event]:
        """``message_start`` (and a first ``ping``)."""

    def feed(self, data: bytes) -> list[Event]:
        """Translate one chunk of upstream body bytes (arbitrary boundaries)."""

    def finish(self) -> list[Event]:
        """End of the upstream body: close what is open, or report truncation."""
