"""WebSocket cut on the way, HTTP fallback, and HTTP only."""

from __future__ import annotations

from typing import List

import peerlink

from conftest import DEADLINE, CuttableProxy, Pair, Relay, next_message, wait_until


def test_a_cut_websocket_falls_back_to_http_and_nothing_is_lost(relay: Relay) -> None:
    proxy = CuttableProxy(relay.url)
    # Alice reaches the relay through the proxy; Bob directly.
    p = Pair(relay.url, relay.entity_id, relay.public_key)
    p.alice.close()
    ta = peerlink.TrustStore()
    ta.trust("bob", p.bob_id.public_key)
    alice = peerlink.Client(
        p.alice_id, proxy.url, relay_id=relay.entity_id, relay_key=relay.public_key, trust=ta
    )
    try:
        assert alice.send_message("bob", b"before").wait(DEADLINE).transport == "websocket"
        proxy.cut_websockets()
        results: List[peerlink.TransportResult] = []
        for n in range(20):
            results.append(alice.send_message("bob", b"after %d" % n).wait(DEADLINE))
        assert results[-1].transport == "http", [r.transport for r in results]
        got = [next_message(p.bob).payload for _ in range(21)]
        assert got == [b"before"] + [b"after %d" % n for n in range(20)], "in order, exactly once"
        stats = alice.transport_stats()
        assert stats is not None and stats.fallbacks >= 1 and stats.http_messages_sent > 0
        # The node keeps trying to reconnect its WebSocket (with backoff), and is refused.
        wait_until(lambda: proxy.upgrades_refused >= 1, "a WebSocket reconnect attempt")
        assert alice.send_message("bob", b"still http").wait(DEADLINE).transport == "http"
        assert next_message(p.bob).payload == b"still http"
        # The WebSocket may come back: traffic returns to it once it is stable.
        proxy.allow_websockets()
        alice.init_websocket_connection()
        wait_until(alice.is_websocket_connected, "the WebSocket back")
        alice.send_message("bob", b"back").wait(DEADLINE)
        assert next_message(p.bob).payload == b"back"
        extra = p.bob.try_recv()
        assert not isinstance(extra, peerlink.Message), f"a duplicate: {extra}"
    finally:
        alice.close()
        p.bob.close()
        proxy.close()


def test_http_only_sends_no_websocket_frame(relay: Relay) -> None:
    p = Pair(
        relay.url, relay.entity_id, relay.public_key, preference=peerlink.TransportPreference.HTTP_ONLY
    )
    try:
        r = p.alice.send_message("bob", b"by HTTP only", prefer_websocket=True).wait(DEADLINE)
        assert r.transport == "http"
        assert next_message(p.bob).payload == b"by HTTP only"
        stats = p.alice.transport_stats()
        assert stats is not None and stats.ws_messages_sent == 0 and stats.http_messages_sent > 0
        assert not p.alice.is_websocket_connected()
    finally:
        p.close()
