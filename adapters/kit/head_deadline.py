"""uvicorn's h11 protocol with a time limit on a request's line and headers.

uvicorn times the wait between two requests on a kept-alive connection (until a byte of the
next one comes) and Parley times a body (`http.body_timeout_s`, adapters/kit/http.py), but
nothing timed a head: a connection that sent nothing, or a header byte now and then
(slowloris), was held for as long as its client liked, and enough of them used up the
worker's file descriptors, refusing every other client. Here a head must arrive whole within
`timeout_s` of its first byte (a new connection's: of the connection): else 408 and the
connection closed, or closed without a word where nothing of it came.
"""

from __future__ import annotations

import asyncio
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


def head_deadline_protocol(timeout_s: float) -> type[H11Protocol]:
    """The protocol class for uvicorn.Config(http=...), with `timeout_s` for each head."""
    return type("HeadDeadlineH11", (HeadDeadlineH11,), {"head_timeout_s": timeout_s})


class HeadDeadlineH11(H11Protocol):
    head_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._parley_partial = False  # a head began (else the deadline is for silence)
        self._parley_leftover = False  # armed for the rest of a body its answer did not wait for
        self._parley_deadline: asyncio.TimerHandle | None = None
        self._parley_arm()

    def data_received(self, data: bytes) -> None:
        waiting = self._parley_between_requests()
        if waiting and self.conn.their_state is not h11.IDLE:
            # The rest of a body whose request was answered without it (h11 skips it): no
            # head, no 408 for it, but timed, as uvicorn stops timing the connection at each
            # byte. Taken for a head, it had a 408 written after the answer, on a connection
            # with no request.
            if self._parley_deadline is None:
                self._parley_arm()
                self._parley_leftover = True
        elif waiting:
            self._parley_head_begins()
        super().data_received(data)
        # The head is in: a request, or an upgrade (a websocket: another protocol from now on).
        upgraded = self.transport.get_protocol() is not self
        if waiting and (upgraded or not self._parley_between_requests()):
            self._parley_disarm()
        elif waiting and self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._parley_head_begins()  # after such a body's end, in the same bytes

    def _parley_head_begins(self) -> None:
        """A head's first byte: its deadline counts from here (a new connection's: from the
        connection)."""
        if self._parley_partial:
            return
        if self._parley_leftover or self._parley_deadline is None:
            self._parley_disarm()
            self._parley_arm()
        self._parley_partial = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._parley_disarm()
        super().connection_lost(exc)

    def _parley_between_requests(self) -> bool:
        # As uvicorn's own shutdown() tells a connection between requests from one in a request.
        return self.cycle is None or self.cycle.response_complete

    def _parley_arm(self) -> None:
        self._parley_deadline = self.loop.call_later(self.head_timeout_s, self._parley_expired)

    def _parley_disarm(self) -> None:
        if self._parley_deadline is not None:
            self._parley_deadline.cancel()
        self._parley_deadline = None
        self._parley_partial = self._parley_leftover = False

    def _parley_expired(self) -> None:
        self._parley_deadline = None
        if self.transport.is_closing() or not self._parley_between_requests():
            return
        if self._parley_partial:
            # Written as it is, outside h11: h11 answers nothing before a request's head, and
            # the connection is closed next.
            self.transport.write(_too_slow(self.head_timeout_s))
            # DEBUG: any client may cause many (the 408 is its answer).
            log.debug("http: a request's head did not arrive within %gs; 408", self.head_timeout_s)
        self.transport.close()


def _too_slow(timeout_s: float) -> bytes:
    message = f"the request line and headers did not arrive within {timeout_s:g} s"
    body = json.dumps({"error": {"code": "request_timeout", "message": message}}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body
