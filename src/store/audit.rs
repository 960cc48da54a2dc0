//! The audit trail: one event per token change, written in the same write
//! batch as the change it describes, so an event exists exactly when its
//! change does (a crash keeps or loses both).
//!
//! Two keyspaces:
//! - `audit_event`: time (u64 BE) ++ sequence (u64 BE) → [`AuditEvent`];
//!   "every event since T" and the retention sweep are one range read;
//! - `audit_user`: user id length (u8) ++ user id ++ the event's key → empty;
//!   "a user's events, newest first" is one reversed prefix read. (A
//!   per-user key alone would make the global list and the sweep a scan of
//!   every user's events; a time key alone would make `/me/events` one.)
//!
//! An event holds the time, the user, display prefixes, the actor, the
//! request id and (only with `audit.record_addresses`) the client address:
//! never a token, a token hash, a JWT or a key.

use fjall::Keyspace;
use serde::{Deserialize, Serialize};

use crate::domain::clock::Timestamp;
use crate::store::codec::{decode_body, encode};
use crate::store::error::StoreError;

const EVENT_FORMAT: u8 = 1;

/// What happened. New kinds go at the end: stored events name theirs by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Rotated,
    Revoked,
    GraceEnded,
    Expired,
    /// An operator revoked every token created before a time (`revoke-all`).
    RevokeAll,
    /// An operator exported the store while it was served.
    Export,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Rotated => "rotated",
            EventKind::Revoked => "revoked",
            EventKind::GraceEnded => "grace_ended",
            EventKind::Expired => "expired",
            EventKind::RevokeAll => "revoke_all",
            EventKind::Export => "export",
        }
    }
}

/// Who caused it. New actors go at the end, as for [`EventKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// The token's user, with their JWT.
    User,
    /// An operator: the admin socket or the deprovisioning route.
    Admin,
    /// Someone who presented a leaked token to revoke it.
    LeakReport,
    /// The server itself (grace windows ending, expiry).
    System,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::User => "user",
            Actor::Admin => "admin",
            Actor::LeakReport => "leak_report",
            Actor::System => "system",
        }
    }
}

/// Who asks for a change, as the events it causes record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub actor: Actor,
    pub request_id: Option<String>,
    /// Only set with `audit.record_addresses`.
    pub address: Option<String>,
    /// What the events should say besides (a leak report's `url` and `source`).
    pub detail: Option<String>,
}

impl Audit {
    /// A change without a request (tests, tools).
    pub fn by(actor: Actor) -> Self {
        Self {
            actor,
            request_id: None,
            address: None,
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: String) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The event this context records for `kind` at `at`. The server
    /// revokes a token only when it outlives `tokens.max_age_days`, so a
    /// revocation by [`Actor::System`] is recorded as `expired`.
    pub(crate) fn event(&self, kind: EventKind, at: u64, user_id: &str) -> AuditEvent {
        let kind = match (kind, self.actor) {
            (EventKind::Revoked, Actor::System) => EventKind::Expired,
            (kind, _) => kind,
        };
        AuditEvent {
            at,
            kind,
            actor: self.actor,
            user_id: Some(user_id.to_owned()),
            token_prefix: None,
            previous_prefix: None,
            request_id: self.request_id.clone(),
            address: self.address.clone(),
            detail: self.detail.clone(),
        }
    }
}

/// One audit event as stored, and as `/me/events`, `admin events --json`
/// and `audit.file` show it (times as RFC 3339, absent fields left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    #[serde(serialize_with = "rfc3339")]
    pub at: u64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub actor: Actor,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_prefix: Option<String>,
    /// A rotation's old prefix (`token_prefix` is the new one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// What an admin action covered, in words (`revoke_all`, `export`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn rfc3339<S: serde::Serializer>(at: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    Timestamp(*at).serialize(serializer)
}

impl AuditEvent {
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.token_prefix = Some(prefix.to_owned());
        self
    }

    pub fn with_previous(mut self, prefix: &str) -> Self {
        self.previous_prefix = Some(prefix.to_owned());
        self
    }

    pub fn with_detail(mut self, detail: String) -> Self {
        self.detail = Some(detail);
        self
    }
}

/// The stored form of an event. (Stored with bincode, which cannot skip
/// fields: it gets its own plain struct, the same fields in order.)
#[derive(Serialize, Deserialize)]
struct Stored {
    at: u64,
    kind: EventKind,
    actor: Actor,
    user_id: Option<String>,
    token_prefix: Option<String>,
    previous_prefix: Option<String>,
    request_id: Option<String>,
    address: Option<String>,
    detail: Option<String>,
}

pub(crate) fn encode_event(e: &AuditEvent) -> Result<Vec<u8>, StoreError> {
    encode(
        EVENT_FORMAT,
        &Stored {
            at: e.at,
            kind: e.kind,
            actor: e.actor,
            user_id: e.user_id.clone(),
            token_prefix: e.token_prefix.clone(),
            previous_prefix: e.previous_prefix.clone(),
            request_id: e.request_id.clone(),
            address: e.address.clone(),
            detail: e.detail.clone(),
        },
    )
}

