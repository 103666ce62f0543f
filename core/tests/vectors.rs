//! Regenerates `spec/vectors/*.json` from fixed keys and seeds and fails on any difference.
//!
//! After an intended change to the wire format, handshake or key schedule, rewrite the files with
//! `PEERLINK_BLESS=1 cargo test -p peerlink-core --test vectors` and review the diff.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use peerlink_core::canonical::{self, StrictValue};
use peerlink_core::encoding::{b64u, hex};
use peerlink_core::handshake::keys::{
    KeySchedule, TAG_CONFIRM, TAG_ESTABLISHED, TAG_READY, Transcript, confirm_tag,
};
use peerlink_core::{
    Capabilities, EntityId, Envelope, ErrorCode, HandshakeConfig, HandshakeOutput, Identity,
    Initiator, MessageId, MessageType, Payload, Responder, Session, Timestamp, TrustPolicy,
    TrustStore, error_message, signed_message,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{SeedableRng, TryCryptoRng, TryRng};
use serde_json::{Value, json};

#[path = "vectors/binary.rs"]
mod binary;

const NOW: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);
const MIB: usize = 1 << 20;

/// A seeded RNG that remembers every byte it handed out, so the vectors can list the secrets.
struct RecordingRng {
    inner: ChaCha20Rng,
    taken: Vec<u8>,
}

impl RecordingRng {
    fn new(seed: u64) -> Self {
        Self { inner: ChaCha20Rng::seed_from_u64(seed), taken: Vec::new() }
    }
}

impl TryRng for RecordingRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        rand_core::Rng::fill_bytes(&mut self.inner, dst);
        self.taken.extend_from_slice(dst);
        Ok(())
    }
}

impl TryCryptoRng for RecordingRng {}

fn text(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8(bytes.to_vec()).expect("canonical JSON is UTF-8"))
}

fn identity(name: &str, seed: u8) -> Arc<Identity> {
    Arc::new(Identity::from_secret_bytes(EntityId::new(name).unwrap(), &[seed; 32]))
}

fn identity_json(id: &Identity) -> Value {
    json!({
        "entity_id": id.id().as_str(),
        "secret_key": hex(id.secret_bytes().as_slice()),
        "public_key_b64u": id.public_key().to_b64u(),
    })
}

fn canonical_vectors() -> Value {
    let inputs = [
        r#"{"b":2,"a":1}"#,
        r#"{ "nested": {"z": [3, 2, 1], "a": null}, "flag": false, "t": true }"#,
        r#"{"neg":-9007199254740991,"max":9007199254740991,"zero":0}"#,
        r#""quote \" backslash \\ slash \/ controls \b\f\n\r\t \u0001 \u001F del \u007f""#,
        r#""unicode é \u00e9 \u2028 😀 \ud83d\ude00""#,
        r#"{"é":1,"e":2,"E":3,"\u00e9e":4}"#,
        r#"{"｡":"U+FF61: before U+1F600 in UTF-8 byte order, after it in UTF-16 order","😀":"emoji"}"#,
        r#"[[],{},"",[{}]]"#,
    ];
    let cases: Vec<Value> = inputs
        .iter()
        .map(|input| {
            let v: StrictValue = serde_json::from_str(input).unwrap();
            json!({"input": input, "canonical": text(&canonical::to_vec(&v.0).unwrap())})
        })
        .collect();
    json!({"description": "JSON inputs and their canonical form (spec §3.2)", "cases": cases})
}

fn envelope_json(description: &str, env: &Envelope) -> Value {
    json!({
        "description": description,
        "wire": text(&env.encode()),
        "signing_input": text(&env.signing_input()),
        "associated_data": text(&env.associated_data()),
        "signature_b64u": env.signature.map(|s| b64u(&s)),
    })
}

