"""The exceptions of peerlink: one base class, :class:`PeerlinkError`, and a subclass per error
code of the protocol (spec §10), plus a few for what only a local API call can meet (a stopped
node, a failed delivery, a node that cannot start).

Every exception has ``code``: the spec's wire name (``"MESSAGE_TOO_LARGE"``), or ``None`` for
those that have none. Some also derive from the built-in exception a Python programmer would
catch: bad values are ``ValueError``, timeouts ``TimeoutError``, start and file failures
``OSError``.
"""

from __future__ import annotations

import builtins
from typing import Dict, Optional, Type

# The one list of the exceptions: the package `peerlink` exports these from it.
__all__ = [
    "PeerlinkError",
    "SessionNotFoundError",
    "SessionExpiredError",
    "InvalidMessageError",
    "AuthenticationFailedError",
    "RateLimitExceededError",
    "MessageTooLargeError",
    "InvalidStateError",
    "ReplayDetectedError",
    "UnsupportedVersionError",
    "UnknownRecipientError",
    "MailboxFullError",
    "TimeoutError",
    "InternalError",
    "OutboxFullError",
    "NodeStoppedError",
    "DeliveryFailedError",
    "PeerUnreachableError",
    "DeliveryTimeoutError",
    "NodeStartError",
    "IdentityError",
    "ERRORS_BY_CODE",
]


class PeerlinkError(Exception):
    """The base class of every exception peerlink raises."""

    #: The spec's error code (``"UNKNOWN_RECIPIENT"``), or ``None``.
    code: Optional[str] = None


class SessionNotFoundError(PeerlinkError):
    """SESSION_NOT_FOUND: the session named is not held (a new handshake is needed)."""

    code = "SESSION_NOT_FOUND"


class SessionExpiredError(PeerlinkError):
    """SESSION_EXPIRED: the session expired or ran out of sequence numbers."""

    code = "SESSION_EXPIRED"


class InvalidMessageError(PeerlinkError, ValueError):
    """INVALID_MESSAGE: a value given is malformed: an entity id, a key, a URL, a timeout, a
    topic, JSON data that cannot be made canonical (floats), an unknown preference."""

    code = "INVALID_MESSAGE"


class AuthenticationFailedError(PeerlinkError):
    """AUTHENTICATION_FAILED: a signature, key or identity did not verify (for example a relay
    whose id or key differs from the one given)."""

    code = "AUTHENTICATION_FAILED"


class RateLimitExceededError(PeerlinkError):
    """RATE_LIMIT_EXCEEDED: a rate limit or a bound on tracked peers or requests was reached."""

    code = "RATE_LIMIT_EXCEEDED"


class MessageTooLargeError(PeerlinkError, ValueError):
    """MESSAGE_TOO_LARGE: the message exceeds the largest message the peer accepts."""

    code = "MESSAGE_TOO_LARGE"


class InvalidStateError(PeerlinkError):
    """INVALID_STATE: the call is not allowed now (answering a request that is not pending)."""

    code = "INVALID_STATE"


class ReplayDetectedError(PeerlinkError):
    """REPLAY_DETECTED: a message was seen before, or its time is out of the window."""

    code = "REPLAY_DETECTED"


class UnsupportedVersionError(PeerlinkError):
    """UNSUPPORTED_VERSION: no protocol version in common."""

    code = "UNSUPPORTED_VERSION"


class UnknownRecipientError(PeerlinkError, LookupError):
    """UNKNOWN_RECIPIENT: no route, link or mailbox leads to the peer, or it is not trusted."""

    code = "UNKNOWN_RECIPIENT"


class MailboxFullError(PeerlinkError):
    """MAILBOX_FULL: a queue for the recipient is full; retry later."""

    code = "MAILBOX_FULL"


class TimeoutError(PeerlinkError, builtins.TimeoutError):  # noqa: A001 - the spec's name
    """TIMEOUT: a request got no answer in time, or a wait ran out (also the built-in
    ``TimeoutError``)."""

    code = "TIMEOUT"


class InternalError(PeerlinkError):
    """INTERNAL_ERROR: the node failed for a reason of its own (a Rust panic included: it never
    aborts the interpreter)."""

    code = "INTERNAL_ERROR"


class OutboxFullError(MailboxFullError):
    """The peer's outbox on this node is full: retry once earlier messages are delivered."""


class NodeStoppedError(InvalidStateError):
    """The node was closed (or stopped): no call can be made on it any more."""


class DeliveryFailedError(PeerlinkError):
    """The node gave up on a message (or a request) without confirmed delivery.

    ``reason`` is ``"TIMEOUT"``, ``"REJECTED"``, ``"UNREACHABLE"`` or ``"CLOSED"``;
    ``maybe_delivered`` says whether it may still have been delivered (``True``: it was sent and
    not confirmed), certainly not (``False``), or is unknown (``None``).
    """

    def __init__(
        self, message: str, reason: str = "REJECTED", maybe_delivered: Optional[bool] = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.maybe_delivered = maybe_delivered
        self.code = {"TIMEOUT": "TIMEOUT", "UNREACHABLE": "UNKNOWN_RECIPIENT"}.get(reason)


class PeerUnreachableError(DeliveryFailedError, UnknownRecipientError):
    """A delivery failed because the peer is unknown, untrusted or unreachable (reason
    ``"UNREACHABLE"``): also an ``UnknownRecipientError``."""


class DeliveryTimeoutError(DeliveryFailedError, TimeoutError):
    """A delivery was not confirmed within the node's send timeout (reason ``"TIMEOUT"``):
    also a ``peerlink.TimeoutError``."""


class NodeStartError(PeerlinkError, OSError):
    """A node could not start: its address cannot be bound, its TLS files are unusable, or its
    relay cannot be asked who it is."""


class IdentityError(PeerlinkError, OSError):
    """An identity cannot be read from, or written to, its data directory."""


#: The exception class of each spec error code.
ERRORS_BY_CODE: Dict[str, Type[PeerlinkError]] = {
    cls.code: cls
    for cls in (
        SessionNotFoundError,
        SessionExpiredError,
        InvalidMessageError,
        AuthenticationFailedError,
        RateLimitExceededError,
        MessageTooLargeError,
        InvalidStateError,
        ReplayDetectedError,
        UnsupportedVersionError,
        UnknownRecipientError,
        MailboxFullError,
        TimeoutError,
        InternalError,
    )
    if cls.code is not None
}
