//! The baseline: plain async-tungstenite on smol, no protocol. A one-hop echo (the message
//! crosses two WebSocket hops: there and back) and a two-hop forward (client → forwarder →
//! client, with an 8-byte acknowledgement back the same way, as peerlink relays do).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use smol::net::{TcpListener, TcpStream};
use smol::stream::StreamExt as _;

use crate::BoxError;
use crate::load::{Pipe, Sink};
use crate::stats::{Clock, Recorder};

/// The WebSocket settings of both sides: the same 4 KiB read buffer as a peerlink node's.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

/// Binds a loopback listener and serves every connection with `serve`.
pub async fn listen<F, Fut>(serve: F) -> Result<SocketAddr, BoxError>
where
    F: Fn(WebSocketStream<TcpStream>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    smol::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let Ok(ws) = async_tungstenite::accept_async_with_config(tcp, Some(ws_config())).await
            else {
                continue;
            };
            smol::spawn(serve(ws)).detach();
        }
    })
    .detach();
    Ok(addr)
}

/// An echo server: every binary message goes back as it came.
pub async fn echo_server() -> Result<SocketAddr, BoxError> {
    listen(|mut ws| async move {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_binary() && ws.send(m).await.is_err() {
                break;
            }
        }
    })
    .await
}

/// A forwarder: the first two connections say `send` and `recv`; what one sends goes to the
/// other, both ways.
pub async fn forwarder() -> Result<SocketAddr, BoxError> {
    let (tx, rx) = smol::channel::unbounded::<(bool, WebSocketStream<TcpStream>)>();
    smol::spawn(async move {
        loop {
            let (Ok(a), Ok(b)) = (rx.recv().await, rx.recv().await) else { return };
            let ((_, sender), (_, receiver)) = if a.0 { (a, b) } else { (b, a) };
            let (mut s_tx, mut s_rx) = sender.split();
            let (mut r_tx, mut r_rx) = receiver.split();
            smol::spawn(async move {
                while let Some(Ok(m)) = s_rx.next().await {
                    if m.is_binary() && r_tx.send(m).await.is_err() {
                        break;
                    }
                }
            })
            .detach();
            smol::spawn(async move {
                while let Some(Ok(m)) = r_rx.next().await {
                    if m.is_binary() && s_tx.send(m).await.is_err() {
                        break;
                    }
                }
            })
            .detach();
        }
    })
    .detach();
    listen(move |mut ws| {
        let tx = tx.clone();
        async move {
            if let Some(Ok(Message::Text(role))) = ws.next().await {
                let _ = tx.send((role.as_str() == "send", ws)).await;
            }
        }
    })
    .await
}

/// A client WebSocket to `addr`.
pub async fn connect(addr: SocketAddr) -> Result<WebSocketStream<TcpStream>, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{addr}/");
    let (ws, _) = async_tungstenite::client_async_with_config(url, tcp, Some(ws_config())).await?;
    Ok(ws)
}

/// A pipe through the echo server at `addr`: the echo is the arrival and the acknowledgement.
pub async fn echo_pipe(addr: SocketAddr, window: usize, clock: Clock) -> Result<Pipe, BoxError> {
    let (tx, mut rx) = connect(addr).await?.split();
    let recorder = Arc::new(Recorder::new(clock));
    let (slots, taken) = smol::channel::bounded(window.max(1));
    let rec = Arc::clone(&recorder);
    smol::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            if let Message::Binary(data) = m {
                rec.arrive(&data);
                let _ = taken.try_recv();
            }
        }
    })
    .detach();
    Ok(Pipe { sink: Sink::Ws(tx), slots, recorder, clock, other_cpu: None })
}

/// A pipe through the forwarder at `addr`: the receiving client answers every message with its
/// 8-byte stamp.
pub async fn forward_pipe(addr: SocketAddr, window: usize, clock: Clock) -> Result<Pipe, BoxError> {
    let mut sender = connect(addr).await?;
    sender.send(Message::Text("send".into())).await?;
    let mut receiver = connect(addr).await?;
    receiver.send(Message::Text("recv".into())).await?;
    let recorder = Arc::new(Recorder::new(clock));
    let (slots, taken) = smol::channel::bounded(window.max(1));
    let rec = Arc::clone(&recorder);
    smol::spawn(async move {
        while let Some(Ok(m)) = receiver.next().await {
            if let Message::Binary(data) = m {
                rec.arrive(&data);
                let ack = data.get(..8).map(<[u8]>::to_vec).unwrap_or_default();
                if receiver.send(Message::Binary(ack.into())).await.is_err() {
                    break;
                }
            }
        }
    })
    .detach();
    let (tx, mut rx) = sender.split();
    smol::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            if m.is_binary() {
                let _ = taken.try_recv();
            }
        }
    })
    .detach();
    Ok(Pipe { sink: Sink::Ws(tx), slots, recorder, clock, other_cpu: None })
}

/// WebSocket connections per second to the echo server at `addr` (TCP connect, upgrade, one
/// 64 B echo, close), `concurrency` at a time, for `secs`.
pub async fn connects_per_s(addr: SocketAddr, secs: f64, concurrency: usize) -> f64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            smol::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < end {
                    let one = async {
                        let mut ws = connect(addr).await?;
                        ws.send(Message::Binary(vec![0u8; 64].into())).await?;
                        let _ = ws.next().await;
                        ws.close(None).await?;
                        Ok::<_, BoxError>(())
                    };
                    if one.await.is_ok() {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await;
    }
    total as f64 / started.elapsed().as_secs_f64()
}
