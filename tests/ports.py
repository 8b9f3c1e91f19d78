"""A free local TCP port that no other process is handed before the test's server binds it.

`make test` runs the suite in several processes (pytest-xdist). A port found free by binding
port 0 and closing the socket is free for anyone: until the server the test starts binds it
(seconds for a vLLM server, `parley run` or redis-server still importing or starting), another
process's bind to port 0 may be given the same port, its server then answering in place of the
test's, or the test's server failing with "Address already in use".

`free_port` leaves the port in TIME_WAIT instead (a connection to it accepted and closed from
the listening side, as the ephemeral-port-reserve package does): for the next minute the kernel
gives it to no bind to port 0 and to no outgoing connection, while a server that sets
SO_REUSEADDR binds it at once. Every server the tests start on such a port does: uvicorn,
vLLM's, `transformers serve`, redis-server, and Parley's own (adapters.kit.http, asyncio's
create_server). Nothing listens on it meanwhile: a connection to it is refused.
"""

from __future__ import annotations

import contextlib
import socket

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A port on `host` that nothing listens on, kept from every other process's bind to port
    0 until a server with SO_REUSEADDR (the test's) binds it."""
    with contextlib.ExitStack() as stack:
        listening = stack.enter_context(socket.socket())
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, 0))
        listening.listen(1)
        address = listening.getsockname()
        client = stack.enter_context(socket.socket())
        client.connect(address)
        accepted, _ = listening.accept()
        # Closed first, the accepted side (local port: the one given out) is the one that
        # waits in TIME_WAIT; the client's port is the client's.
        accepted.close()
        port: int = address[1]
        return port