fn envelope_vectors() -> Value {
    let alice = identity("alice", 0x11);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let empty = || Payload::new(json!({})).unwrap();
    let ping =
        signed_message(&alice, MessageType::Ping, None, None, empty(), NOW, &mut rng).unwrap();
    let error = error_message(
        &alice,
        Some(EntityId::new("bob").unwrap()),
        None,
        ErrorCode::ReplayDetected,
        Some(MessageId::new("b3f1c0de-0001").unwrap()),
        NOW,
        &mut rng,
    );
    let bye_payload = json!({"reason": "shutdown \"now\" \u{e9}\n\u{1}"});
    let bye = signed_message(
        &alice,
        MessageType::Bye,
        Some(EntityId::new("relay.example").unwrap()),
        None,
        Payload::new(bye_payload).unwrap(),
        NOW,
        &mut rng,
    )
    .unwrap();
    json!({
        "description": "Signed envelopes with their three canonical byte strings (spec §6)",
        "identity": identity_json(&alice),
        "envelopes": [
            envelope_json("PING to the next hop", &ping),
            envelope_json("ERROR to bob", &error),
            envelope_json("BYE with escapes in the payload", &bye),
        ],
    })
}

struct Handshake {
    vectors: Value,
    initiator: Session,
    responder: Session,
}

fn send(out: HandshakeOutput) -> Envelope {
    match out {
        HandshakeOutput::Send(m) => m,
        other => panic!("unexpected {other:?}"),
    }
}

fn handshake_vectors() -> Handshake {
    let alice = identity("alice", 0x11);
    let bob = identity("bob", 0x22);
    let mut trust = TrustStore::new(TrustPolicy::Allowlist);
    trust.insert(alice.id().clone(), alice.public_key());
    trust.insert(bob.id().clone(), bob.public_key());
    let mut irng = RecordingRng::new(100);
    let mut rrng = RecordingRng::new(200);
    let cfg = HandshakeConfig::default();
    let (mut i, m1) =
        Initiator::start(alice.clone(), bob.id().clone(), &trust, cfg.clone(), NOW, &mut irng)
            .unwrap();
    let (mut r, m2) = Responder::accept(bob.clone(), &trust, cfg, &m1, NOW, &mut rrng).unwrap();
    // Draw order: the initiator's ephemeral secret first; the responder's ephemeral secret, then
    // its challenge. The self-checks below fail if that order ever changes.
    let i_eph: [u8; 32] = irng.taken[..32].try_into().unwrap();
    let r_eph: [u8; 32] = rrng.taken[..32].try_into().unwrap();
    let challenge = rrng.taken[32..64].to_vec();
    let m3 = send(i.handle(&m2, NOW, &mut irng).unwrap());
    let m4 = send(r.handle(&m3, NOW, &mut rrng).unwrap());
    let m5 = send(i.handle(&m4, NOW, &mut irng).unwrap());
    let HandshakeOutput::Complete { send: Some(m6), session: responder } =
        r.handle(&m5, NOW, &mut rrng).unwrap()
    else {
        panic!("responder did not complete")
    };
    let HandshakeOutput::Complete { session: initiator, .. } =
        i.handle(&m6, NOW, &mut irng).unwrap()
    else {
        panic!("initiator did not complete")
    };
    let messages = [&m1, &m2, &m3, &m4, &m5, &m6];

    // Recompute everything from the recorded secrets as a self-check.
    let mut transcript = Transcript::new();
    let mut th = vec![transcript.hash()];
    for m in messages {
        transcript.absorb(m);
        th.push(transcript.hash());
    }
    let public =
        |secret: [u8; 32]| x25519_dalek::x25519(secret, x25519_dalek::X25519_BASEPOINT_BYTES);
    assert_eq!(m1.payload.value()["ephemeral_key"], json!(b64u(&public(i_eph))));
    assert_eq!(m2.payload.value()["ephemeral_key"], json!(b64u(&public(r_eph))));
    assert_eq!(m2.payload.value()["challenge"], json!(b64u(&challenge)));
    let dh = x25519_dalek::x25519(i_eph, public(r_eph));
    let keys = KeySchedule::derive(&dh, &th[3]);
    let confirm = [
        confirm_tag(&keys.confirm_r, TAG_ESTABLISHED, &th[3]),
        confirm_tag(&keys.confirm_i, TAG_CONFIRM, &th[4]),
        confirm_tag(&keys.confirm_r, TAG_READY, &th[5]),
    ];
    for (tag, m) in confirm.iter().zip([&m4, &m5, &m6]) {
        assert_eq!(m.payload.value()["confirm"], json!(b64u(tag)));
    }
    assert_eq!(initiator.handshake_hash(), &th[6]);
    assert_eq!(initiator.resumption_proof(b"ctx"), responder.resumption_proof(b"ctx"));

    let vectors = json!({
        "description": "One complete handshake (spec §7) between alice (initiator) and bob (responder)",
        "now": NOW.as_unix_millis(),
        "initiator": {
            "identity": identity_json(&alice),
            "ephemeral_secret": hex(&i_eph),
            "capabilities": Capabilities::default().to_value(),
        },
        "responder": {
            "identity": identity_json(&bob),
            "ephemeral_secret": hex(&r_eph),
            "challenge": hex(&challenge),
            "session_id": initiator.id().as_str(),
            "capabilities": Capabilities::default().to_value(),
        },
        "messages": messages.iter().map(|m| text(&m.encode())).collect::<Vec<_>>(),
        "transcript_hashes": th.iter().map(|h| hex(h)).collect::<Vec<_>>(),
        "dh": hex(&dh),
        "keys": {
            "k_i2r": hex(keys.i2r.as_slice()),
            "k_r2i": hex(keys.r2i.as_slice()),
            "k_confirm_i": hex(keys.confirm_i.as_slice()),
            "k_confirm_r": hex(keys.confirm_r.as_slice()),
            "k_resumption": hex(keys.resumption.as_slice()),
        },
        "confirm_tags": confirm.iter().map(|t| hex(t)).collect::<Vec<_>>(),
        "agreed_capabilities": initiator.capabilities().to_value(),
        "resumption_proof": {
            "context": hex(b"ctx"),
            "proof": hex(&initiator.resumption_proof(b"ctx")),
        },
    });
    Handshake { vectors, initiator: *initiator, responder: *responder }
}

