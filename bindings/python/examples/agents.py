#!/usr/bin/env python3
"""Two agents exchanging tasks over peerlink: TASK_REQUEST / TASK_RESPONSE.

Terminal 1, the worker: a node of its own that answers tasks.

    python examples/agents.py worker --home worker-home --listen 127.0.0.1:7430

It prints its entity id, public key and URL. Terminal 2, the requester, sends it tasks:

    python examples/agents.py requester --home requester-home \\
        --url http://127.0.0.1:7430 --key <the worker's public_key> sum 1 2 3

Both can go through a relay instead (`peerlink serve --open`, or this package's `serve`): give
the worker `--relay http://127.0.0.1:7420`, and the requester `--relay` with the same URL in
place of `--url`. Every task is end-to-end encrypted between the two agents; a relay sees only
ciphertext.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict, List

import peerlink


def perform(task: Dict[str, Any]) -> Dict[str, Any]:
    """The worker's skills."""
    op, args = task.get("op"), task.get("args", [])
    if op == "sum":
        return {"ok": True, "result": sum(int(a) for a in args)}
    if op == "upper":
        return {"ok": True, "result": " ".join(args).upper()}
    if op == "sleep":
        time.sleep(min(float(args[0]) if args else 1.0, 10.0))
        return {"ok": True, "result": "slept"}
    return {"ok": False, "error": f"unknown op {op!r}"}


def worker(args: argparse.Namespace) -> None:
    me, created = peerlink.load_identity(args.home, "worker")
    # The worker takes tasks from any agent that proves its key.
    trust = peerlink.TrustStore.allow_all()
    if args.relay:
        node: peerlink.Node = peerlink.Client(me, args.relay, trust=trust)
        node.init_websocket_connection()
        where = f"through the relay {node.relay_id} at {args.relay}"
    else:
        node = peerlink.serve(me, args.listen, trust=trust)
        where = f"at {node.url}"
    print(f"entity_id  {me.entity_id}\npublic_key {me.public_key}\nlistening  {where}", flush=True)
    with node:
        try:
            for event in node:
                if isinstance(event, peerlink.Request):  # a TASK_REQUEST
                    try:
                        task = json.loads(event.payload)
                        answer = perform(task)
                    except (ValueError, TypeError) as e:
                        task, answer = None, {"ok": False, "error": str(e)}
                    print(f"{event.sender}: {task} -> {answer}", flush=True)
                    node.respond(event, json.dumps(answer).encode())  # its TASK_RESPONSE
                elif isinstance(event, peerlink.Message):
                    print(f"{event.sender}: message {event.payload!r}", flush=True)
        except KeyboardInterrupt:
            pass


def requester(args: argparse.Namespace) -> int:
    me, _ = peerlink.load_identity(args.home, "requester")
    trust = peerlink.TrustStore()
    trust.trust(args.to, args.key, url=None if args.relay else args.url)
    task: Dict[str, Any] = {"op": args.op, "args": args.args}
    with peerlink.Client(me, args.relay, trust=trust) as node:
        try:
            answer = node.request(args.to, json.dumps(task).encode(), timeout=args.timeout)
        except peerlink.TimeoutError:
            print(f"no TASK_RESPONSE from {args.to} within {args.timeout} s", file=sys.stderr)
            return 1
        except peerlink.PeerlinkError as e:
            print(f"task failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        print(json.loads(answer))
        stats = node.transport_stats()
        if stats is not None:
            print(f"(websocket frames {stats.ws_messages_sent}, http frames {stats.http_messages_sent})")
    return 0


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="role", required=True)
    w = sub.add_parser("worker", help="answer tasks")
    w.add_argument("--home", default=None, help="data directory (default: $PEERLINK_HOME or ./.peerlink)")
    w.add_argument("--listen", default="127.0.0.1:7430")
    w.add_argument("--relay", help="be reached through this relay instead of listening")
    r = sub.add_parser("requester", help="send a task and print its answer")
    r.add_argument("--home", default=None)
    r.add_argument("--to", default="worker", help="the worker's entity id")
    r.add_argument("--key", required=True, help="the worker's public key")
    r.add_argument("--url", default="http://127.0.0.1:7430", help="the worker's own URL")
    r.add_argument("--relay", help="reach the worker through this relay")
    r.add_argument("--timeout", type=float, default=30.0)
    r.add_argument("op", help="sum, upper or sleep")
    r.add_argument("args", nargs="*")
    args = p.parse_args(argv)
    if args.role == "worker":
        worker(args)
        return 0
    return requester(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
