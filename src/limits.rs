//! Request limits on the token-management routes (checked by the `UserJwt`
//! extractor): a per-client rate limit, and header/body size caps. The
//! verify route is exempt from all of them on
//! purpose: a gateway must only ever see 200 or 401 from it (nginx turns
//! any other 4xx into a 500). Verify protects itself by being cheap: the
//! checksum refuses garbage before any lookup, a valid-looking token costs
//! one in-memory read, and connections and request heads are bounded by
//! the server settings (`limits.max_connections`, `limits.client_request_timeout_ms`).

use std::net::IpAddr;
use std::num::NonZeroU32;

use actix_web::http::header::CONTENT_LENGTH;
use actix_web::HttpRequest;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{LimitSettings, RateLimitSettings};
use crate::error::ApiError;

pub struct RequestLimits {
    max_header_bytes: usize,
    max_body_bytes: u64,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    client_ip_header: Option<String>,
}

impl RequestLimits {
    pub fn new(limits: &LimitSettings, rate: &RateLimitSettings) -> Self {
        let limiter = NonZeroU32::new(rate.management_per_minute).map(|per_minute| {
            let burst = NonZeroU32::new(rate.management_burst).unwrap_or(per_minute);
            RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
        });
        Self {
            max_header_bytes: limits.max_header_bytes,
            max_body_bytes: limits.max_body_bytes,
            limiter,
            client_ip_header: Some(rate.client_ip_header.trim().to_owned())
                .filter(|h| !h.is_empty()),
        }
    }

    /// Checks a management request before its JWT is verified (so floods
    /// cost no signature checks); `Err` is the answer to send.
    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
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
        if declared_body.is_some_and(|len| len > self.max_body_bytes) {
            return Err(ApiError::PayloadTooLarge);
        }
        if let Some(limiter) = &self.limiter {
            if let Some(client) = self.client_ip(req) {
                if let Err(not_until) = limiter.check_key(&client) {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    return Err(ApiError::RateLimited {
                        retry_after_secs: wait.as_secs().max(1),
                    });
                }
            }
        }
        Ok(())
    }

    /// The client address: the peer, or the configured header set by a
    /// trusted proxy (for `X-Forwarded-For`, the last hop it appended).
    fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        if let Some(name) = &self.client_ip_header {
            let from_header = req
                .headers()
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse().ok());
            if from_header.is_some() {
                return from_header;
            }
        }
        req.peer_addr().map(|a| a.ip())
    }

    /// Forgets clients idle long enough to be back at full quota, so the
    /// limiter's memory follows the active clients, not every client ever seen.
    pub fn forget_idle_clients(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}
