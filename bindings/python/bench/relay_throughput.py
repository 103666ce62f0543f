#!/usr/bin/env python3
"""Messages per second Python -> relay -> Python, next to the Rust client in the same run.

Both sides run the same scenario against one relay (`peerlink serve --open`, a process of its
own): Alice sends messages of SIZE bytes to Bob through it, at most WINDOW of them sent and not
yet taken by Bob's application; the rate is what Bob's application takes per second over the
measured time, after a one-second warm-up. The Rust side calls the node's `Handle` directly
(`_native._bench_rust`, no Python in its loop); the Python side uses the package's API:
`Client.send_message` in one thread and `Client.recv_many` in another; the asyncio side
`AsyncClient.send_message` in one task and `async for` over `AsyncClient.messages()` in
another. The sides alternate, a
run of each per size and round, and each keeps its median round.

    cargo build --release -p peerlink
    pip install ./bindings/python
    python bindings/python/bench/relay_throughput.py --peerlink target/release/peerlink
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Tuple

import peerlink
from peerlink import _native


def start_relay(binary: str, home: str) -> Tuple[subprocess.Popen, Dict[str, str]]:
    env = dict(os.environ, PEERLINK_HOME=home, RUST_LOG="warn")
    config = os.path.join(home, "relay.toml")
    with open(config, "w") as f:
        f.write("[limits]\nframes_per_minute = 100000000\n")  # bulk traffic (spec §18)
    proc = subprocess.Popen(
        [binary, "--config", config, "serve", "--open", "--listen", "127.0.0.1:0", "--storage", "memory"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    fields: Dict[str, str] = {}
    assert proc.stdout is not None
    while len(fields) < 3:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the relay did not start")
        name, value = line.split(maxsplit=1)
        fields[name] = value.strip()
    return proc, fields


def python_run(relay: Dict[str, str], size: int, seconds: float, window: int) -> float:
    a_id, b_id = peerlink.Identity.generate("py-alice"), peerlink.Identity.generate("py-bob")
    ta, tb = peerlink.TrustStore(), peerlink.TrustStore()
    ta.trust("py-bob", b_id.public_key)
    tb.trust("py-alice", a_id.public_key)
    kw = dict(relay_id=relay["entity_id"], relay_key=relay["public_key"])
    bob = peerlink.Client(b_id, relay["url"], trust=tb, **kw)  # type: ignore[arg-type]
    alice = peerlink.Client(a_id, relay["url"], trust=ta, **kw)  # type: ignore[arg-type]
    bob.init_websocket_connection()
    while not bob.is_websocket_connected():
        time.sleep(0.005)
    credits = threading.Semaphore(window)
    received = [0]
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                batch = bob.recv_many(256, 0.2)
            except peerlink.NodeStoppedError:
                return
            n = sum(1 for e in batch if isinstance(e, peerlink.Message))
            received[0] += n
            for _ in range(n):
                credits.release()

    def send() -> None:
        payload = bytes(size)
        while not stop.is_set():
            if not credits.acquire(timeout=0.2):
                continue
            alice.send_message("py-bob", payload)

    threads = [threading.Thread(target=receive), threading.Thread(target=send)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # warm-up
    start, before = time.monotonic(), received[0]
    time.sleep(seconds)
    elapsed, after = time.monotonic() - start, received[0]
    stop.set()
    for t in threads:
        t.join()
    alice.close()
    bob.close()
    return (after - before) / elapsed


def asyncio_run(relay: Dict[str, str], size: int, seconds: float, window: int) -> float:
    """The Python side through the asyncio API: a sender task and an `async for` receiver."""
    import asyncio

    async def main() -> float:
        a_id, b_id = peerlink.Identity.generate("aio-alice"), peerlink.Identity.generate("aio-bob")
        ta, tb = peerlink.TrustStore(), peerlink.TrustStore()
        ta.trust("aio-bob", b_id.public_key)
        tb.trust("aio-alice", a_id.public_key)
        kw = dict(relay_id=relay["entity_id"], relay_key=relay["public_key"])
        bob = await peerlink.AsyncClient.connect(b_id, relay["url"], trust=tb, **kw)
        alice = await peerlink.AsyncClient.connect(a_id, relay["url"], trust=ta, **kw)
        await bob.init_websocket_connection()
        while not await bob.is_websocket_connected():
            await asyncio.sleep(0.005)
        credits = asyncio.Semaphore(window)
        received = [0]

        async def receive() -> None:
            async for _ in bob.messages():
                received[0] += 1
                credits.release()

        async def send() -> None:
            payload = bytes(size)
            while True:
                await credits.acquire()
                await alice.send_message("aio-bob", payload)

        tasks = [asyncio.ensure_future(receive()), asyncio.ensure_future(send())]
        await asyncio.sleep(1.0)
        loop = asyncio.get_running_loop()
        start, before = loop.time(), received[0]
        await asyncio.sleep(seconds)
        elapsed, after = loop.time() - start, received[0]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await alice.close()
        await bob.close()
        return (after - before) / elapsed

    return asyncio.run(main())


def rust_run(relay: Dict[str, str], size: int, seconds: float, window: int) -> float:
    n, elapsed = _native._bench_rust(
        relay["url"], relay["entity_id"], relay["public_key"], size, seconds, window
    )
    return n / elapsed


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peerlink", default="target/release/peerlink", help="the peerlink binary (the relay)")
    p.add_argument("--sizes", default="64,65536")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=int, default=256)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as home:
        relay_proc, relay = start_relay(args.peerlink, home)
        try:
            runs: Dict[Tuple[str, int], List[float]] = {}
            for r in range(args.rounds):
                for size in sizes:
                    window = min(args.window, max(2, (32 << 20) // size))
                    sides = (("rust", rust_run), ("python", python_run), ("asyncio", asyncio_run))
                    for side, run in sides:
                        rate = run(relay, size, args.seconds, window)
                        runs.setdefault((side, size), []).append(rate)
                        print(f"round {r + 1} {side:7} {size:>7} B: {rate:>9.0f} msg/s", file=sys.stderr)
        finally:
            relay_proc.terminate()
            relay_proc.wait()
    print("| size | Rust client (msg/s) | Python, blocking (msg/s) | Python / Rust | Python, asyncio (msg/s) | asyncio / Rust |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        rust = statistics.median(runs[("rust", size)])
        py = statistics.median(runs[("python", size)])
        aio = statistics.median(runs[("asyncio", size)])
        label = f"{size} B" if size < 1024 else f"{size // 1024} KiB"
        print(f"| {label} | {rust:,.0f} | {py:,.0f} | {py / rust:.2f}x | {aio:,.0f} | {aio / rust:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
