"""Hostile review of the support channel (prefix hsup): the real app and support adapter
served by uvicorn over real PostgreSQL and Redis, as an attacker would call them. Each test
failed before its fix."""

from __future__ import annotations

import pytest

from bot.storage import migrate
from tests.support_helpers import support_worker

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
async def pg(postgres_url: str) -> str:
    await migrate.upgrade(postgres_url)
    return postgres_url


async def test_one_ipv6_network_is_one_address_for_the_limits(
    pg: str, redis_url: str, key_prefix: str
) -> None:
    """A client on IPv6 holds a whole /64 (a home line, any rented server) and picks its
    source address in it at will: counted per address, each of its requests came from a new
    address, so `ip_requests` (and `streams_per_address`) never held it. Counted per /64 now;
    an IPv4 client seen as an IPv4-mapped IPv6 address (a dual-stack listener) is still
    counted alone, not with every other IPv4 client. The addresses arrive as a proxy on the
    same machine names them (X-Forwarded-For, which uvicorn trusts from loopback)."""
    async with support_worker(
        pg, redis_url=redis_url, key_prefix=key_prefix, ip_requests=3, rate_window_s=20
    ) as w:
        site = await w.add_site("shop")
        async with w.client() as client:

            async def new_visitor_from(address: str) -> int:
                headers = {"X-Parley-Site-Key": site.public_key, "X-Forwarded-For": address}
                return (await client.post("/v1/visitors", headers=headers)).status_code

            rotated = [await new_visitor_from(f"2001:db8:1:2::{n:x}") for n in range(1, 5)]
            other_network = await new_visitor_from("2001:db8:1:3::1")
            mapped = [await new_visitor_from(f"::ffff:192.0.2.{n}") for n in range(1, 5)]
    assert rotated == [201, 201, 201, 429]
    assert other_network == 201
    assert mapped == [201, 201, 201, 201]