fn session_vectors(hs: &mut Handshake) -> Value {
    let mut out = Vec::new();
    let plan: [(bool, MessageType, &str, &[u8]); 4] = [
        (true, MessageType::PeerMessage, "msg-0001", b"hello bob"),
        (true, MessageType::TaskRequest, "msg-0002", b"{\"action\":\"execute\"}"),
        (false, MessageType::Ack, "msg-0003", b""),
        (false, MessageType::PeerMessage, "msg-0004", &[0, 1, 2, 254, 255]),
    ];
    for (from_initiator, kind, id, plaintext) in plan {
        let (sender, receiver) = if from_initiator {
            (&mut hs.initiator, &mut hs.responder)
        } else {
            (&mut hs.responder, &mut hs.initiator)
        };
        let env = sender.seal(kind, MessageId::new(id).unwrap(), plaintext, NOW).unwrap();
        assert_eq!(receiver.open(&env, NOW).unwrap().plaintext, plaintext);
        let direction =
            if from_initiator { "initiator_to_responder" } else { "responder_to_initiator" };
        out.push(json!({
            "direction": direction,
            "type": kind.as_str(),
            "seq": env.seq,
            "plaintext": hex(plaintext),
            "nonce": hex(&env.nonce),
            "associated_data": text(&env.associated_data()),
            "ciphertext_b64u": env.payload.value(),
            "signing_input": text(&env.signing_input()),
            "wire": text(&env.encode()),
        }));
    }
    json!({
        "description": "Session messages sealed with the keys of handshake.json (spec §8); sign_all is on; plaintexts are arbitrary bytes at the session layer (a node puts data frames, §13, inside)",
        "session_id": hs.initiator.id().as_str(),
        "messages": out,
    })
}

