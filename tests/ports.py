"""A free local TCP port that no other process is handed before the test's server binds it.

`make test` runs the suite in several processes (pytest-xdist). A port found free by binding
port 0 and closing the socket is free for anyone: until the server the test starts binds it
(seconds for a vLLM server, `parley run` or redis-server still importing or starting), another
process's bind to port 0 may be given the same port, its server then answering in place of the
test's, or the test's server failing with "Address already in use".

`free_port` leaves the port in TIME_WAIT instead (ephemeral-port-reserve: a connection to it
accepted and closed from the listening side): for the next minute the kernel gives it to no bind
to port 0 and to no outgoing connection, while a server that sets SO_REUSEADDR binds it at once.
Every server the tests start on such a port does: uvicorn, vLLM's, `transformers serve`,
redis-server, and Parley's own (adapters.kit.http, asyncio's create_server). Nothing listens on
it meanwhile: a connection to it is refused.
"""

from __future__ import annotations

from ephemeral_port_reserve import reserve

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A port on `host` that nothing listens on, kept from every other process's bind to port
    0 until a server with SO_REUSEADDR (the test's) binds it."""
    return int(reserve(host))