pub fn decode_event(bytes: &[u8]) -> Result<AuditEvent, StoreError> {
    let what = "audit event";
    let s: Stored = match bytes.split_first() {
        Some((&EVENT_FORMAT, body)) => decode_body(body, what)?,
        _ => return Err(StoreError::Corrupt { what }),
    };
    Ok(AuditEvent {
        at: s.at,
        kind: s.kind,
        actor: s.actor,
        user_id: s.user_id,
        token_prefix: s.token_prefix,
        previous_prefix: s.previous_prefix,
        request_id: s.request_id,
        address: s.address,
        detail: s.detail,
    })
}

/// Key of an `audit_event` entry: ordered by time, then by sequence.
pub(crate) fn event_key(at: u64, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&at.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The time and sequence of an `audit_event` key.
pub(crate) fn split_event_key(key: &[u8]) -> Result<(u64, u64), StoreError> {
    let corrupt = StoreError::Corrupt {
        what: "audit event key",
    };
    let key = <[u8; 16]>::try_from(key).map_err(|_| corrupt)?;
    let (at, seq) = key.split_at(8);
    let at = <[u8; 8]>::try_from(at).map(u64::from_be_bytes);
    let seq = <[u8; 8]>::try_from(seq).map(u64::from_be_bytes);
    match (at, seq) {
        (Ok(at), Ok(seq)) => Ok((at, seq)),
        _ => Err(StoreError::Corrupt {
            what: "audit event key",
        }),
    }
}

/// The prefix of a user's `audit_user` keys. User ids are at most 255
/// bytes ([`crate::domain::user::MAX_USER_ID_LEN`]), so one length byte
/// keeps one user's prefix from being another's.
pub(crate) fn user_prefix(user_id: &str) -> Vec<u8> {
    let bytes = user_id.as_bytes();
    let len = u8::try_from(bytes.len()).unwrap_or(u8::MAX);
    let mut key = Vec::with_capacity(1 + bytes.len() + 16);
    key.push(len);
    key.extend_from_slice(&bytes[..usize::from(len)]);
    key
}

/// Key of an `audit_user` entry: the user's prefix, then the event's key.
pub(crate) fn user_event_key(user_id: &str, event_key: &[u8; 16]) -> Vec<u8> {
    let mut key = user_prefix(user_id);
    key.extend_from_slice(event_key);
    key
}

/// The event key at the end of an `audit_user` key.
pub(crate) fn event_key_of_user_key(key: &[u8]) -> Result<[u8; 16], StoreError> {
    let corrupt = StoreError::Corrupt {
        what: "audit user key",
    };
    let (&len, rest) = key.split_first().ok_or(corrupt)?;
    let rest = rest.get(usize::from(len)..).ok_or(StoreError::Corrupt {
        what: "audit user key",
    })?;
    <[u8; 16]>::try_from(rest).map_err(|_| StoreError::Corrupt {
        what: "audit user key",
    })
}

/// The first sequence number of a newly opened store: past the newest
/// event's, and past the time in microseconds, so a key is never reused
/// even when the clock was set back between two runs.
pub(crate) fn first_seq(events: &Keyspace) -> Result<u64, StoreError> {
    let last = match events.last_key_value() {
        Some(item) => split_event_key(&item.key()?)?.1.saturating_add(1),
        None => 0,
    };
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    Ok(last.max(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AuditEvent {
        Audit {
            actor: Actor::User,
            request_id: Some("req-1".into()),
            address: None,
            detail: None,
        }
        .event(EventKind::Rotated, 1_795_882_142, "alice")
        .with_prefix("sk_agt_0a1b2c3d...")
        .with_previous("sk_agt_99999999...")
    }

    #[test]
    fn events_round_trip_and_show_as_the_api_documents_them() {
        let e = event();
        assert_eq!(decode_event(&encode_event(&e).unwrap()).unwrap(), e);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({
                "at": "2026-11-28T16:09:02Z",
                "type": "rotated",
                "actor": "user",
                "user_id": "alice",
                "token_prefix": "sk_agt_0a1b2c3d...",
                "previous_prefix": "sk_agt_99999999...",
                "request_id": "req-1",
            })
        );
    }

    #[test]
    fn user_keys_keep_users_apart_and_give_back_the_event_key() {
        let key = event_key(5, 7);
        let a = user_event_key("ab", &key);
        assert!(!a.starts_with(&user_prefix("a")));
        assert!(a.starts_with(&user_prefix("ab")));
        assert_eq!(event_key_of_user_key(&a).unwrap(), key);
        assert_eq!(split_event_key(&key).unwrap(), (5, 7));
        assert!(decode_event(b"\x09junk").is_err());
    }
}
