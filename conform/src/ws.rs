//! A blocking WebSocket client with deadlines on every read.

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Error as WsError, HandshakeError, Message, WebSocket};

/// How a token is presented at the upgrade.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth<'a> {
    None,
    Header(&'a str),
    Query(&'a str),
    /// Both; the spec says the header wins.
    Both {
        header: &'a str,
        query: &'a str,
    },
}

/// Why an upgrade did not happen.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The node answered with an HTTP status instead of 101.
    Refused { status: u16, body: Vec<u8> },
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused { status, body } => {
                write!(f, "upgrade refused with HTTP {status}: {}", crate::peer::preview(body))
            }
            ConnectError::Other(e) => write!(f, "WebSocket connection failed: {e}"),
        }
    }
}

/// What came from the node.
#[derive(Debug)]
pub(crate) enum Incoming {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    /// A close frame: its code (None: no code) and reason.
    Closed(Option<u16>, String),
    /// The TCP connection ended without a close frame.
    Eof,
}

/// One WebSocket connection to the node.
pub(crate) struct Ws {
    ws: WebSocket<TcpStream>,
    closed: bool,
    /// The upgrade agreed on the binary envelope (spec §27.1): envelopes go out binary.
    pub binary: bool,
}

/// Opens `url` (ws://) presenting `auth`.
pub(crate) fn connect(url: &str, auth: Auth<'_>) -> Result<Ws, ConnectError> {
    connect_offering(url, auth, None)
}

/// [`connect`], offering `subprotocol` in `Sec-WebSocket-Protocol`; the link is binary when the
/// node's `101` selects [`peerlink_core::wire::BINARY_SUBPROTOCOL`].
pub(crate) fn connect_offering(
    url: &str,
    auth: Auth<'_>,
    subprotocol: Option<&str>,
) -> Result<Ws, ConnectError> {
    let other = |e: String| ConnectError::Other(e);
    let url = match auth {
        Auth::Query(t) | Auth::Both { query: t, .. } => format!("{url}?token={t}"),
        _ => url.to_owned(),
    };
    let mut request = url.as_str().into_client_request().map_err(|e| other(e.to_string()))?;
    if let Auth::Header(t) | Auth::Both { header: t, .. } = auth {
        let v = format!("Bearer {t}").parse().map_err(|_| other("bad token header".into()))?;
        request.headers_mut().insert("authorization", v);
    }
    if let Some(p) = subprotocol {
        let v = p.parse().map_err(|_| other("bad subprotocol".into()))?;
        request.headers_mut().insert("sec-websocket-protocol", v);
    }
    let host = request.uri().host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| other(e.to_string()))?
        .next()
        .ok_or_else(|| other(format!("{host}: no address")))?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| other(e.to_string()))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_nodelay(true);
    // Large limits: the checker must see what the node sends, not refuse it.
    let config =
        WebSocketConfig::default().max_message_size(Some(64 << 20)).max_frame_size(Some(64 << 20));
    match tungstenite::client::client_with_config(request, stream, Some(config)) {
        Ok((ws, response)) => {
            let selected =
                response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
            let binary = peerlink_core::wire::selected(selected, subprotocol.is_some())
                == peerlink_core::wire::Encoding::Binary;
            Ok(Ws { ws, closed: false, binary })
        }
        Err(HandshakeError::Failure(WsError::Http(r))) => Err(ConnectError::Refused {
            status: r.status().as_u16(),
            body: r.body().clone().unwrap_or_default(),
        }),
        Err(e) => Err(other(e.to_string())),
    }
}

fn would_block(e: &WsError) -> bool {
    matches!(e, WsError::Io(io) if matches!(io.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
}

impl Ws {
    /// Sends one text frame (bytes need not be valid UTF-8 JSON, but must be UTF-8).
    pub fn send_text(&mut self, text: &[u8]) -> Result<(), String> {
        let s = String::from_utf8(text.to_vec()).map_err(|_| "checker bug: non-UTF-8 text")?;
        self.send_message(Message::text(s))
    }

    pub fn send_binary(&mut self, data: Vec<u8>) -> Result<(), String> {
        self.send_message(Message::binary(data))
    }

    /// Sends any message.
    pub fn send_message(&mut self, m: Message) -> Result<(), String> {
        self.ws.send(m).map_err(|e| format!("sending to the node failed: {e}"))
    }

    /// The next thing from the node, or `None` at `deadline`.
    pub fn next(&mut self, deadline: Instant) -> Option<Incoming> {
        if self.closed {
            return Some(Incoming::Eof);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let slice = left.min(Duration::from_millis(200)).max(Duration::from_millis(1));
            let _ = self.ws.get_ref().set_read_timeout(Some(slice));
            match self.ws.read() {
                Ok(Message::Text(t)) => return Some(Incoming::Text(t.as_bytes().to_vec())),
                Ok(Message::Binary(b)) => return Some(Incoming::Binary(b.to_vec())),
                Ok(Message::Close(frame)) => {
                    self.closed = true;
                    let _ = self.ws.flush();
                    return Some(match frame {
                        Some(f) => Incoming::Closed(Some(u16::from(f.code)), f.reason.to_string()),
                        None => Incoming::Closed(None, String::new()),
                    });
                }
                Ok(_) => {}
                Err(e) if would_block(&e) => {}
                Err(_) => {
                    self.closed = true;
                    return Some(Incoming::Eof);
                }
            }
        }
    }

    /// Orderly close: sends a close frame and waits briefly for the node's.
    pub fn close(mut self) {
        if self.closed {
            return;
        }
        let _ = self.ws.close(None);
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            let _ = self.ws.get_ref().set_read_timeout(Some(Duration::from_millis(50)));
            match self.ws.read() {
                Err(e) if would_block(&e) => {}
                Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
