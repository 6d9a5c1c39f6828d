# -*- test-case-name: tests.server.test_directwrite -*-
"""
Writing to a TCP socket at once when nothing is waiting to be sent.

Twisted's ``transport.write`` only appends to a buffer and registers the socket for writing;
the bytes leave on the reactor's next turn (``doWrite``), and the socket is unregistered again
when the buffer empties. For a streamed reply that writes one small frame per upstream read,
that is two ``epoll_ctl`` calls and a second pass through the reactor per frame, and the
frame waits for that pass. :func:`write_now` sends instead, when the transport is a plain TCP
connection with nothing buffered; whatever the kernel does not take is handed to the
transport's own buffer as usual, so its flow control (pausing the producer when the buffer
fills, resuming it when it drains) and its error handling are unchanged.

It relies on these attributes of ``twisted.internet.abstract.FileDescriptor`` and
``twisted.internet.tcp.Connection`` (checked by ``tests/server/test_directwrite.py::
test_twisted_private_contract``): ``socket``, ``connected``, ``disconnecting``,
``_writeDisconnecting``, ``_writeDisconnected``, ``TLS`` (true once ``startTLS`` layered TLS
on the connection), ``dataBuffer`` and ``offset`` (bytes handed to ``writeSomeData`` but not
sent yet: ``dataBuffer[offset:]``), ``_tempDataBuffer`` / ``_tempDataLen`` (bytes written
since, not yet tried) and ``_maybePauseProducer()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import tcp


def write_now(transport: Any, chunks: Sequence[bytes]) -> bool:
    """
    Send ``chunks`` on ``transport`` now, after anything written to it but not yet tried
    (response headers, say), if it is a plain TCP connection with no unsent bytes from an
    earlier send. What the socket does not take goes to the transport's buffer.

    :return: whether it took the data; if not, write it the usual way.
    """
    # A plain, open TCP connection whose last send left nothing behind (inline: this runs
    # once per streamed frame).
    if not (isinstance(transport, tcp.Connection)
            and not transport.TLS
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnecting
            and not transport._writeDisconnected
            and transport.offset == len(transport.dataBuffer)):
        return False
    pending: list[bytes] = transport._tempDataBuffer
    if pending:
        data = b"".join([*pending, *chunks])
    elif len(chunks) == 1:
        data = chunks[0]
    else:
        data = b"".join(chunks)
    if not data:
        return True
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        # A broken connection: the transport's own write path reports it (on its next
        # doWrite) the way it always does.
        return False
    if pending:
        transport._tempDataBuffer = []
        transport._tempDataLen = 0
    if sent < len(data):
        # The kernel's buffer is full: leave the rest as doWrite leaves a partial send, so
        # the transport sends it when the socket drains, later writes queue behind it (and
        # write_now declines them), and the producer is paused past bufferSize.
        transport.dataBuffer = data
        transport.offset = sent
        transport.startWriting()
        transport._maybePauseProducer()
    elif pending and not transport.producerPaused:
        # The pending bytes had registered the socket for writing; nothing is left for it.
        # (A paused producer is resumed by the transport's next doWrite, which finds the
        # buffer empty: leave it registered for that.)
        transport.stopWriting()
    return True

