//! The cluster's shared gossip key: 32 random bytes, stored as 64 hexadecimal characters.
//!
//! A key file holds one key, or two during a rotation, one per line: the first seals every
//! datagram, both open ([`GossipKeys`]). To rotate: add the new key as a second line on every node
//! (restarting each agent), then swap the lines on every node (now the new key seals), then
//! remove the old line. At every step each pair of nodes shares a key that one seals with and the
//! other opens with. The file must be readable by its owner only, as ssh insists for its keys.

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
    /// The key file can be read or written by others than its owner.
    #[error(
        "gossip key file {path} has permissions {mode:04o}: it must be accessible by its owner only (chmod 600 {path}), or readable by the process's own group (a Secret with fsGroup and mode 0440)"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file holds more keys than a rotation needs.
    #[error("gossip key file {path} holds {count} keys: one, or two (one per line) during a rotation")]
    TooManyKeys {
        /// The file.
        path: PathBuf,
        /// How many lines with a key it has.
        count: usize,
    },
}

/// Whether a key file with permission bits `mode` and group `file_gid` is private enough for a
/// process whose effective group is `egid`: accessible by its owner only, or also readable (never
/// writable) by a group that is this process's own and not root's. The second is how Kubernetes
/// hands a Secret to a container that does not run as root: the files belong to root, with the
/// pod's `fsGroup` as group and `defaultMode: 0440`.
const fn private_enough(mode: u32, file_gid: u32, egid: u32) -> bool {
    mode & 0o077 == 0 || (mode & 0o037 == 0 && file_gid == egid && egid != 0)
}

/// Refuses a file that others may access (see [`private_enough`]).
fn check_private(path: &Path) -> Result<(), KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Read { path: path.to_path_buf(), source })?;
        let mode = meta.permissions().mode() & 0o7777;
        if !private_enough(mode, meta.gid(), nix::unistd::getegid().as_raw()) {
            return Err(KeyError::Permissions { path: path.to_path_buf(), mode });
        }
    }
    Ok(())
}

fn read_private(path: &Path) -> Result<String, KeyError> {
    check_private(path)?;
    std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.to_path_buf(), source })
}

fn in_file(path: &Path) -> impl Fn(KeyError) -> KeyError + '_ {
    move |e| match e {
        KeyError::Format { reason } => KeyError::Format { reason: format!("{}: {reason}", path.display()) },
        other => other,
    }
}

/// The keys a member uses: the first seals and opens, the second (during a rotation) only opens.
#[derive(Clone, PartialEq, Eq)]
pub struct GossipKeys {
    /// Seals every datagram; opens too.
    pub primary: GossipKey,
    /// Opens only: the other key of a rotation.
    pub secondary: Option<GossipKey>,
}

impl fmt::Debug for GossipKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GossipKeys(<redacted>, {} key(s))", 1 + usize::from(self.secondary.is_some()))
    }
}

impl From<GossipKey> for GossipKeys {
    fn from(primary: GossipKey) -> Self {
        Self { primary, secondary: None }
    }
}

impl GossipKeys {
    /// Parses a key file's text: one key (whitespace anywhere ignored, as [`GossipKey::parse`]),
    /// or two keys on two lines, the sealing one first.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        if let Ok(one) = GossipKey::parse(text) {
            return Ok(one.into());
        }
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        match lines.as_slice() {
            [a, b] => Ok(Self { primary: GossipKey::parse(a)?, secondary: Some(GossipKey::parse(b)?) }),
            _ => GossipKey::parse(text).map(Self::from),
        }
    }

    /// Reads and parses a key file that only its owner may access.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_private(path)?;
        let keys = text.lines().filter(|l| !l.trim().is_empty()).count();
        let compact = text.chars().filter(|c| !c.is_whitespace()).count();
        if keys > 2 && compact != KEY_LEN * 2 {
            return Err(KeyError::TooManyKeys { path: path.to_path_buf(), count: keys });
        }
        Self::parse(&text).map_err(in_file(path))
    }

    /// Every key that opens, the sealing one first.
    pub fn all(&self) -> impl Iterator<Item = &GossipKey> {
        std::iter::once(&self.primary).chain(self.secondary.as_ref())
    }
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

    /// Reads and parses a key file holding one key, which only its owner may access.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Self::parse(&read_private(path)?).map_err(in_file(path))
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

    #[test]
    fn group_read_is_private_enough_only_for_the_processes_own_non_root_group() {
        assert!(private_enough(0o600, 0, 0) && private_enough(0o400, 5, 65532));
        // A Secret mounted with fsGroup 65532 and defaultMode 0440, read by uid/gid 65532.
        assert!(private_enough(0o440, 65532, 65532));
        assert!(!private_enough(0o440, 65532, 1000), "another group");
        assert!(!private_enough(0o440, 0, 0), "root's group is everybody's who runs as root");
        assert!(!private_enough(0o460, 65532, 65532), "group write");
        assert!(!private_enough(0o444, 65532, 65532), "others");
    }

    fn private_file(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = std::env::temp_dir().join(format!("egret-gossip-perm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602, 0o620] {
            let path = private_file(&dir, "k", HEX, mode);
            let err = GossipKey::load(&path).unwrap_err();
            assert!(matches!(err, KeyError::Permissions { .. }), "{mode:o}: {err}");
            let text = err.to_string();
            assert!(text.contains(&format!("{mode:04o}")) && text.contains("owner only"), "{text}");
            assert!(matches!(GossipKeys::load(&path), Err(KeyError::Permissions { .. })));
        }
        for mode in [0o600, 0o400] {
            let path = private_file(&dir, "k", HEX, mode);
            assert!(GossipKey::load(&path).is_ok(), "{mode:o}");
            assert!(GossipKeys::load(&path).is_ok(), "{mode:o}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_key_file_holds_one_key_or_two_for_a_rotation() {
        let other = "ff".repeat(32);
        let one = GossipKeys::parse(&format!("{HEX}\n")).unwrap();
        assert_eq!(one.secondary, None);
        assert_eq!(one.all().count(), 1);
        let split = GossipKeys::parse(&format!("{}\n{}\n", &HEX[..32], &HEX[32..])).unwrap();
        assert_eq!(split, one, "one key split over lines is still one key");
        let two = GossipKeys::parse(&format!("{other}\n\n  {HEX}\n")).unwrap();
        assert_eq!(two.primary, GossipKey::parse(&other).unwrap(), "the first line seals");
        assert_eq!(two.secondary, Some(GossipKey::parse(HEX).unwrap()));
        assert!(!format!("{two:?}").contains("ff"), "Debug never shows a key");
        assert!(GossipKeys::parse(&format!("{HEX}\nzz")).is_err());
        let dir = std::env::temp_dir().join(format!("egret-gossip-two-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = private_file(&dir, "k", &format!("{other}\n{HEX}\n"), 0o600);
        assert_eq!(GossipKeys::load(&path).unwrap(), two);
        let three = private_file(&dir, "k3", &format!("{other}\n{HEX}\n{other}\n"), 0o600);
        assert!(matches!(GossipKeys::load(&three), Err(KeyError::TooManyKeys { count: 3, .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
