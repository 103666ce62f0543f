"""The API without a network: identities, the trust store, errors, and bad input from Python
giving the documented exceptions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import peerlink
from peerlink import _native


def test_identity_is_generated_saved_and_loaded_without_showing_its_secret(tmp_path: Path) -> None:
    alice = peerlink.Identity.generate("alice")
    assert alice.entity_id == "alice"
    assert len(alice.public_key) == 43  # 32 bytes, base64url without padding
    home = tmp_path / "alice"
    alice.save(home)
    again = peerlink.Identity.load(home)
    assert (again.entity_id, again.public_key) == ("alice", alice.public_key)
    assert (home / "secret.key").stat().st_mode & 0o077 == 0, "the secret file is private"
    secret = (home / "secret.key").read_text().strip()
    assert secret not in repr(alice) and secret not in str(alice)
    assert not any("secret" in name for name in dir(alice))
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(alice)


def test_load_identity_creates_once_then_loads_and_refuses_another_entity(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    first, created = peerlink.load_identity(home, "carol")
    assert created and first.entity_id == "carol"
    second, created = peerlink.load_identity(home)
    assert not created and second.public_key == first.public_key
    with pytest.raises(peerlink.IdentityError):
        peerlink.load_identity(home, "dave")


def test_default_home_follows_peerlink_home(tmp_path: Path) -> None:
    code = "import peerlink; print(peerlink.default_home())"
    env = {"PEERLINK_HOME": str(tmp_path / "x"), "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(tmp_path / "x"), out.stderr


def test_bad_identities_raise_documented_exceptions(tmp_path: Path) -> None:
    with pytest.raises(peerlink.InvalidMessageError) as e:
        peerlink.Identity.generate("not an id!")
    assert isinstance(e.value, ValueError) and e.value.code == "INVALID_MESSAGE"
    with pytest.raises(peerlink.IdentityError) as io:
        peerlink.Identity.load(tmp_path / "nothing-here")
    assert isinstance(io.value, OSError)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "identity.json").write_text('{"entity_id": "x", "public_key": "y"}')
    (tmp_path / "bad" / "secret.key").write_text("not base64!")
    with pytest.raises(peerlink.IdentityError):
        peerlink.Identity.load(tmp_path / "bad")
    with pytest.raises(TypeError):
        peerlink.Identity.generate(42)  # type: ignore[arg-type]


def test_every_spec_error_code_has_an_exception_under_one_base() -> None:
    codes = {
        "SESSION_NOT_FOUND", "SESSION_EXPIRED", "INVALID_MESSAGE", "AUTHENTICATION_FAILED",
        "RATE_LIMIT_EXCEEDED", "MESSAGE_TOO_LARGE", "INVALID_STATE", "REPLAY_DETECTED",
        "UNSUPPORTED_VERSION", "UNKNOWN_RECIPIENT", "MAILBOX_FULL", "TIMEOUT", "INTERNAL_ERROR",
    }  # fmt: skip
    assert set(peerlink.ERRORS_BY_CODE) == codes
    for code, cls in peerlink.ERRORS_BY_CODE.items():
        assert issubclass(cls, peerlink.PeerlinkError) and cls.code == code
    assert issubclass(peerlink.TimeoutError, TimeoutError)
    assert issubclass(peerlink.NodeStoppedError, peerlink.InvalidStateError)
    assert issubclass(peerlink.OutboxFullError, peerlink.MailboxFullError)


def test_a_rust_panic_is_an_exception_and_the_interpreter_lives_on() -> None:
    for _ in range(3):
        with pytest.raises(peerlink.InternalError, match="panic"):
            _native._panic_for_test()
    assert peerlink.Identity.generate("still-alive").entity_id == "still-alive"


def test_trust_store() -> None:
    t = peerlink.TrustStore()
    assert not t.open and len(t) == 0
    t.trust("bob", "key", "http://127.0.0.1:1")
    assert "bob" in t and t.public_key("bob") == "key" and list(t) == ["bob"]
    t.remove("bob")
    assert "bob" not in t
    assert peerlink.TrustStore.allow_all().open
    with pytest.raises(TypeError):
        t.trust("bob", b"key")  # type: ignore[arg-type]


def test_bad_node_arguments_are_refused_before_anything_starts() -> None:
    me = peerlink.Identity.generate("me")
    with pytest.raises(peerlink.InvalidMessageError):
        peerlink.Client(me, "ftp://127.0.0.1:1")
    with pytest.raises(ValueError):
        peerlink.Client(me, "http://127.0.0.1:1", preference="SOMETIMES")
    with pytest.raises(TypeError):
        peerlink.Client("me", "http://127.0.0.1:1")  # type: ignore[arg-type]
    with pytest.raises(peerlink.InvalidMessageError):
        peerlink.Client(me, "http://127.0.0.1:1", relay_id="relay", relay_key="not-a-key")
    bad = peerlink.TrustStore()
    bad.trust("bob", "not-a-key")
    with pytest.raises(peerlink.InvalidMessageError):
        peerlink.serve(me, trust=bad)
    with pytest.raises(peerlink.InvalidMessageError):
        peerlink.serve(me, "localhost:port")
    # A relay that is not there: the lookup of its id and key fails.
    with pytest.raises(peerlink.NodeStartError):
        peerlink.Client(me, "http://127.0.0.1:9")
    # Plain HTTP on a non-loopback address needs TLS files.
    with pytest.raises(peerlink.NodeStartError):
        peerlink.serve(me, "0.0.0.0:0")


def test_waits_release_the_gil_and_ctrl_c_interrupts_them(tmp_path: Path) -> None:
    import threading

    with peerlink.Client(peerlink.Identity.generate("idle")) as node:
        count = [0]
        stop = threading.Event()

        def spin() -> None:
            while not stop.is_set():
                count[0] += 1

        t = threading.Thread(target=spin)
        t.start()
        node.recv(timeout=0.5)  # whatever comes (or nothing), Python ran meanwhile
        stop.set()
        t.join()
        assert count[0] > 1000, "another Python thread ran while the node waited"

    # A wait without timeout ends on SIGINT with KeyboardInterrupt, in a process of its own.
    script = (
        "import peerlink, signal\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited ignored\n"
        "node = peerlink.Client(peerlink.Identity.generate('idle'))\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    node.recv()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    node.close()\n"
    )
    import signal

    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert (out.strip(), p.returncode) == ("interrupted", 0)
