//! Runs the black-box corpus in `tests/conformance/*.json` (at the workspace root) over real
//! HTTP, once per database. Each file is one scenario: a list of steps, each a request and
//! what the client must see. See docs/TESTING.md for the format.

use std::collections::HashMap;
use std::path::PathBuf;

use reqwest::blocking::Client;
use serde_json::{Map, Value};

use crate::server::{databases, TestServer, TEST_MAX_BODY};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance")
}

fn cases() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect()
}

struct Run<'a> {
    server: &'a TestServer,
    client: Client,
    vars: HashMap<String, String>,
    where_: String,
}

impl Run<'_> {
    fn subst(&self, s: &str) -> String {
        let mut out = s.to_string();
        while let Some(start) = out.find("${") {
            let end = out[start..]
                .find('}')
                .map(|e| start + e)
                .unwrap_or_else(|| panic!("{}: unterminated ${{ in {s}", self.where_));
            let name = &out[start + 2..end];
            let value = match name {
                "big" => "x".repeat(TEST_MAX_BODY + 1),
                _ => self
                    .vars
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| panic!("{}: unknown variable {name}", self.where_)),
            };
            out.replace_range(start..=end, &value);
        }
        out
    }

    fn subst_json(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.subst(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.subst_json(x)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (self.subst(k), self.subst_json(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn step(&mut self, step: &Value) {
        let req = &step["request"];
        let method =
            reqwest::Method::from_bytes(req["method"].as_str().unwrap_or("GET").as_bytes())
                .unwrap();
        let path = self.subst(req["path"].as_str().unwrap_or(""));
        let url = format!("{}{}", self.server.base, path);
        let mut rb = self.client.request(method.clone(), &url);
        if req.get("auth") != Some(&Value::Bool(false)) {
            rb = rb.bearer_auth(&self.server.token);
        }
        let mut has_ct = false;
        if let Some(Value::Object(h)) = req.get("headers") {
            for (k, v) in h {
                has_ct |= k.eq_ignore_ascii_case("content-type");
                rb = rb.header(k.as_str(), self.subst(v.as_str().unwrap_or("")));
            }
        }
        if let Some(body) = req.get("body") {
            if !has_ct {
                rb = rb.header("content-type", "application/scim+json");
            }
            rb = rb.body(self.subst_json(body).to_string());
        } else if let Some(raw) = req.get("raw").and_then(Value::as_str) {
            if !has_ct {
                rb = rb.header("content-type", "application/scim+json");
            }
            rb = rb.body(self.subst(raw));
        }
        let resp = rb
            .send()
            .unwrap_or_else(|e| panic!("{}: {method} {path}: {e}", self.where_));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().unwrap();
        let body: Option<Value> = serde_json::from_str(&text).ok();
        let ctx = format!("{}: {method} {path} -> {status} {text}", self.where_);
        let expect = &step["expect"];
        if let Some(want) = expect.get("status").and_then(Value::as_u64) {
            assert_eq!(status as u64, want, "{ctx}");
        }
        if !text.is_empty() {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            assert_eq!(
                ct, "application/scim+json",
                "{ctx}: every body is SCIM JSON"
            );
        }
        if status >= 400 {
            let b = body
                .as_ref()
                .unwrap_or_else(|| panic!("{ctx}: error without a JSON body"));
            assert_eq!(
                b["schemas"],
                serde_json::json!(["urn:ietf:params:scim:api:messages:2.0:Error"]),
                "{ctx}"
            );
            assert_eq!(b["status"], Value::String(status.to_string()), "{ctx}");
        }
        if let Some(Value::Object(want)) = expect.get("headers") {
            for (k, v) in want {
                let got = headers.get(k.as_str()).and_then(|h| h.to_str().ok());
                match v.as_str() {
                    Some("$absent") => assert!(got.is_none(), "{ctx}: header {k} should be absent"),
                    Some("*") => assert!(got.is_some(), "{ctx}: header {k} missing"),
                    Some(s) => assert_eq!(got, Some(self.subst(s).as_str()), "{ctx}: header {k}"),
                    None => panic!("{}: header expectations are strings", self.where_),
                }
            }
        }
        if let Some(want) = expect.get("body") {
            let want = self.subst_json(want);
            let got = body
                .clone()
                .unwrap_or_else(|| panic!("{ctx}: expected a JSON body"));
            if let Err(at) = matches(&want, &got, "") {
                panic!("{ctx}\nbody mismatch at {at}\nexpected fragment: {want}");
            }
        }
        if let Some(Value::Object(save)) = step.get("save") {
            for (name, from) in save {
                let from = from.as_str().unwrap_or("");
                let value = if let Some(h) = from.strip_prefix("header:") {
                    headers
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                } else {
                    body.as_ref().and_then(|b| b.pointer(from)).and_then(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .or_else(|| Some(v.to_string()))
                    })
                };
                let value =
                    value.unwrap_or_else(|| panic!("{ctx}: nothing at {from} to save as {name}"));
                self.vars.insert(name.clone(), value);
            }
        }
    }
}

/// `want` is a fragment of `got`: objects match key by key (keys compared as written), arrays
/// element by element with equal length, `"*"` matches any present value, `"$absent"` requires
/// the key to be missing, `{"$len": n}` checks an array's length only.
fn matches(want: &Value, got: &Value, at: &str) -> Result<(), String> {
    match (want, got) {
        (Value::String(s), _) if s == "*" => Ok(()),
        (Value::Object(w), _) if w.contains_key("$unordered") => {
            let want = w["$unordered"]
                .as_array()
                .ok_or_else(|| format!("{at}: $unordered needs an array"))?;
            let got = got
                .as_array()
                .ok_or_else(|| format!("{at}: not an array"))?;
            if want.len() != got.len() {
                return Err(format!(
                    "{at}: expected {} elements, got {}",
                    want.len(),
                    got.len()
                ));
            }
            let mut used = vec![false; got.len()];
            for (i, wv) in want.iter().enumerate() {
                let hit = got
                    .iter()
                    .enumerate()
                    .find(|(j, gv)| !used[*j] && matches(wv, gv, "").is_ok())
                    .map(|(j, _)| j);
                match hit {
                    Some(j) => used[j] = true,
                    None => {
                        return Err(format!(
                            "{at}: no element matches expected element {i}: {wv}"
                        ))
                    }
                }
            }
            Ok(())
        }
        (Value::Object(w), _) if w.contains_key("$len") => {
            let n = got
                .as_array()
                .map(Vec::len)
                .ok_or_else(|| format!("{at}: not an array"))?;
            if Some(n as u64) == w["$len"].as_u64() {
                Ok(())
            } else {
                Err(format!("{at}: length {n}"))
            }
        }
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                let path = format!("{at}/{k}");
                match (v, g.get(k)) {
                    (Value::String(s), None) if s == "$absent" => {}
                    (Value::String(s), Some(_)) if s == "$absent" => {
                        return Err(format!("{path}: should be absent"))
                    }
                    (_, None) => return Err(format!("{path}: missing")),
                    (v, Some(gv)) => matches(v, gv, &path)?,
                }
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                return Err(format!(
                    "{at}: expected {} elements, got {}",
                    w.len(),
                    g.len()
                ));
            }
            w.iter()
                .zip(g)
                .enumerate()
                .try_for_each(|(i, (a, b))| matches(a, b, &format!("{at}/{i}")))
        }
        (w, g) if w == g => Ok(()),
        (w, g) => Err(format!("{at}: expected {w}, got {g}")),
    }
}

