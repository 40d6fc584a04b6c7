//! `scim-bench`: a load client that replays the phases of an identity provider's provisioning
//! run against a SCIM server and prints, per phase, requests/s, latency percentiles and
//! errors. Every response is checked; a wrong answer counts as an error, never as a success.
//!
//! Usage: `scim-bench --help` (the `USAGE` text below).
//!
//! Only loopback URLs are accepted. Every loop is bounded by a request count and by
//! `--max-seconds` per phase.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

mod http;

const USAGE: &str =
    "usage: scim-bench --url http://127.0.0.1:8080/scim/v2 --token T [--users 10000]
       [--concurrency 16] [--members 10000] [--lookups 20000] [--patches USERS]
       [--page-size 100] [--member-reads 32] [--max-seconds 300]

--url may be given several times (the load is spread over the instances); loopback only.
The token may come from SCIM_BENCH_TOKEN instead of --token.";

struct Args {
    urls: Vec<String>,
    token: String,
    users: usize,
    concurrency: usize,
    members: usize,
    lookups: usize,
    patches: Option<usize>,
    page_size: usize,
    /// reads of the group with every member
    member_reads: usize,
    max_seconds: u64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        urls: Vec::new(),
        token: String::new(),
        users: 10_000,
        concurrency: 16,
        members: 10_000,
        lookups: 20_000,
        patches: None,
        page_size: 100,
        member_reads: 32,
        max_seconds: 300,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.urls.push(val()?.trim_end_matches('/').to_string()),
            "--token" => a.token = val()?,
            "--users" => a.users = val()?.parse()?,
            "--concurrency" => a.concurrency = val()?.parse()?,
            "--members" => a.members = val()?.parse()?,
            "--lookups" => a.lookups = val()?.parse()?,
            "--patches" => a.patches = Some(val()?.parse()?),
            "--page-size" => a.page_size = val()?.parse::<usize>()?.max(1),
            "--member-reads" => a.member_reads = val()?.parse()?,
            "--max-seconds" => a.max_seconds = val()?.parse()?,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n\n{USAGE}"),
        }
    }
    if a.token.is_empty() {
        a.token = std::env::var("SCIM_BENCH_TOKEN").unwrap_or_default();
    }
    if a.urls.is_empty() {
        bail!("--url is required (repeat it to spread the load over several instances)");
    }
    for url in &a.urls {
        let host = url
            .split("://")
            .nth(1)
            .unwrap_or("")
            .split(['/', ':'])
            .next()
            .unwrap_or("");
        if !(host.starts_with("127.") || host == "localhost") {
            bail!("refusing non-loopback URL {url:?}: benchmarks run against this machine only");
        }
    }
    a.members = a.members.min(a.users);
    Ok(a)
}

/// One phase's measurements.
struct Stats {
    name: String,
    latencies_us: Vec<u64>,
    errors: usize,
    elapsed: Duration,
    note: String,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[idx.min(v.len() - 1)] as f64 / 1000.0
    }

    fn row(&self) -> String {
        let n = self.latencies_us.len() + self.errors;
        let rps = n as f64 / self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
            self.name,
            n,
            rps,
            self.pct(0.50),
            self.pct(0.99),
            self.pct(1.0),
            self.errors,
            self.note
        )
    }
}

#[derive(Clone)]
struct Client {
    /// one or more server instances; requests go round-robin
    servers: Arc<Vec<Arc<http::Server>>>,
    next: Arc<AtomicUsize>,
    token: Arc<str>,
}

impl Client {
    /// Sends one request; returns status and parsed body.
    async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let server = &self.servers[self.next.fetch_add(1, Ordering::Relaxed) % self.servers.len()];
        let body = body.map(|b| b.to_string());
        let (status, bytes) = server
            .send(
                method,
                path,
                &self.token,
                body.as_deref().map(str::as_bytes),
            )
            .await?;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((status, v))
    }
}

