//! The authenticated, encrypted envelope around every gossip datagram.
//!
//! ```text
//! datagram  = version (1 byte, 0xE1) | nonce (12 random bytes) | ciphertext | tag (16 bytes)
//! plaintext = kind (1 byte) | sender's wall clock, unix ms (u64 big-endian) | body
//! ```
//!
//! ChaCha20-Poly1305 with the shared key; the version byte is authenticated as associated data so
//! it cannot be rewritten. The nonce is drawn at random for every datagram: with 96 bits the
//! chance of a repeat stays negligible for far more datagrams than a cluster sends under one key.
//!
//! Opening rejects, in this order: a datagram too short or too long ([`Reject::Malformed`]), one
//! that does not start with the version byte, e.g. a plain foca packet ([`Reject::Unencrypted`]),
//! one that fails authentication: wrong key, tampered, or forged ([`Reject::Auth`]), one whose
//! timestamp is more than the replay window away from the receiver's clock ([`Reject::Stale`]),
//! and one whose nonce was already accepted within the window ([`Reject::Replay`]). A rejected
//! datagram is never handed to foca, so a process without the key can neither join nor make a
//! member look dead. The window also bounds the tolerated clock skew between members.
//!
//! During a key rotation a member holds two keys ([`GossipKeys`]): it seals with the first and
//! opens with either, so members that already seal with the new key and members that still seal
//! with the old one understand each other.

use crate::key::{GossipKey, GossipKeys};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use std::collections::HashMap;
use std::time::Duration;

/// First byte of every Egret gossip datagram (format version 1).
pub const VERSION: u8 = 0xE1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + 8;
/// Bytes an envelope adds around a body.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN + HEADER_LEN;

/// What a datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A foca (SWIM) packet.
    Foca,
    /// A hosted-IP record sent directly to one member.
    Hosted,
}

impl Kind {
    const fn to_byte(self) -> u8 {
        match self {
            Self::Foca => 0,
            Self::Hosted => 1,
        }
    }

    const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Foca),
            1 => Some(Self::Hosted),
            _ => None,
        }
    }
}

/// Why a datagram was dropped before reaching foca.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Too short to hold an envelope, too long, or an unknown kind inside a valid envelope.
    Malformed,
    /// Does not start with the version byte: not encrypted by Egret (a plain foca packet, say).
    Unencrypted,
    /// Authentication failed: another key, a tampered or a forged datagram.
    Auth,
    /// The sender's timestamp is outside the replay window (an old replay, or a skewed clock).
    Stale,
    /// The same datagram was already accepted within the replay window.
    Replay,
}

/// Seals and opens datagrams; remembers accepted nonces for the replay window.
pub struct Envelope {
    cipher: ChaCha20Poly1305,
    /// The other key of a rotation: opens only.
    secondary: Option<ChaCha20Poly1305>,
    window_ms: u64,
    max_datagram: usize,
    // Nonce -> sender timestamp of every datagram accepted within the window. Only datagrams
    // that passed authentication get here, so a process without the key cannot grow it.
    seen: HashMap<[u8; NONCE_LEN], u64>,
    next_purge_len: usize,
}

impl Envelope {
    /// An envelope for `key` that accepts timestamps within `window` of the receiver's clock and
    /// datagrams up to `max_datagram` bytes.
    pub fn new(key: &GossipKey, window: Duration, max_datagram: usize) -> Self {
        Self::with_keys(&key.clone().into(), window, max_datagram)
    }

    /// An envelope that seals with `keys.primary` and opens with either key.
    pub fn with_keys(keys: &GossipKeys, window: Duration, max_datagram: usize) -> Self {
        let cipher = |k: &GossipKey| ChaCha20Poly1305::new(&(*k.as_bytes()).into());
        Self {
            cipher: cipher(&keys.primary),
            secondary: keys.secondary.as_ref().map(cipher),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            max_datagram,
            seen: HashMap::new(),
            next_purge_len: 1024,
        }
    }

