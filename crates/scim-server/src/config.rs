//! Settings from environment variables (see docs/CONFIGURATION.md).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use scim_core::query::QueryLimits;
use scim_core::store::UnknownMembers;

/// Everything the server can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// `SCIM_DATABASE_URL`
    pub database_url: String,
    /// `SCIM_LISTEN`
    pub listen: String,
    /// `SCIM_PUBLIC_URL`: base of `Location` and `meta.location`; never taken from requests
    pub public_url: String,
    /// `SCIM_BOOTSTRAP_TOKEN`
    pub bootstrap_token: Option<String>,
    /// `SCIM_MIGRATE_ON_START`
    pub migrate_on_start: bool,
    /// `SCIM_MAX_BODY_BYTES`
    pub max_body_bytes: usize,
    /// `SCIM_BODY_TIMEOUT_MS`: how long a request body may take to arrive (more is 408)
    pub body_timeout: Duration,
    /// `SCIM_DEFAULT_PAGE_SIZE`, `SCIM_MAX_PAGE_SIZE`, `SCIM_FILTER_MAX_LENGTH`, `SCIM_FILTER_MAX_DEPTH`,
    /// `SCIM_FILTER_MAX_SCANS`
    pub query: QueryLimits,
    /// `SCIM_DB_POOL_SIZE`
    pub pool_size: u32,
    /// `SCIM_DB_CONNECT_TIMEOUT_MS`
    pub connect_timeout: Duration,
    /// `SCIM_QUERY_TIMEOUT_MS` (0 = none): a filtered list still running in the database after
    /// this long is cancelled and answered 400 `tooMany`
    pub query_timeout: Option<Duration>,
    /// `SCIM_WORKERS` (0 = one per core)
    pub workers: usize,
    /// `SCIM_SHUTDOWN_TIMEOUT_S`: after `SIGTERM` or `SIGINT`, how long the requests in flight
    /// have to finish (the listener is closed at once); what is still running then is dropped
    pub shutdown_timeout: Duration,
    /// `SCIM_UNKNOWN_MEMBERS`: `ignore` (default) or `reject`
    pub unknown_members: UnknownMembers,
    /// `SCIM_REACTIVATE_ON_CONFLICT`: a POST whose userName belongs to an inactive user
    /// re-activates and updates that user instead of answering 409
    pub reactivate_on_conflict: bool,
    /// `SCIM_USER_DELETE`: what `DELETE /Users/{id}` does
    pub user_delete: UserDelete,
    /// `SCIM_UNIQUE_GROUP_NAMES`: a Group's `displayName` is unique within a tenant
    /// (case-insensitively): a create, PUT or PATCH that would repeat one is 409 `uniqueness`,
    /// so a retried `POST /Groups` cannot make a second group
    pub unique_group_names: bool,
    /// `SCIM_BULK_MAX_OPERATIONS`: operations per `/Bulk` request (0 disables `/Bulk`)
    pub bulk_max_operations: usize,
    /// `SCIM_PATCH_MAX_OPERATIONS`: operations per PATCH request (more is 413), so that the
    /// work of one PATCH stays bounded (each operation may visit every value of its attribute)
    pub patch_max_operations: usize,
    /// `SCIM_MAX_VALUES`: values one multi-valued attribute of a resource may hold (group
    /// members excepted); more is 400 `invalidValue`
    pub max_values: usize,
    /// `SCIM_WRITE_RESPONSE_MAX_MEMBERS`: a PUT or PATCH of a group with more members answers
    /// 204 without a body, unless the request names `attributes` / `excludedAttributes` or
    /// sends `Prefer: return=representation`
    pub write_response_max_members: u32,
    /// `SCIM_PASSWORDS`: `hash` (default) stores an argon2id hash; `ignore` drops passwords
    pub hash_passwords: bool,
    /// `SCIM_STRICT`: RFC behaviour only, every identity-provider leniency off
    pub strict: bool,
    /// `SCIM_JWT_HS256_SECRET` or `SCIM_JWT_RS256_PUBLIC_KEY_FILE`, with `SCIM_JWT_ISSUER` and
    /// `SCIM_JWT_AUDIENCE`: accept JWT bearer tokens signed with that key
    pub jwt: Option<JwtSettings>,
    /// `SCIM_SCHEMA_EXTENSIONS`: extension schemas to add, as `ResourceType=path` pairs
    /// separated by commas (`User=/etc/scim/okta.json,Group=/etc/scim/groups.json`); each file
    /// holds one schema in the form `/Schemas` returns (RFC 7643 section 7)
    pub schema_extensions: Vec<(String, std::path::PathBuf)>,
    /// `SCIM_RATE_LIMIT`: requests per second per credential (0 = no limit); more is 429
    /// with `Retry-After`
    pub rate_limit: u32,
    /// `SCIM_RATE_LIMIT_BURST`: requests a credential may send at once on top of the rate
    /// (at least one; defaults to the rate)
    pub rate_limit_burst: u32,
}

