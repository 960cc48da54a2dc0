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

use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::token::TokenHash;
use crate::domain::token::{display_prefix_bytes, TOKEN_PREFIX};
use crate::domain::user::UserId;
use crate::store::error::StoreError;
use crate::store::offline::{ImportedUser, Offline};
use crate::store::records::{GraceToken, UserRecord};

/// The header's `format`: what this file is.
pub const FORMAT: &str = "agent-tokens-export";
/// The header's `version`: the line layout below. Bump it for any change an
/// older import would misread.
pub const VERSION: u64 = 1;
const USER_FIELDS: &[&str] = &[
    "user_id",
    "token_hash",
    "token_prefix",
    "created_at",
    "last_used_at",
    "grace",
];
const GRACE_FIELDS: &[&str] = &[
    "token_hash",
    "token_prefix",
    "grace_until",
    "created_at",
    "last_used_at",
];

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
                None => announced = Some(parse_header(&object, line_no)?),
                Some(_) => entries.push(parse_user(&object, line_no)?),
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
fn parse_object(text: &str, line: usize) -> Result<Map<String, Value>, BackupError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
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

fn parse_header(object: &Map<String, Value>, line: usize) -> Result<u64, BackupError> {
    if object.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(BackupError::invalid(
            line,
            format!("this is not an agent-tokens export (the header's format must be {FORMAT:?})"),
        ));
    }
    match object.get("version").and_then(Value::as_u64) {
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
    object.get("users").and_then(Value::as_u64).ok_or_else(|| {
        BackupError::invalid(
            line,
            "the header's users must be the number of user lines that follow",
        )
    })
}

fn check_fields(
    object: &Map<String, Value>,
    allowed: &[&str],
    context: &str,
    line: usize,
) -> Result<(), BackupError> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => {
            let key: String = key.chars().take(40).collect();
            Err(BackupError::invalid(
                line,
                format!("unknown field {key:?}{context}"),
            ))
        }
        None => Ok(()),
    }
}

fn field<'a>(
    object: &'a Map<String, Value>,
    name: &str,
    line: usize,
) -> Result<&'a Value, BackupError> {
    object
        .get(name)
        .ok_or_else(|| BackupError::invalid(line, format!("{name} is missing")))
}

fn string<'a>(
    object: &'a Map<String, Value>,
    name: &str,
    line: usize,
) -> Result<&'a str, BackupError> {
    field(object, name, line)?
        .as_str()
        .ok_or_else(|| BackupError::invalid(line, format!("{name} must be a string")))
}

fn seconds(object: &Map<String, Value>, name: &str, line: usize) -> Result<u64, BackupError> {
    field(object, name, line)?.as_u64().ok_or_else(|| {
        BackupError::invalid(
            line,
            format!("{name} must be a non-negative integer (Unix seconds)"),
        )
    })
}

/// An absent or `null` field is `None`.
fn optional_seconds(
    object: &Map<String, Value>,
    name: &str,
    line: usize,
) -> Result<Option<u64>, BackupError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            BackupError::invalid(
                line,
                format!("{name} must be null or a non-negative integer (Unix seconds)"),
            )
        }),
    }
}

fn token_hash(
    object: &Map<String, Value>,
    name: &str,
    line: usize,
) -> Result<[u8; 32], BackupError> {
    let text = string(object, name, line)?;
    let mut hash = [0u8; 32];
    if text.len() != 64
        || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        || hex::decode_to_slice(text, &mut hash).is_err()
    {
        return Err(BackupError::invalid(
            line,
            format!("{name} must be 64 lowercase hex characters (a SHA-256 hash)"),
        ));
    }
    Ok(hash)
}

fn token_prefix(
    object: &Map<String, Value>,
    name: &str,
    line: usize,
) -> Result<String, BackupError> {
    let text = string(object, name, line)?;
    if display_prefix_bytes(text).is_none() {
        return Err(BackupError::invalid(
            line,
            format!("{name} must be {TOKEN_PREFIX} followed by 8 lowercase hex characters and ..."),
        ));
    }
    Ok(text.to_owned())
}

fn parse_user(object: &Map<String, Value>, line: usize) -> Result<Entry, BackupError> {
    check_fields(object, USER_FIELDS, "", line)?;
    let user = UserId::parse(string(object, "user_id", line)?)
        .map_err(|e| BackupError::invalid(line, format!("user_id is not allowed: {e}")))?;
    let hash = token_hash(object, "token_hash", line)?;
    let prefix = token_prefix(object, "token_prefix", line)?;
    let created_at = seconds(object, "created_at", line)?;
    let last_used_at = optional_seconds(object, "last_used_at", line)?;
    let (previous, grace_times) = match object.get("grace") {
        None | Some(Value::Null) => (None, None),
        Some(Value::Object(grace)) => {
            check_fields(grace, GRACE_FIELDS, " in grace", line)?;
            let in_grace = |e: BackupError| match e {
                BackupError::Invalid { line, message } => BackupError::Invalid {
                    line,
                    message: format!("grace.{message}"),
                },
                other => other,
            };
            let grace_hash = token_hash(grace, "token_hash", line).map_err(in_grace)?;
            if grace_hash == hash {
                return Err(BackupError::invalid(
                    line,
                    "grace.token_hash is the same as token_hash",
                ));
            }
            let token = GraceToken {
                hash: grace_hash,
                prefix: token_prefix(grace, "token_prefix", line).map_err(in_grace)?,
                until: seconds(grace, "grace_until", line).map_err(in_grace)?,
            };
            let times = (
                seconds(grace, "created_at", line).map_err(in_grace)?,
                optional_seconds(grace, "last_used_at", line).map_err(in_grace)?,
            );
            (Some(token), Some(times))
        }
        Some(_) => {
            return Err(BackupError::invalid(
                line,
                "grace must be null or an object",
            ))
        }
    };
    Ok(Entry {
        line,
        user,
        record: UserRecord {
            hash,
            prefix,
            created_at,
            last_used_at,
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
/// only; the store is held exclusively meanwhile, so the export is one
/// consistent state.
pub fn export(store: &Offline, out: &mut impl Write, now: u64) -> Result<Summary, BackupError> {
    let header = Header {
        format: FORMAT,
        version: VERSION,
        users: store.user_count()?,
        exported_at: now,
        generator: format!("agent-tokens {}", env!("CARGO_PKG_VERSION")),
    };
    write_json(out, &header)?;
    let mut summary = Summary::default();
    for item in store.users() {
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
    let users: Vec<ImportedUser<'_>> = backup
        .entries
        .iter()
        .map(|entry| ImportedUser {
            user_id: entry.user.as_str(),
            record: &entry.record,
            grace_token_times: entry.grace_times,
        })
        .collect();
    store.replace_with(&users)?;
    Ok(backup.summary())
}

/// The grace part of an export line, from the rotated-out token's index
/// entry. A grace token without one does not verify, so it is left out.
fn grace_line<'a>(
    store: &Offline,
    user_id: &str,
    prev: &'a GraceToken,
) -> Result<Option<GraceLine<'a>>, BackupError> {
    let Some(entry) = store.lookup(&TokenHash::from_bytes(prev.hash))? else {
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
    fn a_header_count_larger_than_the_file_is_truncation() {
        let text = format!("{{\"format\":\"{FORMAT}\",\"version\":1,\"users\":2}}\n");
        let err = Backup::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(
            err.starts_with("line 2: the header announces 2 users but the file has 0"),
            "{err}"
        );
    }
}
