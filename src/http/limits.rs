//! Request limits on the token-management routes: header and body size
//! caps, checked before the JWT, and two rate limits (the model is in
//! `docs/configuration.md`, `[rate_limit]`):
//!
//! - changes per user: a create, rotate or revoke that changes something is
//!   charged to the authenticated user id; reads and no-op answers are free.
//!   Behind a proxy every user arrives from one address, so this is the
//!   limit that works by default.
//! - requests per client address, checked before the JWT (against floods
//!   of bad credentials): only when the operator names the header a trusted
//!   proxy sets (`rate_limit.client_ip_header`) or switches it on for a
//!   directly exposed server (`rate_limit.per_address`). Never keyed on a
//!   proxy's address by default.
//!
//! The verify route is exempt from all of them on purpose: a gateway must
//! only ever see 200 or 401 from it (nginx turns any other 4xx into a 500).
//! Verify protects itself by being cheap (see `routes::verify`).
//!
//! Both rate limits are GCRA buckets in one bounded table each: at most
//! [`MAX_TRACKED_KEYS`] keys, so a flood of distinct (spoofed) addresses
//! or users costs bounded memory. This module never sees a credential.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderName, CONTENT_LENGTH};
use actix_web::HttpRequest;

use crate::config::{LimitSettings, RateLimitSettings};
use crate::domain::user::UserId;
use crate::http::error::ApiError;

/// Keys each rate limit tracks at most (about 16 bytes each, so a full
/// table is a few MB whatever the keys are).
pub const MAX_TRACKED_KEYS: usize = 100_000;

/// A full table is swept of idle keys at most this often; between sweeps,
/// and when a sweep frees nothing, new keys are refused.
const FULL_TABLE_SWEEP_GAP: Duration = Duration::from_millis(100);

/// How long a refused new key is told to wait when the table is full.
const FULL_TABLE_RETRY: Duration = Duration::from_secs(1);

pub struct RequestLimits {
    max_header_bytes: usize,
    max_body_bytes: u64,
    per_address: Option<AddressLimit>,
    changes: Option<KeyedLimiter>,
}

/// The per-address limit and where the address comes from.
struct AddressLimit {
    limiter: KeyedLimiter,
    /// The trusted proxy's header; `None`: the TCP peer.
    header: Option<HeaderName>,
    /// With a header: whether a request without it is keyed on its peer
    /// (only when `per_address` says the server is exposed directly).
    peer_fallback: bool,
}

impl RequestLimits {
    /// Builds the limits from validated settings ([`crate::config::Settings::validate`]).
    pub fn new(limits: &LimitSettings, rate: &RateLimitSettings) -> Self {
        let header = rate.client_ip_header_name();
        let (changes, per_address) = if rate.management_per_minute == 0 {
            if rate.per_address || header.is_some() {
                log::warn!(
                    "rate_limit.per_address and rate_limit.client_ip_header have no effect: rate_limit.management_per_minute = 0 turns every rate limit off"
                );
            }
            (None, None)
        } else {
            let changes = KeyedLimiter::new(rate.management_per_minute, rate.management_burst);
            let per_address = (rate.per_address || header.is_some()).then(|| AddressLimit {
                limiter: KeyedLimiter::new(rate.address_per_minute, rate.address_burst),
                header: header.clone(),
                peer_fallback: rate.per_address,
            });
            (Some(changes), per_address)
        };
        log::info!("rate limits: {}", describe(rate, per_address.as_ref()));
        Self {
            max_header_bytes: limits.max_header_bytes,
            max_body_bytes: limits.max_body_bytes,
            per_address,
            changes,
        }
    }

