//! `scim-server`: serve (default), `migrate`, and `token create|list|revoke`.

use anyhow::{bail, Context, Result};
use scim_server::{AppState, Config};

const USAGE: &str = "usage:
  scim-server                       serve SCIM 2.0 at http://$SCIM_LISTEN/scim/v2
  scim-server migrate               apply database migrations and exit
  scim-server token create [NAME]   create a bearer token for the default tenant (printed once)
  scim-server token list            list live tokens (ids and names, never the tokens)
  scim-server token revoke ID       revoke a token

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
    if matches!(args.as_slice(), [] | ["serve"]) {
        limit_malloc_arenas();
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut config = Config::from_env()?;
    match args.as_slice() {
        [] | ["serve"] => {
            let state = AppState::open(config)?;
            match state.bootstrap()? {
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
            bail!("unknown command")
        }
    }
}

/// Hides a password in a database URL before printing it.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
