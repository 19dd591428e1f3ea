"""The connection layer of ``pad serve`` (uvicorn's h11 protocol, three bounds added): every
client reads its answer, and idle sockets cannot crowd out the line.

- **Lingering close.** An answer given before the request's body has arrived whole (413 for an
  upload over ``--max-upload-mb``, 401, 503, 408, 400) is sent at once; if the connection is then
  to be closed, the service first closes only its sending side and reads and discards what the
  client still sends, until the client closes, :func:`drain_bytes` bytes or ``DRAIN_SECONDS`` have
  passed, and only then closes. Closing while unread bytes are still arriving makes the kernel
  reset the connection, and a client that sends its whole body before it reads (Python's
  ``urllib``/``http.client``, which also asks for ``Connection: close``) then gets ``Connection reset
  by peer`` instead of the 413 (nginx and Apache linger the same way). On a kept-alive connection
  uvicorn discards the rest of the body itself; the same bounds apply there.
- **A deadline for a request's headers** (``--header-timeout``): a connection that has not sent a
  complete request line and headers that many seconds after it opened, or after its previous
  answer, is closed (uvicorn alone keeps a socket that never sends anything for ever; the size of
  the headers is bounded by h11, 16 KiB).
- **A cap on open connections** (``--max-connections``): at the cap, a new connection pushes out
  the oldest one that is waiting for a request (idle, or slow with its headers); when every open
  connection is in a request, the new one's request is answered 503 (uvicorn's
  ``limit_concurrency``). Hundreds of idle sockets thus never keep ``/health`` or ``/predict`` from
  an answer.
"""
from __future__ import annotations

import time

DRAIN_SECONDS = 5.0          # longest time spent reading a body nobody will use
DRAIN_FLOOR = 64 << 20       # bytes (64 MiB) drained at least, whatever the upload limit


def drain_bytes(limit: int) -> int:
    """Bytes of an unwanted body read and discarded: 4 × the upload limit, at least 64 MiB."""
    return max(4 * int(limit), DRAIN_FLOOR)


class _Lingering:
    """A transport whose ``close`` is the protocol's lingering close (everything else is the
    transport's own)."""

    def __init__(self, transport, protocol):
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol._linger()

    def is_closing(self) -> bool:
        return self._protocol._lingering or self._transport.is_closing()


def protocol_class(max_connections: int, header_timeout: float, drain_limit: int,
                   drain_seconds: float = DRAIN_SECONDS):
    """uvicorn's h11 protocol with a lingering close, a deadline for each request's headers and a
    cap on open connections (see the module docstring); pass it as ``uvicorn.Config(http=...)``
    together with ``limit_concurrency=max_connections + 1``. ``drain_limit``: bytes of an unwanted
    body read at most (:func:`drain_bytes`)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._raw = transport
            self.transport = _Lingering(transport, self)
            self._opened = time.monotonic()
            self._lingering = False
            self._discarded = 0
            self._timer = None
            self._arm(header_timeout, self._headers_late)
            if len(self.connections) > max_connections:
                waiting = [c for c in self.connections
                           if c is not self and getattr(c, "_awaiting_request", lambda: False)()]
                if waiting:
                    min(waiting, key=lambda c: c._opened)._close_now()

        def _awaiting_request(self) -> bool:
            """No request in progress: the headers of the next one have not all arrived."""
            return (self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)
                    and not self.transport.is_closing())

        def _discarding(self) -> bool:
            """The answer is out but the client is still sending its request's body."""
            return self.conn.their_state is h11.SEND_BODY and self.conn.our_state in (h11.DONE, h11.MUST_CLOSE,
                                                                                       h11.CLOSED)

        def _arm(self, seconds: float, action) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, action)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _headers_late(self) -> None:
            self._timer = None
            if self._awaiting_request() or self._discarding():
                self._close_now()

        def _linger(self) -> None:
            """uvicorn closes: at once, unless the client is still sending a body; then stop
            sending, read and drop the rest (bounded), and close after."""
            if self._lingering or self._raw.is_closing():
                return
            if not self._discarding():
                self._close_now()
                return
            self._lingering = True
            self._raw.resume_reading()
            if self._raw.can_write_eof():
                self._raw.write_eof()              # FIN once the answer is flushed
            self._arm(drain_seconds, self._close_now)

        def _close_now(self) -> None:
            self._disarm()
            if not self._raw.is_closing():
                if self.conn.our_state not in (h11.CLOSED, h11.ERROR):
                    try:
                        self.conn.send(h11.ConnectionClosed())
                    except h11.LocalProtocolError:
                        pass
                self._raw.close()

        def data_received(self, data: bytes) -> None:
            if self._lingering or self._discarding():
                self._discarded += len(data)
                if self._discarded > drain_limit:
                    self._close_now()
                    return
                if self._lingering:
                    return
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and self._timer is not None and not self._lingering:
                self._disarm()                    # the request's headers are in

        def eof_received(self):
            if self._lingering:
                self._close_now()
            return super().eof_received()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm(header_timeout, self._headers_late)

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return BoundedH11Protocol