    /// Seals `body` with a fresh random nonce drawn from `rng` and the current time `now_ms`.
    pub fn seal(&self, kind: Kind, body: &[u8], now_ms: u64, rng: &mut impl rand::Rng) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut plaintext = Vec::with_capacity(HEADER_LEN + body.len());
        plaintext.push(kind.to_byte());
        plaintext.extend_from_slice(&now_ms.to_be_bytes());
        plaintext.extend_from_slice(body);
        let sealed = self
            .cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: &plaintext, aad: &[VERSION] })
            .map_err(|_| SealError)?;
        let mut datagram = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        datagram.push(VERSION);
        datagram.extend_from_slice(&nonce);
        datagram.extend_from_slice(&sealed);
        Ok(datagram)
    }

    /// Opens a datagram received at `now_ms`: its kind and body, or why it was rejected.
    pub fn open(&mut self, datagram: &[u8], now_ms: u64) -> Result<(Kind, Vec<u8>), Reject> {
        if datagram.len() < OVERHEAD || datagram.len() > self.max_datagram {
            return Err(Reject::Malformed);
        }
        if datagram[0] != VERSION {
            return Err(Reject::Unencrypted);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&datagram[1..1 + NONCE_LEN]);
        let payload = || Payload { msg: &datagram[1 + NONCE_LEN..], aad: &[VERSION] };
        let mut plaintext = match self.cipher.decrypt(&Nonce::from(nonce), payload()) {
            Ok(p) => p,
            Err(_) => self
                .secondary
                .as_ref()
                .and_then(|c| c.decrypt(&Nonce::from(nonce), payload()).ok())
                .ok_or(Reject::Auth)?,
        };
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&plaintext[1..HEADER_LEN]);
        let sent_ms = u64::from_be_bytes(stamp);
        if sent_ms.abs_diff(now_ms) > self.window_ms {
            return Err(Reject::Stale);
        }
        if self.seen.contains_key(&nonce) {
            return Err(Reject::Replay);
        }
        let kind = Kind::from_byte(plaintext[0]).ok_or(Reject::Malformed)?;
        self.remember(nonce, sent_ms, now_ms);
        plaintext.drain(..HEADER_LEN);
        Ok((kind, plaintext))
    }

    /// Number of nonces currently remembered (for tests and metrics).
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    fn remember(&mut self, nonce: [u8; NONCE_LEN], sent_ms: u64, now_ms: u64) {
        if self.seen.len() >= self.next_purge_len {
            // A nonce older than the window can be forgotten: its datagram would now be
            // rejected as stale anyway. Purging in batches keeps the cost amortised O(1).
            let window = self.window_ms;
            self.seen.retain(|_, sent| sent.saturating_add(window) >= now_ms);
            self.next_purge_len = (self.seen.len() * 2).max(1024);
        }
        self.seen.insert(nonce, sent_ms);
    }
}

