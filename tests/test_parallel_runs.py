"""Test files that run at the same time in several processes (`make test`: pytest-xdist).

A port the tests' free_port gave out stays kept from every other process until the test's
own server binds it (tests/ports.py); a private redis-server started on a port another server
holds says so instead of the test going on with the other's (tests/redis_server.py); tests
that hold many PostgreSQL connections run one at a time over the run (tests/conftest.py).
"""

from __future__ import annotations

import errno
import fcntl
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests import services
from tests.ports import free_port
from tests.redis_server import PrivateRedis, redis_binary


def test_a_free_port_is_kept_from_other_binds_until_the_server_binds_it() -> None:
    """The port was only free: another process's bind (a test file beside this one starting
    its own server) could be given it in the seconds before vLLM's server, `parley run` or
    redis-server bound it. A bind without SO_REUSEADDR is refused now, as is any bind to port
    0 (the kernel does not hand out a port in TIME_WAIT), while the server's, which sets
    SO_REUSEADDR as every server the tests start does, binds it."""
    port = free_port()
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


def _taken(lock: Path) -> bool:
    with lock.open("a") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
        return False


@pytest.mark.many_connections
def test_a_test_of_many_connections_holds_the_runs_turn(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """test_crash_suite (three `parley run` workers) and test_scale_ordering (62 connections
    at the peak) in two processes at once: the crash suite's workers exited with "PostgreSQL
    has no connection to spare (too many connections)", all five of its tests failed. While
    such a test runs, the turn that every process of the run shares is taken."""
    assert _taken(services.run_folder(tmp_path_factory) / services.MANY_CONNECTIONS_LOCK)


def test_another_process_waits_for_the_turn(tmp_path: Path) -> None:
    """The turn is the run's, not the process's: one process holding it keeps every other
    one's test of many connections waiting, and it is free again once that one is done."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == "held\n"
        assert _taken(tmp_path / services.MANY_CONNECTIONS_LOCK)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
        holder.wait()
    with services.many_connections_turn(tmp_path):
        assert _taken(tmp_path / services.MANY_CONNECTIONS_LOCK)
    assert not _taken(tmp_path / services.MANY_CONNECTIONS_LOCK)


HOLDER = """
import sys
from pathlib import Path
from tests.services import many_connections_turn
with many_connections_turn(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""