fn delivery_vectors(mut hs: Handshake) -> Value {
    use peerlink_core::stream::{
        Ack, ChunkHeader, DataHeader, Forward, StreamControl, encode_data,
    };
    let header = |no: u64, base: u64| DataHeader {
        epoch: 4242,
        no,
        base,
        reply_to: None,
        app_type: None,
        chunk: None,
    };
    let app_type = peerlink_core::AppType::new("MODEL_CREATED").unwrap();
    let big = MessageId::new("big-0001").unwrap();
    let chunk = |seq: u32, last: bool| ChunkHeader {
        id: big.clone(),
        seq,
        last,
        total: 10,
        message_type: MessageType::PeerMessage,
    };
    let frames: Vec<(&str, MessageType, &str, Vec<u8>)> = vec![
        (
            "a message, the first frame of epoch 4242",
            MessageType::PeerMessage,
            "msg-d001",
            encode_data(&header(1, 1), b"hello"),
        ),
        (
            "a task response naming a request bob sent earlier (req-from-bob)",
            MessageType::TaskResponse,
            "msg-d002",
            encode_data(
                &DataHeader { reply_to: Some(MessageId::new("msg-0002").unwrap()), ..header(2, 1) },
                b"done",
            ),
        ),
        (
            "chunk 0 of a 10-byte message",
            MessageType::ChunkedMessage,
            "msg-d003",
            encode_data(&DataHeader { chunk: Some(chunk(0, false)), ..header(3, 3) }, b"01234"),
        ),
        (
            "chunk 1, the last",
            MessageType::ChunkedMessage,
            "msg-d004",
            encode_data(&DataHeader { chunk: Some(chunk(1, true)), ..header(4, 3) }, b"56789"),
        ),
        (
            "stream control: an acknowledgement and a forward",
            MessageType::Ack,
            "msg-d005",
            StreamControl {
                ack: Some(Ack { epoch: 77, cumulative: 9, selective: vec![11, 12] }),
                forward: Some(Forward { epoch: 4242, base: 5 }),
            }
            .encode(),
        ),
        (
            "a message with an application-defined type (the session agreed on app_types)",
            MessageType::PeerMessage,
            "msg-d006",
            encode_data(&DataHeader { app_type: Some(app_type), ..header(5, 5) }, b"{\"id\":7}"),
        ),
    ];
    let mut out = Vec::new();
    for (description, kind, id, plaintext) in frames {
        let env = hs.initiator.seal(kind, MessageId::new(id).unwrap(), &plaintext, NOW).unwrap();
        assert_eq!(hs.responder.open(&env, NOW).unwrap().plaintext, plaintext);
        out.push(json!({
            "description": description,
            "plaintext_text": String::from_utf8_lossy(&plaintext),
            "plaintext": hex(&plaintext),
            "wire": text(&env.encode()),
        }));
    }
    let nonce = [0x5au8; 12];
    let request = hs.initiator.resumption_proof(&[b"request".as_slice(), &nonce].concat());
    let response = hs.initiator.resumption_proof(&[b"response".as_slice(), &nonce].concat());
    json!({
        "description": "Delivery-layer plaintexts (spec §13, §14) sealed initiator to responder with the keys of session.json's session, after its messages; a 5-byte chunk size; the ACK is a syntax example (epoch 77 is bob's stream); resume proofs (§15.3)",
        "frames": out,
        "resume": {
            "nonce": hex(&nonce),
            "request_proof": hex(&request),
            "response_proof": hex(&response),
        },
    })
}

fn invalid_vectors() -> Value {
    let alice = identity("alice", 0x11);
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let ping = signed_message(
        &alice,
        MessageType::Ping,
        None,
        None,
        Payload::new(json!({})).unwrap(),
        NOW,
        &mut rng,
    )
    .unwrap();
    let good = String::from_utf8(ping.encode()).unwrap();
    let deep = format!("{}1{}", "[".repeat(33), "]".repeat(33));
    let with_payload = |p: &str| good.replace("\"payload\":{}", &format!("\"payload\":{p}"));
    let cases: Vec<(&str, String, usize)> = vec![
        ("frame over the limit", good.clone(), 64),
        ("not JSON", "{\"message_id\":".to_owned(), MIB),
        ("not an object", "[]".to_owned(), MIB),
        ("trailing data", format!("{good} {{}}"), MIB),
        ("unknown member", good.replacen('{', "{\"extra\":null,", 1), MIB),
        ("missing member", good.replace(",\"session_id\":null", ""), MIB),
        ("duplicate member", good.replacen('{', "{\"seq\":0,", 1), MIB),
        ("duplicate key in payload", with_payload("{\"a\":1,\"a\":1}"), MIB),
        ("fractional number", with_payload("{\"a\":1.0}"), MIB),
        ("exponent", with_payload("{\"a\":1e2}"), MIB),
        ("negative zero", with_payload("{\"a\":-0}"), MIB),
        ("integer above 2^53-1", good.replace("\"seq\":0", "\"seq\":9007199254740992"), MIB),
        ("nesting too deep", with_payload(&deep), MIB),
        ("unknown type", good.replace("\"PING\"", "\"HELLO\""), MIB),
        ("unsupported version", good.replace("\"1.2\"", "\"2.0\""), MIB),
        ("invalid entity id", good.replace("\"alice\"", "\"al ice\""), MIB),
        ("seq is a string", good.replace("\"seq\":0", "\"seq\":\"0\""), MIB),
        ("nonce of 11 bytes", replace_member(&good, "nonce", "\"AAAAAAAAAAAAAAA\""), MIB),
        ("padded base64url", replace_member(&good, "nonce", "\"AAAAAAAAAAAAAAAA=\""), MIB),
        ("standard base64 alphabet", replace_member(&good, "nonce", "\"+AAAAAAAAAAAAAAA\""), MIB),
        ("signature of 3 bytes", replace_member(&good, "signature", "\"AAAA\""), MIB),
    ];
    let cases: Vec<Value> = cases
        .into_iter()
        .map(|(description, frame, max)| {
            let code = Envelope::decode(frame.as_bytes(), max).expect_err(description).code();
            json!({
                "description": description,
                "frame": frame,
                "max_frame_bytes": max,
                "code": code.as_str(),
            })
        })
        .collect();
    json!({
        "description": "Frames a receiver MUST reject, with the error code (spec §4.2)",
        "cases": cases,
    })
}

