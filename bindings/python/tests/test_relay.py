"""Python <-> Python through a Rust relay (`peerlink serve`): messages, a 4 MiB message,
requests, topics, the transport controls and statistics, and bad input on a running node."""

from __future__ import annotations

import os
import threading

import pytest

import peerlink

from conftest import DEADLINE, Pair, Relay, next_message, wait_until


def test_alice_sends_to_bob_through_the_rust_relay(pair: Pair) -> None:
    receipt = pair.alice.send_message("bob", b"hello bob")
    assert receipt.to == "bob" and receipt.id
    result = receipt.wait(timeout=DEADLINE)
    assert isinstance(result, peerlink.TransportResult)
    assert (result.to, result.id, result.transport) == ("bob", receipt.id, "websocket")
    assert result.elapsed >= 0
    m = next_message(pair.bob)
    assert (m.sender, m.payload, m.kind, m.id) == ("alice", b"hello bob", "PEER_MESSAGE", receipt.id)
    # And back, with an application type and as bytearray.
    pair.bob.send_message("alice", bytearray(b"hi alice"), app_type="TASK_RESPONSE").wait(DEADLINE)
    back = next_message(pair.alice)
    assert (back.sender, back.payload, back.app_type) == ("bob", b"hi alice", "TASK_RESPONSE")
    assert receipt.done()


def test_a_4_mib_message_arrives_whole(pair: Pair) -> None:
    payload = os.urandom(4 * 1024 * 1024)
    pair.alice.send_message("bob", payload).wait(timeout=DEADLINE)
    m = next_message(pair.bob)
    assert len(m.payload) == len(payload) and m.payload == payload


def test_requests_are_answered(pair: Pair) -> None:
    def answer() -> None:
        for _ in range(3):
            e = pair.bob.recv(timeout=DEADLINE)
            while not isinstance(e, peerlink.Request):
                e = pair.bob.recv(timeout=DEADLINE)
            pair.bob.respond(e, b"done: " + e.payload)

    t = threading.Thread(target=answer)
    t.start()
    for n in range(3):
        assert pair.alice.request("bob", b"task %d" % n, timeout=DEADLINE) == b"done: task %d" % n
    t.join(DEADLINE)
    # Nobody answers: a timeout, under both names.
    with pytest.raises(TimeoutError):
        pair.alice.request("bob", b"ignored", timeout=0.5)


def test_topics_on_the_relay(pair: Pair, relay: Relay) -> None:
    pair.bob.subscribe("news")
    pair.alice.init_websocket_connection()
    wait_until(pair.alice.is_websocket_connected, "alice's link")
    # A publication is not acknowledged, and the subscription travels on its own: publish
    # until Bob has one (every try is a distinct value), then check what came.
    got = None
    n = 0
    while got is None:
        n += 1
        assert n < 2000, "no publication reached bob"
        pair.alice.publish("news", {"n": n, "text": "héllo"})
        e = pair.bob.recv(timeout=0.05)
        while e is not None and not isinstance(e, peerlink.Topic):
            e = pair.bob.recv(timeout=0.05)
        got = e
    assert isinstance(got, peerlink.Topic)
    assert (got.topic, got.sender) == ("news", "alice")
    assert got.data["text"] == "héllo" and 1 <= got.data["n"] <= n
    with pytest.raises(peerlink.InvalidMessageError):
        pair.alice.publish("news", {"x": 1.5})  # floats cannot be signed canonically


def test_websocket_connection_controls_and_stats(pair: Pair, relay: Relay) -> None:
    alice = pair.alice
    alice.init_websocket_connection()
    wait_until(alice.is_websocket_connected, "alice's link")
    assert alice.send_message("bob", b"ws").wait(DEADLINE).transport == "websocket"
    alice.close_websocket_connection()
    wait_until(lambda: not alice.is_websocket_connected(), "the link to close")
    # The link is closed and not reopened: the message goes over HTTP.
    assert alice.send_message("bob", b"http").wait(DEADLINE).transport == "http"
    stats = alice.transport_stats()
    assert isinstance(stats, peerlink.TransportStats)
    assert stats.ws_messages_sent > 0 and stats.http_messages_sent > 0
    assert stats.handshakes >= 1
    relay_stats = alice.transport_stats(relay.entity_id)
    assert relay_stats is not None and relay_stats.ws_messages_sent > 0
    assert alice.transport_stats("nobody") is None
    assert [next_message(pair.bob).payload for _ in range(2)] == [b"ws", b"http"]
    # Explicitly opened again.
    alice.init_websocket_connection()
    wait_until(alice.is_websocket_connected, "alice's link again")


