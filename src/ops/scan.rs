//! `agent-tokens scan`: finds agent tokens in files, directories or a
//! stream, before they leak (a pre-commit hook, a CI step) or after (a log,
//! a transcript).
//!
//! A finding is a string that is a whole agent token with a valid
//! checksum: a typo or a look-alike fails the checksum (one in 2^32 passes
//! by chance), so what is reported is almost surely a token this service
//! issued. A finding is shown as `path:line:prefix`; the token itself is
//! never printed.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use memchr::memmem;

use crate::domain::token::{PlainToken, TOKEN_LEN, TOKEN_PREFIX};

/// Bytes read to decide whether a file is text: a NUL among them means a
/// binary file (the test git itself uses).
const SNIFF_BYTES: usize = 8000;

/// One token found. Its `Debug` shows the display prefix only.
#[derive(Debug)]
pub struct Finding {
    /// The file's path as given or found, or `stdin`.
    pub path: String,
    /// 1-based.
    pub line: u64,
    pub token: PlainToken,
}

impl Finding {
    /// `path:line:prefix`, as printed.
    pub fn describe(&self) -> String {
        format!(
            "{}:{}:{}",
            self.path,
            self.line,
            self.token.display_prefix()
        )
    }
}

/// What a scan found, and what it could not read.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// One plain sentence per path that could not be scanned.
    pub errors: Vec<String>,
    /// Files read (binary files skipped are not counted).
    pub files: u64,
}

impl Report {
    /// Each distinct token once, in the order first found.
    pub fn distinct_tokens(&self) -> Vec<&PlainToken> {
        let mut seen = std::collections::HashSet::new();
        self.findings
            .iter()
            .map(|f| &f.token)
            .filter(|t| seen.insert(*t.hash().as_bytes()))
            .collect()
    }
}

/// Scans every path: files as they are, directories recursively (skipping
/// `.git` and binary files), and a lone `-` as stdin.
///
/// A path named here is followed when it is a symbolic link, to a file or
/// to a directory: the caller asked for it, and skipping it would report
/// "clean" for a file never read. Symbolic links met inside a directory
/// are not followed (no loops, no escaping the tree), as gitleaks does. A
/// named path that is neither a file nor a directory is an error.
pub fn scan_paths(paths: &[PathBuf]) -> Report {
    let mut report = Report::default();
    for root in paths {
        if root.as_os_str() == "-" {
            if let Err(e) = scan_reader("stdin", io::stdin().lock(), &mut report) {
                report.errors.push(format!("cannot read stdin: {e}"));
            }
            continue;
        }
        let kind = match std::fs::metadata(root) {
            Ok(metadata) => metadata.file_type(),
            Err(e) => {
                report
                    .errors
                    .push(format!("cannot read {}: {e}", root.display()));
                continue;
            }
        };
        if kind.is_file() {
            if let Err(e) = scan_file(root, &mut report) {
                report
                    .errors
                    .push(format!("cannot read {}: {e}", root.display()));
            }
            continue;
        }
        if !kind.is_dir() {
            report.errors.push(format!(
                "cannot scan {}: not a regular file or a directory",
                root.display()
            ));
            continue;
        }
        let walk = walkdir::WalkDir::new(root)
            .follow_links(false)
            .follow_root_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|entry| entry.depth() == 0 || entry.file_name() != ".git");
        for entry in walk {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let path = e.path().unwrap_or(root).display().to_string();
                    report
                        .errors
                        .push(format!("cannot read {path}: {}", io_cause(&e)));
                    continue;
                }
            };
            // Symbolic links inside the tree are skipped, as are sockets,
            // pipes and devices.
            if !entry.file_type().is_file() {
                continue;
            }
            let path = entry.path();
            if let Err(e) = scan_file(path, &mut report) {
                report
                    .errors
                    .push(format!("cannot read {}: {e}", path.display()));
            }
        }
    }
    report
}

fn io_cause(e: &walkdir::Error) -> String {
    e.io_error()
        .map_or_else(|| e.to_string(), |io| io.to_string())
}

fn scan_file(path: &Path, report: &mut Report) -> io::Result<()> {
    let file = File::open(path)?;
    scan_reader(&path.display().to_string(), file, report)
}

/// Scans one stream (a file, or stdin): skipped if binary.
pub fn scan_reader(name: &str, reader: impl Read, report: &mut Report) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let head = reader.fill_buf()?;
    if memchr::memchr(0, &head[..head.len().min(SNIFF_BYTES)]).is_some() {
        return Ok(());
    }
    report.files += 1;
    let finder = memmem::Finder::new(TOKEN_PREFIX.as_bytes());
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        for at in finder.find_iter(&line) {
            let Some(candidate) = line.get(at..at + TOKEN_LEN) else {
                continue;
            };
            let Ok(candidate) = std::str::from_utf8(candidate) else {
                continue;
            };
            if let Ok(token) = PlainToken::parse(candidate) {
                report.findings.push(Finding {
                    path: name.to_owned(),
                    line: number,
                    token,
                });
            }
        }
    }
}

/// The revoke route's path on a server.
const REVOKE_PATH: &str = "/api/agent-tokens/revoke";
/// Tokens the route takes per request.
const REVOKE_BATCH: usize = 1000;
const REVOKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why found tokens could not be sent for revocation. Never holds a token.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("{0:?} is not an http or https URL")]
    BadUrl(String),
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("cannot start the HTTP client: {0}")]
    Client(String),
}

