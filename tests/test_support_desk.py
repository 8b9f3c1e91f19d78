"""The support channel's desk side over real PostgreSQL and Redis: the real app and desk served
by uvicorn, a help desk's webhook receiver served beside it, and a scripted translating model
at the backend seam (the only double)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent

from bot.storage import migrate
from tests.doubles import ScriptedBackend
from tests.support_helpers import (
    TRANSLATE,
    EventReader,
    GatedBackend,
    Worker,
    bearer,
    data,
    last_user_text,
    new_visitor,
    open_stream,
    support_worker,
    translating,
)
from tests.test_support_desk_webhooks import SECRET, Receiver, docs_verifier, receiver

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ASK = "Ich möchte mit einem Menschen sprechen"
WAITING_TEXT = "Hallo, ist da jemand?"
REPLY = "Your order left our warehouse today and arrives on Friday."
# What the scripted model answers when the core asks it to translate.
TRANSLATIONS = {
    ("German", REPLY): "Ihre Bestellung hat heute unser Lager verlassen und kommt am Freitag an.",
    ("English", WAITING_TEXT): "Hello, is anybody there?",
    ("English", ASK): "I would like to talk to a person",
}


def chat_requests(backend: ScriptedBackend) -> list[str]:
    """The customer texts the model was asked to answer (translations left out)."""
    return [last_user_text(r) for r in backend.requests
            if not TRANSLATE.search(r.messages[0].content)]  # fmt: skip


@pytest.fixture
async def pg(postgres_url: str) -> str:
    await migrate.upgrade(postgres_url)
    return postgres_url


@pytest.fixture
async def hooks() -> AsyncIterator[Receiver]:
    async with receiver() as r:
        yield r


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend(translating(TRANSLATIONS))


@pytest.fixture
async def worker(
    pg: str, redis_url: str, key_prefix: str, hooks: Receiver, backend: ScriptedBackend
) -> AsyncIterator[Worker]:
    async with support_worker(
        pg, redis_url=redis_url, key_prefix=key_prefix, backend=backend,
        webhook={"url": hooks.url, "secret": SECRET}, webhook_backoff_max_s=0.1,
    ) as w:  # fmt: skip
        yield w


async def server_key(worker: Worker, site: str) -> dict[str, str]:
    _, secret = await worker.adapter.sites.add_key(site)
    await worker.adapter.directory.refresh(force=True)
    return bearer(secret)


async def until(
    reader: EventReader, found: Callable[[list[ServerSentEvent]], bool]
) -> list[ServerSentEvent]:
    """Every event so far, once `found` holds for them."""
    async with asyncio.timeout(30), reader.arrived:
        await reader.arrived.wait_for(lambda: found(reader.events))
    return list(reader.events)


def named(name: str, **fields: Any) -> Callable[[list[ServerSentEvent]], bool]:
    def found(events: list[ServerSentEvent]) -> bool:
        return any(e.event == name and fields.items() <= data(e).items() for e in events)

    return found


async def test_a_german_visitor_is_handed_to_an_english_agent_and_back(
    worker: Worker, hooks: Receiver, backend: ScriptedBackend
) -> None:
    verify = docs_verifier()
    site = await worker.add_site("shop", languages=["de", "en"])
    agent = await server_key(worker, "shop")
    async with worker.client() as client:
        client.headers["Accept-Language"] = "de-DE,de;q=0.9"  # a browser in German
        visitor = await new_visitor(client, site)
        who = visitor["visitor_id"]
        auth = bearer(visitor["token"])
        async with open_stream(client, visitor["token"]) as stream:
            # 1. The visitor asks for a person: the stream says so, the help desk is told.
            asked = await client.post("/v1/messages", headers=auth, json={"text": ASK})
            assert asked.status_code == 202, asked.text
            await until(stream, named("handoff", state="waiting", reason="asked"))
            ((headers, requested),) = await hooks.delivered("handoff.requested")
            raw = next(b for h, b in hooks.seen if h["parley-event-id"] == requested["id"])
            assert verify(SECRET, raw, headers["parley-timestamp"], headers["parley-signature"])
            assert requested["conversation"]["visitor_id"] == who
            assert requested["note"]["language"] == "de" and requested["state"] == "waiting"

            # 2. While waiting, the visitor's message is accepted and reaches the agent
            # translated; the bot does not answer it.
            waiting = await client.post("/v1/messages", headers=auth, json={"text": WAITING_TEXT})
            assert waiting.status_code == 202, waiting.text
            ((_, forwarded),) = await hooks.delivered("message.customer")
            assert forwarded["message"]["text"] == WAITING_TEXT
            assert forwarded["message"]["translation"] == "Hello, is anybody there?"

            # 3. The agent takes it and answers in English; the visitor reads German.
            taken = await client.post("/v1/handoff/take", headers=agent,
                                      json={"visitor_id": who, "agent": "Dana"})  # fmt: skip
            assert taken.status_code == 200, taken.text
            assert taken.json()["state"] == "human" and taken.json()["agent"] == "Dana"
            await until(stream, named("handoff", state="human", agent="Dana"))
            posted = await client.post(
                "/v1/handoff/messages", headers={**agent, "Idempotency-Key": "reply-1"},
                json={"visitor_id": who, "agent": "Dana", "text": REPLY},
            )  # fmt: skip
            assert posted.status_code == 202, posted.text
            events = await until(stream, named("agent"))
            (said,) = [data(e) for e in events if e.event == "agent"]
            assert said.pop("reply_to").isdigit()  # the agent's message, as history names it
            assert said == {
                "text": TRANSLATIONS[("German", REPLY)], "name": "Dana", "translated": True,
                "original": REPLY, "language": "en",
            }  # fmt: skip
            # While the agent has it, the visitor's messages reach the agent, not the bot.
            thanks = await client.post("/v1/messages", headers=auth, json={"text": "Danke!"})
            assert thanks.status_code == 202, thanks.text
            forwarded = [p for _, p in await hooks.delivered("message.customer", 2)]
            assert forwarded[1]["message"]["text"] == "Danke!"
            assert forwarded[1]["state"] == "human"
            unanswered = {waiting.json()["message_id"], thanks.json()["message_id"]}
            events = list(stream.events)
            assert not [e for e in events if e.event in ("delta", "answer")
                        and data(e)["reply_to"] in unanswered]  # fmt: skip
            assert {WAITING_TEXT, "Danke!"}.isdisjoint(chat_requests(backend))
            status = await client.get("/v1/handoff", headers=agent, params={"visitor_id": who})
            assert status.json()["state"] == "human"

            # 4. The agent gives it back: the bot answers the next message again.
            back = await client.post("/v1/handoff/give-back", headers=agent,
                                     json={"visitor_id": who, "agent": "Dana"})  # fmt: skip
            assert back.status_code == 200 and back.json()["state"] == "bot"
            await until(stream, named("handoff", state="bot"))
            again = await client.post(
                "/v1/messages", headers=auth, json={"text": "Wo ist meine Bestellung?"}
            )
            answer = {"reply_to": again.json()["message_id"],
                      "text": "You said Wo ist meine Bestellung?"}  # fmt: skip
            events = await until(stream, named("answer", **answer))
            # 5. The history has each change of hands where it happened, with its event's id:
            # a client that shows both (a reload that resumes from an earlier event) shows
            # each note once.
            page = (await client.get("/v1/history", headers=auth)).json()["messages"]
            shown = [m["state"] or m["text"] for m in page if m["role"] in ("user", "handoff")]
            assert shown == [ASK, "waiting", WAITING_TEXT, "human", "Danke!", "bot",
                             "Wo ist meine Bestellung?"]  # fmt: skip
            handoffs = [data(e) for e in events if e.event == "handoff"]
            rows = [m for m in page if m["role"] == "handoff"]
            assert [m["id"] for m in rows] == [h["id"] for h in handoffs]
            assert [m["name"] for m in rows] == ["", "Dana", "Dana"]
            assert all(m["text"] == "" for m in rows)  # the client words it
    await hooks.delivered("handoff.returned")
    kinds = [json.loads(body)["type"] for _, body in hooks.seen]
    assert kinds == ["handoff.requested", "message.customer", "handoff.taken", "message.agent",
                     "message.customer", "handoff.returned"]  # fmt: skip


async def test_the_agent_api_takes_only_the_sites_server_key(worker: Worker) -> None:
    shop = await worker.add_site("shop")
    await worker.add_site("blog")
    shop_key = await server_key(worker, "shop")
    blog_key = await server_key(worker, "blog")
    async with worker.client() as client:
        visitor = await new_visitor(client, shop)
        who = visitor["visitor_id"]
        wrote = await client.post("/v1/messages", headers=bearer(visitor["token"]),
                                  json={"text": "hello"})  # fmt: skip
        assert wrote.status_code == 202
        body = {"visitor_id": who, "agent": "Dana"}
        refused = {
            "no key": await client.post("/v1/handoff/take", json=body),
            "wrong key": await client.post("/v1/handoff/take", json=body,
                                           headers=bearer("sk_" + "x" * 43)),
            "visitor token": await client.post("/v1/handoff/take", json=body,
                                               headers=bearer(visitor["token"])),
            "site key": await client.post("/v1/handoff/take", json=body,
                                          headers=bearer(shop.public_key)),
            "site key header": await client.post("/v1/handoff/take", json=body,
                                                 headers={"X-Parley-Site-Key": shop.public_key}),
            "another site": await client.post("/v1/handoff/take", json=body, headers=blog_key),
            "no such visitor": await client.get("/v1/handoff", headers=shop_key,
                                                params={"visitor_id": "v_nobody"}),
            "bad visitor id": await client.get("/v1/handoff", headers=shop_key,
                                               params={"visitor_id": "v_\x00"}),
            "blank agent": await client.post("/v1/handoff/take", headers=shop_key,
                                             json={**body, "agent": "  "}),
            "bot has it": await client.post("/v1/handoff/messages", headers=shop_key,
                                            json={**body, "text": "Hi"}),
        }  # fmt: skip
        status = await client.get("/v1/handoff", headers=shop_key, params={"visitor_id": who})
    codes = {name: r.status_code for name, r in refused.items()}
    assert codes == {
        "no key": 401, "wrong key": 401, "visitor token": 403, "site key": 403,
        "site key header": 403,
        "another site": 404, "no such visitor": 404, "bad visitor id": 422, "blank agent": 422,
        "bot has it": 409,
    }  # fmt: skip
    for response in refused.values():
        error = response.json()["error"]
        assert error["code"] and 0 < len(error["message"]) < 120
    assert status.status_code == 200 and status.json()["state"] == "bot"


async def test_a_repeated_idempotency_key_posts_the_agents_message_once(worker: Worker) -> None:
    site = await worker.add_site("shop")
    agent = await server_key(worker, "shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        who = visitor["visitor_id"]
        async with open_stream(client, visitor["token"]) as stream:
            await client.post("/v1/messages", headers=bearer(visitor["token"]),
                              json={"text": "hello"})  # fmt: skip
            await until(stream, named("answer"))
            await client.post("/v1/handoff/take", headers=agent,
                              json={"visitor_id": who, "agent": "Dana"})  # fmt: skip

            async def post(key: str, text: str) -> httpx.Response:
                return await client.post(
                    "/v1/handoff/messages", headers={**agent, "Idempotency-Key": key},
                    json={"visitor_id": who, "agent": "Dana", "text": text},
                )  # fmt: skip

            first, repeat = await post("k-1", "One moment."), await post("k-1", "One moment.")
            assert first.status_code == repeat.status_code == 202
            assert first.json()["message_id"] == repeat.json()["message_id"]
            await post("k-2", "Done.")  # a later message: once it is shown, so is any repeat
            events = await until(stream, named("agent", text="Done."))
    assert [data(e)["text"] for e in events if e.event == "agent"] == ["One moment.", "Done."]


async def agent_post(
    client: httpx.AsyncClient, auth: dict[str, str], key: str, **body: str
) -> httpx.Response:
    """POST /v1/handoff/messages with the server key `auth` (and `key` as Idempotency-Key)."""
    headers = {**auth, "Idempotency-Key": key} if key else auth
    return await client.post("/v1/handoff/messages", headers=headers, json=body)


async def taken_visitor(
    client: httpx.AsyncClient, agent: dict[str, str], site: Any
) -> tuple[str, str]:
    """A visitor who wrote once and whose conversation Dana took: (visitor id, token)."""
    visitor = await new_visitor(client, site)
    wrote = await client.post("/v1/messages", headers=bearer(visitor["token"]),
                              json={"text": "hello"})  # fmt: skip
    assert wrote.status_code == 202, wrote.text
    who = visitor["visitor_id"]
    taken = await client.post("/v1/handoff/take", headers=agent,
                              json={"visitor_id": who, "agent": "Dana"})  # fmt: skip
    assert taken.status_code == 200, taken.text
    return who, visitor["token"]


END = "(end of test)"


async def settle(
    client: httpx.AsyncClient, auth: dict[str, str], who: str, stream: EventReader
) -> None:
    """Return once every agent reply posted before is recorded as answered. A reply is
    recorded just after its event is sent, and one conversation's turns run one at a time:
    once a last reply's event arrives, every earlier one is in history."""
    posted = await agent_post(client, auth, "", visitor_id=who, agent="Dana", text=END)
    assert posted.status_code == 202, posted.text
    await until(stream, named("agent", text=END))


