//! The node's key directory: an Ed25519 identity key (the node id is its
//! hash) and an X25519 onion key (circuit handshakes), each in its own file
//! readable only by the owner.
//!
//! Keys are stored as 64 hex digits and a newline so an operator can see at a
//! glance that a file is intact; anything else is refused with the file's
//! name, never silently replaced.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::rngs::OsRng;
use relay_kernel::{NodeId, OnionKeypair};
use relay_link::Identity;

const IDENTITY_FILE: &str = "identity.key";
const ONION_FILE: &str = "onion.key";

/// Why the key directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file exists but does not hold a key.
    #[error("{path}: not a key file (expected 64 hex digits)")]
    Malformed {
        /// Which file.
        path: PathBuf,
    },
    /// No keys in the directory (for `relayd id`).
    #[error("{0}: no keys here (run `relayd keygen --dir {0}` first)")]
    Missing(String),
}

/// A node's long-term keys.
#[derive(Clone)]
pub struct Keys {
    /// Identity (signs descriptors, authenticates links).
    pub identity: Identity,
    /// Onion key (authenticates circuit handshakes).
    pub onion: OnionKeypair,
}

impl Keys {
    /// Fresh keys held only in memory (client shortcuts without `--dir`).
    pub fn temporary() -> Keys {
        Keys {
            identity: Identity::generate(&mut OsRng),
            onion: OnionKeypair::generate(&mut OsRng),
        }
    }

    /// The node id.
    pub fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// Loads the keys in `dir`, creating the directory (0700) and any missing
    /// key (0600) first. Returns the keys and whether anything was created.
    pub fn load_or_create(dir: &Path) -> Result<(Keys, bool), KeyError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyError::Io { path, source }
        };
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        } else if !dir.is_dir() {
            return Err(KeyError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::other("not a directory"),
            });
        }
        let (identity, a) = load_or_create_secret(&dir.join(IDENTITY_FILE))?;
        let (onion, b) = load_or_create_secret(&dir.join(ONION_FILE))?;
        Ok((
            Keys {
                identity: Identity::from_secret(identity),
                onion: OnionKeypair::from_secret(onion),
            },
            a || b,
        ))
    }

    /// Loads existing keys; never creates anything.
    pub fn load(dir: &Path) -> Result<Keys, KeyError> {
        let id_path = dir.join(IDENTITY_FILE);
        if !id_path.exists() {
            return Err(KeyError::Missing(dir.display().to_string()));
        }
        Ok(Keys {
            identity: Identity::from_secret(read_secret(&id_path)?),
            onion: OnionKeypair::from_secret(read_secret(&dir.join(ONION_FILE))?),
        })
    }
}

fn load_or_create_secret(path: &Path) -> Result<([u8; 32], bool), KeyError> {
    if path.exists() {
        return Ok((read_secret(path)?, false));
    }
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut OsRng, &mut secret);
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(format!("{}\n", to_hex(&secret)).as_bytes())
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok((secret, true))
}

fn read_secret(path: &Path) -> Result<[u8; 32], KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    if meta.len() > 200 {
        return Err(KeyError::Malformed {
            path: path.to_path_buf(),
        });
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!("{}: readable by others; chmod 600 it", path.display());
    }
    let text = fs::read_to_string(path).map_err(|_| KeyError::Malformed {
        path: path.to_path_buf(),
    })?;
    from_hex(text.trim()).ok_or_else(|| KeyError::Malformed {
        path: path.to_path_buf(),
    })
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly 32 bytes of hex.
pub fn from_hex(s: &str) -> Option<[u8; 32]> {
    let v = hex_decode(s)?;
    v.try_into().ok()
}

/// Any length of hex (even number of digits).
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reloads_the_same_keys() {
        let dir = std::env::temp_dir().join(format!("relayd-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (k1, created) = Keys::load_or_create(&dir).unwrap();
        assert!(created);
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let fmode = fs::metadata(dir.join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(fmode, 0o600);
        let (k2, created) = Keys::load_or_create(&dir).unwrap();
        assert!(!created);
        assert_eq!(k1.node_id(), k2.node_id());
        assert_eq!(k1.onion.public, Keys::load(&dir).unwrap().onion.public);
        fs::write(dir.join(ONION_FILE), "zz\n").unwrap();
        let err = Keys::load(&dir).err().unwrap().to_string();
        assert!(err.contains("onion.key"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(Keys::load(&dir), Err(KeyError::Missing(_))));
    }
}
