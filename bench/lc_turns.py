"""LangChain's side of bench.turn_overhead, run by LangChain's own interpreter:
`RunnableWithMessageHistory` over `RedisChatMessageHistory`, around the bare client's call.

`python bench/lc_turns.py BASE_URL REDIS_URL KEY_PREFIX SEQUENTIAL TOGETHER` prints the turn
times as JSON (see bare_client.measure).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from langchain_community.chat_message_histories import RedisChatMessageHistory
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory

sys.path.insert(0, str(Path(__file__).parent))
from bare_client import Bare, complete, measure, new_client

_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


async def main(base_url: str, redis_url: str, prefix: str, sequential: int, together: int) -> None:
    async with new_client(base_url) as client:

        async def model(messages: list[BaseMessage]) -> AIMessage:
            wire = [{"role": _ROLES[m.type], "content": str(m.content)} for m in messages]
            return AIMessage(await complete(client, wire))

        def history(session_id: str) -> RedisChatMessageHistory:
            return RedisChatMessageHistory(session_id, url=redis_url, key_prefix=prefix)

        chain = RunnableWithMessageHistory(
            RunnableLambda(lambda _m: None, afunc=model),  # type: ignore[arg-type]
            history,
        )

        async def stack(conversation: str, text: str) -> None:
            config: Any = {"configurable": {"session_id": conversation}}
            await chain.ainvoke([HumanMessage(text)], config=config)

        found = await measure(Bare(client).turn, stack, sequential, together)
    print(json.dumps(found))


if __name__ == "__main__":
    url, redis, prefix, seq, tog = sys.argv[1:6]
    asyncio.run(main(url, redis, prefix, int(seq), int(tog)))
