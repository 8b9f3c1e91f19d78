"""How long `parley run` takes to stop on SIGTERM with a queue of notices to send.

    .venv/bin/python -m bench.shutdown_bench

A real `parley run` process with the Telegram adapter, against the stand-in Bot API (which
keeps Telegram's flood limits: one message per second per chat, so 100 notices to one group
take 100 s to send). 100 people who are not allowed write in one group at once; each is owed
one "this bot is private" notice. When the first notice arrives, the process gets SIGTERM.

Figures: seconds from SIGTERM to exit, the exit status, notices sent before the exit.
Target (fixed before measuring): the process exits 0 within `shutdown_grace_s` (8 s) + 2 s,
the 10 s grace that Docker and Kubernetes give before they kill. Exits 1 when it fails.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from pathlib import Path

from bench.entry import run_main
from tests.processes import finish, parley_run
from tests.telegram_api import TOKEN, FakeBotApi
from tests.telegram_updates import text_update

GROUP = -100999
SENDERS = 100
GRACE_S = 8.0
TARGET_S = GRACE_S + 2.0


async def measure(workdir: Path) -> tuple[float, int, int]:
    api = FakeBotApi()
    async with api.serving() as base_url:
        env = {
            "PARLEY_ADAPTERS": "telegram",
            "PARLEY_TELEGRAM__TOKEN": TOKEN,
            "PARLEY_TELEGRAM__BASE_URL": base_url,
            "PARLEY_TELEGRAM__ACCESS__ALLOWED_USERS": "1",
            "PARLEY_SHUTDOWN_GRACE_S": str(GRACE_S),
        }
        async with parley_run(workdir, env) as process:
            for n in range(SENDERS):
                api.push_update(text_update(n + 1, GROUP, f"/help@parley_bot {n}", user_id=n + 2))
            try:
                async with asyncio.timeout(60):
                    await api.wait_for_messages(GROUP, 1)
            except TimeoutError:
                status, err = await finish(process) if process.returncode is not None else (0, "")
                raise SystemExit(f"no notice within 60 s (exit {status}): {err[-2000:]}") from None
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            status, _ = await finish(process)
            took = time.monotonic() - started
        return took, status, len(api.texts(GROUP))


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        took, status, sent = asyncio.run(measure(Path(workdir)))
    print(f"notices owed: {SENDERS} (one group, Telegram allows 1 message/s per chat)")
    print(f"notices sent before exit: {sent}")
    print(f"SIGTERM to exit: {took:.2f} s (target: <= {TARGET_S:.0f} s), exit status {status}")
    ok = status == 0 and took <= TARGET_S
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    run_main("bench.shutdown_bench", main)
