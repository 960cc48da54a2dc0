//! Backup and restore: a versioned JSON Lines export of the user records,
//! and an import that checks the whole file before it writes anything.
//!
//! The export holds SHA-256 hashes, display prefixes and timestamps (Unix
//! seconds), never a token: none is stored. Line 1 is a header
//! (`{"format":"agent-tokens-export","version":1,"users":N,...}`), then one
//! object per user with the rotated-out token still in its grace window, if
//! any. Both directions open the store directly, so the server must be
//! stopped: the store's lock is exclusive.
//!
//! Import hands the checked records to the store, which writes them (and
//! the token index and grace-expiry entries it derives from them) into a
//! new copy made current in one rename: all of the file or none of it. Error messages name
//! line numbers and fields, never values that could be secrets.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::de::value::MapAccessDeserializer;
use serde::de::{Error as _, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_path_to_error::Segment;

use crate::domain::token::TokenHash;
use crate::domain::token::{display_prefix_bytes, TOKEN_PREFIX};
use crate::domain::user::UserId;
use crate::store::error::StoreError;
use crate::store::offline::{ImportedUser, Offline};
use crate::store::postgres::PgOffline;
use crate::store::records::{GraceToken, UserRecord};
use crate::store::snapshot::Records;

/// The header's `format`: what this file is.
pub const FORMAT: &str = "agent-tokens-export";
/// The header's `version`: the line layout below. Bump it for any change an
/// older import would misread.
pub const VERSION: u64 = 1;
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The backup file is malformed; nothing was written.
    #[error("line {line}: {message}")]
    Invalid { line: usize, message: String },
    #[error("the store at {} is in use (is the server running?)", path.display())]
    InUse { path: PathBuf },
    #[error("there is no store at {} (check storage.path)", path.display())]
    NoStore { path: PathBuf },
    #[error("the store at {} is not empty; use --force to replace its content", path.display())]
    NotEmpty { path: PathBuf },
    #[error("the PostgreSQL database {target} holds tokens; use --force to replace them")]
    NotEmptyDatabase { target: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the backup: {0}")]
    Read(#[source] std::io::Error),
    #[error("cannot write the export: {0}")]
    Write(#[source] std::io::Error),
}

impl BackupError {
    fn invalid(line: usize, message: impl Into<String>) -> Self {
        Self::Invalid {
            line,
            message: message.into(),
        }
    }
}

/// Opens a store for export or import, saying plainly when the server holds it.
/// With `must_exist`, a path that holds no store is refused instead of
/// being turned into a new, empty store.
pub fn open_offline(path: &Path, cache_mb: u64, must_exist: bool) -> Result<Offline, BackupError> {
    if must_exist && !Offline::exists(path) {
        return Err(BackupError::NoStore {
            path: path.to_owned(),
        });
    }
    Offline::open(path, cache_mb).map_err(|e| match e {
        StoreError::InUse { .. } => BackupError::InUse {
            path: path.to_owned(),
        },
        other => BackupError::Store(other),
    })
}

/// What an export or import covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub users: usize,
    /// Users with a rotated-out token still in its grace window.
    pub in_grace: usize,
}

#[derive(Serialize)]
struct Header<'a> {
    format: &'a str,
    version: u64,
    users: usize,
    exported_at: u64,
    generator: String,
}

#[derive(Serialize)]
struct UserLine<'a> {
    user_id: &'a str,
    token_hash: String,
    token_prefix: &'a str,
    created_at: u64,
    last_used_at: Option<u64>,
    grace: Option<GraceLine<'a>>,
}

#[derive(Serialize)]
struct GraceLine<'a> {
    token_hash: String,
    token_prefix: &'a str,
    grace_until: u64,
    created_at: u64,
    last_used_at: Option<u64>,
}

/// One validated user line, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    line: usize,
    user: UserId,
    record: UserRecord,
    /// The grace token's own creation and last use (its index entry).
    grace_times: Option<(u64, Option<u64>)>,
}

