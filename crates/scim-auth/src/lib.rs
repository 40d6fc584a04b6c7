#![doc = include_str!("../README.md")]
//!
//! # Design
//!
//! Tokens are 256 random bits from the operating system, shown to the operator once and
//! stored only as a SHA-256 hash. A fast hash is the right tool here (unlike for passwords):
//! the input has full entropy, so there is nothing to brute-force, and every request pays
//! for the hash. Lookups go by hash, so the comparison is an index probe, not a string
//! comparison that could leak timing.

pub mod jwt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Prefix of every token this crate issues; makes leaked tokens easy to find with scanners.
pub const TOKEN_PREFIX: &str = "scim_";

/// Failures of authentication.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization` header, or not a bearer token.
    #[error("missing bearer token")]
    Missing,
    /// The token is unknown or revoked.
    #[error("invalid or revoked token")]
    Invalid,
    /// The operating system's random source failed.
    #[error("random source unavailable: {0}")]
    Random(String),
    /// The authentication settings are unusable (for example a malformed key).
    #[error("authentication configuration: {0}")]
    Config(String),
}

/// Generates a new opaque bearer token.
pub fn generate_token() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The stored form of a token: lower-case hex SHA-256.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// Extracts the token from an `Authorization` header value (`Bearer <token>`, scheme
/// case-insensitive).
pub fn parse_bearer(header: &str) -> Result<&str, AuthError> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

/// Hashes a password for storage: argon2id with a random salt, as a PHC string
/// (`$argon2id$v=19$...`). Deliberately slow; call it outside database transactions.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AuthError::Random(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Random(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Random(e.to_string()))
}

/// Checks a password against a hash made by [`hash_password`].
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_prefixed_and_hash_stably() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 43);
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(hash_token(&a), hash_token(&b));
    }

    #[test]
    fn passwords_hash_with_salt_and_verify() {
        let a = hash_password("n3wS3cret!").unwrap();
        let b = hash_password("n3wS3cret!").unwrap();
        assert!(a.starts_with("$argon2id$") && a != b, "salted: {a} {b}");
        assert!(!a.contains("n3wS3cret"));
        assert!(verify_password("n3wS3cret!", &a));
        assert!(!verify_password("wrong", &a));
        assert!(!verify_password("n3wS3cret!", "not a hash"));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(parse_bearer("Bearer abc"), Ok("abc"));
        assert_eq!(parse_bearer("bearer   abc "), Ok("abc"));
        assert_eq!(parse_bearer("Basic abc"), Err(AuthError::Missing));
        assert_eq!(parse_bearer("Bearer"), Err(AuthError::Missing));
        assert_eq!(parse_bearer("Bearer "), Err(AuthError::Missing));
    }
}
