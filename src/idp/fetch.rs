//! One bounded HTTP GET of a discovery document or a JWK set.
//!
//! rustls on ring with the system's roots plus `jwt.ca_file`; redirects only
//! to URLs keys may come from; an answer larger than [`MAX_ANSWER_BYTES`] or
//! slower than [`FETCH_TIMEOUT`] is abandoned. Never sends a credential.

use std::path::Path;
use std::time::Duration;

use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_LENGTH};
use reqwest::{redirect, Certificate, Client, StatusCode, Url};

use crate::config::ConfigError;

/// Largest discovery document or JWK set read (real sets hold a few keys
/// of a few hundred bytes each).
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// The whole of one answer, connection to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_REDIRECTS: usize = 3;

/// Why a fetch failed; `label` is its `result` in the fetch metric.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url} did not answer within {} s", FETCH_TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("{url} cannot be reached: {cause}")]
    Network { url: String, cause: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url} answered more than {} KiB", MAX_ANSWER_BYTES / 1024)]
    TooLarge { url: String },
    #[error("{url} answered {what}")]
    Invalid { url: String, what: String },
    #[error(
        "the discovery document at {url} names the issuer {found:?}, not jwt.issuer {expected:?}"
    )]
    IssuerMismatch {
        url: String,
        found: String,
        expected: String,
    },
}

impl FetchError {
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::Timeout { .. } => "timeout",
            FetchError::Network { .. } => "network_error",
            FetchError::Status { .. } => "http_error",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Invalid { .. } => "invalid",
            FetchError::IssuerMismatch { .. } => "issuer_mismatch",
        }
    }
}

/// An answer's body and what its `Cache-Control` asks.
pub struct Answer {
    pub body: Vec<u8>,
    /// `max-age` in seconds; 0 for `no-cache`/`no-store`; `None` when silent.
    pub max_age: Option<u64>,
}

/// The HTTP client for one identity provider.
#[derive(Clone)]
pub struct Fetcher {
    client: Client,
}

impl Fetcher {
    /// A client trusting the system's roots and the certificates in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .https_only(false)
            .user_agent(concat!("agent-tokens/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if super::url::allowed(attempt.url()) {
                    attempt.follow()
                } else {
                    attempt.error("a redirect to a URL keys may not come from")
                }
            }));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError::new(format!(
                    "jwt.ca_file {} cannot be read: {e}.",
                    path.display()
                ))
            })?;
            let certificates = Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    ConfigError::new(format!(
                        "jwt.ca_file {} holds no PEM certificate.",
                        path.display()
                    ))
                })?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(|e| {
            ConfigError::new(format!(
                "Cannot prepare the identity provider's HTTP client: {e}."
            ))
        })?;
        Ok(Self { client })
    }

    /// GETs `url`, reading at most [`MAX_ANSWER_BYTES`] within [`FETCH_TIMEOUT`].
    pub async fn get(&self, url: &Url) -> Result<Answer, FetchError> {
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                FetchError::Timeout {
                    url: url.to_string(),
                }
            } else {
                FetchError::Network {
                    url: url.to_string(),
                    cause: describe(&e),
                }
            }
        };
        // Belt and braces: the client's timeout covers the body too.
        let read = async {
            let mut response = self
                .client
                .get(url.clone())
                .header(ACCEPT, "application/json")
                .send()
                .await
                .map_err(failed)?;
            let status = response.status();
            if !status.is_success() {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status,
                });
            }
            let declared = response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
                return Err(FetchError::TooLarge {
                    url: url.to_string(),
                });
            }
            let max_age = response
                .headers()
                .get_all(CACHE_CONTROL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(max_age);
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(failed)? {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(FetchError::TooLarge {
                        url: url.to_string(),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Answer { body, max_age })
        };
        tokio::time::timeout(FETCH_TIMEOUT + Duration::from_secs(1), read)
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::Timeout {
                    url: url.to_string(),
                })
            })
    }
}

/// reqwest's error with its causes, on one line (no credential is ever in them).
fn describe(e: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cause {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c.to_string());
        cause = c.source();
    }
    if text.is_empty() {
        text = e.to_string();
    }
    text
}

/// The freshness one `Cache-Control` value grants, in seconds.
pub fn max_age(header: &str) -> Option<u64> {
    let mut found = None;
    for directive in header.split(',').map(str::trim) {
        let (name, value) = directive.split_once('=').unwrap_or((directive, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "no-cache" | "no-store" => return Some(0),
            "max-age" => found = value.trim().trim_matches('"').parse().ok(),
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_is_read_as_a_freshness() {
        assert_eq!(max_age("public, max-age=3600"), Some(3600));
        assert_eq!(max_age("max-age=\"600\", must-revalidate"), Some(600));
        assert_eq!(max_age("no-cache"), Some(0));
        assert_eq!(max_age("max-age=60, no-store"), Some(0));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