/// Replaces the string value of a top-level member (`"name":"…"`) with `value`.
fn replace_member(frame: &str, name: &str, value: &str) -> String {
    let key = format!("\"{name}\":\"");
    let start = frame.find(&key).expect("member present") + key.len() - 1;
    let end = start + 1 + frame[start + 1..].find('"').expect("closing quote");
    format!("{}{}{}", &frame[..start], value, &frame[end + 1..])
}

/// §23.2: a login's signing input and signature over the `node_id` the node returned, and the
/// token the node mints for it.
fn auth_vectors() -> Value {
    use peerlink_core::auth::{AuthConfig, Authority, challenge_signing_input, sign_challenge};
    let node = identity("relay", 9);
    let alice = identity("alice", 1);
    let challenge = [0x42u8; 32];
    let input = challenge_signing_input(node.id(), &challenge);
    let signature = sign_challenge(&alice, node.id(), &b64u(&challenge)).unwrap();
    let issued = peerlink_core::Timestamp::from_unix_millis(1_700_000_000_000);
    let authority = Authority::new(Arc::clone(&node), AuthConfig::default());
    let token = authority.mint_bound(alice.id(), &alice.public_key(), issued);
    json!({
        "description": "A login (spec §23.2): alice answers a challenge from the node relay, signing the node_id /auth/token returned, and the token relay mints (iat at issued_at_ms, the default 1 h lifetime)",
        "node": identity_json(&node),
        "entity": identity_json(&alice),
        "token_response": {"node_id": node.id().as_str(), "challenge": b64u(&challenge)},
        "auth_input": hex(&input),
        "signature": signature,
        "issued_at_ms": issued.as_unix_millis(),
        "token": token,
    })
}

fn generate() -> BTreeMap<&'static str, Value> {
    let hs = handshake_vectors();
    let mut files = BTreeMap::new();
    files.insert("auth.json", auth_vectors());
    files.insert("canonical.json", canonical_vectors());
    files.insert("envelopes.json", envelope_vectors());
    files.insert("handshake.json", hs.vectors.clone());
    let mut hs = hs;
    let session = session_vectors(&mut hs);
    files.insert("session.json", session);
    files.insert("delivery.json", delivery_vectors(hs));
    files.insert("invalid.json", invalid_vectors());
    let binary = binary::vectors(&files);
    files.insert("binary.json", binary);
    files
}

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors")
}

#[test]
fn vectors_are_current() {
    let bless = std::env::var_os("PEERLINK_BLESS").is_some();
    let mut stale = Vec::new();
    for (name, value) in generate() {
        let path = vectors_dir().join(name);
        let fresh = serde_json::to_string_pretty(&value).unwrap() + "\n";
        if bless {
            std::fs::write(&path, &fresh).unwrap();
            continue;
        }
        if std::fs::read_to_string(&path).unwrap_or_default() != fresh {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "spec/vectors out of date: {stale:?}; if the change is intended, run \
         PEERLINK_BLESS=1 cargo test -p peerlink-core --test vectors and review the diff"
    );
}

#[test]
fn generation_is_deterministic() {
    assert_eq!(generate(), generate());
}
