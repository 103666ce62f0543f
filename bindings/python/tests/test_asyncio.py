"""asyncio: thousands of messages from several tasks arrive exactly once, in each task's
order; `async for`, awaited delivery, requests and cancellation."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Dict, List

import pytest

import peerlink

from conftest import DEADLINE, Relay


async def _pair(relay: Relay) -> "tuple[peerlink.AsyncClient, peerlink.AsyncClient]":
    a_id, b_id = peerlink.Identity.generate("alice"), peerlink.Identity.generate("bob")
    ta, tb = peerlink.TrustStore(), peerlink.TrustStore()
    ta.trust("bob", b_id.public_key)
    tb.trust("alice", a_id.public_key)
    bob = await peerlink.AsyncClient.connect(b_id, relay.url, trust=tb)
    alice = await peerlink.AsyncClient.connect(a_id, relay.url, trust=ta)
    await bob.init_websocket_connection()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not await bob.is_websocket_connected():
        assert loop.time() < deadline, "bob's link"
        await asyncio.sleep(0.01)
    return alice, bob


def test_thousands_of_messages_from_several_tasks_arrive_exactly_once(relay: Relay) -> None:
    tasks, per_task = 6, 500

    async def main() -> None:
        alice, bob = await _pair(relay)
        async with alice, bob:

            async def sender(t: int) -> List[peerlink.Receipt]:
                receipts: List[peerlink.Receipt] = []
                oldest = 0
                for n in range(per_task):
                    while True:
                        try:
                            receipts.append(await alice.send_message("bob", b"%d:%d" % (t, n)))
                            break
                        except peerlink.OutboxFullError:
                            # Backpressure: the outbox (1024 messages) is full; wait for an
                            # earlier message of this task to be delivered, then send again.
                            assert oldest < len(receipts), "full, with none of ours in it"
                            await receipts[oldest].delivered(DEADLINE)
                            oldest += 1
                return receipts

            async def receiver() -> List[bytes]:
                got: List[bytes] = []
                async for m in bob.messages():
                    got.append(m.payload)
                    if len(got) == tasks * per_task:
                        return got
                return got

            rx = asyncio.ensure_future(receiver())
            sent = await asyncio.wait_for(
                asyncio.gather(*(sender(t) for t in range(tasks))), DEADLINE * 2
            )
            got = await asyncio.wait_for(rx, DEADLINE * 2)
            # Every receipt ends delivered.
            for receipts in sent:
                for r in receipts[-3:]:
                    assert (await r.delivered(DEADLINE)).to == "bob"
            ids = [r.id for receipts in sent for r in receipts]
            assert len(set(ids)) == tasks * per_task

            counts = Counter(got)
            assert len(counts) == tasks * per_task and set(counts.values()) == {1}
            last: Dict[int, int] = {}
            for p in got:
                t, n = map(int, p.split(b":"))
                assert n == last.get(t, -1) + 1, "each task's messages in its order"
                last[t] = n
            # Nothing more comes: no duplicate after the last.
            while True:
                extra = await bob.recv(timeout=1.0)
                if extra is None:
                    break
                assert not isinstance(extra, peerlink.Message), f"a duplicate: {extra}"

    asyncio.run(main())


def test_async_requests_and_awaited_delivery(relay: Relay) -> None:
    async def main() -> None:
        alice, bob = await _pair(relay)
        async with alice, bob:

            async def serve_requests() -> None:
                async for e in bob:
                    if isinstance(e, peerlink.Request):
                        await bob.respond(e, b"RESULT " + e.payload)

            server = asyncio.ensure_future(serve_requests())
            answers = await asyncio.gather(
                *(alice.request("bob", b"task %d" % i, timeout=DEADLINE) for i in range(5))
            )
            assert sorted(answers) == [b"RESULT task %d" % i for i in range(5)]
            result = await alice.send_and_wait("bob", b"confirm", timeout=DEADLINE)
            assert result.transport in ("websocket", "http")
            server.cancel()
            with pytest.raises(asyncio.CancelledError):
                await server

    asyncio.run(main())


def test_a_cancelled_wait_loses_no_event(relay: Relay) -> None:
    async def main() -> None:
        alice, bob = await _pair(relay)
        async with alice, bob:
            for round_ in range(5):
                waiter = asyncio.ensure_future(bob.recv(timeout=DEADLINE))
                await asyncio.sleep(0)  # let it start waiting in its thread
                waiter.cancel()
                receipt = await alice.send_message("bob", b"round %d" % round_)
                await receipt.delivered(DEADLINE)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + DEADLINE
                while True:
                    e = await bob.recv(timeout=max(0.0, deadline - loop.time()))
                    assert e is not None, "the message was lost"
                    if isinstance(e, peerlink.Message):
                        break
                assert e.payload == b"round %d" % round_

    asyncio.run(main())
