"""Nodes: :class:`Client` (reached through a relay), :class:`Server` (a listening node, the
relay itself or a peer of its own), their asyncio face :class:`AsyncNode`, and the
:class:`Receipt` of a sent message.

The node runs on the native module's threads; every call that waits releases the GIL, so other
Python threads go on meanwhile, and waits wake regularly so Ctrl-C interrupts them.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import json
import os
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Deque,
    Iterator,
    List,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

from . import _native
from ._errors import DeliveryFailedError, NodeStoppedError, UnknownRecipientError
from ._errors import TimeoutError as TimeoutError_
from ._types import (
    Event,
    Message,
    Request,
    TransportPreference,
    TransportResult,
    TransportStats,
    TrustStore,
    _event,
)

__all__ = ["Node", "Client", "Server", "serve", "Receipt", "AsyncNode", "AsyncClient"]

T = TypeVar("T")
Payload = Union[bytes, bytearray, memoryview]

#: How long one blocking slice of an asyncio wait lasts (seconds).
_SLICE = 0.25
#: Events an asyncio iterator takes from the node per hop to a worker thread.
_BATCH = 256
#: Worker threads of an AsyncNode's calls (each waiting request holds one).
_CALL_THREADS = 32


def _bytes(payload: Payload, what: str = "payload") -> bytes:
    """``payload`` as bytes; ``TypeError`` for anything that is not bytes-like (``str``
    included: encode it first)."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"{what} must be bytes, bytearray or memoryview, not {type(payload).__name__}")


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, not {type(value).__name__}")
    return value


def _preference(p: Union[TransportPreference, str]) -> str:
    if isinstance(p, TransportPreference):
        return p.value
    if isinstance(p, str):
        return TransportPreference(p.upper()).value
    raise TypeError(f"preference must be a TransportPreference, not {type(p).__name__}")


