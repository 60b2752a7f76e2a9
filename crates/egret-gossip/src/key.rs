//! The cluster's shared gossip key: 32 random bytes, stored as 64 hexadecimal characters.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Length of the key in bytes (ChaCha20-Poly1305 uses a 256-bit key).
pub const KEY_LEN: usize = 32;

/// The shared secret every member uses to seal and open datagrams.
///
/// `Debug` never prints the bytes, so a key can sit in a logged config without leaking.
#[derive(Clone, PartialEq, Eq)]
pub struct GossipKey([u8; KEY_LEN]);

impl fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GossipKey(<redacted>)")
    }
}

/// Why a key could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read gossip key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file could not be created or written.
    #[error("cannot write gossip key file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not 64 hexadecimal characters.
    #[error("gossip key must be {} hexadecimal characters (32 bytes), whitespace ignored: {reason}", KEY_LEN * 2)]
    Format {
        /// What exactly is wrong.
        reason: String,
    },
    /// The operating system's random source failed.
    #[error("cannot get random bytes for a gossip key: {0}")]
    Random(String),
}

impl GossipKey {
    /// A key from raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(bytes))
    }

    /// Parses 64 hexadecimal characters; any whitespace (including a trailing newline, or the key
    /// split over lines) is ignored.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if compact.is_empty() {
            return Err(KeyError::Format { reason: "the key is empty".into() });
        }
        if compact.len() != KEY_LEN * 2 {
            return Err(KeyError::Format {
                reason: format!("found {} non-whitespace characters", compact.chars().count()),
            });
        }
        let mut bytes = [0u8; KEY_LEN];
        hex::decode_to_slice(&compact, &mut bytes).map_err(|e| KeyError::Format { reason: e.to_string() })?;
        Ok(Self(bytes))
    }

    /// Reads and parses a key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text).map_err(|e| match e {
            KeyError::Format { reason } => KeyError::Format { reason: format!("{}: {reason}", path.display()) },
            other => other,
        })
    }

    /// The key as 64 lowercase hexadecimal characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Writes the key as one line of hex to a new file, readable by its owner only. Refuses to
    /// overwrite an existing file: replacing a cluster's key by accident would split it.
    pub fn write_new_file(&self, path: &Path) -> Result<(), KeyError> {
        let err = |source| KeyError::Write { path: path.to_path_buf(), source };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(err)?;
        writeln!(file, "{}", self.to_hex()).map_err(err)?;
        file.sync_all().map_err(err)
    }
}

/// Generates a random key and writes it to a new file (see [`GossipKey::write_new_file`]).
pub fn generate_key_file(path: &Path) -> Result<GossipKey, KeyError> {
    let key = GossipKey::generate()?;
    key.write_new_file(path)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn parses_hex_ignoring_whitespace() {
        let key = GossipKey::parse(HEX).unwrap();
        assert_eq!(key.as_bytes()[31], 0x1f);
        let split = format!("  {}\n{} \r\n", &HEX[..30], &HEX[30..]);
        assert_eq!(GossipKey::parse(&split).unwrap(), key);
        assert_eq!(GossipKey::parse(&HEX.to_uppercase()).unwrap(), key);
        assert_eq!(key.to_hex(), HEX);
    }

    #[test]
    fn rejects_bad_keys_with_clear_errors() {
        for (text, needle) in [
            ("", "empty"),
            ("   \n", "empty"),
            (&HEX[..62], "62 non-whitespace"),
            (&format!("{HEX}00"), "66 non-whitespace"),
            (&format!("{}zz", &HEX[..62]), "Invalid character"),
        ] {
            let err = GossipKey::parse(text).unwrap_err().to_string();
            assert!(err.contains("64 hexadecimal"), "{err}");
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = GossipKey::parse(HEX).unwrap();
        assert!(!format!("{key:?}").contains("0102"));
    }

    #[test]
    fn generated_key_file_round_trips_and_is_not_overwritten() {
        let dir = std::env::temp_dir().join(format!("egret-gossip-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gossip.key");
        let _ = std::fs::remove_file(&path);
        let key = generate_key_file(&path).unwrap();
        assert_eq!(GossipKey::load(&path).unwrap(), key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(generate_key_file(&path), Err(KeyError::Write { .. })));
        assert_eq!(GossipKey::load(&path).unwrap(), key, "existing key untouched");
        // Two generated keys differ (a broken random source would repeat).
        assert_ne!(GossipKey::generate().unwrap(), key);
        std::fs::write(&path, "not a key").unwrap();
        let err = GossipKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("gossip.key"), "{err}");
        assert!(matches!(GossipKey::load(&dir.join("missing")), Err(KeyError::Read { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
