"""Test files that run at the same time in several processes (`make test`: pytest-xdist).

A port the tests' free_port gave out stays kept from every other process until the test's
own server binds it (tests/ports.py); a private redis-server started on a port another server
holds says so instead of the test going on with the other's (tests/redis_server.py).
"""

from __future__ import annotations

import errno
import socket

import pytest

from tests import fixtures_vllm, redis_server
from tests.redis_server import PrivateRedis, redis_binary


@pytest.mark.parametrize("helper", [redis_server.free_port, fixtures_vllm.free_port])
def test_a_free_port_is_kept_from_other_binds_until_the_server_binds_it(helper: object) -> None:
    """The port was only free: another process's bind (a test file beside this one starting
    its own server) could be given it in the seconds before vLLM's server, `parley run` or
    redis-server bound it. A bind without SO_REUSEADDR is refused now, as is any bind to port
    0 (the kernel does not hand out a port in TIME_WAIT), while the server's, which sets
    SO_REUSEADDR as every server the tests start does, binds it."""
    assert callable(helper)
    port = helper()
    assert isinstance(port, int)
    with socket.socket() as other, pytest.raises(OSError) as refused:
        other.bind(("127.0.0.1", port))
    assert refused.value.errno == errno.EADDRINUSE
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(1)
    with socket.socket() as client:  # nothing listened there meanwhile
        assert client.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED


async def test_a_private_redis_on_a_port_another_server_holds_does_not_take_its_pong(
    private_redis: PrivateRedis,
) -> None:
    """Its redis-server exited at once ("Address already in use") and the other server's PONG
    was taken for its own: the test then killed and froze a server that was not there, and
    wrote into the other test's Redis."""
    late = PrivateRedis(redis_binary(), private_redis.port)
    with pytest.raises(pytest.fail.Exception, match=rf"port {private_redis.port} is taken"):
        await late.start()
    await late.kill()
