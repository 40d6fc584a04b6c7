//! A request rate limit per credential (`SCIM_RATE_LIMIT`, off by default).
//!
//! Each credential (the `Authorization` header as sent, or the client's address when there is
//! none) has a token bucket: it holds up to the burst, refills at the rate, and each request
//! takes one. A request that finds its bucket empty is answered 429 with `Retry-After` and a
//! SCIM error, before any work, so one identity provider's full sync (or a runaway script)
//! cannot take every worker and database connection from the others. Buckets are kept per
//! process: with several instances behind a load balancer each one applies the limit to what
//! reaches it. The limit decides nothing about correctness, only about load.
//!
//! Buckets are keyed by a keyed hash of the credential (the header itself is never kept), in
//! a few shards of bounded size: a shard that fills up forgets the buckets that have refilled
//! completely (they would start full anyway), and failing that, all of them.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 8;

/// Buckets one shard may keep.
const SHARD_CAPACITY: usize = 4096;

/// Token buckets per credential.
#[derive(Debug)]
pub struct RateLimiter {
    /// requests per second
    rate: f64,
    /// requests a bucket holds
    burst: f64,
    hasher: RandomState,
    epoch: Instant,
    shards: [Mutex<HashMap<u64, Bucket>>; SHARDS],
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// seconds after `epoch` when `tokens` was computed
    at: f64,
}

impl RateLimiter {
    /// `per_second` requests per second per credential, and bursts of up to `burst` (at
    /// least one).
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
            hasher: RandomState::new(),
            epoch: Instant::now(),
            shards: Default::default(),
        }
    }

    /// Takes one request from `credential`'s bucket, or says how long until it holds one.
    pub fn take(&self, credential: &[u8]) -> Result<(), Duration> {
        self.take_at(credential, self.epoch.elapsed().as_secs_f64())
    }

    fn take_at(&self, credential: &[u8], now: f64) -> Result<(), Duration> {
        let key = self.hasher.hash_one(credential);
        let shard = &self.shards[(key % SHARDS as u64) as usize];
        let mut buckets = shard.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= SHARD_CAPACITY && !buckets.contains_key(&key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + (now - b.at) * rate < burst);
            if buckets.len() >= SHARD_CAPACITY {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = (bucket.tokens + (now - bucket.at) * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

/// The middleware: a request whose credential's bucket is empty is answered 429 before any
/// work (with the server's state, when the app carries a limiter).
pub async fn middleware(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<
    actix_web::dev::ServiceResponse<actix_web::body::EitherBody<impl actix_web::body::MessageBody>>,
    actix_web::Error,
> {
    let state = req.app_data::<actix_web::web::Data<crate::AppState>>();
    let Some(limiter) = state.and_then(|s| s.limiter.as_ref()) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let verdict = match req.headers().get(actix_web::http::header::AUTHORIZATION) {
        Some(credential) => limiter.take(credential.as_bytes()),
        None => {
            let peer = req
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            limiter.take(peer.as_bytes())
        }
    };
    match verdict {
        Ok(()) => Ok(next.call(req).await?.map_into_left_body()),
        Err(wait) => {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            let err = scim_core::ScimError::new(
                429,
                None,
                format!(
                    "Too many requests with this credential (SCIM_RATE_LIMIT); retry in {seconds} s"
                ),
            );
            let mut resp = actix_web::ResponseError::error_response(&crate::error::ApiError(err));
            resp.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from(seconds),
            );
            Ok(req.into_response(resp).map_into_right_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimiter;

    #[test]
    fn a_bucket_allows_its_burst_then_the_rate() {
        let l = RateLimiter::new(10, 3);
        for _ in 0..3 {
            assert!(l.take_at(b"okta", 0.0).is_ok());
        }
        let wait = l.take_at(b"okta", 0.0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // another credential has a bucket of its own
        assert!(l.take_at(b"entra", 0.0).is_ok());
        // a tenth of a second refills one request, and no more than the burst
        assert!(l.take_at(b"okta", 0.1).is_ok());
        assert!(l.take_at(b"okta", 0.1).is_err());
        for _ in 0..3 {
            assert!(l.take_at(b"okta", 100.0).is_ok());
        }
        assert!(l.take_at(b"okta", 100.0).is_err());
    }

    #[test]
    fn many_credentials_keep_the_buckets_bounded() {
        let l = RateLimiter::new(1, 1);
        for i in 0..(super::SHARD_CAPACITY * super::SHARDS * 3) {
            let _ = l.take_at(format!("token-{i}").as_bytes(), 0.0);
        }
        let kept: usize = l.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(kept <= super::SHARD_CAPACITY * super::SHARDS, "{kept}");
        // a credential that has just used its burst is still limited
        assert!(l.take_at(b"busy", 0.0).is_ok());
        assert!(l.take_at(b"busy", 0.0).is_err());
    }
}
