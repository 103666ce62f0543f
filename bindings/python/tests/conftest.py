"""Fixtures: a Rust relay (`peerlink serve` of the workspace's CLI), clients on it, the CLI
itself, and a TCP proxy that can cut WebSocket links.

The CLI binary is `$PEERLINK_BIN`, else `target/debug/peerlink` of the workspace (ci.sh builds
it). Every wait has an explicit, generous deadline; nothing sleeps to hide a race.
"""

from __future__ import annotations

import os
import queue
import re
import select
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

import peerlink

#: Deadline of every wait in the tests (seconds): generous for a loaded 2-core CI machine.
DEADLINE = 60.0

WORKSPACE = Path(__file__).resolve().parents[3]


def peerlink_bin() -> str:
    """The `peerlink` command the tests run."""
    path = os.environ.get("PEERLINK_BIN") or str(WORKSPACE / "target" / "debug" / "peerlink")
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"no peerlink binary at {path}: build it (`cargo build -p peerlink`) or set PEERLINK_BIN"
        )
    return path


def wait_until(cond: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Polls ``cond`` every 10 ms until it holds; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback test URL
        return r.read().decode()


class Running:
    """A long-running `peerlink` process whose stdout is read line by line."""

    def __init__(self, args: List[str], home: Path, env: Optional[Dict[str, str]] = None) -> None:
        e = dict(os.environ, PEERLINK_HOME=str(home), RUST_LOG="warn", NO_COLOR="1")
        e.update(env or {})
        self.args = args
        self.stderr_path = home.parent / f"{home.name}-{os.getpid()}-{id(self)}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [peerlink_bin(), *args],
            env=e,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.seen: List[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self, pick: Callable[[str], bool], what: str, timeout: float = DEADLINE) -> str:
        """The next stdout line ``pick`` accepts (others are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"`peerlink {' '.join(self.args)}`: no {what} in {timeout} s; seen {self.seen}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"`peerlink {' '.join(self.args)}` ended before {what}; seen {self.seen}; "
                    f"stderr: {self.stderr_path.read_text()[-2000:]}"
                )
            self.seen.append(line)
            if pick(line):
                return line

    def field(self, name: str) -> str:
        """The value of a `NAME  VALUE` line (`serve` prints entity_id, public_key, url)."""
        line = self.line(lambda l: l.split(maxsplit=1)[:1] == [name], f"the {name} line")
        return line.split(maxsplit=1)[1].strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


def run_cli(args: List[str], home: Path, timeout: float = DEADLINE) -> str:
    """Runs `peerlink ARGS` to its end; its stdout (fails the test on a non-zero exit)."""
    env = dict(os.environ, PEERLINK_HOME=str(home), RUST_LOG="warn", NO_COLOR="1")
    p = subprocess.run(
        [peerlink_bin(), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert p.returncode == 0, f"`peerlink {' '.join(args)}` failed: {p.stdout}\n{p.stderr}"
    return p.stdout


def keygen(home: Path, entity_id: str) -> str:
    """`peerlink keygen --id ID` in ``home``; the public key it prints."""
    out = run_cli(["keygen", "--id", entity_id], home)
    m = re.search(r"^public_key\s+(\S+)$", out, re.M)
    assert m, out
    return m.group(1)


class Relay:
    """A relay: `peerlink serve --open` on a free loopback port."""

    def __init__(self, tmp: Path) -> None:
        home = tmp / "relay-home"
        # The spec's default rate limit (100 frames a minute per link, §18) is below one send
        # window of bulk traffic: a relay carrying it raises it, as this one does.
        config = tmp / "relay.toml"
        config.write_text("[limits]\nframes_per_minute = 10000000\n")
        self.proc = Running(
            ["--config", str(config), "serve", "--open", "--listen", "127.0.0.1:0", "--storage", "memory"],
            home,
        )
        self.entity_id = self.proc.field("entity_id")
        self.public_key = self.proc.field("public_key")
        self.url = self.proc.field("url")

    def clients(self) -> int:
        """Clients connected now: peers links plus held long polls (from /metrics)."""
        text = http_get(self.url + "/metrics")

        def sample(name: str) -> int:
            for line in text.splitlines():
                if line.startswith(name + " "):
                    return int(float(line.split()[-1]))
            return 0

        return sample('peerlink_links{endpoint="peers",direction="inbound"}') + sample(
            "peerlink_held_http_calls"
        )


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    """A Rust relay (the workspace's `peerlink serve --open`)."""
    r = Relay(tmp_path)
    yield r
    r.proc.stop()


class Pair:
    """Alice and Bob, clients of one relay, each trusting the other."""

    def __init__(self, relay_url: str, relay_id: str, relay_key: str, **alice_kwargs: object) -> None:
        self.alice_id = peerlink.Identity.generate("alice")
        self.bob_id = peerlink.Identity.generate("bob")
        ta, tb = peerlink.TrustStore(), peerlink.TrustStore()
        ta.trust("bob", self.bob_id.public_key)
        tb.trust("alice", self.alice_id.public_key)
        common = dict(relay_id=relay_id, relay_key=relay_key)
        self.bob = peerlink.Client(self.bob_id, relay_url, trust=tb, **common)  # type: ignore[arg-type]
        self.alice = peerlink.Client(self.alice_id, relay_url, trust=ta, **common, **alice_kwargs)  # type: ignore[arg-type]
        # Bob is reachable once his link to the relay is up.
        self.bob.init_websocket_connection()
        wait_until(self.bob.is_websocket_connected, "bob's link to the relay")

    def close(self) -> None:
        self.alice.close()
        self.bob.close()


@pytest.fixture
def pair(relay: Relay) -> Iterator[Pair]:
    """Alice and Bob on the Rust relay."""
    p = Pair(relay.url, relay.entity_id, relay.public_key)
    yield p
    p.close()


def next_message(node: peerlink.Node, timeout: float = DEADLINE) -> peerlink.Message:
    """The next `Message` event (other events are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no message in time"
        e = node.recv(timeout=left)
        if isinstance(e, peerlink.Message):
            return e


class CuttableProxy:
    """A TCP proxy in front of a node that can cut every connection through it and then refuse
    WebSocket upgrades (HTTP requests keep going): a WebSocket that dies on the way and cannot
    come back. An upgrade is recognized in any request on a connection, keep-alive included."""

    def __init__(self, upstream_url: str) -> None:
        host, port = upstream_url.rsplit("//", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]
        self.block_websocket = False
        self.connections: List[socket.socket] = []
        self.upgrades_refused = 0
        self.lock = threading.Lock()
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.running:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _refuses(self, data: bytes) -> bool:
        with self.lock:
            if self.block_websocket and b"upgrade: websocket" in data.lower():
                self.upgrades_refused += 1
                return True
            return False

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        with self.lock:
            self.connections.append(client)
        socks = [client, upstream]
        try:
            while True:
                readable, _, _ = select.select(socks, [], [], 1.0)
                for s in readable:
                    data = s.recv(262144)
                    if not data:
                        return
                    if s is client:
                        if self._refuses(data):
                            return
                        upstream.sendall(data)
                    else:
                        client.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in socks:
                try:
                    s.close()
                except OSError:
                    pass
            with self.lock:
                if client in self.connections:
                    self.connections.remove(client)

    def cut_websockets(self) -> None:
        """Closes every connection through the proxy (WebSockets and HTTP alike), and refuses
        WebSocket upgrades from now on."""
        with self.lock:
            self.block_websocket = True
            for s in self.connections:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def allow_websockets(self) -> None:
        with self.lock:
            self.block_websocket = False

    def close(self) -> None:
        self.running = False
        self.listener.close()
