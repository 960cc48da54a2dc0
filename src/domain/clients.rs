//! The resource servers allowed to introspect and revoke agent tokens
//! (RFC 7662 §2.1, RFC 7009 §2.1): `introspection.clients_file`, one
//! `client_id:secret` per line.
//!
//! Only SHA-256 digests of the secrets are kept in memory, compared in
//! constant time; no error, log line or `Debug` output carries a secret.
//! The list is read at start and again on [`ClientsFile::reload`] (SIGHUP);
//! a file that fails to parse on reload leaves the previous list in force.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ring::digest::{digest, SHA256};

use crate::config::ConfigError;

/// Shortest secret accepted: 32 characters, as for `jwt.hmac_secret`.
pub const MIN_SECRET_LEN: usize = 32;

/// What is wrong with a clients file; never quotes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientsError {
    #[error("line {0} is not client_id:secret")]
    NotAPair(usize),
    #[error("line {0} has an empty client id")]
    EmptyId(usize),
    #[error("line {0} has a client id with spaces or control characters")]
    BadId(usize),
    #[error("line {line} has a secret shorter than {MIN_SECRET_LEN} characters")]
    ShortSecret { line: usize },
    #[error("line {line} repeats the client id of line {first}")]
    Duplicate { line: usize, first: usize },
    #[error("it lists no client")]
    Empty,
}

struct Client {
    id: String,
    secret_digest: [u8; 32],
}

/// A parsed clients file.
pub struct ClientList {
    clients: Vec<(Client, usize)>,
}

impl fmt::Debug for ClientList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.clients.iter().map(|(c, _)| &c.id))
            .finish()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// The line up to a `#` that starts it or follows a blank.
fn without_comment(line: &str) -> &str {
    let mut previous_blank = true;
    for (i, c) in line.char_indices() {
        if c == '#' && previous_blank {
            return &line[..i];
        }
        previous_blank = c.is_whitespace();
    }
    line
}

/// Equal digests, looked at in full whatever differs first.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ClientList {
    /// Parses `client_id:secret` lines. `#` starts a comment at the start
    /// of a line or after a blank, so `id:secret  # note` is the secret
    /// alone; the id ends at the first `:` (secrets may contain `:`, and
    /// `#` not after a blank); surrounding blanks are trimmed.
    pub fn parse(text: &str) -> Result<Self, ClientsError> {
        let mut clients: Vec<(Client, usize)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            let line = without_comment(line).trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, secret) = line
                .split_once(':')
                .ok_or(ClientsError::NotAPair(line_no))?;
            let (id, secret) = (id.trim(), secret.trim());
            if id.is_empty() {
                return Err(ClientsError::EmptyId(line_no));
            }
            if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ClientsError::BadId(line_no));
            }
            if secret.chars().count() < MIN_SECRET_LEN {
                return Err(ClientsError::ShortSecret { line: line_no });
            }
            if let Some((_, first)) = clients.iter().find(|(c, _)| c.id == id) {
                return Err(ClientsError::Duplicate {
                    line: line_no,
                    first: *first,
                });
            }
            clients.push((
                Client {
                    id: id.to_owned(),
                    secret_digest: sha256(secret.as_bytes()),
                },
                line_no,
            ));
        }
        if clients.is_empty() {
            return Err(ClientsError::Empty);
        }
        Ok(Self { clients })
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Whether `id` is listed with `secret`.
    pub fn authenticate(&self, id: &str, secret: &str) -> bool {
        let presented = sha256(secret.as_bytes());
        self.clients
            .iter()
            .any(|(c, _)| c.id == id && same_digest(&c.secret_digest, &presented))
    }
}

/// `introspection.clients_file` and the list it held when last read.
pub struct ClientsFile {
    path: PathBuf,
    list: ArcSwap<ClientList>,
}

impl fmt::Debug for ClientsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientsFile")
            .field("path", &self.path)
            .field("clients", &self.list.load().len())
            .finish()
    }
}

fn read(path: &Path) -> Result<ClientList, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(format!(
            "Cannot read introspection.clients_file {}: {e}.",
            path.display()
        ))
    })?;
    ClientList::parse(&text).map_err(|e| {
        ConfigError::new(format!(
            "introspection.clients_file {}: {e}.",
            path.display()
        ))
    })
}