/// Sealing failed (only possible for a body far larger than any datagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot seal gossip datagram")]
pub struct SealError;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const NOW: u64 = 1_700_000_000_000;
    const WINDOW: Duration = Duration::from_secs(10);

    fn env(byte: u8) -> Envelope {
        Envelope::new(&GossipKey::from_bytes([byte; 32]), WINDOW, 1400)
    }

    #[test]
    fn round_trip() {
        let mut rng = StdRng::seed_from_u64(1);
        let (a, mut b) = (env(7), env(7));
        let d = a.seal(Kind::Foca, b"hello", NOW, &mut rng).unwrap();
        assert_eq!(d.len(), 5 + OVERHEAD);
        assert_eq!(d[0], VERSION);
        assert!(!d.windows(5).any(|w| w == b"hello"), "body is encrypted");
        assert_eq!(b.open(&d, NOW + 3).unwrap(), (Kind::Foca, b"hello".to_vec()));
        let h = a.seal(Kind::Hosted, b"", NOW, &mut rng).unwrap();
        assert_eq!(b.open(&h, NOW).unwrap(), (Kind::Hosted, vec![]));
        let d2 = a.seal(Kind::Foca, b"hello", NOW, &mut rng).unwrap();
        assert_ne!(d[1..13], d2[1..13], "a fresh nonce per datagram");
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut rng = StdRng::seed_from_u64(2);
        let a = env(7);
        let d = a.seal(Kind::Foca, b"some foca packet", NOW, &mut rng).unwrap();
        for i in 0..d.len() {
            for bit in 0..8 {
                let mut t = d.clone();
                t[i] ^= 1 << bit;
                let got = env(7).open(&t, NOW);
                let want = if i == 0 { Reject::Unencrypted } else { Reject::Auth };
                assert_eq!(got, Err(want), "byte {i} bit {bit}");
            }
        }
        // Truncation and extension too.
        assert_eq!(env(7).open(&d[..d.len() - 1], NOW), Err(Reject::Auth));
        let mut longer = d.clone();
        longer.push(0);
        assert_eq!(env(7).open(&longer, NOW), Err(Reject::Auth));
    }

    #[test]
    fn wrong_key_short_unencrypted_and_oversized() {
        let mut rng = StdRng::seed_from_u64(3);
        let d = env(7).seal(Kind::Foca, b"x", NOW, &mut rng).unwrap();
        assert_eq!(env(8).open(&d, NOW), Err(Reject::Auth));
        assert_eq!(env(7).open(&d[..OVERHEAD - 1], NOW), Err(Reject::Malformed));
        assert_eq!(env(7).open(&[], NOW), Err(Reject::Malformed));
        let mut plain = vec![6u8];
        plain.extend_from_slice(b"node-1 then a plain foca packet, long enough to pass the length check");
        assert_eq!(env(7).open(&plain, NOW), Err(Reject::Unencrypted));
        let big = env(7).seal(Kind::Foca, &[0u8; 1400], NOW, &mut rng).unwrap();
        assert_eq!(env(7).open(&big, NOW), Err(Reject::Malformed));
    }

    #[test]
    fn during_a_rotation_the_first_key_seals_and_both_open() {
        let mut rng = StdRng::seed_from_u64(6);
        let (old, new) = (GossipKey::from_bytes([7; 32]), GossipKey::from_bytes([9; 32]));
        let both = |first: &GossipKey, second: &GossipKey| {
            Envelope::with_keys(&GossipKeys { primary: first.clone(), secondary: Some(second.clone()) }, WINDOW, 1400)
        };
        // Mid-rotation: some members seal with the new key, others still with the old one.
        let (sealing_new, sealing_old) = (both(&new, &old), both(&old, &new));
        let from_new = sealing_new.seal(Kind::Foca, b"x", NOW, &mut rng).unwrap();
        let from_old = sealing_old.seal(Kind::Foca, b"y", NOW, &mut rng).unwrap();
        assert_eq!(both(&old, &new).open(&from_new, NOW), Ok((Kind::Foca, b"x".to_vec())));
        assert_eq!(both(&new, &old).open(&from_old, NOW), Ok((Kind::Foca, b"y".to_vec())));
        // The first key seals: a member holding only the old key opens the old sealer, not the new.
        assert_eq!(env(7).open(&from_old, NOW), Ok((Kind::Foca, b"y".to_vec())));
        assert_eq!(env(7).open(&from_new, NOW), Err(Reject::Auth));
        assert_eq!(env(9).open(&from_new, NOW), Ok((Kind::Foca, b"x".to_vec())));
        // A third key opens nothing, and replays are still caught whichever key opened.
        let stranger = Envelope::new(&GossipKey::from_bytes([1; 32]), WINDOW, 1400);
        let forged = stranger.seal(Kind::Foca, b"z", NOW, &mut rng).unwrap();
        let mut member = both(&new, &old);
        assert_eq!(member.open(&forged, NOW), Err(Reject::Auth));
        assert!(member.open(&from_old, NOW).is_ok());
        assert_eq!(member.open(&from_old, NOW), Err(Reject::Replay));
    }

    #[test]
    fn stale_future_and_replayed_datagrams_are_rejected() {
        let mut rng = StdRng::seed_from_u64(4);
        let a = env(7);
        let mut b = env(7);
        let d = a.seal(Kind::Foca, b"x", NOW, &mut rng).unwrap();
        assert_eq!(b.open(&d, NOW + 10_001), Err(Reject::Stale));
        assert_eq!(b.open(&d, NOW - 10_001), Err(Reject::Stale), "too far in the future");
        assert!(b.open(&d, NOW + 10_000).is_ok(), "edge of the window is accepted");
        assert_eq!(b.open(&d, NOW + 10_000), Err(Reject::Replay));
        assert_eq!(b.open(&d, NOW + 1), Err(Reject::Replay));
        assert_eq!(b.open(&d, NOW + 20_000), Err(Reject::Stale));
    }

    #[test]
    fn replay_memory_is_bounded_by_the_window() {
        let mut rng = StdRng::seed_from_u64(5);
        let a = env(7);
        let mut b = env(7);
        // 5000 datagrams spread over 50 s: only those within the last window (plus one purge
        // batch of slack) are remembered.
        for i in 0..5000u64 {
            let now = NOW + i * 10;
            let d = a.seal(Kind::Foca, b"x", now, &mut rng).unwrap();
            b.open(&d, now).unwrap();
        }
        assert!(b.remembered() < 2 * 1000 + 1024, "{}", b.remembered());
    }
}
