//! The last good key set, saved in the data directory so a restart while
//! the identity provider is down still verifies. It holds public keys only
//! (symmetric keys are never taken from a published set).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The file in `storage.path`.
pub const FILE_NAME: &str = "idp-keys.json";
const TMP_NAME: &str = "idp-keys.json.tmp";

/// What is saved: the configured URL it came from, when, and the keys taken.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Saved {
    pub source: String,
    pub fetched_at: u64,
    pub keys: Vec<Value>,
}

impl Saved {
    /// The keys as a JWK set document, to be parsed like a fetched one.
    pub fn jwk_set(&self) -> Vec<u8> {
        serde_json::json!({ "keys": self.keys })
            .to_string()
            .into_bytes()
    }
}

pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `saved` whole or not at all: a temporary file, synced, renamed
/// over the old copy, and the directory synced.
pub fn save(dir: &Path, saved: &Saved) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(TMP_NAME);
    let text = serde_json::to_vec_pretty(saved).map_err(io::Error::other)?;
    let mut file = File::create(&tmp)?;
    file.write_all(&text)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path_in(dir))?;
    File::open(dir)?.sync_all()
}

/// The saved copy for `source`, if there is one. A copy saved for another
/// URL (the config changed) is not used.
pub fn load(dir: &Path, source: &str) -> Result<Option<Saved>, String> {
    let path = path_in(dir);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{} cannot be read: {e}", path.display())),
    };
    let saved: Saved = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not a saved key set: {e}", path.display()))?;
    if saved.source != source {
        log::info!(
            "{} holds keys from {}, not {source}; not used",
            path.display(),
            saved.source
        );
        return Ok(None);
    }
    Ok(Some(saved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_set_comes_back_only_for_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("db");
        assert_eq!(load(&data, "https://a/certs").unwrap(), None);
        let saved = Saved {
            source: "https://a/certs".to_owned(),
            fetched_at: 1_700_000_000,
            keys: vec![serde_json::json!({ "kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB" })],
        };
        save(&data, &saved).unwrap();
        assert_eq!(load(&data, "https://a/certs").unwrap(), Some(saved));
        assert_eq!(load(&data, "https://b/certs").unwrap(), None);
        assert!(!data.join(TMP_NAME).exists());
        fs::write(path_in(&data), b"{").unwrap();
        assert!(load(&data, "https://a/certs")
            .unwrap_err()
            .contains("is not a saved key set"));
    }
}
