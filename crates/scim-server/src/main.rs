//! `scim-server`: serve (default), `migrate`, and `token create|list|revoke`.

use anyhow::{bail, Context, Result};
use scim_server::{AppState, Config};

const USAGE: &str = "usage:
  scim-server                       serve SCIM 2.0 at http://$SCIM_LISTEN/scim/v2
  scim-server migrate               apply database migrations and exit
  scim-server token create [NAME]   create a bearer token for the default tenant (printed once)
  scim-server token list            list live tokens (ids and names, never the tokens)
  scim-server token revoke ID       revoke a token
  scim-server help                  print this help

Settings come from environment variables; see docs/CONFIGURATION.md.";

/// glibc gives each thread that allocates an arena of its own (up to eight per core), and the
/// server's threads (actix workers, the blocking pool) each keep the memory freed in theirs:
/// under pages of 1,000 resources that doubled the resident memory (156 MiB against 69 MiB
/// with two arenas, at no measured cost in throughput). glibc reads `MALLOC_ARENA_MAX` only when
/// a process starts, so the server re-executes itself once with it set. A value the operator
/// set is kept; if the re-execution fails the server simply runs as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    if let Ok(exe) = std::env::current_exe() {
        // `exec` returns only on failure.
        let _ = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("MALLOC_ARENA_MAX", "2")
            .exec();
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if matches!(args.as_slice(), ["help" | "--help" | "-h"]) {
        // Before the settings are read: help works whatever the environment holds.
        println!("{USAGE}");
        return Ok(());
    }
    if matches!(args.as_slice(), [] | ["serve"]) {
        limit_malloc_arenas();
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut config = Config::from_env()?;
    match args.as_slice() {
        [] | ["serve"] => {
            let state = AppState::open(config)?;
            match state.bootstrap()? {
                // A token the operator chose is not echoed: they have it, and start-up output
                // often ends up in a log collector.
                Some(_) if state.config.bootstrap_token.is_some() => println!(
                    "Created the first tenant; its bearer token is the one in SCIM_BOOTSTRAP_TOKEN.\n\nTry: curl -H \"Authorization: Bearer $SCIM_BOOTSTRAP_TOKEN\" {}/Users\n",
                    state.config.public_url
                ),
                Some(token) => {
                    println!("Created the first tenant and its bearer token (shown only this once):\n\n    {token}\n");
                    println!("Try: curl -H 'Authorization: Bearer {token}' {}/Users\n", state.config.public_url);
                }
                None => println!("Bearer tokens exist already; create another with: scim-server token create NAME"),
            }
            println!(
                "SCIM 2.0 base URL: {}  (database: {})",
                state.config.public_url,
                redact(&state.config.database_url)
            );
            actix_web::rt::System::new().block_on(scim_server::serve(state))
        }
        ["migrate"] => {
            config.migrate_on_start = true;
            AppState::open(config)?;
            println!("migrations applied");
            Ok(())
        }
        ["token", "create", rest @ ..] => {
            let name = rest.first().copied().unwrap_or("cli");
            let state = AppState::open_for_tokens(config)?;
            if let Some(token) = state.bootstrap()? {
                println!("{token}");
                return Ok(());
            }
            let tenant = state.creds.default_tenant()?.context("no tenant")?;
            let token = scim_auth::generate_token()?;
            let id = state.create_token(&tenant, name, &token)?;
            eprintln!("token id {id} (use it to revoke)");
            println!("{token}");
            Ok(())
        }
        ["token", "list"] => {
            let state = AppState::open_for_tokens(config)?;
            for t in state.creds.list_tokens()? {
                println!(
                    "{}\t{}\t{}\ttenant {}",
                    t.id, t.created, t.name, t.tenant_id
                );
            }
            Ok(())
        }
        ["token", "revoke", id] => {
            let state = AppState::open_for_tokens(config)?;
            if !state.creds.revoke_token(id, &scim_server::now())? {
                bail!("no live token with id {id}");
            }
            println!("revoked {id}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown command: {}", args.join(" ").escape_debug())
        }
    }
}

/// Hides the secrets of a database URL before printing it: the password of its user part
/// and the values of the `password` and `sslpassword` parameters libpq also accepts.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|s| s + 3) else {
        return url.to_string(); // a SQLite path
    };
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    // The user part ends at the last '@' before the path.
    let authority_end = head[scheme_end..]
        .find('/')
        .map_or(head.len(), |i| scheme_end + i);
    let mut out = match head[scheme_end..authority_end].rfind('@') {
        Some(at) => {
            let creds = &head[scheme_end..scheme_end + at];
            match creds.split_once(':') {
                Some((user, _)) => format!(
                    "{}{user}:***{}",
                    &head[..scheme_end],
                    &head[scheme_end + at..]
                ),
                None => head.to_string(),
            }
        }
        None => head.to_string(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _))
                    if k.eq_ignore_ascii_case("password")
                        || k.eq_ignore_ascii_case("sslpassword") =>
                {
                    format!("{k}=***")
                }
                _ => p.to_string(),
            })
            .collect();
        out = format!("{out}?{}", params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn database_urls_are_printed_without_their_secrets() {
        for (url, shown) in [
            ("scim.db", "scim.db"),
            ("/var/lib/scim/a@b.db", "/var/lib/scim/a@b.db"),
            (
                "postgres://scim:s3cr%40t@db:5432/scim",
                "postgres://scim:***@db:5432/scim",
            ),
            ("postgres://scim@db/scim", "postgres://scim@db/scim"),
            (
                "postgres://scim:pw@db/scim?sslmode=verify-full&sslrootcert=/etc/ca@x.pem",
                "postgres://scim:***@db/scim?sslmode=verify-full&sslrootcert=/etc/ca@x.pem",
            ),
            (
                "postgres://db/scim?user=scim&password=pw&sslpassword=key",
                "postgres://db/scim?user=scim&password=***&sslpassword=***",
            ),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }
}