/// A backup that passed every check: header, each line, and uniqueness of
/// user ids and token hashes across the file.
#[derive(Debug)]
pub struct Backup {
    entries: Vec<Entry>,
}

impl Backup {
    /// Reads and checks a whole export. Fails on the first problem, naming its line.
    pub fn parse(mut input: impl BufRead) -> Result<Self, BackupError> {
        let mut buf = Vec::new();
        let mut line_no = 0usize;
        let mut announced = None;
        let mut entries = Vec::new();
        loop {
            buf.clear();
            if input
                .read_until(b'\n', &mut buf)
                .map_err(BackupError::Read)?
                == 0
            {
                break;
            }
            line_no += 1;
            let text = line_text(&buf, line_no)?;
            let object = parse_object(text, line_no)?;
            match announced {
                None => announced = Some(parse_header(object, line_no)?),
                Some(_) => entries.push(parse_user(object, line_no)?),
            }
        }
        let Some(announced) = announced else {
            return Err(BackupError::invalid(
                1,
                "the backup is empty; it has no header line",
            ));
        };
        if entries.len() as u64 != announced {
            return Err(BackupError::invalid(
                line_no + 1,
                format!(
                    "the header announces {announced} users but the file has {}; it may be truncated",
                    entries.len()
                ),
            ));
        }
        check_unique(&entries)?;
        Ok(Self { entries })
    }

    /// Counts of what this backup holds.
    pub fn summary(&self) -> Summary {
        Summary {
            users: self.entries.len(),
            in_grace: self
                .entries
                .iter()
                .filter(|e| e.record.previous.is_some())
                .count(),
        }
    }
}

fn line_text(buf: &[u8], line: usize) -> Result<&str, BackupError> {
    let bytes = buf.strip_suffix(b"\n").unwrap_or(buf);
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes)
        .map_err(|_| BackupError::invalid(line, "the line is not valid UTF-8"))?;
    if text.trim().is_empty() {
        return Err(BackupError::invalid(line, "the line is empty"));
    }
    Ok(text)
}

/// serde_json's syntax errors never quote the input, so they are safe to show.
fn parse_object(text: &str, line: usize) -> Result<Value, BackupError> {
    match serde_json::from_str::<Value>(text) {
        Ok(object @ Value::Object(_)) => Ok(object),
        Ok(_) => Err(BackupError::invalid(line, "the line is not a JSON object")),
        Err(e) if e.is_eof() => Err(BackupError::invalid(
            line,
            format!("the JSON ends early at column {} (truncated?)", e.column()),
        )),
        Err(e) => {
            let reason = e.to_string();
            let reason = reason
                .split(" at line ")
                .next()
                .unwrap_or("syntax error")
                .to_owned();
            Err(BackupError::invalid(
                line,
                format!("not valid JSON: {reason} at column {}", e.column()),
            ))
        }
    }
}

/// The header line; other fields (`exported_at`, `generator`) are
/// informative and not read.
#[derive(Deserialize)]
struct HeaderIn {
    #[serde(default, deserialize_with = "lenient")]
    format: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    version: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    users: Option<u64>,
}

/// A user line as read. Each field is checked as it is read, with a
/// message of ours that never quotes the value; a required field reads as
/// `None` only when it is absent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserIn {
    #[serde(default, deserialize_with = "user_id")]
    user_id: Option<UserId>,
    #[serde(default, deserialize_with = "token_hash")]
    token_hash: Option<[u8; 32]>,
    #[serde(default, deserialize_with = "token_prefix")]
    token_prefix: Option<String>,
    #[serde(default, deserialize_with = "seconds")]
    created_at: Option<u64>,
    #[serde(default, deserialize_with = "optional_seconds")]
    last_used_at: Option<u64>,
    #[serde(default, deserialize_with = "grace")]
    grace: Option<GraceIn>,
}