/// What `DELETE /Users/{id}` does (`SCIM_USER_DELETE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserDelete {
    /// `delete` (the default, RFC 7644 section 3.6): the user, its index rows and its group
    /// memberships are removed; later requests for it get 404
    Delete,
    /// `deactivate`: the user is kept with `active` set to `false` (a PATCH of `active`,
    /// version and ETag included) and its group memberships are kept; the answer is still 204.
    /// For applications that must not lose a user's records when an identity provider deletes
    /// it; departs from RFC 7644 section 3.6, since the user stays readable
    Deactivate,
}

/// Accepted JWT bearer tokens.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// the signing key
    pub key: scim_auth::jwt::JwtKey,
    /// required `iss`
    pub issuer: Option<String>,
    /// required `aud`
    pub audience: Option<String>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn num<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .ok()
            .with_context(|| format!("{name} must be a number, got {v:?}")),
    }
}

/// One of `choices` (case-insensitive); the first is the default.
fn choice<T: Copy>(name: &str, choices: &[(&str, T)]) -> Result<T> {
    let Some(v) = var(name) else {
        return Ok(choices[0].1);
    };
    match choices.iter().find(|(c, _)| c.eq_ignore_ascii_case(&v)) {
        Some((_, t)) => Ok(*t),
        None => {
            let names: Vec<&str> = choices.iter().map(|(c, _)| *c).collect();
            bail!("{name} must be {}, got {v:?}", names.join(" or "))
        }
    }
}

fn flag(name: &str, default: bool) -> Result<bool> {
    match var(name).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
        Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
        Some(v) => bail!("{name} must be true or false, got {v:?}"),
    }
}