/// Runs `total` jobs with `concurrency` workers; `job(i)` returns Ok(true) when the answer
/// was right. Stops early after `max` time.
async fn run_phase<F, Fut>(
    name: &str,
    total: usize,
    concurrency: usize,
    max: Duration,
    job: F,
) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<bool>> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (job, next) = (job.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || start.elapsed() > max {
                    break;
                }
                let t = Instant::now();
                match job(i).await {
                    Ok(true) => lat.push(t.elapsed().as_micros() as u64),
                    Ok(false) | Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut stats = Stats {
        name: name.into(),
        latencies_us: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
        note: String::new(),
    };
    for w in workers {
        if let Ok((lat, errors)) = w.await {
            stats.latencies_us.extend(lat);
            stats.errors += errors;
        }
    }
    stats.elapsed = start.elapsed();
    if stats.latencies_us.len() + stats.errors < total {
        stats.note = format!("stopped after {}s", max.as_secs());
    }
    stats
}

/// Mean latency (ms) of the first and the last tenth of a phase's requests, in order sent.
fn first_last_ms(l: &[u64]) -> (f64, f64) {
    let k = (l.len() / 10).max(1);
    let avg = |s: &[u64]| s.iter().sum::<u64>() as f64 / s.len().max(1) as f64 / 1000.0;
    (
        avg(&l[..k.min(l.len())]),
        avg(&l[l.len().saturating_sub(k)..]),
    )
}

fn user_body(i: usize, run: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
        "userName": format!("user{i}.{run}@example.com"),
        "externalId": format!("ext-{run}-{i}"),
        "name": {"givenName": format!("Given{i}"), "familyName": format!("Family{i}"), "formatted": format!("Given{i} Family{i}")},
        "displayName": format!("Given{i} Family{i}"),
        "emails": [
            {"value": format!("user{i}.{run}@example.com"), "type": "work", "primary": true},
            {"value": format!("user{i}.{run}@home.example"), "type": "home"}
        ],
        "phoneNumbers": [{"value": format!("+1 555 {:04}", i % 10_000), "type": "work"}],
        "addresses": [{"streetAddress": format!("{i} Main Street"), "locality": "Springfield", "region": "IL", "postalCode": "62701", "country": "US", "type": "work", "primary": true}],
        "title": "Engineer",
        "active": true,
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
            "employeeNumber": format!("{i}"), "department": format!("Dept {}", i % 50), "costCenter": "CC-1",
            "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d"}
        }
    })
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = parse_args()?;
    let max = Duration::from_secs(a.max_seconds);
    let servers = a
        .urls
        .iter()
        .map(|u| http::Server::new(u))
        .collect::<Result<Vec<_>>>()?;
    let client = Client {
        servers: Arc::new(servers),
        next: Arc::default(),
        token: a.token.clone().into(),
    };
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let run: Arc<str> = run.into();
    let (status, _) = client
        .send("GET", "/ServiceProviderConfig", None)
        .await
        .context("server unreachable")?;
    if status != 200 {
        bail!("GET /ServiceProviderConfig answered {status}");
    }
    let mut table = Vec::new();
    let ids: Arc<Vec<std::sync::OnceLock<String>>> =
        Arc::new((0..a.users).map(|_| std::sync::OnceLock::new()).collect());

    // 1. Create users.
    let (c, r, ids2) = (client.clone(), run.clone(), ids.clone());
    table.push(
        run_phase("POST /Users", a.users, a.concurrency, max, move |i| {
            let (c, r, ids) = (c.clone(), r.clone(), ids2.clone());
            async move {
                let (s, v) = c.send("POST", "/Users", Some(&user_body(i, &r))).await?;
                let id = v["id"].as_str().map(str::to_string);
                match (s, id) {
                    (201, Some(id)) => {
                        let _ = ids[i].set(id);
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
        })
        .await,
    );
    let created: usize = ids.iter().filter(|i| i.get().is_some()).count();

    // 2. Lookups by userName that hit (case changed: the match is case-insensitive).
    let (c, r) = (client.clone(), run.clone());
    let users = created.max(1);
    table.push(
        run_phase(
            "GET userName eq (hit)",
            a.lookups,
            a.concurrency,
            max,
            move |i| {
                let (c, r) = (c.clone(), r.clone());
                async move {
                    let k = (i * 7919) % users;
                    let f = format!("userName eq \"USER{k}.{r}@EXAMPLE.COM\"");
                    let (s, v) = c
                        .send("GET", &format!("/Users?filter={}", enc(&f)), None)
                        .await?;
                    Ok(s == 200 && v["totalResults"] == json!(1))
                }
            },
        )
        .await,
    );
    // 3. Lookups that miss.
    let c = client.clone();
    table.push(
        run_phase(
            "GET userName eq (miss)",
            a.lookups,
            a.concurrency,
            max,
            move |i| {
                let c = c.clone();
                async move {
                    let f = format!("userName eq \"nobody{i}@example.com\"");
                    let (s, v) = c
                        .send("GET", &format!("/Users?filter={}", enc(&f)), None)
                        .await?;
                    Ok(s == 200 && v["totalResults"] == json!(0) && v["Resources"] == json!([]))
                }
            },
        )
        .await,
    );
    // 4. Filtered listing (displayName, a page of at most 100).
    let (c, r) = (client.clone(), run.clone());
    table.push(
        run_phase(
            "GET filtered page",
            a.lookups / 4,
            a.concurrency,
            max,
            move |i| {
                let (c, _r) = (c.clone(), r.clone());
                async move {
                    let k = (i * 31) % users;
                    let f = format!("displayName eq \"Given{k} Family{k}\"");
                    let (s, v) = c
                        .send("GET", &format!("/Users?count=100&filter={}", enc(&f)), None)
                        .await?;
                    Ok(s == 200 && v["totalResults"].as_u64().is_some_and(|n| n >= 1))
                }
            },
        )
        .await,
    );
    // 5. PATCH updates.
    let (c, ids2) = (client.clone(), ids.clone());
    let patches = a.patches.unwrap_or(created).min(created);
    table.push(
        run_phase("PATCH /Users/{id}", patches, a.concurrency, max, move |i| {
            let (c, ids) = (c.clone(), ids2.clone());
            async move {
                let Some(id) = ids[i].get() else { return Ok(false) };
                let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
                    {"op": "replace", "path": "title", "value": format!("Title {i}")},
                    {"op": "replace", "path": "active", "value": i % 2 == 0}]});
                let (s, v) = c.send("PATCH", &format!("/Users/{id}"), Some(&body)).await?;
                Ok(s == 200 && v["title"] == json!(format!("Title {i}")))
            }
        })
        .await,
    );
    // 6. Group membership growth in batches of 100.
    let (s, g) = client
        .send("POST", "/Groups", Some(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": format!("bench-{run}")})))
        .await?;
    let gid = g["id"]
        .as_str()
        .map(str::to_string)
        .filter(|_| s == 201)
        .context("creating the group")?;
    let batches = a.members.min(created) / 100;
    let (c, ids2, gid2) = (client.clone(), ids.clone(), gid.clone());
    let mut members = run_phase("PATCH add 100 members", batches, 1, max, move |b| {
        let (c, ids, gid) = (c.clone(), ids2.clone(), gid2.clone());
        async move {
            let vals: Vec<Value> = (b * 100..(b + 1) * 100).filter_map(|i| ids[i].get()).map(|id| json!({"value": id})).collect();
            let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "add", "path": "members", "value": vals}]});
            let (s, _) = c.send("PATCH", &format!("/Groups/{gid}?excludedAttributes=members"), Some(&body)).await?;
            Ok(s == 200)
        }
    })
    .await;
    let (first, last) = first_last_ms(&members.latencies_us);
    let members_per_s =
        members.latencies_us.len() as f64 * 100.0 / members.elapsed.as_secs_f64().max(1e-9);
    members.note =
        format!("{members_per_s:.0} members/s; first 10% {first:.2} ms, last 10% {last:.2} ms");
    table.push(members);
    // 7. Read the big group without its members.
    let (c, gid2) = (client.clone(), gid.clone());
    let expected = (batches * 100) as u64;
    table.push(
        run_phase(
            "GET group excl. members",
            a.lookups / 4,
            a.concurrency,
            max,
            move |_| {
                let (c, gid) = (c.clone(), gid2.clone());
                async move {
                    let (s, v) = c
                        .send(
                            "GET",
                            &format!("/Groups/{gid}?excludedAttributes=members"),
                            None,
                        )
                        .await?;
                    Ok(s == 200 && v.get("members").is_none() && v["id"] == json!(gid))
                }
            },
        )
        .await,
    );
    // 7b. Read the big group with every member (a full directory sync reads groups so),
    // `--member-reads` times; each answer must hold every member.
    let (c, gid2) = (client.clone(), gid.clone());
    table.push(
        run_phase(
            "GET group with members",
            a.member_reads,
            a.concurrency,
            max,
            move |_| {
                let (c, gid) = (c.clone(), gid2.clone());
                async move {
                    let (s, v) = c.send("GET", &format!("/Groups/{gid}"), None).await?;
                    let n = v["members"].as_array().map_or(0, Vec::len) as u64;
                    Ok(s == 200 && n == expected)
                }
            },
        )
        .await,
    );
    // 8. Full paging walk, sequential as an IdP import does it; every id exactly once.
    let mut seen = std::collections::HashSet::new();
    let mut stats = Stats {
        name: format!("paging walk (count={})", a.page_size),
        latencies_us: vec![],
        errors: 0,
        elapsed: Duration::ZERO,
        note: String::new(),
    };
    let start = Instant::now();
    let mut start_index = 1usize;
    let mut total = usize::MAX;
    while start_index <= total && start.elapsed() < max {
        let t = Instant::now();
        let (s, v) = client
            .send(
                "GET",
                &format!(
                    "/Users?startIndex={start_index}&count={}&attributes=userName",
                    a.page_size
                ),
                None,
            )
            .await?;
        let page: Vec<&Value> = v["Resources"]
            .as_array()
            .map(|r| r.iter().collect())
            .unwrap_or_default();
        total = v["totalResults"].as_u64().unwrap_or(0) as usize;
        if s != 200 || page.is_empty() {
            stats.errors += 1;
            break;
        }
        stats.latencies_us.push(t.elapsed().as_micros() as u64);
        for r in &page {
            if let Some(id) = r["id"].as_str() {
                if !seen.insert(id.to_string()) {
                    stats.errors += 1;
                }
            }
        }
        start_index += page.len();
    }
    stats.elapsed = start.elapsed();
    stats.note = format!(
        "{} of {} resources seen once",
        seen.len(),
        if total == usize::MAX { 0 } else { total }
    );
    if total != usize::MAX && seen.len() != total {
        stats.errors += 1;
    }
    table.push(stats);

    // 9. Cursor walks (RFC 9865), in creation order and in userName order: every id once; the
    //    last pages should cost what the first do.
    let mut total = 0usize;
    for sort in ["", "&sortBy=userName"] {
        let mut seen = std::collections::HashSet::new();
        let mut stats = Stats {
            name: format!(
                "cursor walk (count={}){}",
                a.page_size,
                if sort.is_empty() {
                    ""
                } else {
                    ", sortBy=userName"
                }
            ),
            latencies_us: vec![],
            errors: 0,
            elapsed: Duration::ZERO,
            note: String::new(),
        };
        let start = Instant::now();
        let mut cursor = String::new();
        let mut previous_name = String::new();
        while start.elapsed() < max {
            let t = Instant::now();
            let (s, v) = client
                .send(
                    "GET",
                    &format!(
                        "/Users?cursor={}&count={}&attributes=userName{sort}",
                        enc(&cursor),
                        a.page_size
                    ),
                    None,
                )
                .await?;
            total = v["totalResults"].as_u64().unwrap_or(0) as usize;
            let page: Vec<&Value> = v["Resources"]
                .as_array()
                .map(|r| r.iter().collect())
                .unwrap_or_default();
            if s != 200 {
                stats.errors += 1;
                break;
            }
            stats.latencies_us.push(t.elapsed().as_micros() as u64);
            for r in &page {
                if let Some(id) = r["id"].as_str() {
                    if !seen.insert(id.to_string()) {
                        stats.errors += 1;
                    }
                }
                if !sort.is_empty() {
                    let name = r["userName"].as_str().unwrap_or("").to_lowercase();
                    if name < previous_name {
                        stats.errors += 1; // out of userName order
                    }
                    previous_name = name;
                }
            }
            match v["nextCursor"].as_str() {
                Some(next) => cursor = next.to_string(),
                None => break,
            }
        }
        stats.elapsed = start.elapsed();
        let (first, last) = first_last_ms(&stats.latencies_us);
        stats.note = format!(
            "{} of {total} seen once; first 10% {first:.2} ms, last 10% {last:.2} ms",
            seen.len()
        );
        if seen.len() != total {
            stats.errors += 1;
        }
        table.push(stats);
    }

    // 10. Sorted pages (sortBy=userName): the first page, then the last, 20 times each.
    let mut stats = Stats {
        name: format!("sorted page (count={}), first then last", a.page_size),
        latencies_us: vec![],
        errors: 0,
        elapsed: Duration::ZERO,
        note: String::new(),
    };
    let start = Instant::now();
    for round in 0..40 {
        let start_index = if round < 20 {
            1
        } else {
            total.saturating_sub(a.page_size) + 1
        };
        let t = Instant::now();
        let (s, v) = client
            .send(
                "GET",
                &format!(
                    "/Users?sortBy=userName&startIndex={start_index}&count={}&attributes=userName",
                    a.page_size
                ),
                None,
            )
            .await?;
        stats.latencies_us.push(t.elapsed().as_micros() as u64);
        let names: Vec<String> = v["Resources"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|u| u["userName"].as_str().map(str::to_lowercase))
                    .collect()
            })
            .unwrap_or_default();
        let sorted = names.windows(2).all(|w| w[0] <= w[1]);
        if s != 200 || names.is_empty() || !sorted {
            stats.errors += 1;
        }
    }
    stats.elapsed = start.elapsed();
    let half = |h: &[u64]| h.iter().sum::<u64>() as f64 / h.len().max(1) as f64 / 1000.0;
    stats.note = format!(
        "first page {:.2} ms, last page {:.2} ms (means)",
        half(&stats.latencies_us[..20.min(stats.latencies_us.len())]),
        half(&stats.latencies_us[20.min(stats.latencies_us.len())..])
    );
    table.push(stats);

    println!("| phase | requests | req/s | p50 ms | p99 ms | max ms | errors | notes |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for s in &table {
        println!("{}", s.row());
    }
    let errors: usize = table.iter().map(|s| s.errors).sum();
    if errors > 0 {
        eprintln!("{errors} request(s) failed or answered wrongly");
        std::process::exit(1);
    }
    Ok(())
}
