//! Which URLs keys may come from: https, or plain http to this host.

use std::net::IpAddr;

use reqwest::Url;

/// Whether keys may be fetched from `url`: https, or plain http to a
/// loopback address (an identity provider on the same host; tests). A URL
/// carrying a user name or password is refused: it would reach the logs.
pub fn allowed(url: &Url) -> bool {
    if !url.username().is_empty() || url.password().is_some() {
        return false;
    }
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => is_loopback(url),
        _ => false,
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `raw` as a URL keys may come from, or one sentence naming `key`.
pub fn parse(key: &str, raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim())
        .map_err(|e| format!("{key} is not a URL ({e}); give the full https:// address."))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{key} must not carry a user name or password; identity providers publish their keys without credentials."
        ));
    }
    if !allowed(&url) {
        return Err(format!(
            "{key} must be an https:// URL (plain http is accepted only to a loopback address such as 127.0.0.1): {url} is not."
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_and_http_only_to_loopback() {
        for ok in [
            "https://sso.example/realms/acme",
            "https://10.0.0.5:8443/certs",
            "http://127.0.0.1:8080/certs",
            "http://127.8.9.10/certs",
            "http://[::1]:9000/",
            "http://localhost:9000/",
        ] {
            assert!(parse("jwt.jwks_url", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://sso.example/certs",
            "http://10.0.0.5/certs",
            "http://[::2]/certs",
            "ftp://127.0.0.1/certs",
            "file:///etc/passwd",
        ] {
            assert_eq!(
                parse("jwt.jwks_url", bad).unwrap_err(),
                format!("jwt.jwks_url must be an https:// URL (plain http is accepted only to a loopback address such as 127.0.0.1): {} is not.", Url::parse(bad).unwrap()),
            );
        }
        assert_eq!(
            parse("jwt.oidc_discovery_url", "https://user:pw@sso.example/").unwrap_err(),
            "jwt.oidc_discovery_url must not carry a user name or password; identity providers publish their keys without credentials."
        );
        assert!(parse("jwt.jwks_url", "sso.example/certs")
            .unwrap_err()
            .starts_with("jwt.jwks_url is not a URL ("));
    }
}