impl ClientsFile {
    /// Reads and parses the file; an error names the key and the line.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let list = read(path)?;
        Ok(Self {
            path: path.to_owned(),
            list: ArcSwap::from_pointee(list),
        })
    }

    /// Reads the file again. On success the new list answers from the
    /// next request on and the count of clients is returned; on an error
    /// the previous list stays in force.
    pub fn reload(&self) -> Result<usize, ConfigError> {
        let list = read(&self.path)?;
        let count = list.len();
        self.list.store(Arc::new(list));
        Ok(count)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `id` is listed with `secret` in the list now in force.
    pub fn authenticate(&self, id: &str, secret: &str) -> bool {
        self.list.load().authenticate(id, secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_pairs_comments_and_secrets_with_colons() {
        let text = format!(
            "# resource servers\n\n  mcp : {SECRET}  \napache:{SECRET}:#x\n\t# off:{SECRET}\n"
        );
        let list = ClientList::parse(&text).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.authenticate("mcp", SECRET));
        assert!(list.authenticate("apache", &format!("{SECRET}:#x")));
        assert!(!list.authenticate("apache", SECRET));
        assert!(!list.authenticate("off", SECRET));
        assert!(!list.authenticate("mcp", &SECRET[1..]));
        assert!(!list.authenticate("MCP", SECRET));
    }

    #[test]
    fn a_comment_after_a_blank_ends_the_secret() {
        let text = format!("mcp:{SECRET}  # the MCP server\napache:{SECRET}\t#x\n");
        let list = ClientList::parse(&text).unwrap();
        assert!(list.authenticate("mcp", SECRET));
        assert!(list.authenticate("apache", SECRET));
        assert!(!list.authenticate("mcp", &format!("{SECRET}  # the MCP server")));
        // What is left after the comment must still be a long enough secret.
        let short = ClientList::parse("mcp:0123456789 #0123456789012345678901234567890");
        assert!(short.is_err());
    }

    #[test]
    fn each_mistake_names_its_line_and_never_the_secret() {
        let short = "short-secret-value";
        let cases = [
            (
                format!("a:{SECRET}\nno colon here\n"),
                ClientsError::NotAPair(2),
            ),
            (format!(":{SECRET}\n"), ClientsError::EmptyId(1)),
            (format!("a b:{SECRET}\n"), ClientsError::BadId(1)),
            (
                format!("# x\nz:{short}\n"),
                ClientsError::ShortSecret { line: 2 },
            ),
            (
                format!("a:{SECRET}\nb:{SECRET}\na:{SECRET}x\n"),
                ClientsError::Duplicate { line: 3, first: 1 },
            ),
            ("# nobody\n\n".to_owned(), ClientsError::Empty),
        ];
        for (text, expected) in cases {
            let err = ClientList::parse(&text).unwrap_err();
            assert_eq!(err, expected, "{text:?}");
            assert!(!err.to_string().contains(short), "{err}");
        }
    }

    #[test]
    fn debug_shows_ids_only() {
        let list = ClientList::parse(&format!("mcp:{SECRET}\n")).unwrap();
        let debug = format!("{list:?}");
        assert!(debug.contains("mcp") && !debug.contains(SECRET), "{debug}");
    }

    #[test]
    fn a_reload_replaces_the_list_and_a_bad_file_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients");
        std::fs::write(&path, format!("a:{SECRET}\n")).unwrap();
        let file = ClientsFile::load(&path).unwrap();
        assert!(file.authenticate("a", SECRET));
        std::fs::write(&path, format!("b:{SECRET}\nc:{SECRET}\n")).unwrap();
        assert_eq!(file.reload().unwrap(), 2);
        assert!(!file.authenticate("a", SECRET));
        assert!(file.authenticate("b", SECRET));
        std::fs::write(&path, "b:short\n").unwrap();
        let err = file.reload().unwrap_err().to_string();
        assert!(
            err.starts_with("introspection.clients_file ") && err.contains("line 1"),
            "{err}"
        );
        assert!(file.authenticate("b", SECRET), "the old list stays");
        std::fs::remove_file(&path).unwrap();
        assert!(file.reload().is_err());
        assert!(file.authenticate("c", SECRET));
    }
}
