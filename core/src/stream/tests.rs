//! Delivery-layer tests: frame codecs, and exactly-once in-order delivery over a lossy,
//! duplicating, reordering channel checked against a model.

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use super::*;
use crate::time::Timestamp;

fn mid(s: &str) -> MessageId {
    MessageId::new(s).unwrap()
}

fn single(id: &str, body: &[u8]) -> OutgoingMessage {
    OutgoingMessage {
        id: mid(id),
        frames: vec![FrameSpec {
            message_type: MessageType::PeerMessage,
            message_id: mid(id),
            reply_to: None,
            app_type: None,
            chunk: None,
            body: body.to_vec(),
        }],
    }
}

const T0: Timestamp = Timestamp::from_unix_millis(1_000_000);

#[test]
fn data_frames_round_trip_and_reject_garbage() {
    let header = DataHeader {
        epoch: 9,
        no: 3,
        base: 2,
        reply_to: Some(mid("req-1")),
        app_type: Some(crate::ids::AppType::new("MODEL_CREATED").unwrap()),
        chunk: Some(ChunkHeader {
            id: mid("big"),
            seq: 1,
            last: false,
            total: 10,
            message_type: MessageType::PeerMessage,
        }),
    };
    let bytes = encode_data(&header, b"body\nwith newline");
    let (h, body) = decode_data(&bytes).unwrap();
    assert_eq!(h, header);
    assert_eq!(body, b"body\nwith newline");
    let text = String::from_utf8(encode_data(&header, b"")).unwrap();
    assert!(text.contains(r#""reply_to":"req-1","app_type":"MODEL_CREATED","chunk":"#), "{text}");
    let plain = DataHeader { reply_to: None, app_type: None, chunk: None, ..header.clone() };
    assert_eq!(encode_data(&plain, b""), b"{\"epoch\":9,\"no\":3,\"base\":2}\n");
    for bad in [
        &b"no newline"[..],
        b"{\"epoch\":1,\"no\":0,\"base\":0}\n",
        b"{\"epoch\":1,\"no\":1,\"base\":2}\n",
        b"{\"epoch\":0,\"no\":1,\"base\":1}\n",
        b"{\"epoch\":1,\"no\":1,\"base\":1,\"x\":1}\n",
        b"{\"epoch\":1,\"no\":1,\"base\":1,\"app_type\":\"a b\"}\n",
        b"{\"epoch\":1,\"no\":1,\"base\":1,\"app_type\":\"\"}\n",
        b"{\"epoch\":1,\"no\":1,\"base\":1,\"app_type\":7}\n",
        b"[]\n",
    ] {
        assert!(decode_data(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    let long = [vec![b' '; 2000], b"\n".to_vec()].concat();
    assert!(decode_data(&long).is_err());
    let control = StreamControl {
        ack: Some(Ack { epoch: 1, cumulative: 5, selective: vec![7, 9] }),
        forward: Some(Forward { epoch: 3, base: 4 }),
    };
    assert_eq!(StreamControl::decode(&control.encode()).unwrap(), control);
    let many = StreamControl {
        ack: Some(Ack { epoch: 1, cumulative: 0, selective: (1..=65).collect() }),
        forward: None,
    };
    assert!(StreamControl::decode(&many.encode()).is_err());
    assert!(StreamControl::decode(b"{\"forward\":{\"epoch\":1,\"base\":0}}").is_err());
}

#[test]
fn outbox_is_bounded_and_reports_why() {
    let config =
        StreamConfig { max_outbox_messages: 2, max_outbox_bytes: 10, ..Default::default() };
    let mut s = SendStream::new(1);
    assert!(s.push(single("a", b"12345"), T0, &config).is_ok());
    assert!(s.push(single("a", b"1"), T0, &config).is_err(), "duplicate id");
    let err = s.push(single("b", b"123456"), T0, &config).unwrap_err();
    assert_eq!((err.messages, err.bytes, err.max_bytes), (1, 5, 10));
    assert!(s.push(single("b", b"12345"), T0, &config).is_ok());
    assert!(s.push(single("c", b""), T0, &config).is_err(), "message limit");
    let done = s.on_ack(&Ack { epoch: 1, cumulative: 1, selective: vec![] }, T0);
    assert_eq!(done, vec![mid("a")]);
    assert!(s.push(single("c", b""), T0, &config).is_ok());
}

#[test]
fn retransmission_backs_off_and_window_limits_in_flight() {
    let config = StreamConfig { send_window: 2, ..Default::default() };
    let mut s = SendStream::new(1);
    for id in ["a", "b", "c"] {
        s.push(single(id, b"x"), T0, &config).unwrap();
    }
    assert_eq!(s.due(T0, &config), vec![1, 2], "window of 2");
    s.on_sent(1, T0, &config);
    s.on_sent(2, T0, &config);
    assert!(s.due(T0, &config).is_empty());
    let rto = config.initial_rto;
    assert_eq!(s.due(T0.saturating_add(rto), &config), vec![1, 2]);
    s.on_sent(1, T0.saturating_add(rto), &config);
    // Second attempt waits twice as long.
    assert_eq!(s.frames[&1].due, T0.saturating_add(rto * 3));
    // 2 is held by the peer out of order: no longer re-sent, but not delivered either.
    assert!(s.on_ack(&Ack { epoch: 1, cumulative: 0, selective: vec![2] }, T0).is_empty());
    assert_eq!(s.base(), 1);
    assert_eq!(s.due(T0.saturating_add(rto * 3), &config), vec![1], "2 is not re-sent");
    assert_eq!(s.on_ack(&Ack { epoch: 1, cumulative: 1, selective: vec![] }, T0), vec![mid("a")]);
    assert_eq!(s.base(), 2, "2 stays until the cumulative acknowledgement covers it");
    assert_eq!(s.due(T0, &config), vec![3]);
    assert_eq!(s.on_ack(&Ack { epoch: 1, cumulative: 2, selective: vec![] }, T0), vec![mid("b")]);
    assert_eq!(s.base(), 3);
    // ACKs of another epoch are ignored.
    assert!(s.on_ack(&Ack { epoch: 2, cumulative: 9, selective: vec![] }, T0).is_empty());
}

#[test]
fn send_window_bytes_holds_back_new_frames_but_not_retransmissions() {
    let kib = |n: usize| vec![b'x'; n << 10];
    let config = StreamConfig::default();
    assert_eq!(config.send_window_bytes, 4 << 20);
    let mut s = SendStream::new(1);
    for id in ["a", "b", "c", "d"] {
        s.push(single(id, &kib(1600)), T0, &config).unwrap();
    }
    // 3200 KiB fit in 4 MiB, 4800 KiB do not: c and d wait although the frame window has room.
    assert_eq!(s.due(T0, &config), vec![1, 2]);
    assert_eq!(s.window_end(&config), 3);
    s.on_sent(1, T0, &config);
    s.on_sent(2, T0, &config);
    assert_eq!(s.bytes_in_flight(), 3200 << 10);
    assert!(s.due(T0, &config).is_empty());
    // Nothing new is due before the retransmission timeout: the deadline is the RTO.
    let rto = config.initial_rto;
    assert_eq!(s.next_deadline(&config), Some(T0.saturating_add(rto)));
    // Both frames in flight are retransmitted; the held-back ones still wait.
    assert_eq!(s.due(T0.saturating_add(rto), &config), vec![1, 2]);
    // A selective acknowledgement of 2 stops its retransmission but frees no room: the window
    // counts from base, and the peer has not delivered 2 yet.
    s.on_ack(&Ack { epoch: 1, cumulative: 0, selective: vec![2] }, T0);
    assert_eq!(s.bytes_in_flight(), 1600 << 10);
    assert!(s.due(T0, &config).is_empty());
    // Once 1 and 2 are delivered, c and d fit (1600 + 1600 KiB).
    s.on_ack(&Ack { epoch: 1, cumulative: 2, selective: vec![] }, T0);
    assert_eq!(s.due(T0, &config), vec![3, 4]);
}

#[test]
fn a_frame_larger_than_send_window_bytes_still_goes_alone() {
    let config = StreamConfig { send_window_bytes: 10, ..Default::default() };
    let mut s = SendStream::new(1);
    s.push(single("big", &[b'x'; 25]), T0, &config).unwrap();
    s.push(single("small", b"1"), T0, &config).unwrap();
    assert_eq!(s.due(T0, &config), vec![1], "the frame at base always goes");
    s.on_sent(1, T0, &config);
    assert!(s.due(T0, &config).is_empty(), "nothing joins it");
    s.on_ack(&Ack { epoch: 1, cumulative: 1, selective: vec![] }, T0);
    assert_eq!(s.due(T0, &config), vec![2]);
    // A byte bound of 0 sends one frame at a time.
    let zero = StreamConfig { send_window_bytes: 0, ..Default::default() };
    let mut s = SendStream::new(1);
    for id in ["a", "b"] {
        s.push(single(id, b"1"), T0, &zero).unwrap();
    }
    assert_eq!(s.due(T0, &zero), vec![1]);
}

#[test]
fn failed_messages_move_base_so_the_receiver_stops_waiting() {
    let config = StreamConfig::default();
    let mut s = SendStream::new(5);
    s.push(single("a", b"1"), T0, &config).unwrap();
    s.push(single("b", b"2"), T0, &config).unwrap();
    let late = T0.saturating_add(config.send_timeout);
    let ids: Vec<MessageId> = s.expire(late).into_iter().map(|f| f.id).collect();
    assert_eq!(ids, vec![mid("a"), mid("b")]);
    s.push(single("c", b"3"), late, &config).unwrap();
    let (_, _, plain) = s.plaintext(3).unwrap();
    let (header, _) = decode_data(&plain).unwrap();
    assert_eq!((header.no, header.base), (3, 3));
    let mut r = RecvStreams::default();
    let got = r.accept(
        InFrame {
            message_type: MessageType::PeerMessage,
            message_id: mid("c"),
            header,
            body: b"3".to_vec(),
        },
        &config,
    );
    assert!(matches!(got, Received::Deliver(v) if v.len() == 1));
}

/// One in-flight item of the simulated channel.
#[derive(Debug, Clone)]
enum Packet {
    Data(Vec<u8>),
    Ack(Ack),
    Forward(Forward),
}

struct Channel {
    items: Vec<(u64, Packet)>,
}

impl Channel {
    fn send(&mut self, at: u64, p: Packet, rng: &mut ChaCha20Rng, loss: u32, dup: u32) {
        if rng.next_u32() % 100 < loss {
            return;
        }
        let copies = if rng.next_u32() % 100 < dup { 2 } else { 1 };
        for _ in 0..copies {
            let delay = 1 + u64::from(rng.next_u32() % 400);
            self.items.push((at + delay, p.clone()));
        }
    }
    fn due(&mut self, now: u64, rng: &mut ChaCha20Rng) -> Vec<Packet> {
        let (mut ready, rest): (Vec<_>, Vec<_>) =
            self.items.drain(..).partition(|(t, _)| *t <= now);
        self.items = rest;
        // Reorder what arrives in the same step.
        for i in (1..ready.len()).rev() {
            let j = (rng.next_u32() as usize) % (i + 1);
            ready.swap(i, j);
        }
        ready.into_iter().map(|(_, p)| p).collect()
    }
}

/// The message name a simulated body carries (`m<i>:<padding>`).
fn name(body: Vec<u8>) -> String {
    let body = String::from_utf8(body).unwrap();
    body.split(':').next().unwrap().to_owned()
}

/// Checks the send window after every step: every frame sent and not acknowledged lies inside
/// the window (so its retransmission is never held back), within `send_window` frames of
/// `base`, and their bodies total at most `send_window_bytes`, unless the frame at `base` is
/// the only one in flight.
fn check_window(sender: &SendStream, config: &StreamConfig) {
    let end = sender.window_end(config);
    let in_flight: Vec<u64> =
        sender.frames.iter().filter(|(_, f)| f.sent_at.is_some()).map(|(no, _)| *no).collect();
    for no in &in_flight {
        assert!(*no < end, "frame {no} in flight outside the window (end {end})");
        assert!(*no < sender.base().saturating_add(config.send_window));
    }
    let bytes = sender.bytes_in_flight();
    assert!(
        bytes <= config.send_window_bytes || in_flight == [sender.base()],
        "{bytes} bytes in flight over {} in frames {in_flight:?}",
        config.send_window_bytes
    );
}

/// Runs a sender and a receiver over a lossy channel; returns what was delivered, what the sender
/// was told succeeded, and what it was told failed. Bodies carry the message name and up to
/// `max_pad` bytes of padding.
fn simulate(
    seed: u64,
    messages: usize,
    loss: u32,
    dup: u32,
    max_pad: usize,
    config: &StreamConfig,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut sender = SendStream::new(1 + rng.next_u64() % 1000);
    let mut receiver = RecvStreams::default();
    let (mut to_recv, mut to_send) = (Channel { items: vec![] }, Channel { items: vec![] });
    let (mut delivered, mut acked, mut failed) = (vec![], vec![], vec![]);
    let mut never = vec![];
    let mut now = 1_000_000u64;
    let mut pushed = 0;
    for _ in 0..20_000 {
        now += 1 + u64::from(rng.next_u32() % 50);
        let t = Timestamp::from_unix_millis(now);
        if pushed < messages && rng.next_u32() % 3 == 0 {
            let id = format!("m{pushed}");
            let pad = (rng.next_u32() as usize) % (max_pad + 1);
            let body = format!("{id}:{}", "x".repeat(pad));
            if sender.push(single(&id, body.as_bytes()), t, config).is_ok() {
                pushed += 1;
            }
        }
        for no in sender.due(t, config) {
            let (_, _, plain) = sender.plaintext(no).unwrap();
            sender.on_sent(no, t, config);
            to_recv.send(now, Packet::Data(plain), &mut rng, loss, dup);
        }
        check_window(&sender, config);
        if let Some(forward) = sender.poll_forward(t, config) {
            to_recv.send(now, Packet::Forward(forward), &mut rng, loss, dup);
        }
        for p in to_recv.due(now, &mut rng) {
            let plain = match p {
                Packet::Data(plain) => plain,
                Packet::Forward(f) => {
                    if let Received::Deliver(frames) = receiver.forward(f, config) {
                        delivered.extend(frames.into_iter().map(|f| name(f.body)));
                    }
                    if let Some(ack) = receiver.ack(f.epoch) {
                        to_send.send(now, Packet::Ack(ack), &mut rng, loss, dup);
                    }
                    continue;
                }
                Packet::Ack(_) => unreachable!(),
            };
            let (header, body) = decode_data(&plain).unwrap();
            let epoch = header.epoch;
            let frame = InFrame {
                message_type: MessageType::PeerMessage,
                message_id: mid("x"),
                header,
                body: body.to_vec(),
            };
            if let Received::Deliver(frames) = receiver.accept(frame, config) {
                delivered.extend(frames.into_iter().map(|f| name(f.body)));
            }
            if let Some(ack) = receiver.ack(epoch) {
                to_send.send(now, Packet::Ack(ack), &mut rng, loss, dup);
            }
        }
        for p in to_send.due(now, &mut rng) {
            let Packet::Ack(ack) = p else { unreachable!() };
            for m in sender.on_ack(&ack, t) {
                let m = m.as_str().to_owned();
                // Acknowledged means already handed to the application, not merely received.
                assert!(delivered.contains(&m), "{m} acknowledged before it was delivered");
                acked.push(m);
            }
        }
        check_window(&sender, config);
        for f in sender.expire(t) {
            let m = f.id.as_str().to_owned();
            // A failure that says some part never left: it must never arrive.
            if !f.maybe_delivered {
                never.push(m.clone());
            }
            failed.push(m);
        }
        assert!(sender.messages() <= config.max_outbox_messages);
        assert!(receiver.buffered_bytes() <= config.max_recv_buffer_bytes);
        if pushed == messages
            && sender.messages() == 0
            && to_recv.items.is_empty()
            && !sender.forward_needed()
        {
            break;
        }
    }
    for m in &never {
        assert!(!delivered.contains(m), "{m} failed as never sent, yet delivered");
    }
    (delivered, acked, failed)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Under loss, duplication and reordering, the receiver sees every message at most once and
    /// in order; every message is acknowledged to the sender or reported failed; and without a
    /// failure every message is delivered. Throughout, the send window holds in frames and in
    /// bytes (`check_window`), with bodies both below and above the byte bound.
    #[test]
    fn exactly_once_in_order(
        seed in any::<u64>(),
        messages in 1usize..60,
        loss in 0u32..40,
        dup in 0u32..40,
        window_bytes in 0usize..300,
        max_pad in 0usize..120,
    ) {
        let config = StreamConfig {
            send_window: 8,
            send_window_bytes: window_bytes,
            recv_window: 16,
            ..Default::default()
        };
        let (delivered, acked, failed) = simulate(seed, messages, loss, dup, max_pad, &config);
        let index = |m: &String| m[1..].parse::<usize>().unwrap();
        let order: Vec<usize> = delivered.iter().map(index).collect();
        prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order or duplicated: {:?}", order);
        for m in &acked {
            prop_assert!(delivered.contains(m), "{} acknowledged but never delivered", m);
        }
        let mut outcome: Vec<&String> = acked.iter().chain(failed.iter()).collect();
        outcome.sort();
        outcome.dedup();
        prop_assert_eq!(outcome.len(), messages, "every message ends acknowledged or failed");
        if failed.is_empty() {
            prop_assert_eq!(delivered.len(), messages);
        }
        // Nothing acknowledged is left stranded behind a given-up message.
        let last_acked = acked.iter().map(index).max();
        if let Some(last) = last_acked {
            prop_assert!(order.contains(&last));
        }
    }
}

#[test]
fn a_duplicate_still_releases_frames_made_deliverable_by_base() {
    let config = StreamConfig::default();
    let mut r = RecvStreams::default();
    let frame = |no: u64, base: u64| InFrame {
        message_type: MessageType::PeerMessage,
        message_id: mid(&format!("m{no}")),
        header: DataHeader { epoch: 1, no, base, reply_to: None, app_type: None, chunk: None },
        body: vec![no as u8],
    };
    assert_eq!(r.accept(frame(1, 1), &config), Received::Deliver(vec![frame(1, 1)]));
    // 2 is lost; 3 and 4 wait behind it.
    assert_eq!(r.accept(frame(3, 2), &config), Received::Buffered);
    assert_eq!(r.accept(frame(4, 2), &config), Received::Buffered);
    // The sender gave up on 2 and re-sends 3 with base 3: 3 and 4 are released even though
    // this copy of 3 is a duplicate.
    match r.accept(frame(3, 3), &config) {
        Received::Deliver(v) => {
            assert_eq!(v.iter().map(|f| f.header.no).collect::<Vec<_>>(), vec![3, 4])
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.ack(1).unwrap().cumulative, 4);
    assert!(!format!("{:?}", frame(9, 9)).contains("body: ["), "Debug shows no body");
}

#[test]
fn a_full_buffer_never_holds_up_the_frame_that_releases_it() {
    let config = StreamConfig { max_recv_buffer_bytes: 20, ..StreamConfig::default() };
    let mut r = RecvStreams::default();
    let frame = |no: u64| InFrame {
        message_type: MessageType::PeerMessage,
        message_id: mid(&format!("m{no}")),
        header: DataHeader { epoch: 1, no, base: 1, reply_to: None, app_type: None, chunk: None },
        body: vec![0; 10],
    };
    // 2 and 3 fill the 20-byte buffer; a further out-of-order frame is dropped.
    assert_eq!(r.accept(frame(2), &config), Received::Buffered);
    assert_eq!(r.accept(frame(3), &config), Received::Buffered);
    assert_eq!(r.accept(frame(4), &config), Received::Dropped);
    // 1 is in order: delivered with the frames it releases, though the buffer is full.
    match r.accept(frame(1), &config) {
        Received::Deliver(v) => {
            assert_eq!(v.iter().map(|f| f.header.no).collect::<Vec<_>>(), vec![1, 2, 3])
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.accept(frame(4), &config), Received::Deliver(vec![frame(4)]));
}

/// What the sender's indexes must agree with: the same answers computed by scanning every frame
/// and message, as the stream did before it kept indexes.
fn check_indexes(s: &SendStream, now: Timestamp, config: &StreamConfig) {
    let by_frames = s.base().saturating_add(config.send_window);
    let mut limit = by_frames;
    let mut bytes = 0usize;
    for (i, (&no, f)) in s.frames.range(..by_frames).enumerate() {
        bytes = bytes.saturating_add(f.body.len());
        if i > 0 && bytes > config.send_window_bytes {
            limit = no;
            break;
        }
    }
    assert_eq!(s.window_end(config), limit, "window_end");
    let due: Vec<u64> = s
        .frames
        .range(..limit)
        .filter(|(_, f)| f.due <= now && !f.sacked)
        .map(|(no, _)| *no)
        .collect();
    assert_eq!(s.due(now, config), due, "due");
    let in_flight: usize =
        s.frames.values().filter(|f| f.sent_at.is_some() && !f.sacked).map(|f| f.body.len()).sum();
    assert_eq!(s.bytes_in_flight(), in_flight, "bytes_in_flight");
    let earliest_due = s.frames.range(..limit).filter(|(_, f)| !f.sacked).map(|(_, f)| f.due).min();
    let expiry = s.logical.values().map(|l| l.deadline).min();
    assert_eq!(s.next_expiry(), expiry, "next_expiry");
    let forward = s.forward_needed().then(|| s.forward_due.unwrap_or_default());
    let deadline = [earliest_due, expiry, forward].into_iter().flatten().min();
    assert_eq!(s.next_deadline(config), deadline, "next_deadline");
}

/// One step of [`the_send_indexes_agree_with_a_scan`].
#[derive(Debug, Clone)]
enum SendOp {
    Push { frames: usize, body: usize },
    SendDue,
    Ack { cumulative: u64, selective: Vec<u64> },
    Fail(u64),
    Expire,
    RetransmitAll,
    Wait(u64),
}

fn send_op() -> impl Strategy<Value = SendOp> {
    prop_oneof![
        4 => (1usize..4, 0usize..3000).prop_map(|(frames, body)| SendOp::Push { frames, body }),
        4 => Just(SendOp::SendDue),
        3 => (0u64..60, proptest::collection::vec(0u64..80, 0..6))
            .prop_map(|(cumulative, selective)| SendOp::Ack { cumulative, selective }),
        1 => (0u64..40).prop_map(SendOp::Fail),
        1 => Just(SendOp::Expire),
        1 => Just(SendOp::RetransmitAll),
        3 => (0u64..3_000).prop_map(SendOp::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever happens to a sender (messages queued, frames sent and re-sent, acknowledged in
    /// any order, given up, expired, everything made due again), its window end, due frames,
    /// bytes in flight, next send timeout and next deadline equal those found by scanning the
    /// whole outbox.
    #[test]
    fn the_send_indexes_agree_with_a_scan(ops in proptest::collection::vec(send_op(), 1..120)) {
        let config = StreamConfig {
            send_window: 8,
            send_window_bytes: 4_000,
            max_outbox_messages: 40,
            send_timeout: Duration::from_millis(20_000),
            ..StreamConfig::default()
        };
        let mut s = SendStream::new(1);
        let mut now = T0;
        let mut next_id = 0u64;
        let mut pushed: Vec<MessageId> = Vec::new();
        for op in ops {
            match op {
                SendOp::Push { frames, body } => {
                    next_id += 1;
                    let id = mid(&format!("m{next_id}"));
                    let frames = (0..frames)
                        .map(|k| FrameSpec {
                            message_type: MessageType::PeerMessage,
                            message_id: mid(&format!("m{next_id}-{k}")),
                            reply_to: None,
                            app_type: None,
                            chunk: None,
                            body: vec![0; body],
                        })
                        .collect();
                    if s.push(OutgoingMessage { id: id.clone(), frames }, now, &config).is_ok() {
                        pushed.push(id);
                    }
                }
                SendOp::SendDue => {
                    for no in s.due(now, &config) {
                        s.on_sent(no, now, &config);
                    }
                }
                SendOp::Ack { cumulative, selective } => {
                    let ack = Ack { epoch: 1, cumulative, selective };
                    s.on_ack(&ack, now.saturating_add(Duration::from_millis(3)));
                }
                SendOp::Fail(i) => {
                    if let Some(id) = pushed.get(i as usize) {
                        s.fail(id);
                    }
                }
                SendOp::Expire => {
                    s.expire(now);
                }
                SendOp::RetransmitAll => s.retransmit_all(now),
                SendOp::Wait(ms) => now = now.saturating_add(Duration::from_millis(ms)),
            }
            check_indexes(&s, now, &config);
        }
    }
}
