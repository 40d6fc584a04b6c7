//! `cargo xtask conformance` and `cargo xtask bench`: start the real server binary on a free
//! loopback port with a temporary database, run a client against it, stop it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Simple `--flag value` / `--switch` parsing.
pub struct Flags(Vec<String>);

/// The flags a command takes: lists of flags with a value, and switches.
pub type FlagSet = (&'static [&'static [&'static str]], &'static [&'static str]);

/// The flags `conformance` takes.
pub const CONFORMANCE_FLAGS: FlagSet = (&[&["--url", "--token", "--backend"]], &["--external"]);

/// The flags of `bench` that go to the load client as they are.
const LOAD_CLIENT_FLAGS: [&str; 8] = [
    "--users",
    "--concurrency",
    "--members",
    "--lookups",
    "--patches",
    "--page-size",
    "--member-reads",
    "--max-seconds",
];

/// The flags `bench` takes (all with a value): these and the load client's.
pub const BENCH_FLAGS: FlagSet = (
    &[
        &[
            "--url",
            "--token",
            "--database-url",
            "--instances",
            "--workers",
            "--pool-size",
            "--instance-cpus",
        ],
        &LOAD_CLIENT_FLAGS,
    ],
    &[],
);

impl Flags {
    /// `args` checked against the flags a command takes: an unknown flag, a stray word or a
    /// flag without its value is an error, so that a typo is not silently a run with the
    /// defaults.
    pub fn new(args: &[String], (valued, switches): FlagSet) -> Result<Self> {
        let valued: Vec<&str> = valued.concat();
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            if valued.contains(&a) {
                if args.get(i + 1).is_none_or(|v| v.starts_with("--")) {
                    bail!("{a} needs a value");
                }
                i += 2;
            } else if switches.contains(&a) {
                i += 1;
            } else {
                bail!(
                    "unknown argument {a:?}; this command takes {}",
                    valued
                        .iter()
                        .map(|f| format!("{f} VALUE"))
                        .chain(switches.iter().map(|f| f.to_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(Flags(args.to_vec()))
    }
    pub fn value(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.0.get(i + 1))
            .cloned()
    }
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }
}

pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// A `scim-server` child process, killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    pub token: String,
    _dir: Option<TempDir>,
    /// its control group, removed after the process is killed (fields drop after `drop`)
    cpu_limit: Option<crate::cpu_limit::CpuLimit>,
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let p = std::env::temp_dir().join(format!("{prefix}-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))?;
    Ok(format!(
        "scim_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

impl Server {
    /// Starts `bin` on `database_url` (or a temporary SQLite file) with extra environment.
    pub fn start(bin: &Path, database_url: Option<&str>, env: &[(&str, String)]) -> Result<Server> {
        let (url, dir) = match database_url {
            Some(u) => (u.to_string(), None),
            None => {
                let dir = TempDir::new("scim-xtask")?;
                (
                    dir.0.join("scim.db").to_string_lossy().into_owned(),
                    Some(dir),
                )
            }
        };
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let base = format!("http://{listen}/scim/v2");
        let token = random_token()?;
        let mut cmd = Command::new(bin);
        cmd.env("SCIM_DATABASE_URL", &url)
            .env("SCIM_LISTEN", &listen)
            .env("SCIM_PUBLIC_URL", &base)
            .env("SCIM_BOOTSTRAP_TOKEN", &token)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = Server {
            child,
            base,
            token,
            _dir: dir,
            cpu_limit: None,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let addr = self
            .base
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("")
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("the server exited during start-up ({status})");
            }
            if std::net::TcpStream::connect(&addr).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the server did not listen on {addr} within 60 s")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Holds the process to `cores` of one core from now on (see `cpu_limit`).
    pub fn limit_cpu(&mut self, cores: f64) -> Result<()> {
        let name = format!("scim-bench-{}", self.pid());
        self.cpu_limit = Some(crate::cpu_limit::CpuLimit::apply(&name, self.pid(), cores)?);
        Ok(())
    }

    /// Peak resident memory (VmHWM) in MiB, from /proc.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    /// Current resident memory (VmRSS) in MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The PostgreSQL the third-party checkers run on: `SCIM_TEST_POSTGRES_URL`, as for the
/// test suites. Missing, it is an error when PostgreSQL was asked for by name or under CI
/// (`CI` set), where nothing may be skipped; otherwise that half is skipped with a message.
fn postgres_url(asked_for: bool) -> Result<Option<String>> {
    match std::env::var("SCIM_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Ok(Some(u)),
        _ if asked_for || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") => {
            bail!("SCIM_TEST_POSTGRES_URL must be set to run the checkers on PostgreSQL")
        }
        _ => {
            eprintln!("SCIM_TEST_POSTGRES_URL is not set: the checkers run on SQLite only");
            Ok(None)
        }
    }
}

/// A schema of its own on a PostgreSQL database, made and dropped with `psql`, so that a
/// checker or benchmark run starts empty and leaves nothing behind. Schemas of runs that were
/// killed before they could drop theirs are dropped by the next run, once a day old.
struct PgSchema {
    base: String,
    name: String,
    /// `base` with `options=-csearch_path=name`: the server's connections use the schema
    url: String,
}

impl PgSchema {
    fn create(base: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        drop_stale_schemas(base, nanos);
        let name = format!("xtask_{nanos:x}_{}", std::process::id());
        psql(base, &format!("CREATE SCHEMA {name}"))?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{name}");
        Ok(PgSchema {
            base: base.to_string(),
            name,
            url,
        })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Err(e) = psql(&self.base, &format!("DROP SCHEMA {} CASCADE", self.name)) {
            eprintln!("could not drop schema {}: {e:#}", self.name);
        }
    }
}

/// Drops the schemas [`PgSchema`] made more than a day before `now_nanos` (their names carry
/// their creation time). Failures are ignored: this is tidying.
fn drop_stale_schemas(base: &str, now_nanos: u128) {
    const DAY: u128 = 86_400_000_000_000;
    let Ok(names) = psql(
        base,
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'xtask\\_%'",
    ) else {
        return;
    };
    for name in names.lines() {
        let created = name
            .split('_')
            .nth(1)
            .and_then(|hex| u128::from_str_radix(hex, 16).ok());
        let ours = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ours && created.is_some_and(|c| c + DAY < now_nanos) {
            let _ = psql(base, &format!("DROP SCHEMA {name} CASCADE"));
        }
    }
}

/// Runs one SQL command with `psql` (the PostgreSQL client) on `url`; its output, unaligned.
fn psql(url: &str, sql: &str) -> Result<String> {
    let out = Command::new("psql")
        .args([
            url,
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .context("running psql (the PostgreSQL client), which makes the fresh schema of a run")?;
    if !out.status.success() {
        bail!(
            "psql -c {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check_loopback(url: &str) -> Result<()> {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    if host.starts_with("127.") || host == "localhost" {
        Ok(())
    } else {
        bail!("refusing non-loopback URL {url}: conformance runs and benchmarks create and delete data")
    }
}

/// `cargo xtask conformance [--url URL --token T] [--backend sqlite|postgres|all] [--external]`
pub fn conformance(root: &Path, flags: &Flags) -> Result<()> {
    let mut env: Vec<(&str, String)> = Vec::new();
    let backend = flags.value("--backend").unwrap_or_else(|| "all".into());
    if !["sqlite", "postgres", "all"].contains(&backend.as_str()) {
        bail!("--backend is sqlite, postgres or all, not {backend:?}");
    }
    let url = flags.value("--url");
    if let Some(url) = &url {
        check_loopback(url)?;
        env.push(("SCIM_CONFORMANCE_URL", url.clone()));
        env.push((
            "SCIM_CONFORMANCE_TOKEN",
            flags.value("--token").unwrap_or_default(),
        ));
    } else {
        crate::cargo(root, &["build", "-p", "scim-server"])?;
        let bin = target_dir(root).join("debug/scim-server");
        env.push(("SCIM_CONFORMANCE_BIN", bin.to_string_lossy().into_owned()));
        env.push(("SCIM_CONFORMANCE_BACKEND", backend.clone()));
    }
    eprintln!(
        "$ cargo test -p scim-server --test it corpus  ({})",
        env.iter()
            .map(|(k, v)| format!("{k}={}", if k.contains("TOKEN") { "***" } else { v }))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "test",
            "-p",
            "scim-server",
            "--test",
            "it",
            "corpus",
            "--",
            "--nocapture",
        ])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(root)
        .status()?;
    let own_ok = status.success();
    println!(
        "project corpus (tests/conformance): {}",
        if own_ok { "passed" } else { "FAILED" }
    );
    let mut external_ok = true;
    if flags.has("--external") {
        if let Some(u) = url {
            external_ok =
                crate::external::run_all(&u, &flags.value("--token").unwrap_or_default(), "")?;
        } else {
            let bin = target_dir(root).join("debug/scim-server");
            if backend == "sqlite" || backend == "all" {
                let s = Server::start(&bin, None, &[])?;
                external_ok &= crate::external::run_all(&s.base, &s.token, " [SQLite]")?;
            }
            if backend == "postgres" || backend == "all" {
                if let Some(base_url) = postgres_url(backend == "postgres")? {
                    let schema = PgSchema::create(&base_url)?;
                    let s = Server::start(&bin, Some(&schema.url), &[])?;
                    external_ok &= crate::external::run_all(&s.base, &s.token, " [PostgreSQL]")?;
                    drop(s);
                }
            }
        }
    }
    if !own_ok || !external_ok {
        bail!("conformance failures");
    }
    Ok(())
}

/// `cargo xtask bench [--url URL --token T] [--database-url URL] [--users N] [--concurrency C]
/// [--instances K] [--instance-cpus F] ...`
pub fn bench(root: &Path, flags: &Flags) -> Result<()> {
    crate::cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "scim-server",
            "-p",
            "scim-bench",
        ],
    )?;
    let release = target_dir(root).join("release");
    // A PostgreSQL run gets a schema of its own (declared first: dropped after the servers).
    let schema = match flags.value("--database-url") {
        Some(u) if u.starts_with("postgres") && flags.value("--url").is_none() => {
            Some(PgSchema::create(&u)?)
        }
        _ => None,
    };
    let mut servers: Vec<Server> = Vec::new();
    let (bases, token) = match flags.value("--url") {
        Some(u) => {
            check_loopback(&u)?;
            (vec![u], flags.value("--token").unwrap_or_default())
        }
        None => {
            let db = match &schema {
                Some(fresh) => Some(fresh.url.clone()),
                None => flags.value("--database-url"),
            };
            let instances: usize = flags
                .value("--instances")
                .map(|v| v.parse())
                .transpose()?
                .unwrap_or(1);
            if instances > 1 && db.is_none() {
                bail!("--instances needs --database-url postgres://… (SQLite is one process)");
            }
            let mut env = vec![("SCIM_MAX_PAGE_SIZE", "1000".to_string())];
            if let Some(w) = flags.value("--workers") {
                env.push(("SCIM_WORKERS", w));
            }
            if let Some(p) = flags.value("--pool-size") {
                env.push(("SCIM_DB_POOL_SIZE", p));
            }
            let first = Server::start(&release.join("scim-server"), db.as_deref(), &env)?;
            let token = first.token.clone();
            servers.push(first);
            for _ in 1..instances {
                servers.push(Server::start(
                    &release.join("scim-server"),
                    db.as_deref(),
                    &env,
                )?);
            }
            (servers.iter().map(|s| s.base.clone()).collect(), token)
        }
    };
    if let Some(cores) = flags.value("--instance-cpus") {
        if servers.is_empty() {
            bail!("--instance-cpus applies to servers this command starts, not to --url");
        }
        let cores: f64 = cores.parse().context("--instance-cpus")?;
        for s in &mut servers {
            s.limit_cpu(cores)?;
        }
    }
    let mut args = Vec::new();
    for b in bases {
        args.push("--url".to_string());
        args.push(b);
    }
    for f in LOAD_CLIENT_FLAGS {
        if let Some(v) = flags.value(f) {
            args.push(f.into());
            args.push(v);
        }
    }
    println!("{}", machine_line(root));
    println!(
        "command: cargo xtask bench {}",
        std::env::args().skip(2).collect::<Vec<_>>().join(" ")
    );
    for s in &servers {
        println!(
            "server: release build, pid {}, idle RSS {:.1} MiB{}",
            s.pid(),
            s.rss_mib().unwrap_or(0.0),
            match flags.value("--instance-cpus") {
                Some(c) => format!(", limited to {c} of a core"),
                None => String::new(),
            }
        );
    }
    let status = Command::new(release.join("scim-bench"))
        .args(&args)
        .env("SCIM_BENCH_TOKEN", &token)
        .status()?;
    for s in &servers {
        println!(
            "\nserver {} memory: peak RSS {:.1} MiB, RSS after the run {:.1} MiB",
            s.pid(),
            s.peak_rss_mib().unwrap_or(0.0),
            s.rss_mib().unwrap_or(0.0)
        );
    }
    if !status.success() {
        bail!("the benchmark saw errors");
    }
    Ok(())
}

fn machine_line(_root: &Path) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("machine: {cores} cores ({cpu}), {mem:.0} GiB; date: {date}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_are_checked_against_the_command() {
        let ok = Flags::new(&args(&["--users", "5", "--instances", "2"]), BENCH_FLAGS).unwrap();
        assert_eq!(ok.value("--users").as_deref(), Some("5"));
        assert_eq!(ok.value("--instances").as_deref(), Some("2"));
        let ok = Flags::new(
            &args(&["--external", "--backend", "sqlite"]),
            CONFORMANCE_FLAGS,
        );
        assert!(ok.unwrap().has("--external"));
        for (bad, why) in [
            (&["--userz", "5"][..], "unknown argument \"--userz\""),
            (&["--users"][..], "--users needs a value"),
            (&["--users", "--lookups", "5"][..], "--users needs a value"),
            (&["5"][..], "unknown argument \"5\""),
            (&["--external"][..], "unknown argument \"--external\""),
        ] {
            let err = Flags::new(&args(bad), BENCH_FLAGS)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