class Receipt:
    """A message the node accepted: its ``id``, and :meth:`wait` (or ``await``
    :meth:`delivered`) for its delivery."""

    __slots__ = ("_native",)

    def __init__(self, native: _native.Receipt) -> None:
        self._native = native

    @property
    def id(self) -> str:
        """The message id."""
        return self._native.id

    @property
    def to(self) -> str:
        """The recipient."""
        return self._native.to

    def done(self) -> bool:
        """Whether its outcome (delivered or failed) is known, without waiting."""
        return self._native.done()

    def wait(self, timeout: Optional[float] = None) -> TransportResult:
        """Blocks until the message is delivered (handed to the recipient's application) and
        returns which transport carried it. Raises ``DeliveryFailedError`` if the node gave up
        on it, ``peerlink.TimeoutError`` if ``timeout`` seconds passed first (it may still be
        delivered), ``NodeStoppedError`` if the node was closed first."""
        return TransportResult(*self._native.wait(timeout))

    async def delivered(self, timeout: Optional[float] = None) -> TransportResult:
        """:meth:`wait`, for asyncio. It waits in short slices in a worker thread, so that
        many awaited receipts never hold every thread of the executor."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = _SLICE if deadline is None else max(0.0, min(_SLICE, deadline - loop.time()))
            try:
                return await _to_thread(self.wait, left)
            except DeliveryFailedError:
                raise  # the node gave up (a DeliveryTimeoutError is a TimeoutError too)
            except TimeoutError_:
                if deadline is not None and loop.time() >= deadline:
                    raise

    def __repr__(self) -> str:
        return f"Receipt(to={self.to!r}, id={self.id!r})"


async def _to_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Runs a blocking call in the loop's default executor."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


class Node:
    """A running peerlink node (the methods both :class:`Client` and :class:`Server` have).

    Use it as a context manager, or call :meth:`close`, to shut it down (``BYE`` on every
    link). Received events come from :meth:`recv` or by iterating over the node (blocking) or
    over :meth:`aio` (``async for``).
    """

    def __init__(self, native: _native.Node) -> None:
        self._native = native

    # -- who and where -------------------------------------------------------------------

    @property
    def entity_id(self) -> str:
        """This node's entity id."""
        return self._native.entity_id

    @property
    def relay_id(self) -> Optional[str]:
        """The relay's entity id, if the node has one."""
        relay = self._native.relay
        return relay[0] if relay else None

    @property
    def relay_key(self) -> Optional[str]:
        """The relay's public key, if the node has one."""
        relay = self._native.relay
        return relay[1] if relay else None

    def _hop(self, peer: Optional[str], what: str) -> str:
        if peer is not None:
            return _str(peer, what)
        relay = self.relay_id
        if relay is None:
            raise UnknownRecipientError(f"{what}: this node has no relay; name the node")
        return relay

    # -- sending -------------------------------------------------------------------------

    def send_message(
        self,
        to: str,
        payload: Payload,
        prefer_websocket: Optional[bool] = None,
        *,
        status: bool = False,
        app_type: Optional[str] = None,
    ) -> Receipt:
        """Sends ``payload`` to the entity ``to`` (seed 000's ``send_message``) and returns
        once the node accepted it, with a :class:`Receipt` to wait for its delivery.

        ``prefer_websocket``: ``True`` WebSocket first, ``False`` HTTP first, ``None`` the
        node's preference (a ``*_ONLY`` preference is never overridden). ``status`` sends a
        ``STATUS`` instead of a ``PEER_MESSAGE``; ``app_type`` an application-defined type,
        carried encrypted (``TASK_REQUEST``-like names: ``A-Z a-z 0-9 . _ -``).

        Raises ``TypeError`` (payload not bytes), ``MessageTooLargeError``,
        ``UnknownRecipientError`` (no route at all), ``OutboxFullError`` (backpressure: wait
        for an earlier receipt, then send again), ``InvalidMessageError`` (a malformed id or
        type), ``NodeStoppedError``. A peer that is not trusted, or that no route reaches, is
        reported by the receipt: ``wait()`` raises ``PeerUnreachableError`` (an
        ``UnknownRecipientError``), at once, ``maybe_delivered`` False.
        """
        if prefer_websocket is not None and not isinstance(prefer_websocket, bool):
            raise TypeError("prefer_websocket must be True, False or None")
        if app_type is not None:
            _str(app_type, "app_type")
        kind = "STATUS" if status else "PEER_MESSAGE"
        native = self._native.send(_str(to, "to"), _bytes(payload), kind, prefer_websocket, app_type)
        return Receipt(native)

    def send_and_wait(
        self,
        to: str,
        payload: Payload,
        prefer_websocket: Optional[bool] = None,
        *,
        timeout: Optional[float] = None,
        app_type: Optional[str] = None,
    ) -> TransportResult:
        """:meth:`send_message`, then waits for its delivery (:meth:`Receipt.wait`)."""
        return self.send_message(to, payload, prefer_websocket, app_type=app_type).wait(timeout)

    def broadcast(self, payload: Payload) -> List[Tuple[str, str]]:
        """Sends a ``BROADCAST`` to every peer with a session; returns ``(peer, id)`` pairs."""
        return self._native.broadcast(_bytes(payload))

    def request(self, to: str, payload: Payload, timeout: float = 30.0) -> bytes:
        """Sends a ``TASK_REQUEST`` to ``to`` and returns its ``TASK_RESPONSE`` payload.
        Raises ``peerlink.TimeoutError`` after ``timeout`` seconds, ``DeliveryFailedError``
        when the request cannot be delivered."""
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("timeout must be a number of seconds")
        return self._native.request(_str(to, "to"), _bytes(payload), float(timeout))

    def respond(self, request: Request, payload: Payload) -> str:
        """Answers ``request`` (a :class:`Request` from :meth:`recv`) with ``payload``;
        returns the response's message id."""
        if not isinstance(request, Request):
            raise TypeError("request must be a peerlink.Request")
        return self._native.respond(request.sender, request.id, _bytes(payload))

    # -- links ---------------------------------------------------------------------------

    def init_websocket_connection(self, peer: Optional[str] = None) -> None:
        """Opens the WebSocket toward ``peer`` (default: the relay) now and starts the
        handshake; otherwise it opens on the first send (lazily, seed 001)."""
        self._native.connect(self._hop(peer, "peer"))

    def close_websocket_connection(self, peer: Optional[str] = None) -> None:
        """Closes the WebSocket toward ``peer`` (default: the relay) and stops reconnecting it;
        traffic moves to HTTP where the preference allows."""
        self._native.disconnect(self._hop(peer, "peer"))

    def is_websocket_connected(self, peer: Optional[str] = None) -> bool:
        """Whether a WebSocket link carries frames toward ``peer`` (default: the relay) now."""
        return self._native.is_websocket_connected(self._hop(peer, "peer"))

    def has_session(self, peer: str) -> bool:
        """Whether an end-to-end session with ``peer`` is established."""
        return self._native.has_session(_str(peer, "peer"))

    def add_peer(self, entity_id: str, public_key: str, url: Optional[str] = None) -> None:
        """Trusts ``entity_id`` with ``public_key`` from now on; with ``url``, reaches its own
        node there directly."""
        self._native.add_peer(_str(entity_id, "entity_id"), _str(public_key, "public_key"), url)

    # -- topics --------------------------------------------------------------------------

    def subscribe(self, topic: str, at: Optional[str] = None) -> None:
        """Subscribes to ``topic`` on the node ``at`` (default: the relay); publications
        arrive as :class:`Topic` events. Publishers must be trusted (their signatures are
        checked)."""
        self._native.subscribe(self._hop(at, "at"), _str(topic, "topic"))

    def unsubscribe(self, topic: str, at: Optional[str] = None) -> None:
        """Ends a subscription."""
        self._native.unsubscribe(self._hop(at, "at"), _str(topic, "topic"))

    def publish(self, topic: str, data: Any, via: Optional[str] = None) -> int:
        """Publishes the JSON value ``data`` on ``topic``: through the node ``via`` (default:
        the relay), or, on a node without a relay, to its own subscribers. Not acknowledged
        (fire and forget, spec §20). Returns the links reached on this node (0 through
        another). Floats are refused (``InvalidMessageError``): signed JSON is canonical."""
        text = json.dumps(data)
        target = via if via is not None else self.relay_id
        return self._native.publish(target, _str(topic, "topic"), text)

    # -- state ---------------------------------------------------------------------------

    def transport_stats(self, peer: Optional[str] = None) -> Optional[TransportStats]:
        """Transport counters over all peers, or for ``peer`` (``None`` before any traffic
        with it)."""
        d = self._native.transport_stats(peer)
        return TransportStats(**d) if d is not None else None

    # -- receiving -----------------------------------------------------------------------

    def recv(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event (a :class:`Message`, :class:`Request`, :class:`Topic`,
        :class:`Failed`, ...), waiting at most ``timeout`` seconds (``None``: until one comes).
        ``None`` on timeout; ``NodeStoppedError`` once the node is closed and drained."""
        t = self._native.recv(timeout)
        return _event(t) if t is not None else None

    def recv_many(self, max: int = _BATCH, timeout: Optional[float] = None) -> List[Event]:  # noqa: A002
        """Up to ``max`` events: waits for the first as :meth:`recv` does, then takes those
        already waiting. Empty on timeout."""
        return [_event(t) for t in self._native.recv_many(max, timeout)]

    def try_recv(self) -> Optional[Event]:
        """The next event if one is waiting, else ``None``."""
        t = self._native.try_recv()
        return _event(t) if t is not None else None

    def __iter__(self) -> Iterator[Event]:
        """Every event, blocking, until the node is closed."""
        while True:
            try:
                batch = self.recv_many(_BATCH, None)
            except NodeStoppedError:
                return
            yield from batch

    def aio(self) -> "AsyncNode":
        """This node's asyncio face (``async for event in node.aio()``)."""
        return AsyncNode(self)

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Shuts the node down: ``BYE`` on every link, then the node stops. Idempotent."""
        self._native.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._native.closed

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(entity_id={self.entity_id!r})"


def _trust(trust: Optional[TrustStore]) -> Tuple[List[Tuple[str, str, Optional[str]]], bool]:
    if trust is None:
        return [], False
    if not isinstance(trust, TrustStore):
        raise TypeError("trust must be a peerlink.TrustStore")
    return trust._entries(), trust.open


class Client(Node):
    """A client node: it serves nothing and is reached through its relay, over the WebSocket
    it opens (and HTTP long polls as the fallback), as seed 000's ``PeerService``.

    ``relay_url`` is the relay's base URL (``http://127.0.0.1:7420``); its id and key are asked
    of it (``GET /peers/capabilities``) unless ``relay_id`` and ``relay_key`` are given. Peers
    in ``trust`` with a URL are reached directly. ``preference`` picks the transport.
    ``event_queue`` bounds the events waiting for :meth:`recv` (a full queue makes peers
    re-send later, nothing is lost). ``ca_file`` trusts a CA for ``https://`` relays.

    >>> alice = Client(Identity.generate("alice"), "http://127.0.0.1:7420")
    >>> alice.send_message("bob", b"hello").wait(timeout=10)
    """

    def __init__(
        self,
        identity: _native.Identity,
        relay_url: Optional[str] = None,
        *,
        relay_id: Optional[str] = None,
        relay_key: Optional[str] = None,
        preference: Union[TransportPreference, str] = TransportPreference.WEBSOCKET_FIRST,
        trust: Optional[TrustStore] = None,
        event_queue: int = 1024,
        ca_file: Optional[Union[str, "os.PathLike[str]"]] = None,
    ) -> None:
        if not isinstance(identity, _native.Identity):
            raise TypeError("identity must be a peerlink.Identity")
        peers, open_ = _trust(trust)
        native = _native.Node.start_client(
            identity,
            relay_url,
            relay_id,
            relay_key,
            _preference(preference),
            peers,
            open_,
            event_queue,
            ca_file,
        )
        super().__init__(native)


class Server(Node):
    """A node with a listener: a relay for clients (``peerlink serve``) and a peer of its own.
    Start one with :func:`serve`."""

    @property
    def url(self) -> str:
        """The base URL it listens at (``http://127.0.0.1:PORT``)."""
        url = self._native.url
        assert url is not None
        return url

    @property
    def public_key(self) -> str:
        """Its identity's public key (base64url)."""
        return self._public_key

    def __init__(self, native: _native.Node, public_key: str) -> None:
        super().__init__(native)
        self._public_key = public_key

    def __repr__(self) -> str:
        return f"Server(entity_id={self.entity_id!r}, url={self.url!r})"


def serve(
    identity: _native.Identity,
    listen: str = "127.0.0.1:0",
    *,
    trust: Optional[TrustStore] = None,
    preference: Union[TransportPreference, str] = TransportPreference.WEBSOCKET_FIRST,
    relay_url: Optional[str] = None,
    relay_id: Optional[str] = None,
    relay_key: Optional[str] = None,
    event_queue: int = 1024,
    cert_file: Optional[Union[str, "os.PathLike[str]"]] = None,
    key_file: Optional[Union[str, "os.PathLike[str]"]] = None,
    ca_file: Optional[Union[str, "os.PathLike[str]"]] = None,
    frames_per_minute: Optional[int] = None,
) -> Server:
    """Starts a node listening on ``listen`` (``host:port``; port 0 picks a free one) and
    returns once the port is bound: the same node as ``peerlink serve``, relaying for every
    entity ``trust`` lets in (``TrustStore.allow_all()`` for ``--open``). Without
    ``cert_file``/``key_file`` it serves plain HTTP and WebSocket on loopback only.
    Raises ``NodeStartError`` if the address cannot be bound."""
    if not isinstance(identity, _native.Identity):
        raise TypeError("identity must be a peerlink.Identity")
    peers, open_ = _trust(trust)
    native = _native.Node.start_server(
        identity,
        _str(listen, "listen"),
        _preference(preference),
        peers,
        open_,
        event_queue,
        relay_url,
        relay_id,
        relay_key,
        cert_file,
        key_file,
        ca_file,
        frames_per_minute,
    )
    return Server(native, identity.public_key)


class AsyncNode:
    """The asyncio face of a :class:`Node`: the same calls as coroutines (each runs in the
    event loop's default executor, so the loop never blocks), and ``async for`` over received
    events. Events taken from the node by a cancelled wait are kept for the next one: none is
    lost.

    >>> async with await AsyncClient.connect(identity, relay_url) as alice:
    ...     receipt = await alice.send_message("bob", b"hi")
    ...     await receipt.delivered(timeout=10)
    ...     async for event in alice:
    ...         print(event)
    """

    def __init__(self, node: Node) -> None:
        if not isinstance(node, Node):
            raise TypeError("AsyncNode wraps a peerlink.Node")
        #: The blocking node underneath.
        self.sync = node
        self._pending: Deque[Event] = collections.deque()
        # Receiving has a thread of its own: calls that wait long (requests, many at once)
        # never keep the node's events from being taken, which would hold up every delivery.
        self._receiving = concurrent.futures.ThreadPoolExecutor(1, "peerlink-recv")
        self._calls = concurrent.futures.ThreadPoolExecutor(_CALL_THREADS, "peerlink-call")

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._calls, functools.partial(fn, *args, **kwargs))

    @property
    def entity_id(self) -> str:
        """This node's entity id."""
        return self.sync.entity_id

    @property
    def relay_id(self) -> Optional[str]:
        """The relay's entity id, if any."""
        return self.sync.relay_id

    async def send_message(
        self,
        to: str,
        payload: Payload,
        prefer_websocket: Optional[bool] = None,
        *,
        status: bool = False,
        app_type: Optional[str] = None,
    ) -> Receipt:
        """:meth:`Node.send_message`: returns once accepted; ``await receipt.delivered()``."""
        return await self._call(
            self.sync.send_message, to, payload, prefer_websocket, status=status, app_type=app_type
        )

    async def send_and_wait(
        self,
        to: str,
        payload: Payload,
        prefer_websocket: Optional[bool] = None,
        *,
        timeout: Optional[float] = None,
        app_type: Optional[str] = None,
    ) -> TransportResult:
        """:meth:`Node.send_and_wait`."""
        receipt = await self.send_message(to, payload, prefer_websocket, app_type=app_type)
        return await receipt.delivered(timeout)

    async def broadcast(self, payload: Payload) -> List[Tuple[str, str]]:
        """:meth:`Node.broadcast`."""
        return await self._call(self.sync.broadcast, payload)

    async def request(self, to: str, payload: Payload, timeout: float = 30.0) -> bytes:
        """:meth:`Node.request`."""
        return await self._call(self.sync.request, to, payload, timeout)

    async def respond(self, request: Request, payload: Payload) -> str:
        """:meth:`Node.respond`."""
        return await self._call(self.sync.respond, request, payload)

    async def init_websocket_connection(self, peer: Optional[str] = None) -> None:
        """:meth:`Node.init_websocket_connection`."""
        await self._call(self.sync.init_websocket_connection, peer)

    async def close_websocket_connection(self, peer: Optional[str] = None) -> None:
        """:meth:`Node.close_websocket_connection`."""
        await self._call(self.sync.close_websocket_connection, peer)

    async def is_websocket_connected(self, peer: Optional[str] = None) -> bool:
        """:meth:`Node.is_websocket_connected`."""
        return await self._call(self.sync.is_websocket_connected, peer)

    async def subscribe(self, topic: str, at: Optional[str] = None) -> None:
        """:meth:`Node.subscribe`."""
        await self._call(self.sync.subscribe, topic, at)

    async def unsubscribe(self, topic: str, at: Optional[str] = None) -> None:
        """:meth:`Node.unsubscribe`."""
        await self._call(self.sync.unsubscribe, topic, at)

    async def publish(self, topic: str, data: Any, via: Optional[str] = None) -> int:
        """:meth:`Node.publish`."""
        return await self._call(self.sync.publish, topic, data, via)

    async def transport_stats(self, peer: Optional[str] = None) -> Optional[TransportStats]:
        """:meth:`Node.transport_stats`."""
        return await self._call(self.sync.transport_stats, peer)

    async def recv(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, waiting at most ``timeout`` seconds (``None``: until one comes);
        ``None`` on timeout, ``NodeStoppedError`` once the node is closed and drained."""
        if self._pending:
            return self._pending.popleft()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = _SLICE if deadline is None else max(0.0, min(_SLICE, deadline - loop.time()))
            batch = await self._take(left)
            if batch:
                self._pending.extend(batch[1:])
                return batch[0]
            if deadline is not None and loop.time() >= deadline:
                return None

    async def _take(self, timeout: float) -> List[Event]:
        """One batch from a worker thread. If the waiting task is cancelled, the batch the
        thread still takes is kept for the next wait."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._receiving, self.sync.recv_many, _BATCH, timeout)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(self._keep)
            raise

    def _keep(self, fut: "asyncio.Future[List[Event]]") -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._pending.extend(fut.result())

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        while True:
            try:
                event = await self.recv(None)
            except NodeStoppedError:
                return
            if event is not None:
                yield event

    async def messages(self) -> AsyncIterator[Message]:
        """Only the :class:`Message` events (others are dropped), until the node is closed."""
        async for event in self:
            if isinstance(event, Message):
                yield event

    async def close(self) -> None:
        """:meth:`Node.close`, then the worker threads end."""
        await self._call(self.sync.close)
        self._calls.shutdown(wait=False)
        self._receiving.shutdown(wait=False)

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncNode({self.sync!r})"


class AsyncClient(AsyncNode):
    """An asyncio :class:`Client`: ``client = await AsyncClient.connect(identity, relay_url)``
    (the arguments of :class:`Client`)."""

    @classmethod
    async def connect(cls, identity: _native.Identity, relay_url: Optional[str] = None, **kwargs: Any) -> "AsyncClient":
        """Starts a :class:`Client` in a worker thread and wraps it."""
        client = await _to_thread(Client, identity, relay_url, **kwargs)
        return cls(client)