async def history(client: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    """The visitor's history, the marker of `settle` left out."""
    page = (await client.get("/v1/history", headers=bearer(token))).json()
    return [m for m in page["messages"] if m["text"] != END]


async def agents_in_history(client: httpx.AsyncClient, token: str) -> list[str]:
    return [m["text"] for m in await history(client, token) if m["role"] == "agent"]


async def test_an_idempotency_key_belongs_to_one_conversation_and_one_body(
    worker: Worker,
) -> None:
    site = await worker.add_site("shop")
    agent = await server_key(worker, "shop")
    async with worker.client() as client:
        a, a_token = await taken_visitor(client, agent, site)
        b, b_token = await taken_visitor(client, agent, site)
        async with (
            open_stream(client, a_token) as a_stream,
            open_stream(client, b_token) as b_stream,
        ):
            one = await agent_post(client, agent, "ticket-42", visitor_id=a, agent="Dana",
                                   text="reply ONE")  # fmt: skip
            # The same key for another visitor is another message, sent to that visitor.
            two = await agent_post(client, agent, "ticket-42", visitor_id=b, agent="Dana",
                                   text="reply TWO")  # fmt: skip
            assert one.status_code == two.status_code == 202, (one.text, two.text)
            assert one.json()["message_id"] != two.json()["message_id"]
            assert two.json()["conversation_id"] == f"shop:{b}"
            await until(b_stream, named("agent", text="reply TWO"))
            # The same key with another text or agent: refused, never a 202 for a message
            # that was not sent; with the same body: the first message's id, sent once.
            other_text = await agent_post(client, agent, "ticket-42", visitor_id=a,
                                          agent="Dana", text="reply THREE")  # fmt: skip
            other_agent = await agent_post(client, agent, "ticket-42", visitor_id=a,
                                           agent="Sam", text="reply ONE")  # fmt: skip
            again = await agent_post(client, agent, "ticket-42", visitor_id=a, agent="Dana",
                                     text="reply ONE")  # fmt: skip
            for refused in (other_text, other_agent):
                assert refused.status_code == 422, refused.text
                assert refused.json()["error"]["code"] == "idempotency_mismatch"
            assert again.status_code == 202 and again.json() == one.json()
            later = await agent_post(client, agent, "ticket-43", visitor_id=a, agent="Dana",
                                     text="Done.")  # fmt: skip
            assert later.status_code == 202, later.text
            events = await until(a_stream, named("agent", text="Done."))
            await settle(client, agent, a, a_stream)
            await settle(client, agent, b, b_stream)
        assert [data(e)["text"] for e in events if e.event == "agent"] == ["reply ONE", "Done."]
        assert await agents_in_history(client, a_token) == ["reply ONE", "Done."]
        assert await agents_in_history(client, b_token) == ["reply TWO"]


async def test_history_shows_an_agents_reply_as_its_event_did(worker: Worker) -> None:
    site = await worker.add_site("shop", languages=["de", "en"])
    agent = await server_key(worker, "shop")
    async with worker.client() as client:
        client.headers["Accept-Language"] = "de-DE,de;q=0.9"
        visitor = await new_visitor(client, site)
        who, auth = visitor["visitor_id"], bearer(visitor["token"])
        async with open_stream(client, visitor["token"]) as stream:
            await client.post("/v1/messages", headers=auth, json={"text": ASK})
            await until(stream, named("handoff", state="waiting"))
            # A reply while it waits takes it.
            for key, text in (("r-1", REPLY), ("r-2", "OK")):
                posted = await agent_post(client, agent, key, visitor_id=who, agent="Dana",
                                          text=text)  # fmt: skip
                assert posted.status_code == 202, posted.text
            await settle(client, agent, who, stream)
        messages = await history(client, visitor["token"])
    german = TRANSLATIONS[("German", REPLY)]
    # The visitor's question, the bot's "handing you over", the changes of hands (a person
    # asked for, the agent's reply takes it), then the agent's two replies.
    assert [m["role"] for m in messages] == [
        "user",
        "assistant",
        "handoff",
        "handoff",
        "agent",
        "agent",
    ]
    assert messages[0]["text"] == ASK
    said = [data(e) for e in stream.events if e.event == "agent" and data(e)["text"] != END]
    fields = ("text", "name", "translated", "original")
    shown = [{k: m[k] for k in fields} for m in messages if m["role"] == "agent"]
    assert shown == [{k: e[k] for k in fields} for e in said]
    assert shown[0] == {"text": german, "name": "Dana", "translated": True, "original": REPLY}
    assert all(m["sources"] == [] for m in messages if m["role"] == "agent")


async def test_an_agent_cannot_pass_for_the_bot_nor_take_another_agents_conversation(
    worker: Worker,
) -> None:
    site = await worker.add_site("shop")
    agent = await server_key(worker, "shop")
    async with worker.client() as client:
        who, _ = await taken_visitor(client, agent, site)

        async def take(name: str, **more: Any) -> httpx.Response:
            body = {"visitor_id": who, "agent": name, **more}
            return await client.post("/v1/handoff/take", headers=agent, json=body)

        for bot in ("Parley", "PARLEY", " parley.", "Ｐａｒｌｅｙ"):
            named_so = await take(bot, force=True)
            assert named_so.status_code == 422, (bot, named_so.text)
            said = await agent_post(client, agent, "", visitor_id=who, agent=bot, text="Hi")
            assert said.status_code == 422, (bot, said.text)
            assert "bot's name" in said.json()["error"]["message"]
        sam = await take("Sam")
        assert sam.status_code == 409 and sam.json()["error"]["code"] == "taken", sam.text
        assert (await take("Dana")).json()["agent"] == "Dana"  # the one who has it: fine
        forced = await take("Sam", force=True)
        assert forced.status_code == 200 and forced.json()["agent"] == "Sam", forced.text
        status = await client.get("/v1/handoff", headers=agent, params={"visitor_id": who})
    assert status.json()["agent"] == "Sam"


async def test_an_agent_taking_the_conversation_stops_the_bots_reply_in_flight(
    pg: str, redis_url: str, key_prefix: str, hooks: Receiver
) -> None:
    """The handoff state was read when a turn began, so the bot went on streaming its answer
    after "You are talking with Dana". A take stops it, as /stop does (the model aborts it)."""
    model = GatedBackend(["Bot ", "answer ", "part ", "two."])
    async with support_worker(
        pg, redis_url=redis_url, key_prefix=key_prefix, backend=model,
        webhook={"url": hooks.url, "secret": SECRET}, webhook_backoff_max_s=0.1,
    ) as w:  # fmt: skip
        site = await w.add_site("shop")
        agent = await server_key(w, "shop")
        async with w.client() as client:
            visitor = await new_visitor(client, site)
            async with open_stream(client, visitor["token"]) as stream:
                asked = await client.post(
                    "/v1/messages", headers=bearer(visitor["token"]), json={"text": "Order?"}
                )
                assert asked.status_code == 202
                model.release(1)
                await until(stream, named("delta", text="Bot "))
                taken = await client.post("/v1/handoff/take", headers=agent,
                                          json={"visitor_id": visitor["visitor_id"],
                                                "agent": "Dana"})  # fmt: skip
                assert taken.status_code == 200, taken.text
                model.release(10)
                answer = (await stream.until_answers(1))[-1]
    assert answer.event == "answer"
    assert data(answer)["text"] == "Bot \n\n[Stopped.]"


async def test_history_pages_put_a_change_of_hands_where_the_whole_history_does(
    worker: Worker, hooks: Receiver
) -> None:
    """The answer that asked for a person comes before its `waiting` note in the history; on a
    page whose visitor message is on the older page (`limit=1`: the answer alone), the note
    came before the answer instead, so "Show earlier messages" showed another order than a
    reload."""
    site = await worker.add_site("shop", languages=["de", "en"])
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        auth = bearer(visitor["token"])
        async with open_stream(client, visitor["token"]) as stream:
            asked = await client.post("/v1/messages", headers=auth, json={"text": ASK})
            assert asked.status_code == 202, asked.text
            await until(stream, named("handoff", state="waiting", reason="asked"))
        async with asyncio.timeout(30):  # the answer is recorded just after its last event
            while True:
                whole = (await client.get("/v1/history", headers=auth)).json()["messages"]
                if any(m["role"] == "assistant" for m in whole):
                    break
                await asyncio.sleep(0.05)
        assert [m["role"] for m in whole] == ["user", "assistant", "handoff"]
        pages: list[list[str]] = []
        params: dict[str, Any] = {"limit": 1}
        while True:
            page = (await client.get("/v1/history", headers=auth, params=params)).json()
            pages.insert(0, [m["id"] for m in page["messages"]])
            if page["next"] is None:
                break
            params["before"] = page["next"]
        assert [i for p in pages for i in p] == [m["id"] for m in whole]
