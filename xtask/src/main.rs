//! Project automation: `cargo xtask <command>`; [`USAGE`] lists the commands and their flags
//! (`cargo xtask --help` prints it). `bench --instance-cpus F` limits each server instance
//! to `F` of a core (see `cpu_limit`).

/// What `cargo xtask --help` prints.
const USAGE: &str = "usage: cargo xtask <command>
  codegen [--check]     regenerate code from crates/scim-core/schemas (--check: fail if stale)
  lint                  cargo fmt --check, codegen --check, cargo clippy -D warnings,
                        cargo doc with warnings as errors
  ci                    lint, then cargo test --workspace
  conformance [--url URL --token T] [--backend sqlite|postgres|all] [--external]
                        the black-box corpus against the server binary (or a URL);
                        --external adds the third-party checkers
  bench [--url URL --token T] [--database-url URL] [--users N] [--concurrency C]
        [--members M] [--lookups L] [--patches P] [--page-size S] [--member-reads R]
        [--max-seconds S]
        [--instances K] [--workers W] [--pool-size P] [--instance-cpus F]
                        release build, fresh database, the load client (docs/BENCHMARKS.md)";

mod codegen;
mod cpu_limit;
mod external;
mod run;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    if args.first().is_some_and(|a| a == "help")
        || args.iter().any(|a| matches!(a.as_str(), "--help" | "-h"))
    {
        println!("{USAGE}");
        return Ok(());
    }
    match args.first().map(String::as_str) {
        Some("codegen") => codegen::run(&root, args.iter().any(|a| a == "--check")),
        Some("lint") => lint(&root),
        Some("conformance") => {
            run::conformance(&root, &run::Flags::new(&args[1..], run::CONFORMANCE_FLAGS)?)
        }
        Some("bench") => run::bench(&root, &run::Flags::new(&args[1..], run::BENCH_FLAGS)?),
        Some("ci") => {
            lint(&root)?;
            cargo(&root, &["test", "--workspace"])
        }
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown or missing command")
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    cargo_with(root, args, &[])
}

/// [`cargo`] with extra environment variables.
fn cargo_with(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v:?} ")).collect();
    eprintln!("$ {}cargo {}", shown.concat(), args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn lint(root: &Path) -> Result<()> {
    cargo(root, &["fmt", "--all", "--", "--check"])?;
    codegen::run(root, true)?;
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The library crates are reused by other teams: their API docs must build without a
    // broken or private link.
    cargo_with(
        root,
        &["doc", "--no-deps", "--workspace"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )
}
