//! JWT bearer tokens (for example Microsoft Entra ID's, SCIM-NOTES E14): signature, expiry,
//! issuer and audience checked with jsonwebtoken. A valid JWT authenticates as the server's
//! default tenant.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::AuthError;

/// The key that signs accepted tokens.
#[derive(Clone)]
pub enum JwtKey {
    /// HMAC-SHA256 shared secret
    Hs256(Vec<u8>),
    /// RSA-SHA256 public key, PEM encoded
    Rs256Pem(Vec<u8>),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JwtKey::Hs256(_) => "Hs256(***)",
            JwtKey::Rs256Pem(_) => "Rs256Pem(..)",
        })
    }
}

/// Verifies JWT bearer tokens.
#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").finish_non_exhaustive()
    }
}

/// The claims this server reads.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// subject (the calling application)
    #[serde(default)]
    pub sub: Option<String>,
    /// issuer
    #[serde(default)]
    pub iss: Option<String>,
}

impl JwtVerifier {
    /// A verifier for `key`. `issuer` and `audience`, when given, must match the token's
    /// `iss` and `aud`; `exp` is always required.
    pub fn new(
        key: &JwtKey,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Self, AuthError> {
        let (key, alg) = match key {
            JwtKey::Hs256(secret) => (DecodingKey::from_secret(secret), Algorithm::HS256),
            JwtKey::Rs256Pem(pem) => (
                DecodingKey::from_rsa_pem(pem)
                    .map_err(|e| AuthError::Config(format!("RS256 public key: {e}")))?,
                Algorithm::RS256,
            ),
        };
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp"]);
        match issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(JwtVerifier { key, validation })
    }

    /// Checks a token; any failure is [`AuthError::Invalid`] (details are not for clients).
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        decode::<Claims>(token, &self.key, &self.validation)
            .map(|d| d.claims)
            .map_err(|_| AuthError::Invalid)
    }
}

/// Whether a bearer value has the shape of a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn token(secret: &[u8], claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn exp(offset: i64) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + offset
    }

    #[test]
    fn hs256_tokens_are_checked_for_signature_expiry_issuer_and_audience() {
        let v = JwtVerifier::new(
            &JwtKey::Hs256(b"s3cret".to_vec()),
            Some("https://sts.example/"),
            Some("scim"),
        )
        .unwrap();
        let good = token(
            b"s3cret",
            serde_json::json!({"iss": "https://sts.example/", "aud": "scim", "exp": exp(600), "sub": "entra"}),
        );
        assert!(looks_like_jwt(&good));
        assert_eq!(v.verify(&good).unwrap().sub.as_deref(), Some("entra"));
        let cases = [
            token(
                b"other",
                serde_json::json!({"iss": "https://sts.example/", "aud": "scim", "exp": exp(600)}),
            ),
            token(
                b"s3cret",
                serde_json::json!({"iss": "https://sts.example/", "aud": "scim", "exp": exp(-600)}),
            ),
            token(
                b"s3cret",
                serde_json::json!({"iss": "https://evil.example/", "aud": "scim", "exp": exp(600)}),
            ),
            token(
                b"s3cret",
                serde_json::json!({"iss": "https://sts.example/", "aud": "other", "exp": exp(600)}),
            ),
            token(
                b"s3cret",
                serde_json::json!({"iss": "https://sts.example/", "aud": "scim"}),
            ),
        ];
        for bad in cases {
            assert_eq!(v.verify(&bad), Err(AuthError::Invalid), "{bad}");
        }
        assert!(!looks_like_jwt("scim_abc"));
        assert_eq!(v.verify("a.b.c"), Err(AuthError::Invalid));
    }

    #[test]
    fn a_token_signed_with_none_is_refused() {
        let v = JwtVerifier::new(&JwtKey::Hs256(b"k".to_vec()), None, None).unwrap();
        // {"alg":"none","typ":"JWT"} . {"exp": far future} . (no signature)
        let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJleHAiOjk5OTk5OTk5OTl9.";
        assert_eq!(v.verify(unsigned), Err(AuthError::Invalid));
    }
}
