//! `agent-tokens admin`: operators act on a running server over a Unix
//! socket, whose filesystem permissions are the credential (see
//! [`server`]), or on a stopped store directly (see [`client`]).
//!
//! The protocol is one JSON line per request ([`Request`]) and JSON lines
//! back ([`Reply`]), ending with `done` or `failed`; one request per
//! connection. Every change goes through the store's queue (durable before
//! the answer, remembered answers dropped) and is audited with actor
//! `admin`. Nothing here ever sees a token: hashes stay in the store and
//! only display prefixes are shown.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use crate::domain::clock::{rfc3339, Timestamp};
use crate::domain::policy::TokenPolicy;
use crate::domain::token::display_prefix_bytes;
use crate::domain::user::UserId;
use crate::metrics::METRICS;
use crate::store::audit::{Actor, Audit, AuditEvent, EventKind};
use crate::store::snapshot::Records;
use crate::store::Store;

/// What an operator asks for (`agent-tokens admin <verb>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "kebab-case")]
pub enum Request {
    List {
        /// Only tokens that expire within this many seconds.
        expiring_within: Option<u64>,
        /// Only tokens not used (or, never used, created) for this many seconds.
        unused_for: Option<u64>,
    },
    Show {
        user: String,
    },
    Lookup {
        prefix: String,
    },
    Revoke {
        user: String,
    },
    RevokeAll {
        /// Unix seconds; `None`: every token that exists when it runs.
        before: Option<u64>,
    },
    Export,
    Events {
        user: Option<String>,
        since: Option<u64>,
    },
}

impl Request {
    /// The verb's name, for metrics and messages.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::List { .. } => "list",
            Request::Show { .. } => "show",
            Request::Lookup { .. } => "lookup",
            Request::Revoke { .. } => "revoke",
            Request::RevokeAll { .. } => "revoke-all",
            Request::Export => "export",
            Request::Events { .. } => "events",
        }
    }
}

/// One line of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// A record (a token's summary, an event).
    Item(serde_json::Value),
    /// A line of an export, as `agent-tokens import` reads it.
    Line(String),
    /// The end, with a summary for the operator.
    Done(String),
    /// The end: what went wrong, and the exit code it means.
    Failed { message: String, code: u8 },
}

/// Exit code of a verb that found nothing (`show` of a user without token).
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit code of a verb that could not run (EX_SOFTWARE-like; sysexits.h 70).
pub const EXIT_FAILED: u8 = 70;
/// Bad input (EX_DATAERR).
pub const EXIT_DATAERR: u8 = 65;

/// Replies go out through here as they are made (an export is streamed).
pub type Sink = mpsc::Sender<Reply>;

/// One user's token as `list` and `show` report it.
fn summary(
    user_id: &str,
    prefix: &str,
    created: u64,
    used: Option<u64>,
    policy: &TokenPolicy,
) -> serde_json::Value {
    json!({
        "user_id": user_id,
        "token_prefix": prefix,
        "created_at": Timestamp(created),
        "last_used_at": used.map(Timestamp),
        "expires_at": policy.expires_at(created).map(Timestamp),
    })
}

/// `sk_agt_1a2b3c4d`, with or without `...`, as a display prefix.
pub fn normalize_prefix(text: &str) -> Option<String> {
    let text = text.trim();
    let full = format!("{}...", text.strip_suffix("...").unwrap_or(text));
    display_prefix_bytes(&full).map(|_| full)
}

/// Runs `request` against `store`, sending its replies (the last one
/// `done` or `failed`). `now` is the time it runs at.
pub async fn execute(request: Request, store: &Store, policy: TokenPolicy, now: u64, sink: &Sink) {
    let verb = request.verb();
    let last = match run(request, store, policy, now, sink).await {
        Ok(done) => {
            METRICS.admin_action(verb, true);
            Reply::Done(done)
        }
        Err((message, code)) => {
            METRICS.admin_action(verb, code == EXIT_NOT_FOUND);
            Reply::Failed { message, code }
        }
    };
    let _ = sink.send(last).await;
}