impl Config {
    /// Defaults, with the given database and no environment involved.
    pub fn with_database(database_url: impl Into<String>) -> Self {
        let listen = "127.0.0.1:8080".to_string();
        Config {
            database_url: database_url.into(),
            public_url: format!("http://{listen}/scim/v2"),
            listen,
            bootstrap_token: None,
            migrate_on_start: true,
            max_body_bytes: 1024 * 1024,
            body_timeout: Duration::from_secs(30),
            query: QueryLimits::default(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            query_timeout: Some(Duration::from_secs(30)),
            workers: 0,
            shutdown_timeout: Duration::from_secs(25),
            unknown_members: UnknownMembers::Ignore,
            reactivate_on_conflict: false,
            user_delete: UserDelete::Delete,
            unique_group_names: false,
            bulk_max_operations: 1000,
            patch_max_operations: 1000,
            max_values: scim_core::resource::DEFAULT_MAX_VALUES,
            write_response_max_members: 1000,
            hash_passwords: true,
            strict: false,
            jwt: None,
            schema_extensions: Vec::new(),
            rate_limit: 0,
            rate_limit_burst: 0,
        }
    }

    /// Reads the environment.
    pub fn from_env() -> Result<Self> {
        let listen = var("SCIM_LISTEN").unwrap_or_else(|| "127.0.0.1:8080".into());
        let public_url =
            var("SCIM_PUBLIC_URL").unwrap_or_else(|| format!("http://{listen}/scim/v2"));
        let defaults = QueryLimits::default();
        let query = QueryLimits {
            default_count: num("SCIM_DEFAULT_PAGE_SIZE", defaults.default_count)?,
            max_count: num("SCIM_MAX_PAGE_SIZE", defaults.max_count)?,
            filter: scim_filter::Limits {
                max_length: num("SCIM_FILTER_MAX_LENGTH", defaults.filter.max_length)?,
                max_depth: num("SCIM_FILTER_MAX_DEPTH", defaults.filter.max_depth)?,
            },
            max_scans: num("SCIM_FILTER_MAX_SCANS", defaults.max_scans)?,
        };
        if query.max_count == 0 || query.default_count > query.max_count {
            bail!(
                "SCIM_DEFAULT_PAGE_SIZE must be at most SCIM_MAX_PAGE_SIZE, which must be positive"
            );
        }
        let rate_limit = num("SCIM_RATE_LIMIT", 0u32)?;
        Ok(Config {
            rate_limit,
            rate_limit_burst: num("SCIM_RATE_LIMIT_BURST", rate_limit)?,
            database_url: var("SCIM_DATABASE_URL").unwrap_or_else(|| "scim.db".into()),
            listen,
            public_url: public_url.trim_end_matches('/').to_string(),
            bootstrap_token: var("SCIM_BOOTSTRAP_TOKEN"),
            migrate_on_start: flag("SCIM_MIGRATE_ON_START", true)?,
            max_body_bytes: num("SCIM_MAX_BODY_BYTES", 1024 * 1024)?,
            body_timeout: match num("SCIM_BODY_TIMEOUT_MS", 30_000u64)? {
                0 => bail!("SCIM_BODY_TIMEOUT_MS must be positive"),
                ms => Duration::from_millis(ms),
            },
            query,
            pool_size: num("SCIM_DB_POOL_SIZE", 8)?,
            connect_timeout: Duration::from_millis(num("SCIM_DB_CONNECT_TIMEOUT_MS", 5000)?),
            query_timeout: match num("SCIM_QUERY_TIMEOUT_MS", 30_000u64)? {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            workers: num("SCIM_WORKERS", 0)?,
            shutdown_timeout: Duration::from_secs(num("SCIM_SHUTDOWN_TIMEOUT_S", 25)?),
            reactivate_on_conflict: flag("SCIM_REACTIVATE_ON_CONFLICT", false)?,
            unique_group_names: flag("SCIM_UNIQUE_GROUP_NAMES", false)?,
            user_delete: choice(
                "SCIM_USER_DELETE",
                &[
                    ("delete", UserDelete::Delete),
                    ("deactivate", UserDelete::Deactivate),
                ],
            )?,
            bulk_max_operations: num("SCIM_BULK_MAX_OPERATIONS", 1000)?,
            patch_max_operations: num("SCIM_PATCH_MAX_OPERATIONS", 1000)?,
            max_values: num("SCIM_MAX_VALUES", scim_core::resource::DEFAULT_MAX_VALUES)?,
            write_response_max_members: num("SCIM_WRITE_RESPONSE_MAX_MEMBERS", 1000)?,
            strict: flag("SCIM_STRICT", false)?,
            jwt: jwt_from_env()?,
            schema_extensions: schema_extensions(var("SCIM_SCHEMA_EXTENSIONS").as_deref())?,
            hash_passwords: choice("SCIM_PASSWORDS", &[("hash", true), ("ignore", false)])?,
            unknown_members: choice(
                "SCIM_UNKNOWN_MEMBERS",
                &[
                    ("ignore", UnknownMembers::Ignore),
                    ("reject", UnknownMembers::Reject),
                ],
            )?,
        })
    }
}

/// Parses `SCIM_SCHEMA_EXTENSIONS` (see [`Config::schema_extensions`]).
fn schema_extensions(value: Option<&str>) -> Result<Vec<(String, std::path::PathBuf)>> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| match entry.split_once('=') {
            Some((rt, path)) if !rt.trim().is_empty() && !path.trim().is_empty() => {
                Ok((rt.trim().to_string(), path.trim().into()))
            }
            _ => bail!(
                "SCIM_SCHEMA_EXTENSIONS entries are ResourceType=path (such as User=/etc/scim/ext.json), got {entry:?}"
            ),
        })
        .collect()
}

fn jwt_from_env() -> Result<Option<JwtSettings>> {
    use scim_auth::jwt::JwtKey;
    let key = match (
        var("SCIM_JWT_HS256_SECRET"),
        var("SCIM_JWT_RS256_PUBLIC_KEY_FILE"),
    ) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            bail!("set SCIM_JWT_HS256_SECRET or SCIM_JWT_RS256_PUBLIC_KEY_FILE, not both")
        }
        (Some(secret), None) => {
            if secret.len() < 32 {
                bail!("SCIM_JWT_HS256_SECRET must be at least 32 characters");
            }
            JwtKey::Hs256(secret.into_bytes())
        }
        (None, Some(path)) => JwtKey::Rs256Pem(
            std::fs::read(&path)
                .with_context(|| format!("reading SCIM_JWT_RS256_PUBLIC_KEY_FILE {path}"))?,
        ),
    };
    Ok(Some(JwtSettings {
        key,
        issuer: var("SCIM_JWT_ISSUER"),
        audience: var("SCIM_JWT_AUDIENCE"),
    }))
}