/// The revoke route's URL: `url` itself when it names the route, else
/// the route under `url` as a base.
fn revoke_endpoint(url: &str) -> Result<String, RevokeError> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(RevokeError::BadUrl(url.to_owned()));
    }
    let base = url.trim_end_matches('/');
    Ok(if base.ends_with(REVOKE_PATH) {
        base.to_owned()
    } else {
        format!("{base}{REVOKE_PATH}")
    })
}

/// Sends `tokens` to the server's revoke route, 1,000 per request; returns
/// the route's URL.
pub fn revoke(url: &str, tokens: &[&PlainToken]) -> Result<String, RevokeError> {
    let endpoint = revoke_endpoint(url)?;
    let client = reqwest::Client::builder()
        .timeout(REVOKE_TIMEOUT)
        .build()
        .map_err(|e| RevokeError::Client(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RevokeError::Client(e.to_string()))?;
    runtime.block_on(async {
        for batch in tokens.chunks(REVOKE_BATCH) {
            let body = serde_json::json!({
                "tokens": batch.iter().map(|t| t.expose()).collect::<Vec<_>>()
            });
            let unreachable = |e: reqwest::Error| RevokeError::Unreachable {
                url: endpoint.clone(),
                // Without the URL again, and never the body.
                reason: e.without_url().to_string(),
            };
            let resp = client
                .post(&endpoint)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string())
                .send()
                .await
                .map_err(unreachable)?;
            let status = resp.status();
            if !status.is_success() {
                let text = resp.text().await.unwrap_or_default();
                // A URL that is not our route may echo what it was sent.
                let body = if text.contains(crate::domain::token::TOKEN_PREFIX) {
                    "(not shown: it repeats a token)".to_owned()
                } else {
                    text.chars().take(300).collect()
                };
                return Err(RevokeError::Refused {
                    url: endpoint.clone(),
                    status: status.as_u16(),
                    body,
                });
            }
        }
        Ok(endpoint.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    #[test]
    fn the_revoke_route_is_found_from_a_base_or_named_whole() {
        for (given, want) in [
            (
                "https://t.example",
                "https://t.example/api/agent-tokens/revoke",
            ),
            (
                "https://t.example/",
                "https://t.example/api/agent-tokens/revoke",
            ),
            (
                "http://127.0.0.1:8080/tokens",
                "http://127.0.0.1:8080/tokens/api/agent-tokens/revoke",
            ),
            (
                "https://t.example/api/agent-tokens/revoke",
                "https://t.example/api/agent-tokens/revoke",
            ),
        ] {
            assert_eq!(revoke_endpoint(given).unwrap(), want);
        }
        assert!(revoke_endpoint("t.example").is_err());
        assert!(revoke_endpoint("ftp://t.example").is_err());
    }

    fn token() -> PlainToken {
        PlainToken::generate(&SystemRandom::new()).unwrap()
    }

    /// The token with one hex character of its body changed.
    fn flipped(token: &PlainToken) -> String {
        let mut s = token.expose().to_owned();
        let last = s.pop().unwrap();
        s.push(if last == '0' { '1' } else { '0' });
        s
    }

    #[test]
    fn finds_whole_tokens_with_a_valid_checksum_on_their_lines() {
        let (a, b) = (token(), token());
        let text = format!(
            "first line\nexport AGENT_TOKEN={}\n{{\"t\":\"{}\"}} and {}\nBearer {}x\n",
            a.expose(),
            b.expose(),
            flipped(&a),
            &a.expose()[..TOKEN_LEN - 1],
        );
        let mut report = Report::default();
        scan_reader("notes.txt", text.as_bytes(), &mut report).unwrap();
        let found: Vec<String> = report.findings.iter().map(Finding::describe).collect();
        assert_eq!(
            found,
            vec![
                format!("notes.txt:2:{}", a.display_prefix()),
                format!("notes.txt:3:{}", b.display_prefix()),
            ]
        );
    }

    #[test]
    fn a_binary_stream_is_skipped() {
        let mut bytes = b"\x00\x01ELF".to_vec();
        bytes.extend_from_slice(token().expose().as_bytes());
        let mut report = Report::default();
        scan_reader("a.out", bytes.as_slice(), &mut report).unwrap();
        assert!(report.findings.is_empty());
        assert_eq!(report.files, 0);
    }

    #[test]
    fn a_finding_never_shows_the_token() {
        let t = token();
        let mut report = Report::default();
        scan_reader("x", t.expose().as_bytes(), &mut report).unwrap();
        let shown = format!("{:?} {}", report, report.findings[0].describe());
        assert!(!shown.contains(t.expose()), "{shown}");
        assert!(shown.contains(&t.display_prefix()));
    }

    #[test]
    fn each_token_is_sent_once_however_often_found() {
        let (a, b) = (token(), token());
        let text = format!("{a}\n{b}\n{a} {a}\n", a = a.expose(), b = b.expose());
        let mut report = Report::default();
        scan_reader("x", text.as_bytes(), &mut report).unwrap();
        assert_eq!(report.findings.len(), 4);
        let distinct: Vec<&str> = report
            .distinct_tokens()
            .into_iter()
            .map(PlainToken::expose)
            .collect();
        assert_eq!(distinct, vec![a.expose(), b.expose()]);
    }
}
