"""Values peerlink hands to Python: the transport preference, statistics, delivery results,
received events, and the trust store a node starts with."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

__all__ = [
    "TransportPreference",
    "TransportStats",
    "TransportResult",
    "Message",
    "Request",
    "Response",
    "Topic",
    "Failed",
    "NodeEvent",
    "Event",
    "TrustStore",
]


class TransportPreference(enum.Enum):
    """Which transport a node uses (seed 000): WebSocket first with HTTP as the fallback by
    default. The ``*_ONLY`` preferences are never overridden by a message's
    ``prefer_websocket``."""

    #: WebSocket or nothing: frames wait for the link and fail if it cannot be established.
    WEBSOCKET_ONLY = "WEBSOCKET_ONLY"
    #: WebSocket when the link is up and stable, HTTP otherwise (the default).
    WEBSOCKET_FIRST = "WEBSOCKET_FIRST"
    #: HTTP when the peer accepts it, WebSocket otherwise.
    HTTP_FIRST = "HTTP_FIRST"
    #: HTTP or nothing: every frame, the handshake included, goes in HTTP requests.
    HTTP_ONLY = "HTTP_ONLY"


@dataclass(frozen=True)
class TransportStats:
    """Transport counters (seed 000's ``TransportStats``): frames and bytes per transport and
    direction, fallbacks to HTTP, failures, reconnects, handshakes and resumptions."""

    ws_messages_sent: int
    ws_bytes_sent: int
    http_messages_sent: int
    http_bytes_sent: int
    ws_messages_received: int
    ws_bytes_received: int
    http_messages_received: int
    http_bytes_received: int
    #: Times traffic moved from WebSocket to HTTP.
    fallbacks: int
    #: Messages given up (each reported once).
    failures: int
    #: WebSocket reconnect attempts.
    reconnects: int
    #: Times a relay served at several URLs was reached at the next one.
    failovers: int
    #: Sessions resumed without a handshake.
    resumes: int
    #: Full handshakes completed.
    handshakes: int
    #: Frames refused, by any check.
    rejected: int
    #: Idle peers forgotten.
    peers_forgotten: int
    #: The last measured round-trip time in seconds, or ``None``.
    last_rtt: Optional[float]


@dataclass(frozen=True)
class TransportResult:
    """A delivered message (seed 000's ``TransportResult``): delivered means handed to the
    recipient's application, never merely written to a socket."""

    #: The recipient.
    to: str
    #: The message id.
    id: str
    #: ``"websocket"`` or ``"http"``: the transport that carried its last copy toward the
    #: recipient or its relay (``None`` only if no copy was ever handed to one).
    transport: Optional[str]
    #: Seconds from the node accepting it to its acknowledgement.
    elapsed: float


@dataclass(frozen=True)
class Message:
    """A message that arrived (exactly once, in the sender's order)."""

    #: The sender's entity id.
    sender: str
    #: The message id.
    id: str
    #: The content.
    payload: bytes
    #: ``"PEER_MESSAGE"``, ``"BROADCAST"`` or ``"STATUS"``.
    kind: str = "PEER_MESSAGE"
    #: The application-defined type the sender gave it, if any.
    app_type: Optional[str] = None


@dataclass(frozen=True)
class Request:
    """A ``TASK_REQUEST`` that arrived: answer it with ``node.respond(request, payload)``."""

    #: The requester's entity id.
    sender: str
    #: The request's id.
    id: str
    #: The content.
    payload: bytes


@dataclass(frozen=True)
class Response:
    """A ``TASK_RESPONSE`` whose request no longer waits for it (``request()`` returns the
    answers of the requests it waits for)."""

    sender: str
    request_id: str
    payload: bytes


@dataclass(frozen=True)
class Topic:
    """A publication on a topic this node subscribed to."""

    #: The topic.
    topic: str
    #: The publisher's entity id.
    sender: str
    #: The published JSON value, decoded.
    data: Any


@dataclass(frozen=True)
class Failed:
    """The node gave up on a message it had accepted (its receipt raises
    ``DeliveryFailedError`` too)."""

    to: str
    id: str
    #: ``"TIMEOUT"``, ``"REJECTED"``, ``"UNREACHABLE"`` or ``"CLOSED"``.
    reason: str
    #: Whether it may still have been delivered.
    maybe_delivered: bool


@dataclass(frozen=True)
class NodeEvent:
    """Anything else the node reports: ``kind`` is ``"session_established"``,
    ``"session_resumed"``, ``"session_lost"``, ``"transport_switched"``, ``"error"``,
    ``"request_timed_out"``, ``"events_dropped"``, ``"delivered"`` or ``"other"``."""

    kind: str
    #: The peer or node it concerns (``""`` when none).
    peer: str
    #: An error code, a transport, a count or a request id, as text.
    detail: str


#: Everything ``recv()`` returns.
Event = Union[Message, Request, Response, Topic, Failed, NodeEvent]


def _event(t: Tuple[Any, ...]) -> Event:
    """The dataclass of an event tuple from the native module."""
    kind = t[0]
    if kind == "message":
        return Message(sender=t[1], id=t[2], kind=t[3], app_type=t[4], payload=t[5])
    if kind == "request":
        return Request(sender=t[1], id=t[2], payload=t[3])
    if kind == "response":
        return Response(sender=t[1], request_id=t[2], payload=t[3])
    if kind == "topic":
        return Topic(topic=t[1], sender=t[2], data=json.loads(t[3]))
    if kind == "failed":
        return Failed(to=t[1], id=t[2], reason=t[3], maybe_delivered=t[4])
    if kind == "delivered":
        return NodeEvent(kind, t[1], t[3] or "")
    if kind == "request_timed_out":
        return NodeEvent(kind, t[1], t[2])
    return NodeEvent(kind, t[1], str(t[2]))


class TrustStore:
    """Who a node lets in (spec §2.3): an allowlist of entity ids with their public keys, or
    ``open`` (any entity that proves its key). A peer given with a URL runs a node of its own
    that is reached there directly; without one it is reached through the relay.

    >>> trust = TrustStore()
    >>> trust.trust("bob", "<bob's public key>")
    """

    def __init__(self, open: bool = False) -> None:  # noqa: A002 - the policy's name
        #: Whether any entity that proves its key may authenticate.
        self.open = open
        self._peers: Dict[str, Tuple[str, Optional[str]]] = {}

    @classmethod
    def allow_all(cls) -> "TrustStore":
        """The open policy: any entity that proves its key."""
        return cls(open=True)

    def trust(self, entity_id: str, public_key: str, url: Optional[str] = None) -> None:
        """Trusts ``entity_id`` with ``public_key`` (base64url, as ``peerlink keygen`` prints
        it); with ``url``, that peer's own node is reached there. Replaces an earlier entry."""
        if not isinstance(entity_id, str) or not isinstance(public_key, str):
            raise TypeError("entity_id and public_key must be str")
        if url is not None and not isinstance(url, str):
            raise TypeError("url must be str or None")
        self._peers[entity_id] = (public_key, url)

    def remove(self, entity_id: str) -> None:
        """Forgets ``entity_id`` (nothing happens if it was not trusted)."""
        self._peers.pop(entity_id, None)

    def public_key(self, entity_id: str) -> Optional[str]:
        """The key trusted for ``entity_id``, or ``None``."""
        entry = self._peers.get(entity_id)
        return entry[0] if entry else None

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._peers))

    def _entries(self) -> List[Tuple[str, str, Optional[str]]]:
        return [(i, k, u) for i, (k, u) in self._peers.items()]

    def __repr__(self) -> str:
        return f"TrustStore(open={self.open}, peers={sorted(self._peers)})"
