//! # peerlink-smol
//!
//! A peerlink node on [smol]: the WebSocket and HTTP server and client around the sans-IO
//! [`peerlink_core::node::Node`]. This crate owns sockets, timers and tasks; every protocol
//! decision (delivery, retransmission, fallback, resume, heartbeat, routing, topics, rate limits)
//! is the core's.

#![forbid(unsafe_code)]
#![deny(unused_must_use)]
#![warn(missing_docs)]

pub mod rt;
