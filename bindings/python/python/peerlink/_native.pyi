"""Type stubs of the native module ``peerlink._native`` (PyO3). Use the package ``peerlink``
rather than this module: it wraps these in dataclasses, enums and asyncio."""

import os
from typing import Any, Dict, List, Optional, Tuple, Union

_Path = Union[str, "os.PathLike[str]"]
_Peer = Tuple[str, str, Optional[str]]
_EventTuple = Tuple[object, ...]

#: The protocol version the node speaks.
PROTOCOL_VERSION: str

def default_home() -> str:
    """``$PEERLINK_HOME``, else ``./.peerlink``: the data directory of the ``peerlink``
    command."""

def _panic_for_test() -> None:
    """Panics in Rust; raises ``InternalError`` (tests that a panic never aborts Python)."""

def _bench_rust(
    relay_url: str, relay_id: str, relay_key: str, size: int, secs: float, window: int
) -> Tuple[int, float]:
    """The Rust side of ``bench/relay_throughput.py``: ``(messages received, seconds)``."""

class Identity:
    """An entity id and its Ed25519 key pair. The secret never leaves the native module."""

    @staticmethod
    def generate(entity_id: str) -> "Identity":
        """A new identity named ``entity_id``, its key from the OS's randomness."""
    @staticmethod
    def load(path: _Path) -> "Identity":
        """The identity saved in the data directory ``path``."""
    @staticmethod
    def load_or_create(path: _Path, entity_id: Optional[str] = None) -> Tuple["Identity", bool]:
        """The identity in ``path``, created there on first use; and whether it was created."""
    def save(self, path: _Path) -> None:
        """Writes the identity into the data directory ``path`` (secret file mode 0600)."""
    @property
    def entity_id(self) -> str:
        """The entity id."""
    @property
    def public_key(self) -> str:
        """The public key, base64url without padding."""

class Receipt:
    """A sent message's id and its way to delivery."""

    @property
    def to(self) -> str: ...
    @property
    def id(self) -> str: ...
    def done(self) -> bool:
        """Whether the outcome is known."""
    def wait(self, timeout: Optional[float] = None) -> Tuple[str, str, Optional[str], float]:
        """``(to, id, transport, elapsed)`` once delivered."""

class Node:
    """A running node (client or server)."""

    @staticmethod
    def start_client(
        identity: Identity,
        relay_url: Optional[str] = None,
        relay_id: Optional[str] = None,
        relay_key: Optional[str] = None,
        preference: str = "WEBSOCKET_FIRST",
        peers: List[_Peer] = ...,
        open: bool = False,
        event_queue: int = 1024,
        ca_file: Optional[_Path] = None,
    ) -> "Node": ...
    @staticmethod
    def start_server(
        identity: Identity,
        listen: str = "127.0.0.1:0",
        preference: str = "WEBSOCKET_FIRST",
        peers: List[_Peer] = ...,
        open: bool = False,
        event_queue: int = 1024,
        relay_url: Optional[str] = None,
        relay_id: Optional[str] = None,
        relay_key: Optional[str] = None,
        cert_file: Optional[_Path] = None,
        key_file: Optional[_Path] = None,
        ca_file: Optional[_Path] = None,
        frames_per_minute: Optional[int] = None,
    ) -> "Node": ...
    @property
    def entity_id(self) -> str: ...
    @property
    def url(self) -> Optional[str]: ...
    @property
    def relay(self) -> Optional[_Peer]: ...
    @property
    def closed(self) -> bool: ...
    def send(
        self,
        to: str,
        payload: bytes,
        kind: str = "PEER_MESSAGE",
        prefer_websocket: Optional[bool] = None,
        app_type: Optional[str] = None,
    ) -> Receipt: ...
    def broadcast(self, payload: bytes) -> List[Tuple[str, str]]: ...
    def request(self, to: str, payload: bytes, timeout: float) -> bytes: ...
    def respond(self, to: str, request_id: str, payload: bytes) -> str: ...
    def connect(self, peer: str) -> None: ...
    def disconnect(self, peer: str) -> None: ...
    def is_websocket_connected(self, peer: str) -> bool: ...
    def has_session(self, peer: str) -> bool: ...
    def add_peer(self, entity_id: str, public_key: str, url: Optional[str] = None) -> None: ...
    def subscribe(self, hop: str, topic: str) -> None: ...
    def unsubscribe(self, hop: str, topic: str) -> None: ...
    def publish(self, hop: Optional[str], topic: str, data: str) -> int: ...
    def transport_stats(self, peer: Optional[str] = None) -> Optional[Dict[str, Any]]: ...
    def recv(self, timeout: Optional[float] = None) -> Optional[_EventTuple]: ...
    def recv_many(self, max: int, timeout: Optional[float] = None) -> List[_EventTuple]: ...
    def try_recv(self) -> Optional[_EventTuple]: ...
    def close(self) -> None: ...
