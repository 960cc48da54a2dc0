//! `agent-tokens check`: an offline consistency check of the store.
//!
//! Reads the keyspaces directly (never migrating or writing records; a
//! store of an earlier release is read in its sled format) and
//! reports every problem it finds: records that do not decode, a user's
//! token missing from the index or pointing elsewhere, index entries that
//! belong to no live or in-grace token, grace bookkeeping out of step, and
//! an unknown schema version. It never prints a secret: there is none stored.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use crate::domain::user::UserId;
use crate::store::audit;
use crate::store::error::StoreError;
use crate::store::keyspaces::Part;
use crate::store::offline::AsStored;
use crate::store::records::{decode_index, decode_user, IndexEntry, UserRecord};
use crate::store::schema::{SCHEMA_KEY, SCHEMA_VERSION};

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    pub users: usize,
    pub index_entries: usize,
    pub in_grace: usize,
    pub audit_events: usize,
    pub schema_version: Option<u32>,
    pub problems: Vec<String>,
}

impl Report {
    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = format!(
            "{} users, {} index entries, {} rotated-out token(s) in grace, {} audit events, schema {}",
            self.users,
            self.index_entries,
            self.in_grace,
            self.audit_events,
            self.schema_version
                .map_or_else(|| "unknown".to_owned(), |v| v.to_string())
        );
        if self.problems.is_empty() {
            return write!(f, "store OK: {counts}");
        }
        writeln!(
            f,
            "store INCONSISTENT: {} problem(s) ({counts}):",
            self.problems.len()
        )?;
        for (i, p) in self.problems.iter().enumerate() {
            writeln!(f, "  {}. {p}", i + 1)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("there is no store at {0}")]
    Missing(String),
    #[error("the store at {0} is in use (is the server running?); stop it or check a copy")]
    InUse(String),
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot read the store: {0}")]
    Read(#[from] StoreError),
}

fn hex32(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// The check reads every record and looks each one up in the other keyspace.
const CHECK_CACHE_MB: u64 = 64;

/// Checks the store at `path` (which the server must not hold open).
pub fn check_store(path: &Path) -> Result<Report, CheckError> {
    let shown = || path.display().to_string();
    let raw = match AsStored::open(path, CHECK_CACHE_MB) {
        Ok(Some(raw)) => raw,
        Ok(None) => return Err(CheckError::Missing(shown())),
        Err(StoreError::InUse { .. }) => return Err(CheckError::InUse(shown())),
        Err(source) => {
            return Err(CheckError::Open {
                path: shown(),
                source,
            })
        }
    };
    let mut report = Report::default();

    match raw.get(Part::Meta, SCHEMA_KEY)? {
        Some(v) => match <[u8; 4]>::try_from(v.as_ref()) {
            Ok(bytes) => {
                let version = u32::from_be_bytes(bytes);
                report.schema_version = Some(version);
                if version == 0 || version > SCHEMA_VERSION {
                    report.problems.push(format!(
                        "schema version {version} is unknown to this binary (it knows 1 to {SCHEMA_VERSION})"
                    ));
                } else if version < SCHEMA_VERSION {
                    // Records of an older schema decode differently; the next
                    // start migrates them, so only the version is checked here.
                    report.users = raw.count(Part::Users)?;
                    report.index_entries = raw.count(Part::Index)?;
                    return Ok(report);
                }
            }
            Err(_) => report
                .problems
                .push("the schema version is not a 4-byte number".to_owned()),
        },
        None if raw.is_empty(Part::Users)? && raw.is_empty(Part::Index)? => {}
        None => report
            .problems
            .push("the store holds records but no schema version".to_owned()),
    }

    let mut records: HashMap<String, UserRecord> = HashMap::new();
    for item in raw.pairs(Part::Users) {
        let (key, value) = item?;
        report.users += 1;
        let user = match std::str::from_utf8(&key).ok().map(UserId::parse) {
            Some(Ok(u)) => u.as_str().to_owned(),
            _ => {
                report
                    .problems
                    .push(format!("user key {} is not a valid user id", hex32(&key)));
                continue;
            }
        };
        match decode_user(&value) {
            Ok(r) => {
                records.insert(user, r);
            }
            Err(e) => report.problems.push(format!("user {user:?}: {e}")),
        }
    }

    let mut entries: HashMap<[u8; 32], IndexEntry> = HashMap::new();
    for item in raw.pairs(Part::Index) {
        let (key, value) = item?;
        report.index_entries += 1;
        let Ok(hash) = <[u8; 32]>::try_from(key.as_ref()) else {
            report
                .problems
                .push(format!("index key {} is not a 32-byte hash", hex32(&key)));
            continue;
        };
        match decode_index(&value) {
            Ok(e) => {
                entries.insert(hash, e);
            }
            Err(e) => report
                .problems
                .push(format!("index entry {}: {e}", hex32(&hash))),
        }
    }

    let mut grace_keys: HashSet<Vec<u8>> = HashSet::new();
    for item in raw.pairs(Part::Grace) {
        let (key, _) = item?;
        grace_keys.insert(key);
    }

    let mut referenced: HashSet<[u8; 32]> = HashSet::new();
    for (user, record) in &records {
        referenced.insert(record.hash);
        match entries.get(&record.hash) {
            None => report.problems.push(format!(
                "user {user:?}: its token {} is missing from the index (it cannot verify)",
                record.prefix
            )),
            Some(e) if &e.user_id != user => report.problems.push(format!(
                "user {user:?}: the index entry of its token {} points to user {:?}",
                record.prefix, e.user_id
            )),
            Some(e) if e.grace_until.is_some() => report.problems.push(format!(
                "user {user:?}: its current token {} is marked as rotated out in the index",
                record.prefix
            )),
            Some(e) if e.prefix != record.prefix => report.problems.push(format!(
                "user {user:?}: the index has prefix {} for its token {}",
                e.prefix, record.prefix
            )),
            Some(_) => {}
        }
        if let Some(prev) = &record.previous {
            report.in_grace += 1;
            referenced.insert(prev.hash);
            if prev.hash == record.hash {
                report.problems.push(format!(
                    "user {user:?}: the rotated-out token equals the current one"
                ));
            }
            match entries.get(&prev.hash) {
                None => report.problems.push(format!(
                    "user {user:?}: its rotated-out token {} is missing from the index",
                    prev.prefix
                )),
                Some(e) if &e.user_id != user || e.grace_until != Some(prev.until) => {
                    report.problems.push(format!(
                        "user {user:?}: the index entry of its rotated-out token {} disagrees (user {:?}, grace end {:?}, expected {})",
                        prev.prefix, e.user_id, e.grace_until, prev.until
                    ))
                }
                Some(_) => {}
            }
            let key = crate::store::records::grace_key(prev.until, &prev.hash);
            if !grace_keys.remove(&key[..]) {
                report.problems.push(format!(
                    "user {user:?}: its rotated-out token {} has no grace-expiry entry, so it would never be swept",
                    prev.prefix
                ));
            }
        }
    }
    for (hash, entry) in &entries {
        if !referenced.contains(hash) {
            report.problems.push(format!(
                "index entry {} ({}, user {:?}) belongs to no live or in-grace token",
                hex32(hash),
                entry.prefix,
                entry.user_id
            ));
        }
    }
    for key in grace_keys {
        report.problems.push(format!(
            "grace-expiry entry {} belongs to no rotated-out token",
            hex32(&key)
        ));
    }
    check_audit(&raw, &mut report)?;
    report.problems.sort();
    Ok(report)
}

/// Every audit event decodes and its key's time is its own; every event of
/// a user has its entry in the per-user index, and every entry there names
/// an event of that user.
fn check_audit(raw: &AsStored, report: &mut Report) -> Result<(), CheckError> {
    // event key -> its user, for the events that have one
    let mut of_user: HashMap<[u8; 16], String> = HashMap::new();
    for item in raw.pairs(Part::AuditEvents) {
        let (key, value) = item?;
        report.audit_events += 1;
        let (Ok((at, _)), Ok(event_key)) =
            (audit::split_event_key(&key), <[u8; 16]>::try_from(&key[..]))
        else {
            report
                .problems
                .push(format!("audit event key {} is not 16 bytes", hex32(&key)));
            continue;
        };
        match audit::decode_event(&value) {
            Ok(event) if event.at != at => report.problems.push(format!(
                "audit event {}: its time {} differs from its key's {at}",
                hex32(&key),
                event.at
            )),
            Ok(event) => {
                if let Some(user) = event.user_id {
                    of_user.insert(event_key, user);
                }
            }
            Err(e) => report
                .problems
                .push(format!("audit event {}: {e}", hex32(&key))),
        }
    }
    for item in raw.pairs(Part::AuditUsers) {
        let (key, _) = item?;
        let Ok(event_key) = audit::event_key_of_user_key(&key) else {
            report
                .problems
                .push(format!("audit user key {} is malformed", hex32(&key)));
            continue;
        };
        match of_user.remove(&event_key) {
            Some(user) if audit::user_event_key(&user, &event_key) == key => {}
            Some(user) => report.problems.push(format!(
                "audit user entry {} does not match its event's user {user:?}",
                hex32(&key)
            )),
            None => report.problems.push(format!(
                "audit user entry {} names no stored event of a user",
                hex32(&key)
            )),
        }
    }
    for (key, user) in of_user {
        report.problems.push(format!(
            "audit event {} of user {user:?} is missing from the per-user index (GET /me/events would not show it)",
            hex32(&key)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::token::PlainToken;
    use crate::store::db::Db;
    use crate::store::raw;
    use crate::store::records::NewToken;
    use ring::rand::SystemRandom;

    async fn store_with_users(path: &Path, grace_secs: u64) -> Vec<PlainToken> {
        let store = Db::open(path, 8).unwrap();
        let rng = SystemRandom::new();
        let mut tokens = Vec::new();
        for user in ["alice", "bob", "carol"] {
            for _ in 0..2 {
                let token = PlainToken::generate(&rng).unwrap();
                let new = NewToken::of(&token);
                let user = UserId::parse(user).unwrap();
                store.rotate(&user, &new, 1_000, grace_secs).await.unwrap();
                tokens.push(token);
            }
        }
        tokens
    }

    #[tokio::test]
    async fn a_healthy_store_is_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        store_with_users(&path, 3600).await;
        let report = check_store(&path).unwrap();
        assert!(report.is_consistent(), "{report}");
        assert_eq!(
            (
                report.users,
                report.index_entries,
                report.in_grace,
                report.audit_events
            ),
            (3, 6, 3, 6)
        );
        assert!(report.to_string().starts_with("store OK: 3 users"));
    }

    #[tokio::test]
    async fn every_kind_of_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let tokens = store_with_users(&path, 3600).await;
        {
            let (index, users, grace) =
                (Part::Index.name(), Part::Users.name(), Part::Grace.name());
            // alice's current token (the second one issued) vanishes from the index.
            raw::remove(&path, index, tokens[1].hash().as_bytes()).unwrap();
            // An index entry nobody owns.
            let stray = raw::get(&path, index, tokens[3].hash().as_bytes())
                .unwrap()
                .unwrap();
            raw::put(&path, index, &[9u8; 32], &stray).unwrap();
            // bob's record cannot be decoded.
            raw::put(&path, users, b"bob", b"\x02garbage").unwrap();
            // carol's grace-expiry entry is lost.
            let carol_prev = tokens[4].hash();
            let key = crate::store::records::grace_key(1_000 + 3600, carol_prev.as_bytes());
            raw::remove(&path, grace, &key).unwrap();
            // An audit event that does not decode, and one losing its user entry.
            let keys = |part: Part| -> Vec<Vec<u8>> {
                let stored = AsStored::open(&path, 8).unwrap().unwrap();
                let keys = stored.pairs(part).map(|p| p.unwrap().0).collect();
                keys
            };
            let events = keys(Part::AuditEvents);
            raw::put(&path, Part::AuditEvents.name(), &events[0], b"\x01garbage").unwrap();
            let users = keys(Part::AuditUsers);
            raw::remove(&path, Part::AuditUsers.name(), users.last().unwrap()).unwrap();
        }
        let report = check_store(&path).unwrap();
        assert!(!report.is_consistent());
        let text = report.to_string();
        for needle in [
            "user \"alice\": its token",
            "is missing from the index",
            "index entry 0909",
            "belongs to no live or in-grace token",
            "user \"bob\": stored data cannot be decoded",
            "user \"carol\": its rotated-out token",
            "has no grace-expiry entry",
            "stored data cannot be decoded (audit event)",
            "names no stored event of a user",
            "is missing from the per-user index",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
    }

    #[tokio::test]
    async fn an_unknown_schema_version_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        store_with_users(&path, 0).await;
        raw::put(&path, Part::Meta.name(), SCHEMA_KEY, &99u32.to_be_bytes()).unwrap();
        let report = check_store(&path).unwrap();
        assert!(
            report.to_string().contains("schema version 99 is unknown"),
            "{report}"
        );
    }

    #[test]
    fn a_missing_store_is_an_error_not_an_empty_report() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            check_store(&dir.path().join("nope")),
            Err(CheckError::Missing(_))
        ));
    }

    #[tokio::test]
    async fn a_store_in_use_is_refused_plainly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _store = Db::open(&path, 8).unwrap();
        let err = check_store(&path).unwrap_err();
        assert!(err.to_string().contains("is in use"), "{err}");
    }
}
