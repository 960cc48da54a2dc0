//! Token lifetime rules: expiry (`tokens.max_age_days`), the rotation grace
//! window (`tokens.rotation_grace_secs`) and last-used granularity. Pure
//! functions of a stored entry and the time, so verify stays one read.

use crate::config::TokenSettings;

/// Last-used is stamped at most once per this many seconds per token, so
/// verify stays a read on the hot path.
pub const LAST_USED_GRANULARITY_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenPolicy {
    pub rotation_grace_secs: u64,
    pub max_age_secs: Option<u64>,
}

/// Why a well-formed, stored token does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Inactive {
    #[error("the token was rotated out and its grace window has ended")]
    RotatedOut,
    #[error("the token has expired")]
    Expired,
}

/// A token that verifies now, and when it stops verifying (if ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Active {
    pub expires_at: Option<u64>,
}

impl TokenPolicy {
    pub fn from_settings(settings: &TokenSettings) -> Self {
        Self {
            rotation_grace_secs: settings.rotation_grace_secs,
            max_age_secs: settings.max_age_days.map(|d| d.saturating_mul(86_400)),
        }
    }

    /// When a token created at `created_at` expires by age, if ever.
    pub fn expires_at(&self, created_at: u64) -> Option<u64> {
        self.max_age_secs.map(|age| created_at.saturating_add(age))
    }

    /// Whether a stored token, created at `created_at` and rotated out with
    /// a grace window ending at `grace_until` (if so), verifies at `now`. A
    /// token stops verifying at the very second its expiry or grace end is
    /// reached.
    pub fn assess(
        &self,
        created_at: u64,
        grace_until: Option<u64>,
        now: u64,
    ) -> Result<Active, Inactive> {
        let by_age = self.expires_at(created_at);
        if by_age.is_some_and(|t| now >= t) {
            return Err(Inactive::Expired);
        }
        if grace_until.is_some_and(|t| now >= t) {
            return Err(Inactive::RotatedOut);
        }
        let expires_at = match (by_age, grace_until) {
            (Some(a), Some(g)) => Some(a.min(g)),
            (a, g) => a.or(g),
        };
        Ok(Active { expires_at })
    }
}

/// Whether a verify at `now` should stamp the token's last use.
pub fn needs_touch(last_used_at: Option<u64>, now: u64) -> bool {
    last_used_at.is_none_or(|t| now.saturating_sub(t) >= LAST_USED_GRANULARITY_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_limits_a_token_never_expires() {
        let p = TokenPolicy::default();
        assert_eq!(
            p.assess(0, None, u64::MAX / 2),
            Ok(Active { expires_at: None })
        );
    }

    #[test]
    fn max_age_expires_at_the_exact_second() {
        let p = TokenPolicy {
            rotation_grace_secs: 0,
            max_age_secs: Some(100),
        };
        assert_eq!(
            p.assess(1000, None, 1099),
            Ok(Active {
                expires_at: Some(1100)
            })
        );
        assert_eq!(p.assess(1000, None, 1100), Err(Inactive::Expired));
    }

    #[test]
    fn grace_ends_at_the_exact_second_and_the_earlier_limit_wins() {
        let p = TokenPolicy {
            rotation_grace_secs: 30,
            max_age_secs: Some(1000),
        };
        assert_eq!(
            p.assess(0, Some(500), 499),
            Ok(Active {
                expires_at: Some(500)
            })
        );
        assert_eq!(p.assess(0, Some(500), 500), Err(Inactive::RotatedOut));
        assert_eq!(
            p.assess(0, Some(5000), 999),
            Ok(Active {
                expires_at: Some(1000)
            })
        );
        assert_eq!(p.assess(0, Some(5000), 1000), Err(Inactive::Expired));
    }

    #[test]
    fn last_used_is_stamped_at_most_once_a_minute() {
        assert!(needs_touch(None, 10));
        assert!(!needs_touch(Some(100), 159));
        assert!(needs_touch(Some(100), 160));
        assert!(
            !needs_touch(Some(200), 100),
            "a clock step back does not stamp"
        );
    }

    #[test]
    fn days_become_seconds() {
        let p = TokenPolicy::from_settings(&TokenSettings {
            rotation_grace_secs: 5,
            max_age_days: Some(2),
        });
        assert_eq!(p.max_age_secs, Some(172_800));
        assert_eq!(p.rotation_grace_secs, 5);
    }
}
