//! What the audit trail records of a request (actor, request id, and the
//! client address only with `audit.record_addresses`), and the optional
//! JSON-lines copy of every event (`audit.file`) for log shippers.
//!
//! Never a credential: the request id is the caller's `X-Request-Id` when it
//! is a short plain word, else a random one; the address is an IP address.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use actix_web::http::header::HeaderName;
use actix_web::HttpRequest;
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::{AuditSettings, ConfigError, RateLimitSettings};
use crate::store::audit::{Actor, Audit};
use crate::store::records::{ChangeListener, Changes};

/// The header a request id is taken from (and that proxies commonly set).
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id taken from a request.
const MAX_REQUEST_ID: usize = 128;

/// How requests are described in audit events.
#[derive(Debug, Clone, Default)]
pub struct AuditRequests {
    record_addresses: bool,
    /// The trusted proxy's client-address header (`rate_limit.client_ip_header`).
    header: Option<HeaderName>,
}

impl AuditRequests {
    pub fn from_settings(audit: &AuditSettings, rate: &RateLimitSettings) -> Self {
        Self {
            record_addresses: audit.record_addresses,
            header: rate.client_ip_header_name(),
        }
    }

    /// The audit context of `req`, made by `actor`.
    pub fn context(&self, req: &HttpRequest, actor: Actor, rng: &SystemRandom) -> Audit {
        Audit {
            actor,
            request_id: Some(request_id(req, rng)),
            address: self
                .record_addresses
                .then(|| self.address(req))
                .flatten()
                .map(|a| a.to_string()),
            detail: None,
        }
    }

    /// The trusted header's address (for `X-Forwarded-For`, the last hop)
    /// when one is configured and sent, else the TCP peer.
    fn address(&self, req: &HttpRequest) -> Option<IpAddr> {
        let from_header = self.header.as_ref().and_then(|name| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse().ok())
        });
        from_header.or_else(|| req.peer_addr().map(|a| a.ip()))
    }
}

/// The caller's `X-Request-Id` when it is 1 to 128 characters of letters,
/// digits and `-_.:`, else 16 random hex digits.
pub fn request_id(req: &HttpRequest, rng: &SystemRandom) -> String {
    let given = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=MAX_REQUEST_ID).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
    match given {
        Some(id) => id.to_owned(),
        None => random_id(rng),
    }
}

/// 16 random hex digits (zeros if the system's generator fails, which
/// only makes events harder to correlate).
pub fn random_id(rng: &SystemRandom) -> String {
    let mut bytes = [0u8; 8];
    let _ = rng.fill(&mut bytes);
    hex::encode(bytes)
}

/// Appends every stored event to `audit.file` as a JSON line, after the
/// batch holding it is durable. A file moved away (log rotation) is
/// noticed at the next write and a new one is started at the path.
pub struct AuditFile {
    path: PathBuf,
    file: Mutex<(File, u64)>,
}

impl AuditFile {
    /// Opens (or creates, 0600) the file for appending.
    pub fn open(path: &Path) -> Result<Self, ConfigError> {
        let (file, inode) = Self::open_at(path).map_err(|e| {
            ConfigError::new(format!(
                "audit.file: cannot open {} for appending: {e}.",
                path.display()
            ))
        })?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new((file, inode)),
        })
    }

    fn open_at(path: &Path) -> std::io::Result<(File, u64)> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        let inode = file.metadata()?.ino();
        Ok((file, inode))
    }

    fn append(&self, text: &[u8]) -> std::io::Result<()> {
        let mut guard = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let moved = std::fs::metadata(&self.path).map_or(true, |m| m.ino() != guard.1);
        if moved {
            *guard = Self::open_at(&self.path)?;
        }
        guard.0.write_all(text)
    }
}

impl ChangeListener for AuditFile {
    fn committed(&self, changes: &Changes) {
        if changes.events.is_empty() {
            return;
        }
        let mut text = Vec::with_capacity(256 * changes.events.len());
        for event in &changes.events {
            if serde_json::to_writer(&mut text, event).is_ok() {
                text.push(b'\n');
            }
        }
        if let Err(e) = self.append(&text) {
            log::warn!(
                "cannot append {} audit event(s) to {} ({e}); they are in the store",
                changes.events.len(),
                self.path.display()
            );
        }
    }

    fn reopening(&self) {}
}

/// Several listeners, told in order.
pub struct Listeners(pub Vec<Arc<dyn ChangeListener>>);

impl ChangeListener for Listeners {
    fn committed(&self, changes: &Changes) {
        for listener in &self.0 {
            listener.committed(changes);
        }
    }

    fn reopening(&self) {
        for listener in &self.0 {
            listener.reopening();
        }
    }
}