/// The rotated-out token of a user line, in its grace window.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GraceIn {
    #[serde(default, deserialize_with = "token_hash")]
    token_hash: Option<[u8; 32]>,
    #[serde(default, deserialize_with = "token_prefix")]
    token_prefix: Option<String>,
    #[serde(default, deserialize_with = "seconds")]
    grace_until: Option<u64>,
    #[serde(default, deserialize_with = "seconds")]
    created_at: Option<u64>,
    #[serde(default, deserialize_with = "optional_seconds")]
    last_used_at: Option<u64>,
}

/// Reads a field's value whole and checks it with `read`; `problem` (what
/// the value must be) is the error, so the value itself is never shown.
fn checked<'de, D: Deserializer<'de>, T>(
    d: D,
    read: impl FnOnce(Value) -> Result<T, String>,
) -> Result<Option<T>, D::Error> {
    read(Value::deserialize(d)?)
        .map(Some)
        .map_err(D::Error::custom)
}

/// A header field of another type reads as absent.
fn lenient<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
    d: D,
) -> Result<Option<T>, D::Error> {
    Ok(serde_json::from_value(Value::deserialize(d)?).ok())
}

fn user_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<UserId>, D::Error> {
    checked(d, |v| match v {
        Value::String(text) => UserId::parse(&text).map_err(|e| format!("is not allowed: {e}")),
        _ => Err("must be a string".into()),
    })
}

fn token_hash<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
    checked(d, |v| {
        let mut hash = [0u8; 32];
        match v.as_str() {
            Some(text)
                if text.len() == 64
                    && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                    && hex::decode_to_slice(text, &mut hash).is_ok() =>
            {
                Ok(hash)
            }
            Some(_) => Err("must be 64 lowercase hex characters (a SHA-256 hash)".into()),
            None => Err("must be a string".into()),
        }
    })
}

fn token_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |v| match v {
        Value::String(text) if display_prefix_bytes(&text).is_some() => Ok(text),
        Value::String(_) => Err(format!(
            "must be {TOKEN_PREFIX} followed by 8 lowercase hex characters and ..."
        )),
        _ => Err("must be a string".into()),
    })
}

fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    checked(d, |v| {
        v.as_u64()
            .ok_or_else(|| "must be a non-negative integer (Unix seconds)".into())
    })
}

/// `null` is `None`, as an absent field is.
fn optional_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    checked(d, |v| match v {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| "must be null or a non-negative integer (Unix seconds)".to_owned()),
    })
    .map(Option::flatten)
}

/// `null` or an object, read in place so its fields' errors carry their path.
fn grace<'de, D: Deserializer<'de>>(d: D) -> Result<Option<GraceIn>, D::Error> {
    struct GraceVisitor;
    const PROBLEM: &str = "must be null or an object";
    impl<'de> Visitor<'de> for GraceVisitor {
        type Value = Option<GraceIn>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("null or an object")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            GraceIn::deserialize(MapAccessDeserializer::new(map)).map(Some)
        }
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Err(E::custom(PROBLEM))
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(E::custom(PROBLEM))
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(E::custom(PROBLEM))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(E::custom(PROBLEM))
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Err(E::custom(PROBLEM))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(A::Error::custom(PROBLEM))
        }
    }
    d.deserialize_any(GraceVisitor)
}

