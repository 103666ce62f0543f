"""peerlink for Python: secure peer-to-peer messaging on the Rust reference implementation.

Messages are end-to-end encrypted between entities (Ed25519 identities, an X25519 handshake,
ChaCha20-Poly1305 sessions), go over WebSocket first and HTTP as the fallback, and arrive
exactly once, in order. The node is the Rust one (``peerlink._native``), running on threads of
its own; this package gives it Python's idiom::

    import peerlink

    me = peerlink.Identity.load_or_create("alice-home", "alice")
    with peerlink.Client(me, "http://127.0.0.1:7420") as alice:
        receipt = alice.send_message("bob", b"hello")   # returns once accepted
        print(receipt.wait(timeout=10))                 # TransportResult(..., transport='websocket')
        event = alice.recv(timeout=5)                   # Message, Request, Topic, ...

Errors are exceptions under :class:`PeerlinkError`, one class per spec error code.
"""

from __future__ import annotations

from typing import Optional, Tuple

from . import _errors, _native
from ._errors import *  # noqa: F403 - the exceptions, as listed in _errors.__all__
from ._native import Identity, default_home
from ._node import AsyncClient, AsyncNode, Client, Node, Receipt, Server, serve
from ._types import (
    Event,
    Failed,
    Message,
    NodeEvent,
    Request,
    Response,
    Topic,
    TransportPreference,
    TransportResult,
    TransportStats,
    TrustStore,
)

__version__ = "0.1.0"

#: The protocol version the node speaks.
PROTOCOL_VERSION: str = _native.PROTOCOL_VERSION


def load_identity(home: Optional[str] = None, entity_id: Optional[str] = None) -> Tuple[Identity, bool]:
    """The identity in the data directory ``home`` (default: ``$PEERLINK_HOME``, else
    ``./.peerlink``, as the ``peerlink`` command), created on first use as ``entity_id``.
    Returns it and whether it was created."""
    return Identity.load_or_create(home if home is not None else default_home(), entity_id)


__all__ = [
    "PROTOCOL_VERSION",
    "Identity",
    "default_home",
    "load_identity",
    "TrustStore",
    "TransportPreference",
    "TransportStats",
    "TransportResult",
    "Event",
    "Message",
    "Request",
    "Response",
    "Topic",
    "Failed",
    "NodeEvent",
    "Node",
    "Client",
    "Server",
    "serve",
    "Receipt",
    "AsyncNode",
    "AsyncClient",
]
# The exceptions: `_errors.__all__` is their one list.
__all__ += _errors.__all__