    /// Checks a management request before its JWT is verified (so floods
    /// cost no signature checks); `Err` is the answer to send.
    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        self.check_sized(req, self.max_body_bytes)
    }

    /// [`Self::check`] for a route that takes a body of up to `max_body_bytes`.
    pub fn check_sized(&self, req: &HttpRequest, max_body_bytes: u64) -> Result<(), ApiError> {
        let header_bytes: usize = req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if header_bytes > self.max_header_bytes {
            return Err(ApiError::HeadersTooLarge);
        }
        let declared_body = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared_body.is_some_and(|len| len > max_body_bytes) {
            return Err(ApiError::PayloadTooLarge);
        }
        if let Some(limit) = &self.per_address {
            if let Some(address) = limit.client_address(req) {
                limit.limiter.take(&address_key(address)).map_err(|wait| {
                    ApiError::RateLimited {
                        retry_after_secs: retry_after_secs(wait),
                    }
                })?;
            }
        }
        Ok(())
    }

    /// Takes one change from `user`'s quota before a change that may
    /// happen. Dropping the reservation gives it back; `commit` keeps it.
    ///
    /// Reserving first is what makes the count honest under concurrency:
    /// parallel requests of one user each hold a unit while they run, so
    /// they can never overshoot the quota together, and a request that ends
    /// up changing nothing (an existing token, a failed write) costs nothing.
    pub fn reserve_change(&self, user: &UserId) -> Result<Reservation<'_>, ApiError> {
        let Some(limiter) = &self.changes else {
            return Ok(Reservation(None));
        };
        let key = user.as_str().as_bytes();
        limiter
            .take(key)
            .map(|()| Reservation(Some((limiter, limiter.key_of(key)))))
            .map_err(|wait| ApiError::TooManyChanges {
                retry_after_secs: retry_after_secs(wait),
            })
    }

    /// Charges a change that has already happened and must never be
    /// refused (a revoke: a user must always be able to kill a leaked
    /// token). Over the quota, it puts the user in debt, so the next
    /// create or rotate waits longer.
    pub fn charge_change(&self, user: &UserId) {
        if let Some(limiter) = &self.changes {
            limiter.charge(user.as_str().as_bytes());
        }
    }

    /// Forgets keys idle long enough to be back at full quota, so the
    /// tables follow the active clients, not every client ever seen.
    pub fn forget_idle_clients(&self) {
        for limiter in [
            self.changes.as_ref(),
            self.per_address.as_ref().map(|a| &a.limiter),
        ]
        .into_iter()
        .flatten()
        {
            limiter.sweep();
        }
    }

    /// Keys tracked now: (per user, per address).
    #[cfg(test)]
    fn tracked_keys(&self) -> (usize, usize) {
        (
            self.changes.as_ref().map_or(0, KeyedLimiter::len),
            self.per_address.as_ref().map_or(0, |a| a.limiter.len()),
        )
    }
}

impl AddressLimit {
    /// The client address: the trusted proxy's header (for
    /// `X-Forwarded-For`, the last hop it appended), else the peer when the
    /// server is exposed directly. `None`: not limited by address.
    fn client_address(&self, req: &HttpRequest) -> Option<IpAddr> {
        let Some(name) = &self.header else {
            return req.peer_addr().map(|a| a.ip());
        };
        let from_header = req
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok());
        match from_header {
            Some(address) => Some(address),
            // Without the header the peer is most likely the proxy itself:
            // keying on it would throttle every user at once.
            None if self.peer_fallback => req.peer_addr().map(|a| a.ip()),
            None => None,
        }
    }
}

/// The bucket key of an address: IPv4 as is, IPv6 by its /64 (one host
/// usually holds a whole /64, so single addresses would be free to rotate).
fn address_key(address: IpAddr) -> [u8; 9] {
    let mut key = [0u8; 9];
    match address.to_canonical() {
        IpAddr::V4(v4) => key[1..5].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => {
            key[0] = 6;
            key[1..].copy_from_slice(&v6.octets()[..8]);
        }
    }
    key
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

fn describe(rate: &RateLimitSettings, per_address: Option<&AddressLimit>) -> String {
    if rate.management_per_minute == 0 {
        return "off (rate_limit.management_per_minute = 0)".to_owned();
    }
    let changes = format!(
        "{} changes a minute per user (burst {})",
        rate.management_per_minute, rate.management_burst
    );
    let address = match per_address {
        None => "no per-address limit".to_owned(),
        Some(limit) => {
            let keyed = match (&limit.header, limit.peer_fallback) {
                (None, _) => "the peer address".to_owned(),
                (Some(h), false) => format!("the {h} header (requests without it: no limit)"),
                (Some(h), true) => format!("the {h} header, else the peer address"),
            };
            format!(
                "{} requests a minute per address (burst {}), keyed on {keyed}",
                rate.address_per_minute, rate.address_burst
            )
        }
    };
    format!("{changes}; {address}")
}

/// Keeps a reserved change unit until committed; dropped, it is refunded.
#[must_use = "dropping a reservation refunds it; call commit() once the change happened"]
pub struct Reservation<'a>(Option<(&'a KeyedLimiter, u64)>);

impl Reservation<'_> {
    /// The change happened: the unit stays spent.
    pub fn commit(mut self) {
        self.0 = None;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some((limiter, key)) = self.0.take() {
            limiter.refund(key, limiter.now());
        }
    }
}

/// GCRA (the generic cell rate algorithm): per key, one
/// "theoretical arrival time"; a request is allowed while that time is at
/// most `burst - 1` intervals ahead of now, and moves it one interval on.
/// A key whose time has passed is at full quota, the same as no entry, so
/// it can be forgotten at any moment.
pub struct KeyedLimiter {
    interval_ns: u64,
    tolerance_ns: u64,
    max_keys: usize,
    /// Keys are hashed with a per-process random SipHash key: a table entry
    /// is 16 bytes whatever the key, and no client can aim for a collision.
    hasher: std::hash::RandomState,
    epoch: Instant,
    table: Mutex<Table>,
}

