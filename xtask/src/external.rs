//! Third-party SCIM checkers (scim2-tester through scim2-cli, and scim-sanity), installed at
//! pinned versions into a virtual environment in the user's cache folder on first use.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

const PINNED: &[&str] = &[
    "scim2-tester==0.5.2",
    "scim2-cli==0.6.0",
    "scim2-client==0.13.2",
    "scim2-models==0.12.3",
    "scim-sanity==0.7.4",
];

fn venv() -> Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("no HOME")?;
    let dir = cache.join("scim-server/conformance-venv");
    let stamp = dir.join("pinned.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(PINNED.join("\n").as_str()) {
        eprintln!("installing {} into {}", PINNED.join(" "), dir.display());
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()?
            .success();
        if !ok {
            bail!("python3 -m venv failed");
        }
        let ok = Command::new(dir.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(PINNED)
            .status()?
            .success();
        if !ok {
            bail!("pip install of the checkers failed");
        }
        std::fs::write(&stamp, PINNED.join("\n"))?;
    }
    Ok(dir)
}

/// Runs every checker; prints `tool{label}: N passed, M failed, K skipped`; true when none
/// failed.
pub fn run_all(base: &str, token: &str, label: &str) -> Result<bool> {
    let dir = venv()?;
    let mut all_ok = true;

    // scim2-tester, through its command line (scim2-cli); the token travels in the environment.
    let out = Command::new(dir.join("bin/scim2"))
        .args(["--url", base, "test"])
        .env("SCIM_CLI_HEADERS", format!("Authorization: Bearer {token}"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    for line in text.lines() {
        match line.split_whitespace().next() {
            Some("SUCCESS") => pass += 1,
            Some("SKIPPED") => skip += 1,
            Some(w)
                if w.chars().all(|c| c.is_ascii_uppercase())
                    && w.len() > 3
                    && !line.starts_with(' ') =>
            {
                fail += 1;
                eprintln!("  {line}");
            }
            _ => {}
        }
    }
    if pass == 0 {
        fail += 1;
        eprintln!(
            "scim2-tester produced no results:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("scim2-tester{label}: {pass} passed, {fail} failed, {skip} skipped");
    all_ok &= fail == 0;

    // scim-sanity, strict and compat modes.
    for mode in ["--strict", "--compat"] {
        let out = Command::new(dir.join("bin/scim-sanity"))
            .args([
                "probe",
                base,
                "--token",
                token,
                "--i-accept-side-effects",
                "--json-output",
                mode,
            ])
            .output()?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let results = v["results"].as_array().cloned().unwrap_or_default();
        let count = |s: &str| results.iter().filter(|r| r["status"] == s).count();
        let (pass, mut fail, skip) = (count("pass"), count("fail") + count("error"), count("skip"));
        for r in results
            .iter()
            .filter(|r| r["status"] == "fail" || r["status"] == "error")
        {
            eprintln!("  {}: {}", r["name"], r["message"]);
        }
        if results.is_empty() {
            fail += 1;
            eprintln!(
                "scim-sanity produced no results: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!(
            "scim-sanity{}{label}: {pass} passed, {fail} failed, {skip} skipped",
            if mode == "--compat" { " (compat)" } else { "" }
        );
        all_ok &= fail == 0;
    }
    Ok(all_ok)
}