/// Where the corpus runs, from the environment:
/// `SCIM_CONFORMANCE_URL` (+ `SCIM_CONFORMANCE_TOKEN`): an external, empty server;
/// `SCIM_CONFORMANCE_BIN`: that binary, started per case on `SCIM_CONFORMANCE_BACKEND`
/// (`sqlite`, `postgres` or `all`); otherwise the in-process server on every database.
type Starter = Box<dyn Fn() -> TestServer>;

fn servers() -> Vec<(String, Starter)> {
    if let Ok(url) = std::env::var("SCIM_CONFORMANCE_URL") {
        let token = std::env::var("SCIM_CONFORMANCE_TOKEN").unwrap_or_default();
        return vec![(
            "external".into(),
            Box::new(move || TestServer::external(&url, &token)),
        )];
    }
    let dbs = match std::env::var("SCIM_CONFORMANCE_BACKEND").as_deref() {
        Ok("sqlite") => vec![crate::server::Db::Sqlite],
        Ok("postgres") => {
            let url = scim_diesel::testing::postgres_test_url()
                .expect("--backend postgres needs SCIM_TEST_POSTGRES_URL");
            vec![crate::server::Db::Postgres(url)]
        }
        _ => databases(),
    };
    let bin = std::env::var("SCIM_CONFORMANCE_BIN").ok();
    dbs.into_iter()
        .map(|db| {
            let name = db.name().to_string();
            let start: Starter = match bin.clone() {
                Some(bin) => Box::new(move || TestServer::spawn_binary(&bin, &db)),
                None => Box::new(move || TestServer::start(&db)),
            };
            (name, start)
        })
        .collect()
}

