"""Python <-> the Rust command line (`peerlink send`, `listen`, `request`, `keygen`): the same
protocol and the same identity files."""

from __future__ import annotations

from pathlib import Path

import peerlink

from conftest import DEADLINE, Relay, Running, keygen, next_message, run_cli, wait_until


def test_an_identity_made_by_the_cli_loads_in_python_and_back(tmp_path: Path) -> None:
    key = keygen(tmp_path / "carol", "carol")
    carol = peerlink.Identity.load(tmp_path / "carol")
    assert (carol.entity_id, carol.public_key) == ("carol", key)
    dave = peerlink.Identity.generate("dave")
    dave.save(tmp_path / "dave")
    assert keygen(tmp_path / "dave", "dave") == dave.public_key


def test_the_cli_sends_to_python_and_python_answers_its_request(relay: Relay, tmp_path: Path) -> None:
    alice_key = keygen(tmp_path / "alice", "alice")
    bob_id = peerlink.Identity.generate("bob")
    trust = peerlink.TrustStore()
    trust.trust("alice", alice_key)
    with peerlink.Client(bob_id, relay.url, trust=trust) as bob:
        bob.init_websocket_connection()
        wait_until(bob.is_websocket_connected, "bob's link")
        target = ["--relay", relay.url, "--to", "bob", "--key", bob_id.public_key]
        out = run_cli(["send", *target, "hello from the CLI"], tmp_path / "alice")
        assert out.startswith("delivered ") and " over websocket " in out, out
        m = next_message(bob)
        assert (m.sender, m.payload) == ("alice", b"hello from the CLI")
        out = run_cli(["send", "--http", *target, "over HTTP"], tmp_path / "alice")
        assert " over http " in out and "(websocket frames 0," in out, out
        assert next_message(bob).payload == b"over HTTP"

        # `peerlink request` waits for Python's answer.
        import threading

        def answer() -> None:
            e = bob.recv(timeout=DEADLINE)
            while not isinstance(e, peerlink.Request):
                e = bob.recv(timeout=DEADLINE)
            bob.respond(e, e.payload.upper())

        t = threading.Thread(target=answer)
        t.start()
        out = run_cli(["request", *target, "ping"], tmp_path / "alice")
        t.join(DEADLINE)
        assert out.strip() == "PING"


def test_python_sends_to_a_cli_listener_and_gets_its_echo(relay: Relay, tmp_path: Path) -> None:
    bob_key = keygen(tmp_path / "bob", "bob")
    listener = Running(
        ["listen", "--open", "--relay", relay.url, "--listen", "127.0.0.1:0", "--storage", "memory"],
        tmp_path / "bob",
    )
    try:
        listener.field("url")
        wait_until(lambda: relay.clients() > 0, "bob's listener at the relay")
        trust = peerlink.TrustStore()
        trust.trust("bob", bob_key)
        with peerlink.Client(peerlink.Identity.generate("alice"), relay.url, trust=trust) as alice:
            alice.send_message("bob", b"hi from python").wait(DEADLINE)
            listener.line(lambda l: l == "alice\thi from python", "alice's message")
            alice.send_message("bob", b"by http", prefer_websocket=False).wait(DEADLINE)
            listener.line(lambda l: l == "alice\tby http", "alice's HTTP message")
            # `peerlink listen` answers requests with an echo.
            assert alice.request("bob", b"echo me", timeout=DEADLINE) == b"echo me"
    finally:
        listener.stop()
