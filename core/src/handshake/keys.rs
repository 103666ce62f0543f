//! The transcript hash and the key schedule (spec §"Transcript" and §"Key schedule").
//!
//! ```text
//! TH0 = SHA-256("peerlink v1 transcript")
//! THn = SHA-256(TH(n-1) || u32be(len(Mn)) || Mn)      Mn = wire form of handshake message n
//! dh  = X25519(own ephemeral secret, peer ephemeral public)
//! PRK = HKDF-Extract(salt = TH3, IKM = dh)
//! key = HKDF-Expand(PRK, info = label, 32) for each label of [`Labels`]
//! confirm tag = HMAC-SHA256(confirm key, tag label || THn)
//! ```

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::envelope::Envelope;

/// Starting value of the transcript hash.
pub const TRANSCRIPT_CONTEXT: &[u8] = b"peerlink v1 transcript";
/// HKDF info for the initiator → responder traffic key.
pub const INFO_KEY_I2R: &[u8] = b"peerlink v1 key initiator to responder";
/// HKDF info for the responder → initiator traffic key.
pub const INFO_KEY_R2I: &[u8] = b"peerlink v1 key responder to initiator";
/// HKDF info for the initiator's key-confirmation key.
pub const INFO_CONFIRM_I: &[u8] = b"peerlink v1 confirm initiator";
/// HKDF info for the responder's key-confirmation key.
pub const INFO_CONFIRM_R: &[u8] = b"peerlink v1 confirm responder";
/// HKDF info for the resumption secret.
pub const INFO_RESUMPTION: &[u8] = b"peerlink v1 resumption";
/// Confirmation label of `SESSION_ESTABLISHED` (responder's key, over TH3).
pub const TAG_ESTABLISHED: &[u8] = b"peerlink v1 established";
/// Confirmation label of `SESSION_CONFIRM` (initiator's key, over TH4).
pub const TAG_CONFIRM: &[u8] = b"peerlink v1 confirm";
/// Confirmation label of `READY` (responder's key, over TH5).
pub const TAG_READY: &[u8] = b"peerlink v1 ready";

/// A 32-byte hash.
pub type Hash = [u8; 32];

/// The running transcript hash.
#[derive(Clone)]
pub struct Transcript(Hash);

impl Default for Transcript {
    fn default() -> Self {
        Self::new()
    }
}

impl Transcript {
    /// TH0.
    pub fn new() -> Self {
        Self(Sha256::digest(TRANSCRIPT_CONTEXT).into())
    }

    /// Absorbs one handshake message's wire form.
    pub fn absorb(&mut self, message: &Envelope) {
        self.absorb_bytes(&message.encode());
    }

    /// Absorbs raw bytes (the wire form of a message).
    pub fn absorb_bytes(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(len.to_be_bytes());
        h.update(bytes);
        self.0 = h.finalize().into();
    }

    /// The current hash.
    pub fn hash(&self) -> Hash {
        self.0
    }
}

/// Every secret the key schedule produces; zeroized on drop.
pub struct KeySchedule {
    /// Traffic key initiator → responder.
    pub i2r: Zeroizing<[u8; 32]>,
    /// Traffic key responder → initiator.
    pub r2i: Zeroizing<[u8; 32]>,
    /// Initiator's key-confirmation key.
    pub confirm_i: Zeroizing<[u8; 32]>,
    /// Responder's key-confirmation key.
    pub confirm_r: Zeroizing<[u8; 32]>,
    /// Secret a session is resumed with.
    pub resumption: Zeroizing<[u8; 32]>,
}

impl KeySchedule {
    /// Derives all keys from the X25519 output and TH3.
    pub fn derive(dh: &[u8; 32], th3: &Hash) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(th3), dh);
        let expand = |info: &[u8]| {
            let mut okm = Zeroizing::new([0u8; 32]);
            // 32 bytes is far below HKDF-SHA256's 8160-byte maximum; this cannot fail.
            let _ = hk.expand(info, okm.as_mut_slice());
            okm
        };
        Self {
            i2r: expand(INFO_KEY_I2R),
            r2i: expand(INFO_KEY_R2I),
            confirm_i: expand(INFO_CONFIRM_I),
            confirm_r: expand(INFO_CONFIRM_R),
            resumption: expand(INFO_RESUMPTION),
        }
    }
}

/// HMAC-SHA256(key, label || transcript).
pub fn confirm_tag(key: &[u8; 32], label: &[u8], transcript: &Hash) -> [u8; 32] {
    let mut mac = mac(key);
    mac.update(label);
    mac.update(transcript);
    mac.finalize().into_bytes().into()
}

/// Checks a confirmation tag in constant time.
pub fn verify_confirm_tag(key: &[u8; 32], label: &[u8], transcript: &Hash, tag: &[u8]) -> bool {
    let mut mac = mac(key);
    mac.update(label);
    mac.update(transcript);
    mac.verify_slice(tag).is_ok()
}

fn mac(key: &[u8; 32]) -> Hmac<Sha256> {
    // HMAC zero-pads keys shorter than the block (RFC 2104), so padding here is the same MAC and
    // keeps the constructor infallible.
    let mut block = Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(key);
    Hmac::<Sha256>::new(&(*block).into())
}