struct Table {
    /// Key hash → theoretical arrival time, in ns since `epoch`.
    arrival: HashMap<u64, u64>,
    last_full_sweep: Option<u64>,
}

impl KeyedLimiter {
    /// `per_minute` and `burst` must be at least 1 (the config checks it).
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self::with_capacity(per_minute, burst, MAX_TRACKED_KEYS)
    }

    fn with_capacity(per_minute: u32, burst: u32, max_keys: usize) -> Self {
        let interval_ns = 60_000_000_000 / u64::from(per_minute.max(1));
        Self {
            interval_ns,
            tolerance_ns: interval_ns * u64::from(burst.max(1) - 1),
            max_keys,
            hasher: std::hash::RandomState::new(),
            epoch: Instant::now(),
            table: Mutex::new(Table {
                arrival: HashMap::new(),
                last_full_sweep: None,
            }),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn key_of(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table holds plain numbers; a panic elsewhere cannot leave it torn.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one unit for `key`, or says how long to wait.
    pub fn take(&self, key: &[u8]) -> Result<(), Duration> {
        self.take_at(self.key_of(key), self.now())
    }

    fn take_at(&self, key: u64, now: u64) -> Result<(), Duration> {
        let mut table = self.lock();
        let arrival = match table.arrival.get(&key).copied() {
            Some(tat) => tat.max(now),
            None => {
                self.make_room(&mut table, now)?;
                now
            }
        };
        let earliest = arrival.saturating_sub(self.tolerance_ns);
        if earliest > now {
            return Err(Duration::from_nanos(earliest - now));
        }
        table.arrival.insert(key, arrival + self.interval_ns);
        Ok(())
    }

    /// Takes one unit even past the quota (into debt).
    fn charge(&self, key: &[u8]) {
        let (key, now) = (self.key_of(key), self.now());
        let mut table = self.lock();
        let arrival = match table.arrival.get(&key).copied() {
            Some(tat) => tat.max(now),
            // A full table loses this charge rather than refuse a revoke.
            None if self.make_room(&mut table, now).is_err() => return,
            None => now,
        };
        table.arrival.insert(key, arrival + self.interval_ns);
    }

    fn refund(&self, key: u64, now: u64) {
        let mut table = self.lock();
        if let Some(tat) = table.arrival.get_mut(&key) {
            *tat = tat.saturating_sub(self.interval_ns);
            if *tat <= now {
                table.arrival.remove(&key);
            }
        }
    }

    /// Room for one new key: at the cap, idle keys are swept at once (at
    /// most every [`FULL_TABLE_SWEEP_GAP`]); if the table is still full,
    /// every new key is refused alike until keys go idle, while known keys
    /// keep their own quota.
    fn make_room(&self, table: &mut Table, now: u64) -> Result<(), Duration> {
        if table.arrival.len() < self.max_keys {
            return Ok(());
        }
        let gap = u64::try_from(FULL_TABLE_SWEEP_GAP.as_nanos()).unwrap_or(u64::MAX);
        if table
            .last_full_sweep
            .is_none_or(|last| now.saturating_sub(last) >= gap)
        {
            table.last_full_sweep = Some(now);
            table.arrival.retain(|_, tat| *tat > now);
        }
        if table.arrival.len() < self.max_keys {
            Ok(())
        } else {
            Err(FULL_TABLE_RETRY)
        }
    }

    /// Forgets keys back at full quota and gives spare memory back.
    fn sweep(&self) {
        let now = self.now();
        let mut table = self.lock();
        table.arrival.retain(|_, tat| *tat > now);
        let len = table.arrival.len();
        if table.arrival.capacity() > 2 * len + 1024 {
            table.arrival.shrink_to(2 * len);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().arrival.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_key_gets_its_burst_then_one_unit_per_interval() {
        let limiter = KeyedLimiter::new(60, 3);
        for _ in 0..3 {
            limiter.take_at(1, 0).unwrap();
        }
        let wait = limiter.take_at(1, 0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(limiter.take_at(1, SEC / 2).is_err());
        limiter.take_at(1, SEC).unwrap();
        assert!(limiter.take_at(1, SEC).is_err());
        // Another key has its own bucket.
        limiter.take_at(2, SEC).unwrap();
    }

    #[test]
    fn a_refund_gives_the_unit_back_and_an_idle_key_is_forgotten() {
        let limiter = KeyedLimiter::new(60, 2);
        limiter.take_at(7, 0).unwrap();
        limiter.take_at(7, 0).unwrap();
        assert!(limiter.take_at(7, 0).is_err());
        limiter.refund(7, 0);
        limiter.take_at(7, 0).unwrap();
        limiter.refund(7, 0);
        limiter.refund(7, 0);
        assert_eq!(limiter.lock().arrival.len(), 0, "back at full quota");
    }

    #[test]
    fn reservations_refund_unless_committed() {
        let limits = RequestLimits::new(
            &LimitSettings::default(),
            &RateLimitSettings {
                management_per_minute: 60,
                management_burst: 2,
                ..RateLimitSettings::default()
            },
        );
        let alice = UserId::parse("alice").unwrap();
        for _ in 0..10 {
            drop(limits.reserve_change(&alice).unwrap());
        }
        limits.reserve_change(&alice).unwrap().commit();
        limits.reserve_change(&alice).unwrap().commit();
        assert!(matches!(
            limits.reserve_change(&alice),
            Err(ApiError::TooManyChanges {
                retry_after_secs: 1
            })
        ));
        // A charge is never refused and deepens the wait.
        limits.charge_change(&alice);
        assert!(matches!(
            limits.reserve_change(&alice),
            Err(ApiError::TooManyChanges {
                retry_after_secs: 2
            })
        ));
        let bob = UserId::parse("bob").unwrap();
        limits.reserve_change(&bob).unwrap().commit();
    }

    #[test]
    fn concurrent_reservations_never_overshoot_the_burst() {
        let limiter = KeyedLimiter::new(1, 5);
        let granted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        if limiter.take(b"carol").is_ok() {
                            granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), 5);
    }

    #[test]
    fn a_flood_of_distinct_keys_costs_bounded_memory() {
        let limiter = KeyedLimiter::with_capacity(600, 10, 1_000);
        // 5,000 spoofed addresses, one request each, in the same instant:
        // the first 1,000 are tracked, the rest are refused alike.
        let mut refused = 0;
        for key in 0..5_000u64 {
            if limiter.take_at(key, 0).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 4_000);
        assert_eq!(limiter.lock().arrival.len(), 1_000);
        // Known keys keep their own quota while the table is full.
        limiter.take_at(5, 0).unwrap();
        // Once the tracked keys are idle (one interval later), a new key
        // sweeps them at once and gets in.
        let later = SEC / 10 + 1;
        limiter.take_at(10_000, later).unwrap();
        assert_eq!(limiter.lock().arrival.len(), 2, "key 5 is still busy");
        // A flood over time never holds more than the cap.
        for step in 0..50_000u64 {
            let _ = limiter.take_at(1_000_000 + step, later + step * 1_000);
            assert!(limiter.lock().arrival.len() <= 1_000);
        }
    }

    #[test]
    fn a_full_table_is_swept_at_most_every_gap() {
        // 600,000 a minute: a key is idle again 100 µs after its request.
        let limiter = KeyedLimiter::with_capacity(600_000, 1, 10);
        for key in 0..10 {
            limiter.take_at(key, 0).unwrap();
        }
        // Full of busy keys: the sweep at t=0 frees nothing.
        assert_eq!(limiter.take_at(100, 0), Err(FULL_TABLE_RETRY));
        // Idle at 1 ms, but the next sweep waits for its gap: refused alike.
        assert_eq!(limiter.take_at(101, 1_000_000), Err(FULL_TABLE_RETRY));
        let gap = u64::try_from(FULL_TABLE_SWEEP_GAP.as_nanos()).unwrap();
        limiter.take_at(102, gap).unwrap();
        assert_eq!(limiter.lock().arrival.len(), 1);
    }

    #[test]
    fn spoofed_addresses_in_the_client_ip_header_cost_bounded_memory() {
        use actix_web::test::TestRequest;
        let limits = RequestLimits::new(
            &LimitSettings::default(),
            &RateLimitSettings {
                client_ip_header: "X-Real-IP".to_owned(),
                // One a minute: every spoofed address stays busy (unsweepable)
                // for the whole test, the worst case for the table.
                address_per_minute: 1,
                ..RateLimitSettings::default()
            },
        );
        let request = |n: u32| {
            TestRequest::default()
                .insert_header(("X-Real-IP", std::net::Ipv4Addr::from(n).to_string()))
                .to_http_request()
        };
        let flood = MAX_TRACKED_KEYS as u32 + 20_000;
        let mut refused = 0;
        for n in 0..flood {
            match limits.check(&request(n)) {
                Ok(()) => {}
                Err(ApiError::RateLimited { retry_after_secs }) => {
                    assert_eq!(retry_after_secs, 1);
                    refused += 1;
                }
                Err(other) => panic!("{other}"),
            }
        }
        // Nothing is idle: the table stops at its cap and the rest are refused alike.
        assert_eq!(limits.tracked_keys(), (0, MAX_TRACKED_KEYS));
        assert_eq!(refused, 20_000);
        // An address already known keeps its own quota.
        limits.check(&request(7)).unwrap();
    }

    #[test]
    fn ipv6_addresses_share_a_bucket_per_64_and_ipv4_mapped_addresses_are_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(v4), address_key(mapped));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
