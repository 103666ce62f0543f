//! §14 chunking and §13.4 the receive window, observed through the node's `ACK`s.

use std::time::{Duration, Instant};

use peerlink_core::{ErrorCode, MessageId, MessageType};

use super::session::established;
use super::{Case, CaseResult, case, ensure};
use crate::ctx::Ctx;
use crate::peer::{self, ANSWER};
use crate::ws::Ws;

/// 16 MiB, the reassembly bound (§11).
const MAX_MESSAGE: u64 = 16 * 1024 * 1024;

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("C-14.1", "§14", "chunks out of order are reassembled (ACK, no ERROR)", reorder),
        case("C-14.2", "§14", "a duplicate chunk with the same content is tolerated", duplicate),
        case("C-14.3", "§13.4", "a gap is acknowledged selectively, then cumulatively", gap),
        case(
            "C-14.4",
            "§14",
            "a chunk announcing total > 16 MiB is MESSAGE_TOO_LARGE, unacknowledged",
            oversize,
        ),
        case("C-14.5", "§14", "a chunk at position 65536 is MESSAGE_TOO_LARGE", too_many),
        case(
            "C-14.6",
            "§14",
            "a duplicate chunk with other content is INVALID_MESSAGE",
            conflicting,
        ),
    ]
}

struct Chunks {
    ws: Ws,
    session: peerlink_core::Session,
    rng: rand_chacha::ChaCha20Rng,
    epoch: u64,
    id: MessageId,
}

impl Chunks {
    fn new(ctx: &Ctx) -> Result<Self, String> {
        let mut rng = peer::rng();
        let (ws, session) = established(ctx, &mut rng)?;
        let epoch = peer::epoch(&mut rng);
        let id = MessageId::random(&mut rng);
        Ok(Self { ws, session, rng, epoch, id })
    }

    fn send(
        &mut self,
        no: u64,
        seq: u32,
        last: bool,
        total: u64,
        body: &[u8],
    ) -> Result<(), String> {
        let pt = peer::chunk(self.epoch, no, 1, &self.id, seq, last, total, body);
        peer::seal_send(
            &mut self.ws,
            &mut self.session,
            MessageType::ChunkedMessage,
            &pt,
            &mut self.rng,
        )?;
        Ok(())
    }

    fn ack(
        &mut self,
        ctx: &Ctx,
        want: impl Fn(&peerlink_core::stream::Ack) -> bool,
    ) -> Result<peerlink_core::stream::Ack, String> {
        peer::expect_ack(ctx, &mut self.ws, &mut self.session, self.epoch, want)
    }
}

fn reorder(ctx: &Ctx) -> CaseResult {
    let mut c = Chunks::new(ctx)?;
    c.send(1, 1, true, 8, b"5678")?;
    c.send(2, 0, false, 8, b"1234")?;
    c.ack(ctx, |a| a.cumulative >= 2)?;
    peer::expect_silence(&mut c.ws, Duration::from_millis(100))?;
    c.ws.close();
    Ok(())
}

fn duplicate(ctx: &Ctx) -> CaseResult {
    let mut c = Chunks::new(ctx)?;
    c.send(1, 0, false, 8, b"1234")?;
    c.send(2, 0, false, 8, b"1234")?;
    c.send(3, 1, true, 8, b"5678")?;
    c.ack(ctx, |a| a.cumulative >= 3)?;
    peer::expect_silence(&mut c.ws, Duration::from_millis(100))?;
    c.ws.close();
    Ok(())
}

fn gap(ctx: &Ctx) -> CaseResult {
    let mut c = Chunks::new(ctx)?;
    c.send(1, 0, false, 12, b"1234")?;
    c.send(3, 2, true, 12, b"9abc")?;
    let a = c.ack(ctx, |a| a.selective.contains(&3))?;
    ensure!(a.cumulative == 1, "with frame 2 missing, cumulative is {} (expected 1)", a.cumulative);
    c.send(2, 1, false, 12, b"5678")?;
    let a = c.ack(ctx, |a| a.cumulative >= 3)?;
    ensure!(a.selective.is_empty(), "selective {:?} after the gap was filled", a.selective);
    c.ws.close();
    Ok(())
}

/// Expects `code` before any `ACK` covering frame 1.
fn refused_unacked(ctx: &Ctx, mut c: Chunks, code: ErrorCode) -> CaseResult {
    peer::expect_error(ctx, &mut c.ws, code, ANSWER)?;
    peer::expect_silence(&mut c.ws, Duration::from_millis(200))
        .map_err(|e| format!("after the refusal: {e}"))?;
    c.ws.close();
    Ok(())
}

fn oversize(ctx: &Ctx) -> CaseResult {
    let mut c = Chunks::new(ctx)?;
    c.send(1, 0, false, MAX_MESSAGE + 1, b"1234")?;
    refused_unacked(ctx, c, ErrorCode::MessageTooLarge)
}

fn too_many(ctx: &Ctx) -> CaseResult {
    let mut c = Chunks::new(ctx)?;
    c.send(1, 65_536, false, 1_000_000, b"1234")?;
    refused_unacked(ctx, c, ErrorCode::MessageTooLarge)
}

fn conflicting(ctx: &Ctx) -> CaseResult {
    let mut c = Chunks::new(ctx)?;
    c.send(1, 0, false, 8, b"1234")?;
    c.send(2, 0, false, 8, b"abcd")?;
    // ACKs may come first (each frame is acknowledged as a frame); the ERROR must follow.
    let deadline = Instant::now() + ANSWER;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let env = peer::recv(&mut c.ws, left)
            .map_err(|e| format!("expected ERROR INVALID_MESSAGE: {e}"))?;
        match env.message_type {
            MessageType::Ack => continue,
            MessageType::Error => {
                let b = peer::error_body(ctx, &env)?;
                ensure!(
                    b.code == ErrorCode::InvalidMessage,
                    "expected INVALID_MESSAGE, got {}",
                    b.code
                );
                break;
            }
            other => return Err(format!("expected ERROR INVALID_MESSAGE, got {other}").into()),
        }
    }
    c.ws.close();
    Ok(())
}
