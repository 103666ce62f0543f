"""The package's own server node (`peerlink.serve`) as the relay, and direct peers."""

from __future__ import annotations

from pathlib import Path

import peerlink

from conftest import DEADLINE, Pair, http_get, next_message


def test_python_clients_through_a_python_served_relay() -> None:
    relay_identity = peerlink.Identity.generate("py-relay")
    with peerlink.serve(relay_identity, trust=peerlink.TrustStore.allow_all()) as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert '"node_id":"py-relay"' in http_get(server.url + "/peers/capabilities").replace(" ", "")
        p = Pair(server.url, "py-relay", relay_identity.public_key)
        try:
            assert p.alice.send_message("bob", b"via python relay").wait(DEADLINE).transport == "websocket"
            assert next_message(p.bob).payload == b"via python relay"
            # Topics hosted by the Python server: it publishes to its own subscribers.
            p.bob.subscribe("alerts")
            n = 0
            got = None
            while got is None:
                n += 1
                assert n < 2000
                server.publish("alerts", {"n": n})
                e = p.bob.recv(timeout=0.05)
                got = e if isinstance(e, peerlink.Topic) else None
            assert got.sender == "py-relay" and got.topic == "alerts"
        finally:
            p.close()


def test_a_client_reaches_a_server_directly(tmp_path: Path) -> None:
    bob_id = peerlink.Identity.generate("bob")
    alice_id = peerlink.Identity.generate("alice")
    tb = peerlink.TrustStore()
    tb.trust("alice", alice_id.public_key)
    with peerlink.serve(bob_id, trust=tb) as bob:
        ta = peerlink.TrustStore()
        ta.trust("bob", bob_id.public_key, url=bob.url)
        with peerlink.Client(alice_id, trust=ta) as alice:
            assert alice.relay_id is None
            alice.send_message("bob", b"direct").wait(DEADLINE)
            m = next_message(bob)
            assert (m.sender, m.payload) == ("alice", b"direct")