type Outcome = Result<String, (String, u8)>;

fn failed(e: impl std::fmt::Display) -> (String, u8) {
    (e.to_string(), EXIT_FAILED)
}

fn user_id(text: &str) -> Result<UserId, (String, u8)> {
    UserId::parse(text).map_err(|e| (format!("{text:?} is not a user id: {e}"), EXIT_DATAERR))
}

fn admin() -> Audit {
    Audit {
        request_id: Some(crate::http::audit::random_id(
            &ring::rand::SystemRandom::new(),
        )),
        ..Audit::by(Actor::Admin)
    }
}

async fn run(
    request: Request,
    store: &Store,
    policy: TokenPolicy,
    now: u64,
    sink: &Sink,
) -> Outcome {
    // A closed sink (the client went away) ends the work quietly.
    let send = |reply: Reply| async move {
        sink.send(reply)
            .await
            .map_err(|_| failed("the client went away"))
    };
    match request {
        Request::List {
            expiring_within,
            unused_for,
        } => {
            let snapshot = store.view(false).await.map_err(failed)?;
            let mut count = 0usize;
            let items: Vec<_> = snapshot.each_user().collect();
            for item in items {
                let (user, mut record) = item.map_err(failed)?;
                record.last_used_at = record
                    .last_used_at
                    .max(store.pending_last_use(&record.hash));
                let expires = policy.expires_at(record.created_at);
                if let Some(within) = expiring_within {
                    if expires.is_none_or(|at| at > now.saturating_add(within)) {
                        continue;
                    }
                }
                if let Some(idle) = unused_for {
                    let seen = record.last_used_at.unwrap_or(record.created_at);
                    if seen > now.saturating_sub(idle) {
                        continue;
                    }
                }
                count += 1;
                send(Reply::Item(summary(
                    &user,
                    &record.prefix,
                    record.created_at,
                    record.last_used_at,
                    &policy,
                )))
                .await?;
            }
            Ok(format!("{count} user(s) with a token"))
        }
        Request::Show { user } => {
            let user = user_id(&user)?;
            match store.get_with_last_use(&user).await.map_err(failed)? {
                Some(r) => {
                    send(Reply::Item(summary(
                        user.as_str(),
                        &r.prefix,
                        r.created_at,
                        r.last_used_at,
                        &policy,
                    )))
                    .await?;
                    Ok(String::new())
                }
                None => Err((
                    format!("user {:?} has no token", user.as_str()),
                    EXIT_NOT_FOUND,
                )),
            }
        }
        Request::Lookup { prefix } => {
            let Some(prefix) = normalize_prefix(&prefix) else {
                return Err((
                    "the prefix must be sk_agt_ and 8 lowercase hex characters (with or without ...)".to_owned(),
                    EXIT_DATAERR,
                ));
            };
            let snapshot = store.view(false).await.map_err(failed)?;
            let mut found = 0usize;
            let items: Vec<_> = snapshot.each_user().collect();
            for item in items {
                let (user, record) = item.map_err(failed)?;
                let mut hits = Vec::new();
                if record.prefix == prefix {
                    hits.push(("current", None));
                }
                if let Some(prev) = record.previous.as_ref().filter(|p| p.prefix == prefix) {
                    hits.push(("in_grace", Some(prev.until)));
                }
                for (state, until) in hits {
                    found += 1;
                    send(Reply::Item(json!({
                        "user_id": user,
                        "token_prefix": prefix,
                        "state": state,
                        "grace_until": until.map(Timestamp),
                    })))
                    .await?;
                }
            }
            if found == 0 {
                return Err((
                    format!("no current or in-grace token has the prefix {prefix}"),
                    EXIT_NOT_FOUND,
                ));
            }
            Ok(format!("{found} token(s) with the prefix {prefix}"))
        }
        Request::Revoke { user } => {
            let user = user_id(&user)?;
            let revoked = store
                .revoke_as(&user, now, &admin())
                .await
                .map_err(failed)?;
            if revoked {
                crate::metrics::METRICS.token_operation(crate::metrics::TokenOperation::Revoked);
                log::info!("admin: revoked the agent token of user {:?}", user.as_str());
                Ok(format!(
                    "revoked the token of user {:?} (and any token in its grace window)",
                    user.as_str()
                ))
            } else {
                Ok(format!(
                    "user {:?} has no token; nothing to revoke",
                    user.as_str()
                ))
            }
        }
        Request::RevokeAll { before } => {
            let revoked = store
                .revoke_all(before, now, &admin())
                .await
                .map_err(failed)?;
            let what = match before {
                Some(t) => format!("created before {}", rfc3339(t)),
                None => "that existed when it ran".to_owned(),
            };
            log::warn!("admin: revoke-all revoked {revoked} token(s) {what}");
            Ok(format!("revoked {revoked} token(s) {what}"))
        }
        Request::Export => {
            let snapshot = store.view(false).await.map_err(failed)?;
            let tx = sink.clone();
            // Streamed from a blocking thread: a large store is read and
            // encoded off the runtime, at the pace the client reads.
            let exported = tokio::task::spawn_blocking(move || {
                let mut out = LineWriter {
                    tx,
                    buf: Vec::new(),
                };
                crate::ops::backup::export(&snapshot, &mut out, now)
            })
            .await
            .map_err(failed)?
            .map_err(failed)?;
            let mut event = admin()
                .event(EventKind::Export, now, "")
                .with_detail(format!(
                    "exported {} user(s) ({} in grace)",
                    exported.users, exported.in_grace
                ));
            event.user_id = None;
            store.note(event).await.map_err(failed)?;
            Ok(format!(
                "exported {} users ({} in grace)",
                exported.users, exported.in_grace
            ))
        }
        Request::Events { user, since } => {
            let snapshot = store.view(true).await.map_err(failed)?;
            let events: Vec<AuditEvent> = match &user {
                Some(user) => {
                    let user = user_id(user)?;
                    // Oldest first, as the global list.
                    let mut events = snapshot.events_of(&user, usize::MAX).map_err(failed)?;
                    events.reverse();
                    events.retain(|e| since.is_none_or(|s| e.at >= s));
                    events
                }
                None => snapshot.events_since(since.unwrap_or(0)).map_err(failed)?,
            };
            let count = events.len();
            for event in events {
                send(Reply::Item(serde_json::to_value(&event).map_err(failed)?)).await?;
            }
            Ok(format!("{count} event(s)"))
        }
    }
}

/// Turns the export's writes into [`Reply::Line`]s, one per line.
struct LineWriter {
    tx: Sink,
    buf: Vec<u8>,
}

impl std::io::Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]).into_owned();
            self.tx.blocking_send(Reply::Line(text)).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
            })?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_accepted_with_or_without_the_dots_and_nothing_else() {
        assert_eq!(
            normalize_prefix("sk_agt_1a2b3c4d").as_deref(),
            Some("sk_agt_1a2b3c4d...")
        );
        assert_eq!(
            normalize_prefix("sk_agt_1a2b3c4d...").as_deref(),
            Some("sk_agt_1a2b3c4d...")
        );
        for bad in [
            "sk_agt_1a2b3c4",
            "sk_agt_1A2B3C4D",
            "1a2b3c4d",
            "sk_agt_1a2b3c4d5",
        ] {
            assert_eq!(normalize_prefix(bad), None, "{bad}");
        }
    }

    #[test]
    fn requests_are_one_json_line_each() {
        let request = Request::RevokeAll { before: Some(5) };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"verb":"revoke-all","before":5}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
    }
}