def test_prefer_websocket_false_sends_over_http(pair: Pair) -> None:
    pair.alice.send_message("bob", b"warm-up").wait(DEADLINE)
    r = pair.alice.send_message("bob", b"by http", prefer_websocket=False).wait(DEADLINE)
    assert r.transport == "http"
    assert [next_message(pair.bob).payload for _ in range(2)] == [b"warm-up", b"by http"]


def test_bad_input_on_a_running_node(pair: Pair) -> None:
    alice = pair.alice
    with pytest.raises(TypeError):
        alice.send_message("bob", "text is not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        alice.send_message(42, b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        alice.send_message("bob", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        alice.send_message("bob", b"x", prefer_websocket="yes")  # type: ignore[arg-type]
    with pytest.raises(peerlink.InvalidMessageError):
        alice.send_message("bad id!", b"x")
    with pytest.raises(peerlink.InvalidMessageError):
        alice.send_message("bob", b"x", app_type="no spaces allowed")
    # Over the largest message a peer accepts (16 MiB).
    with pytest.raises(peerlink.MessageTooLargeError) as e:
        alice.send_message("bob", bytes(16 * 1024 * 1024 + 1))
    assert e.value.code == "MESSAGE_TOO_LARGE"
    # A peer nobody trusts: accepted, then given up at once, certainly not delivered.
    receipt = alice.send_message("mallory", b"x")
    with pytest.raises(peerlink.UnknownRecipientError) as u:
        receipt.wait(DEADLINE)
    assert isinstance(u.value, peerlink.DeliveryFailedError)
    assert (u.value.code, u.value.reason, u.value.maybe_delivered) == (
        "UNKNOWN_RECIPIENT",
        "UNREACHABLE",
        False,
    )
    with pytest.raises(peerlink.UnknownRecipientError):
        alice.request("mallory", b"x", timeout=DEADLINE)
    with pytest.raises(peerlink.InvalidMessageError):
        alice.request("bob", b"x", timeout=-1)
    with pytest.raises(TypeError):
        alice.request("bob", b"x", timeout="soon")  # type: ignore[arg-type]
    with pytest.raises(peerlink.InvalidMessageError):
        alice.recv(timeout=float("nan"))
    with pytest.raises(TypeError):
        alice.respond("not a request", b"x")  # type: ignore[arg-type]
    forged = peerlink.Request(sender="bob", id="m-unknown", payload=b"")
    with pytest.raises(peerlink.InvalidStateError):
        alice.respond(forged, b"x")
    # The node still works.
    alice.send_message("bob", b"still fine").wait(DEADLINE)
    assert next_message(pair.bob).payload == b"still fine"


def test_a_closed_node_raises_node_stopped(relay: Relay) -> None:
    me = peerlink.Identity.generate("short-lived")
    with peerlink.Client(me, relay.url) as c:
        assert c.relay_id == relay.entity_id and c.relay_key == relay.public_key
    assert c.closed
    c.close()  # again: nothing
    with pytest.raises(peerlink.NodeStoppedError):
        c.send_message("bob", b"x")
    list(c)  # what the node reported before it stopped; then the iteration ends
    with pytest.raises(peerlink.NodeStoppedError):
        c.recv(timeout=1)


def test_a_relay_with_another_key_than_given_is_refused(relay: Relay) -> None:
    other = peerlink.Identity.generate("x").public_key
    with pytest.raises(peerlink.AuthenticationFailedError):
        peerlink.Client(peerlink.Identity.generate("a"), relay.url, relay_key=other)


def test_status_and_broadcast_keep_their_kind(pair: Pair) -> None:
    pair.alice.send_message("bob", b"busy", status=True).wait(DEADLINE)
    m = next_message(pair.bob)
    assert (m.kind, m.payload) == ("STATUS", b"busy")
    sent = pair.alice.broadcast(b"to everyone")
    assert [to for to, _ in sent] == ["bob"], "every peer with a session"
    m = next_message(pair.bob)
    assert (m.kind, m.payload, m.id) == ("BROADCAST", b"to everyone", sent[0][1])