/// Deletes every Group and User (external mode only, between cases).
fn empty_server(server: &TestServer, client: &Client) {
    for endpoint in ["/Groups", "/Users"] {
        for _round in 0..1000 {
            let page: Value = client
                .get(format!("{}{endpoint}?count=100&attributes=id", server.base))
                .bearer_auth(&server.token)
                .send()
                .and_then(|r| r.json())
                .unwrap_or(Value::Null);
            let ids: Vec<String> = page["Resources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["id"].as_str().map(str::to_string))
                .collect();
            if ids.is_empty() {
                break;
            }
            for id in ids {
                let _ = client
                    .delete(format!("{}{endpoint}/{id}", server.base))
                    .bearer_auth(&server.token)
                    .send();
            }
        }
    }
}

fn run_case(name: &str, case: &Value) {
    let steps = case["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no steps"));
    for (label, start) in servers() {
        let server = start();
        let client = Client::new();
        if server.is_external() {
            empty_server(&server, &client);
        }
        let mut run = Run {
            server: &server,
            client,
            vars: HashMap::new(),
            where_: String::new(),
        };
        run.vars.insert("base".into(), server.base.clone());
        for (i, step) in steps.iter().enumerate() {
            let step_label = step.get("name").and_then(Value::as_str).unwrap_or("");
            run.where_ = format!("{name} [{label}] step {} {step_label}", i + 1);
            run.step(step);
        }
    }
}

#[test]
fn corpus() {
    let cases = cases();
    assert!(
        cases.len() >= 5,
        "corpus not found in {}",
        corpus_dir().display()
    );
    let filter = std::env::var("SCIM_CONFORMANCE_CASE").unwrap_or_default();
    let mut ran = 0;
    for (name, case) in &cases {
        if name.contains(&filter) {
            run_case(name, case);
            ran += 1;
        }
    }
    eprintln!(
        "ran {ran} conformance case files against {}",
        servers()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

#[test]
fn matcher_rejects_what_it_should() {
    use serde_json::json;
    assert!(matches(&json!({"a": 1}), &json!({"a": 1, "b": 2}), "").is_ok());
    assert!(matches(&json!({"a": 1}), &json!({"a": 2}), "").is_err());
    assert!(matches(&json!({"a": "$absent"}), &json!({"a": 2}), "").is_err());
    assert!(matches(&json!({"a": [1]}), &json!({"a": [1, 2]}), "").is_err());
    assert!(matches(&json!({"a": {"$len": 2}}), &json!({"a": [1, 2]}), "").is_ok());
    assert!(matches(&json!({"a": "*"}), &json!({}), "").is_err());
    assert!(matches(&json!({"$unordered": [2, 1]}), &json!([1, 2]), "").is_ok());
    assert!(matches(&json!({"$unordered": [1, 1]}), &json!([1, 2]), "").is_err());
    let _ = Map::<String, Value>::new();
}