/// Reads a line's object as `T`; a problem is named by the field's path
/// (`grace.token_prefix`) and never quotes a value.
fn read_as<T: serde::de::DeserializeOwned>(object: Value, line: usize) -> Result<T, BackupError> {
    serde_path_to_error::deserialize(object).map_err(|e| {
        let keys: Vec<&str> = e
            .path()
            .iter()
            .filter_map(|segment| match segment {
                Segment::Map { key } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        let message = e.inner().to_string();
        let message = match keys.split_last() {
            // An unknown key fails as it is read: the path ends with it.
            Some((key, parents)) if message.starts_with("unknown field") => {
                let key: String = key.chars().take(40).collect();
                let context = match parents {
                    [] => String::new(),
                    _ => format!(" in {}", parents.join(".")),
                };
                format!("unknown field {key:?}{context}")
            }
            _ => format!("{} {message}", keys.join(".")),
        };
        BackupError::invalid(line, message)
    })
}

/// A required field that is absent.
fn required<T>(value: Option<T>, path: &str, line: usize) -> Result<T, BackupError> {
    value.ok_or_else(|| BackupError::invalid(line, format!("{path} is missing")))
}

fn parse_header(object: Value, line: usize) -> Result<u64, BackupError> {
    let header: HeaderIn = read_as(object, line)?;
    if header.format.as_deref() != Some(FORMAT) {
        return Err(BackupError::invalid(
            line,
            format!("this is not an agent-tokens export (the header's format must be {FORMAT:?})"),
        ));
    }
    match header.version {
        Some(VERSION) => {}
        Some(v) => {
            return Err(BackupError::invalid(
                line,
                format!(
                "export format version {v} is not supported; this release reads version {VERSION}"
            ),
            ))
        }
        None => {
            return Err(BackupError::invalid(
                line,
                "the header's version must be a non-negative integer",
            ))
        }
    }
    header.users.ok_or_else(|| {
        BackupError::invalid(
            line,
            "the header's users must be the number of user lines that follow",
        )
    })
}

fn parse_user(object: Value, line: usize) -> Result<Entry, BackupError> {
    let user: UserIn = read_as(object, line)?;
    let user_id = required(user.user_id, "user_id", line)?;
    let hash = required(user.token_hash, "token_hash", line)?;
    let prefix = required(user.token_prefix, "token_prefix", line)?;
    let created_at = required(user.created_at, "created_at", line)?;
    let (previous, grace_times) = match user.grace {
        None => (None, None),
        Some(grace) => {
            let grace_hash = required(grace.token_hash, "grace.token_hash", line)?;
            if grace_hash == hash {
                return Err(BackupError::invalid(
                    line,
                    "grace.token_hash is the same as token_hash",
                ));
            }
            let token = GraceToken {
                hash: grace_hash,
                prefix: required(grace.token_prefix, "grace.token_prefix", line)?,
                until: required(grace.grace_until, "grace.grace_until", line)?,
            };
            let created_at = required(grace.created_at, "grace.created_at", line)?;
            (Some(token), Some((created_at, grace.last_used_at)))
        }
    };
    Ok(Entry {
        line,
        user: user_id,
        record: UserRecord {
            hash,
            prefix,
            created_at,
            last_used_at: user.last_used_at,
            previous,
        },
        grace_times,
    })
}

/// User ids and token hashes (current and in grace) must each be unique in
/// the file. Sorting keeps memory flat for a million users; the problem
/// reported is the one a reader meets first (the earliest repeat).
fn check_unique(entries: &[Entry]) -> Result<(), BackupError> {
    let mut first: Option<(usize, String)> = None;
    let mut note = |line: usize, message: String| {
        if first.as_ref().is_none_or(|(l, _)| line < *l) {
            first = Some((line, message));
        }
    };
    let mut users: Vec<(&str, usize)> = entries.iter().map(|e| (e.user.as_str(), e.line)).collect();
    users.sort_unstable();
    for pair in users.windows(2) {
        if pair[0].0 == pair[1].0 {
            note(
                pair[1].1,
                format!(
                    "user_id {:?} already appears on line {}",
                    pair[1].0, pair[0].1
                ),
            );
        }
    }
    drop(users);
    let mut hashes: Vec<(&[u8; 32], usize, &str)> = Vec::with_capacity(entries.len());
    for e in entries {
        hashes.push((&e.record.hash, e.line, "token_hash"));
        if let Some(prev) = &e.record.previous {
            hashes.push((&prev.hash, e.line, "grace.token_hash"));
        }
    }
    hashes.sort_unstable();
    for pair in hashes.windows(2) {
        if pair[0].0 == pair[1].0 {
            note(
                pair[1].1,
                format!("{} already appears on line {}", pair[1].2, pair[0].1),
            );
        }
    }
    match first {
        Some((line, message)) => Err(BackupError::invalid(line, message)),
        None => Ok(()),
    }
}

/// Writes every user record of `store` as an export to `out`. Reads
/// only; `store` is one consistent state: a stopped store held
/// exclusively, or a running store's [`crate::store::snapshot::Snapshot`].
pub fn export(
    store: &impl Records,
    out: &mut impl Write,
    now: u64,
) -> Result<Summary, BackupError> {
    let header = Header {
        format: FORMAT,
        version: VERSION,
        users: store.user_count()?,
        exported_at: now,
        generator: format!("agent-tokens {}", env!("CARGO_PKG_VERSION")),
    };
    write_json(out, &header)?;
    let mut summary = Summary::default();
    for item in store.each_user() {
        let (user_id, record) = item?;
        let grace = match &record.previous {
            Some(prev) => grace_line(store, &user_id, prev)?,
            None => None,
        };
        summary.users += 1;
        summary.in_grace += usize::from(grace.is_some());
        write_json(
            out,
            &UserLine {
                user_id: &user_id,
                token_hash: hex::encode(record.hash),
                token_prefix: &record.prefix,
                created_at: record.created_at,
                last_used_at: record.last_used_at,
                grace,
            },
        )?;
    }
    out.flush().map_err(BackupError::Write)?;
    Ok(summary)
}

/// Writes a checked backup into `store`, durable when it returns. Refuses
/// a store that holds tokens unless `force`, which replaces them. Atomic:
/// the backup goes into a new copy of the store, made current in one
/// rename, so an interrupted import leaves the store as it was.
pub fn import(store: &mut Offline, backup: &Backup, force: bool) -> Result<Summary, BackupError> {
    if !force && store.holds_tokens()? {
        return Err(BackupError::NotEmpty {
            path: store.path().to_owned(),
        });
    }
    store.replace_with(&backup.imported_users())?;
    Ok(backup.summary())
}

/// [`import`] into PostgreSQL: one transaction, which replicas serving
/// the database see all at once or not at all.
pub fn import_postgres(
    store: &PgOffline,
    backup: &Backup,
    force: bool,
) -> Result<Summary, BackupError> {
    if !force && store.holds_tokens()? {
        return Err(BackupError::NotEmptyDatabase {
            target: store.target().to_owned(),
        });
    }
    store.replace_with(&backup.imported_users())?;
    Ok(backup.summary())
}

impl Backup {
    fn imported_users(&self) -> Vec<ImportedUser<'_>> {
        self.entries
            .iter()
            .map(|entry| ImportedUser {
                user_id: entry.user.as_str(),
                record: &entry.record,
                grace_token_times: entry.grace_times,
            })
            .collect()
    }
}

/// The grace part of an export line, from the rotated-out token's index
/// entry. A grace token without one does not verify, so it is left out.
fn grace_line<'a>(
    store: &impl Records,
    user_id: &str,
    prev: &'a GraceToken,
) -> Result<Option<GraceLine<'a>>, BackupError> {
    let Some(entry) = store.index_entry(&TokenHash::from_bytes(prev.hash))? else {
        log::warn!(
            "user {user_id:?}: the rotated-out token {} has no index entry; it is not exported",
            prev.prefix
        );
        return Ok(None);
    };
    Ok(Some(GraceLine {
        token_hash: hex::encode(prev.hash),
        token_prefix: &prev.prefix,
        grace_until: prev.until,
        created_at: entry.created_at,
        last_used_at: entry.last_used_at,
    }))
}

