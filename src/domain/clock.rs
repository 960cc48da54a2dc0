//! Wall-clock seconds, with an offset tests can move forward to cross
//! grace windows and expiry without sleeping.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Default)]
pub struct Clock {
    offset_secs: Arc<AtomicI64>,
    /// When non-zero, the clock is frozen at this time (tests).
    fixed_secs: Arc<AtomicU64>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock frozen at the current time that moves only by [`Clock::advance`],
    /// so tests can stand exactly on a window's edge.
    pub fn manual() -> Self {
        let clock = Self::default();
        clock
            .fixed_secs
            .store(clock.now().max(1), Ordering::Relaxed);
        clock
    }

    /// Seconds since the Unix epoch (UTC).
    pub fn now(&self) -> u64 {
        let fixed = self.fixed_secs.load(Ordering::Relaxed);
        if fixed != 0 {
            return fixed;
        }
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        real.saturating_add_signed(self.offset_secs.load(Ordering::Relaxed))
    }

    /// Moves this clock (and every clone of it) forward; for tests.
    pub fn advance(&self, secs: u64) {
        if self.fixed_secs.load(Ordering::Relaxed) != 0 {
            self.fixed_secs.fetch_add(secs, Ordering::Relaxed);
        } else {
            let secs = i64::try_from(secs).unwrap_or(i64::MAX);
            self.offset_secs.fetch_add(secs, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
const MAX_RFC3339_SECS: u64 = 253_402_300_799;

fn rfc3339_display(secs: u64) -> humantime::Rfc3339Timestamp {
    let secs = secs.min(MAX_RFC3339_SECS);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// Formats Unix seconds as RFC 3339 UTC, e.g. `2026-11-28T16:09:02Z`.
pub fn rfc3339(secs: u64) -> String {
    rfc3339_display(secs).to_string()
}

/// Unix seconds that serialize as an RFC 3339 UTC string, written straight
/// into the response body (no intermediate `String`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub u64);

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&rfc3339_display(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_882_142), "2026-11-28T16:09:02Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(
            serde_json::to_string(&Timestamp(1_795_882_142)).unwrap(),
            r#""2026-11-28T16:09:02Z""#
        );
    }

    #[test]
    fn a_manual_clock_stands_still_until_advanced() {
        let c = Clock::manual();
        let t = c.now();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(c.now(), t);
        c.clone().advance(5);
        assert_eq!(c.now(), t + 5);
    }

    #[test]
    fn advancing_moves_every_clone() {
        let a = Clock::system();
        let b = a.clone();
        let before = b.now();
        a.advance(3600);
        assert!(b.now() >= before + 3600);
    }
}
