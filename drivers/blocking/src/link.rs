//! One WebSocket link on a thread of its own: authenticate, connect, then alternate between
//! writing what the client's thread queued and reading (with a short timeout).

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::Instant;

use peerlink_core::node::{LinkId, NodeAddr};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, Error as WsError, Message, WebSocket};

use crate::driver::{Input, Shared};

/// What the client's thread keeps of a link: its bounded send queue and a stop flag.
pub struct LinkHandle {
    /// Frames to write; bounded by `WebSocketSettings::send_queue`.
    pub frames: SyncSender<Arc<[u8]>>,
    /// Set to close the link.
    pub stop: Arc<AtomicBool>,
}

/// Starts the link's thread; it reports `LinkUp` or `LinkFailed`, then frames, then
/// `LinkClosed`. `None` if no thread can be had (the caller fails the link).
pub fn spawn(
    link: LinkId,
    url: String,
    node: NodeAddr,
    shared: Arc<Shared>,
    inputs: SyncSender<Input>,
) -> Option<LinkHandle> {
    let (frames, queue) = sync_channel(shared.config.websocket.send_queue.max(1));
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let spawned =
        std::thread::Builder::new().name(format!("peerlink-link-{}", link.0)).spawn(move || {
            match connect(&url, &node, &shared) {
                Some(ws) => {
                    if inputs.send(Input::LinkUp(link)).is_ok() {
                        run(link, ws, &queue, &flag, &shared, &inputs);
                    }
                    let _ = inputs.send(Input::LinkClosed(link));
                }
                None => {
                    let _ = inputs.send(Input::LinkFailed(link));
                }
            }
        });
    spawned.ok().map(|_| LinkHandle { frames, stop })
}

/// A link's socket: plain TCP or TLS.
type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// Authenticates at `node` and upgrades to `url`, the node's finished URL; `None` on any
/// failure (the core backs off and retries).
fn connect(url: &str, node: &NodeAddr, shared: &Shared) -> Option<Socket> {
    let settings = &shared.config.websocket;
    let token = shared.tokens.token(&shared.agent, node).ok()?;
    let mut request = url.into_client_request().ok()?;
    let auth = format!("Bearer {token}").parse().ok()?;
    request.headers_mut().insert("authorization", auth);
    let host = request.uri().host()?.trim_start_matches('[').trim_end_matches(']').to_owned();
    let tls = request.uri().scheme_str() == Some("wss");
    let port = request.uri().port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = (host.as_str(), port).to_socket_addrs().ok()?.next()?;
    let stream = TcpStream::connect_timeout(&addr, settings.connect_timeout).ok()?;
    stream.set_read_timeout(Some(settings.connect_timeout)).ok()?;
    stream.set_write_timeout(Some(settings.connect_timeout)).ok()?;
    stream.set_nodelay(true).ok()?;
    let config = WebSocketConfig::default()
        .read_buffer_size(settings.read_buffer_bytes)
        .max_message_size(Some(settings.max_frame_bytes))
        .max_frame_size(Some(settings.max_frame_bytes));
    let connector = tls.then(|| Connector::Rustls(Arc::clone(&shared.tls)));
    let poll = Some(settings.read_poll.max(MIN_POLL));
    match tungstenite::client_tls_with_config(request, stream, Some(config), connector) {
        Ok((ws, _)) => {
            match ws.get_ref() {
                MaybeTlsStream::Plain(s) => s.set_read_timeout(poll).ok()?,
                MaybeTlsStream::Rustls(s) => s.get_ref().set_read_timeout(poll).ok()?,
                _ => return None,
            }
            Some(ws)
        }
        Err(tungstenite::HandshakeError::Failure(WsError::Http(response)))
            if response.status().as_u16() == 401 =>
        {
            shared.tokens.invalidate(&node.base_url);
            None
        }
        Err(_) => None,
    }
}

/// Shortest read timeout (a zero timeout would mean "block forever").
const MIN_POLL: std::time::Duration = std::time::Duration::from_millis(1);

fn run(
    link: LinkId,
    mut ws: Socket,
    queue: &Receiver<Arc<[u8]>>,
    stop: &AtomicBool,
    shared: &Shared,
    inputs: &SyncSender<Input>,
) {
    let stall_limit = shared.config.websocket.connect_timeout;
    let mut stalled_since: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            let _ = ws.close(None);
            let _ = ws.flush();
            return;
        }
        // Write everything queued.
        loop {
            match queue.try_recv() {
                Ok(frame) => {
                    let Ok(text) = String::from_utf8(frame.to_vec()) else { continue };
                    if let Err(e) = ws.write(Message::text(text))
                        && !would_block(&e)
                    {
                        return;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = ws.close(None);
                    let _ = ws.flush();
                    return;
                }
            }
        }
        match ws.flush() {
            Ok(()) => stalled_since = None,
            Err(e) if would_block(&e) => {
                // The server does not read: give up after the stall limit.
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > stall_limit {
                    return;
                }
            }
            Err(_) => return,
        }
        match ws.read() {
            Ok(Message::Text(text)) => {
                if inputs.send(Input::Frame(link, text.as_bytes().to_vec())).is_err() {
                    return;
                }
            }
            // Envelopes are text; anything else from the server is a protocol violation.
            Ok(Message::Binary(_)) => {
                let _ = ws.close(None);
                let _ = ws.flush();
                return;
            }
            Ok(Message::Close(_)) => return,
            Ok(_) => {}
            Err(e) if would_block(&e) => {}
            Err(_) => return,
        }
    }
}

fn would_block(e: &WsError) -> bool {
    matches!(e, WsError::Io(io) if matches!(io.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
}
