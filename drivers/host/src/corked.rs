//! Write buffering for a link's socket: [`Corked`] holds the bytes of a batch of frames back and
//! writes them out together, so a batch costs one `send` syscall instead of one per frame.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_lite::io::{AsyncRead, AsyncWrite};

/// A corked socket writes its held bytes out once a write would take them past this.
pub(crate) const HOLD_BYTES: usize = 256 * 1024;

/// A held-bytes buffer that grew past this is freed once written out, so a link that carried a
/// burst does not keep the memory while idle.
const HOLD_RETAIN: usize = 32 * 1024;

/// A link's socket, able to hold its writes back while a batch of frames is written.
///
/// tungstenite flushes after every message it sends; while corked, writes are only copied into
/// a buffer (at most [`HOLD_BYTES`] before they go out anyway) and flushes do nothing, so the
/// batch reaches the socket in one write when [`Corked::uncork`] and a flush end it. Uncorked,
/// it writes whatever it still holds and then passes writes straight through. Links start
/// uncorked (the client's WebSocket handshake runs over it) and are corked only by the link
/// task's write batches.
#[derive(Debug)]
pub(crate) struct Corked<S> {
    io: S,
    held: Vec<u8>,
    /// How much of `held` is already written.
    written: usize,
    corked: bool,
}

impl<S> Corked<S> {
    /// Wraps a socket, uncorked.
    pub fn new(io: S) -> Self {
        Self { io, held: Vec::new(), written: 0, corked: false }
    }

    /// Holds writes back from now on (a batch starts).
    pub fn cork(&mut self) {
        self.corked = true;
    }

    /// Passes writes through again; the next flush writes out what is held (a batch ends).
    pub fn uncork(&mut self) {
        self.corked = false;
    }

    /// Whether writes are held back now.
    #[cfg(test)]
    pub fn is_corked(&self) -> bool {
        self.corked
    }

    /// Holds `data` if corked and it fits.
    fn hold(&mut self, data: &[u8]) -> bool {
        let fits = self.held.len().saturating_add(data.len()) <= HOLD_BYTES;
        if self.corked && fits {
            self.held.extend_from_slice(data);
        }
        self.corked && fits
    }
}

impl<S: AsyncWrite + Unpin> Corked<S> {
    /// Writes out everything held.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.held.get(self.written..).filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written = self.written.saturating_add(n.min(rest.len()));
        }
        if self.held.capacity() > HOLD_RETAIN {
            self.held = Vec::new();
        } else {
            self.held.clear();
        }
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Corked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.hold(data) {
            return Poll::Ready(Ok(data.len()));
        }
        ready!(this.poll_write_held(cx))?;
        if this.hold(data) {
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.corked {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
}
