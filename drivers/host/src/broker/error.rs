//! [`BrokerError`]: what went wrong talking to the broker, by what the caller can do about it.

use std::io;
use std::time::Duration;

/// Why a broker could not be reached, or a request failed. No message holds a password.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker URL is malformed or asks for something unsupported (says what, without
    /// repeating the URL).
    #[error("bad broker URL: {0}")]
    BadUrl(String),
    /// No TCP connection could be made (refused, unreachable, name not resolved).
    #[error("cannot connect to the broker at {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The socket's error.
        source: io::Error,
    },
    /// The TLS handshake failed, or a `rediss://` URL came without a TLS client configuration.
    #[error("TLS with the broker at {addr}: {reason}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The broker refused the user name and password (`WRONGPASS`), or asks for credentials
    /// that the URL lacks (`NOAUTH`).
    #[error("the broker at {addr} refused the credentials: {reason}")]
    AuthRefused {
        /// `host:port`.
        addr: String,
        /// The broker's words.
        reason: String,
    },
    /// No answer in time: the connection, or the request, took longer than allowed. A request
    /// given up on may still be answered (the answer is then discarded), and the answers behind
    /// it wait for it: on a broker that has stopped answering, make a new connection.
    #[error("the broker did not answer within {limit:?} ({during})")]
    Timeout {
        /// What was awaited: "connecting" or "a request".
        during: &'static str,
        /// The limit that passed.
        limit: Duration,
    },
    /// The connection broke (the broker went away, or the network did). Requests on it will
    /// all fail the same way: a new connection must be made.
    #[error("the connection to the broker was lost: {0}")]
    ConnectionLost(String),
    /// The broker answered the request with an error (a wrong type, a command the ACL user may
    /// not run, …). The connection stays usable.
    #[error("the broker refused the request: {0}")]
    Refused(String),
    /// An answer that could not be understood, or not as the type asked for.
    #[error("broker protocol: {0}")]
    Protocol(String),
}

impl BrokerError {
    /// A failure of the crate's handshake (`HELLO`, `AUTH`, `SELECT`) with the broker at `addr`.
    pub(super) fn handshake(addr: String, e: redis::RedisError) -> Self {
        if e.is_connection_dropped() || e.is_io_error() {
            return BrokerError::ConnectionLost(format!("while logging in to {addr}: {e}"));
        }
        Self::request(&addr, e)
    }

    /// The failure of a request to the broker at `addr`.
    pub(super) fn request(addr: &str, e: redis::RedisError) -> Self {
        use redis::ErrorKind as K;
        if e.is_connection_dropped() || e.is_io_error() {
            BrokerError::ConnectionLost(e.to_string())
        } else if is_auth(&e) {
            BrokerError::AuthRefused { addr: addr.to_owned(), reason: e.to_string() }
        } else {
            match e.kind() {
                K::Server(_) | K::Extension => BrokerError::Refused(e.to_string()),
                _ => BrokerError::Protocol(e.to_string()),
            }
        }
    }
}

/// A refusal of the credentials: as the crate classes it (RESP2 `AUTH`), or by the server's code
/// (`HELLO 3 AUTH …` answers `WRONGPASS`, a command without login `NOAUTH`).
fn is_auth(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
}