fn write_json(out: &mut impl Write, value: &impl Serialize) -> Result<(), BackupError> {
    serde_json::to_writer(&mut *out, value)
        .map_err(|e| BackupError::Write(std::io::Error::other(e)))?;
    out.write_all(b"\n").map_err(BackupError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::token::PlainToken;
    use crate::store::db::Db;
    use crate::store::records::{IndexEntry, NewToken};
    use ring::rand::SystemRandom;

    fn new_token(rng: &SystemRandom) -> NewToken {
        NewToken::of(&PlainToken::generate(rng).unwrap())
    }

    fn export_text(store: &Offline) -> String {
        let mut out = Vec::new();
        export(store, &mut out, 1_800_000_000).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn snapshot(store: &Offline) -> (Vec<(String, UserRecord)>, Vec<IndexEntry>, usize) {
        let users = store.users().collect::<Result<Vec<_>, _>>().unwrap();
        let mut index: Vec<IndexEntry> = store.index_entries().map(|r| r.unwrap().1).collect();
        index.sort_by(|a, b| (&a.user_id, &a.prefix).cmp(&(&b.user_id, &b.prefix)));
        (users, index, store.grace_entries().unwrap())
    }

    #[tokio::test]
    async fn an_export_imports_into_an_identical_store() {
        let rng = SystemRandom::new();
        let dir = tempfile::tempdir().unwrap();
        let source = Db::open(&dir.path().join("a"), 8).unwrap();
        for (i, name) in ["alice", "bob", "ünïcødé@example.com"].iter().enumerate() {
            let user = UserId::parse(name).unwrap();
            source
                .rotate(&user, &new_token(&rng), 1_000 + i as u64, 3600)
                .await
                .unwrap();
        }
        // bob rotates: his first token stays in grace; alice's token is used.
        let bob = UserId::parse("bob").unwrap();
        source
            .rotate(&bob, &new_token(&rng), 2_000, 3600)
            .await
            .unwrap();
        let alice = source
            .get(&UserId::parse("alice").unwrap())
            .unwrap()
            .unwrap();
        source
            .touch(
                &crate::domain::token::TokenHash::from_bytes(alice.hash),
                1_500,
            )
            .await
            .unwrap();

        drop(source);
        let source = Offline::open(&dir.path().join("a"), 8).unwrap();
        let text = export_text(&source);
        let backup = Backup::parse(text.as_bytes()).unwrap();
        assert_eq!(
            backup.summary(),
            Summary {
                users: 3,
                in_grace: 1
            }
        );
        let mut target = Offline::open(&dir.path().join("b"), 8).unwrap();
        let summary = import(&mut target, &backup, false).unwrap();
        assert_eq!(
            summary,
            Summary {
                users: 3,
                in_grace: 1
            }
        );
        assert_eq!(snapshot(&target), snapshot(&source));
        assert_eq!(snapshot(&target).2, 1);
        assert_eq!(export_text(&target), text);
        drop(target);
        let target = Offline::open(&dir.path().join("b"), 8).unwrap();
        assert_eq!(export_text(&target), text);
    }

    #[tokio::test]
    async fn import_refuses_a_non_empty_store_unless_forced_and_force_replaces_it() {
        let rng = SystemRandom::new();
        let dir = tempfile::tempdir().unwrap();
        let store = Db::open(dir.path(), 8).unwrap();
        let old = UserId::parse("old").unwrap();
        store.rotate(&old, &new_token(&rng), 1, 60).await.unwrap();
        store.rotate(&old, &new_token(&rng), 2, 60).await.unwrap();
        drop(store);
        let mut store = Offline::open(dir.path(), 8).unwrap();
        let header = format!("{{\"format\":\"{FORMAT}\",\"version\":1,\"users\":1}}\n");
        let line = format!(
            "{{\"user_id\":\"new\",\"token_hash\":\"{}\",\"token_prefix\":\"sk_agt_0123abcd...\",\"created_at\":5}}\n",
            "ab".repeat(32)
        );
        let backup = Backup::parse(format!("{header}{line}").as_bytes()).unwrap();
        let err = import(&mut store, &backup, false).unwrap_err();
        assert!(matches!(err, BackupError::NotEmpty { .. }), "{err}");
        assert_eq!(store.users().count(), 1);
        import(&mut store, &backup, true).unwrap();
        let (users, index, grace) = snapshot(&store);
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].0, "new");
        assert_eq!(index.len(), 1);
        assert_eq!(grace, 0);
        // What was cleared stays cleared, and the import stays, across a restart.
        let before = snapshot(&store);
        drop(store);
        let store = Offline::open(dir.path(), 8).unwrap();
        assert_eq!(snapshot(&store), before);
    }

    #[test]
    fn duplicates_name_the_earliest_repeat() {
        let header = format!("{{\"format\":\"{FORMAT}\",\"version\":1,\"users\":3}}");
        let line = |user: &str, hash: &str| {
            format!(
                "{{\"user_id\":\"{user}\",\"token_hash\":\"{}\",\"token_prefix\":\"sk_agt_0123abcd...\",\"created_at\":5}}",
                hash.repeat(32)
            )
        };
        let text = [header, line("a", "01"), line("b", "02"), line("a", "01")].join("\n");
        let err = Backup::parse(text.as_bytes()).unwrap_err().to_string();
        assert_eq!(err, "line 4: user_id \"a\" already appears on line 2");
    }

    #[test]
    fn a_bad_field_is_named_by_its_path_and_its_value_never_shown() {
        let header = format!("{{\"format\":\"{FORMAT}\",\"version\":1,\"users\":1}}");
        let hash = "ab".repeat(32);
        let secret = format!("sk_agt_{}", "cd".repeat(32));
        let user = |rest: &str| {
            format!(
                "{{\"user_id\":\"a\",\"token_hash\":\"{hash}\",\"token_prefix\":\"sk_agt_0123abcd...\",\"created_at\":5{rest}}}"
            )
        };
        let grace = format!(
            "\"token_hash\":\"{}\",\"token_prefix\":\"sk_agt_01234567...\",\"created_at\":1",
            "01".repeat(32)
        );
        for (line, expected) in [
            (
                user(&format!(
                    ",\"grace\":{{{grace},\"{secret}\":1,\"grace_until\":9}}"
                )),
                format!("unknown field \"{}\" in grace", &secret[..40]),
            ),
            (
                user(&format!(",\"grace\":{{{grace}}}")),
                "grace.grace_until is missing".to_owned(),
            ),
            (
                user(&format!(
                    ",\"grace\":{{{grace},\"grace_until\":\"{secret}\"}}"
                )),
                "grace.grace_until must be a non-negative integer (Unix seconds)".to_owned(),
            ),
            (
                user(",\"user_id\":null").replacen("\"user_id\":\"a\",", "", 1),
                "user_id must be a string".to_owned(),
            ),
            (
                user(&format!(",\"last_used_at\":\"{secret}\"")),
                "last_used_at must be null or a non-negative integer (Unix seconds)".to_owned(),
            ),
        ] {
            let text = format!("{header}\n{line}\n");
            let err = Backup::parse(text.as_bytes()).unwrap_err().to_string();
            assert_eq!(err, format!("line 2: {expected}"), "{line}");
            assert!(!err.contains(&secret[7..]), "{err}");
        }
    }

    #[test]
    fn a_header_count_larger_than_the_file_is_truncation() {
        let text = format!("{{\"format\":\"{FORMAT}\",\"version\":1,\"users\":2}}\n");
        let err = Backup::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(
            err.starts_with("line 2: the header announces 2 users but the file has 0"),
            "{err}"
        );
    }
}
