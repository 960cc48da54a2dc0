//! The operator's admin secret (`admin.token_file`), which authenticates
//! the deprovisioning route. Held only as its SHA-256 digest and compared
//! in constant time on digests, so neither its length nor a matching
//! prefix shows in the timing. `Debug` never prints it.

use ring::digest::{digest, SHA256};
use secrecy::{ExposeSecret, SecretString};

/// The admin secret, held as its digest.
pub struct AdminSecret {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminSecret(redacted)")
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

impl AdminSecret {
    pub fn new(secret: &SecretString) -> Self {
        Self {
            digest: sha256(secret.expose_secret().as_bytes()),
        }
    }

    /// Whether `presented` is the secret; constant time in its content.
    pub fn matches(&self, presented: &str) -> bool {
        let theirs = sha256(presented.as_bytes());
        theirs
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_secret_matches_and_debug_hides_it() {
        let secret = AdminSecret::new(&SecretString::from("a-very-long-admin-secret-0123456789"));
        assert!(secret.matches("a-very-long-admin-secret-0123456789"));
        assert!(!secret.matches("a-very-long-admin-secret-012345678"));
        assert!(!secret.matches(""));
        assert_eq!(format!("{secret:?}"), "AdminSecret(redacted)");
    }
}
