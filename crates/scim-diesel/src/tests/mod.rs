//! The store suite: every test body runs on SQLite (a temporary file) and, when
//! `SCIM_TEST_POSTGRES_URL` is set, on PostgreSQL in a fresh schema of its own.
//! Under `CI`, a missing PostgreSQL URL is a failure, not a skip.
//!
//! The helpers every part uses are here; the tests are in the modules below, by topic.

use std::sync::Arc;

use diesel::prelude::*;
use scim_core::resource::prepare_create;
use scim_core::store::{
    Column, CompareOp, Include, IndexedField, LinkSide, ListQuery, MemberOp, Page, PointKey,
    ResourceRecord, ResourceStore, ResourceWrite, SortKey, SortTarget, StoreFilter, TokenRead,
    UnknownMembers, ValueKind,
};
use scim_core::{Ctx, SchemaRegistry, StoreError};
use serde_json::json;

use crate::conn::{revert_all_migrations, run_migrations};
use crate::{AnyConnection, DieselStore, StoreConfig};

const T: &str = "tenant-1";
const NOW: &str = "2026-01-01T00:00:00.000000Z";

struct TestDb {
    store: DieselStore,
    /// for opening a second store on the same database
    url: String,
    _dir: Option<tempfile::TempDir>,
    name: &'static str,
}

fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("test.db").to_string_lossy().into_owned();
    let store = DieselStore::open(&StoreConfig::new(url.clone())).unwrap();
    TestDb {
        store,
        url,
        _dir: Some(dir),
        name: "sqlite",
    }
}

fn databases() -> Vec<TestDb> {
    let mut dbs = vec![sqlite()];
    if let Some(base) = crate::testing::postgres_test_url() {
        let url = crate::testing::fresh_postgres_schema(&base).unwrap();
        let store = DieselStore::open(&StoreConfig::new(url.clone())).unwrap();
        dbs.push(TestDb {
            store,
            url,
            _dir: None,
            name: "postgres",
        });
    }
    for db in &dbs {
        db.store.migrate().unwrap();
        use scim_core::store::CredentialStore;
        db.store.ensure_tenant(T, "test", NOW).unwrap();
    }
    dbs
}

/// A store on a fresh PostgreSQL schema; `None` when the tests have no PostgreSQL (which
/// `postgres_test_url` refuses under CI).
fn postgres_store() -> Option<DieselStore> {
    let base = crate::testing::postgres_test_url()?;
    let url = crate::testing::fresh_postgres_schema(&base).unwrap();
    Some(DieselStore::open(&StoreConfig::new(url)).unwrap())
}

fn registry() -> SchemaRegistry {
    SchemaRegistry::builtin().unwrap()
}

fn user(reg: &SchemaRegistry, name: &str) -> ResourceWrite {
    let ctx = Ctx::new(reg, "User").unwrap();
    prepare_create(&ctx, &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name, "externalId": format!("ext-{name}"), "title": "Engineer"})).unwrap()
}

fn group(reg: &SchemaRegistry, name: &str, members: &[&str]) -> ResourceWrite {
    let ctx = Ctx::new(reg, "Group").unwrap();
    let members: Vec<_> = members.iter().map(|m| json!({"value": m})).collect();
    prepare_create(&ctx, &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name, "members": members})).unwrap()
}

/// The first page of `count` resources that pass `filter`, in creation order.
fn first_page(filter: StoreFilter, count: u64) -> ListQuery {
    ListQuery {
        filter,
        start_index: 1,
        count,
        include: Include::default(),
        sort: None,
        after: None,
    }
}

fn member_ids(store: &DieselStore, id: &str) -> Vec<String> {
    let g = store
        .get(
            T,
            "Group",
            id,
            Include {
                members: true,
                groups: false,
                member_limit: None,
            },
        )
        .unwrap();
    g.members.unwrap().into_iter().map(|m| m.id).collect()
}

fn set_members(store: &DieselStore, id: &str, ops: Vec<MemberOp>) -> Result<(), StoreError> {
    let reg = registry();
    let ctx = Ctx::new(&reg, "Group").unwrap();
    store
        .update(T, "Group", id, NOW, None, Include::default(), &mut |cur| {
            Ok(ResourceWrite {
                data: (*cur.data).clone(),
                external_id: cur.external_id.clone(),
                keys: scim_core::resource::index_keys(&ctx, &cur.data),
                member_ops: ops.clone(),
                unknown_members: UnknownMembers::Reject,
                password: Default::default(),
                values: Vec::new(),
                previous_values: None,
            })
        })
        .map(|_| ())
}

/// Deterministic pseudo-random numbers (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const WORDS: &[&str] = &[
    "ann",
    "Anna",
    "bob",
    "BOB",
    "Émile",
    "émile",
    "zoë",
    "x_1",
    "a%b",
    "",
    // Written into PostgreSQL's SQL text as escaped literals by range and pattern tests.
    "o'neil",
    "O''Neil",
    "back\\slash\\",
    "\\'; --",
    "$1",
    "Tour Guide",
    "tour",
];

fn random_user(rng: &mut Rng, i: usize) -> serde_json::Value {
    let mut u = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("{}{i}", rng.pick(WORDS))});
    let o = u.as_object_mut().unwrap();
    for attr in ["displayName", "title", "nickName", "locale"] {
        if rng.chance(70) {
            o.insert(attr.into(), json!(rng.pick(WORDS)));
        }
    }
    if !o.contains_key("displayName") && rng.chance(15) {
        // Stored, but not a value: `displayName pr` is false for it.
        o.insert("displayName".into(), json!(""));
    }
    if rng.chance(70) {
        o.insert("active".into(), json!(rng.chance(50)));
    }
    if rng.chance(60) {
        o.insert(
            "name".into(),
            json!({"givenName": rng.pick(WORDS), "familyName": rng.pick(WORDS)}),
        );
    } else if rng.chance(20) {
        // A complex value whose only sub-attribute is empty still exists (`name pr`).
        o.insert("name".into(), json!({"formatted": ""}));
    }
    let n = rng.next() % 4;
    let emails: Vec<_> = (0..n)
        .map(|k| {
            // Some elements lack a value or hold only a flag or an empty string: an element
            // is its sub-attributes' rows, whichever they are.
            let mut e = match rng.next() % 8 {
                0 => json!({"type": rng.pick(&["work", "home", "other"])}),
                1 => json!({"primary": false}),
                2 => json!({"value": "", "display": rng.pick(WORDS)}),
                _ => json!({"value": format!("{}@{}.example", rng.pick(WORDS), rng.pick(&["work", "home"])), "type": rng.pick(&["work", "home", "other"])}),
            };
            if k == 0 && rng.chance(50) {
                e["primary"] = json!(true);
            }
            e
        })
        .collect();
    if !emails.is_empty() {
        o.insert("emails".into(), json!(emails));
    }
    u
}

/// `update`'s write for `cur` with `attr` set to `value`, as a PATCH from a client makes it.
fn patched(reg: &SchemaRegistry, cur: &ResourceRecord, attr: &str, value: &str) -> ResourceWrite {
    let ctx = Ctx::new(reg, "User").unwrap();
    let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": attr, "value": value}]});
    scim_core::patch::prepare_patch(&ctx, &body, cur, &scim_filter::Limits::default()).unwrap()
}

/// What the server derives index rows with: `reg`'s schemas.
fn derive_with(reg: &SchemaRegistry) -> crate::DeriveRows {
    let reg = reg.clone();
    Arc::new(move |rt, doc| {
        Ctx::new(&reg, rt)
            .map(|ctx| scim_core::index::index_rows(&ctx, doc))
            .unwrap_or_default()
    })
}

/// The index rows stored for `id`, in a stable order.
fn stored_rows(s: &DieselStore, id: &str) -> Vec<scim_core::index::IndexRow> {
    let mut conn = s.connection().unwrap();
    let mut rows = crate::store::stored_values(&mut conn, id).unwrap();
    rows.sort_by(|a, b| (&a.path, a.ordinal).cmp(&(&b.path, b.ordinal)));
    rows
}

/// The index rows `reg` derives from `id`'s stored document, in the same order.
fn derived_rows(
    s: &DieselStore,
    reg: &SchemaRegistry,
    id: &str,
) -> Vec<scim_core::index::IndexRow> {
    let rec = s.get(T, "User", id, Include::default()).unwrap();
    let mut rows = derive_with(reg)("User", &rec.data);
    rows.sort_by(|a, b| (&a.path, a.ordinal).cmp(&(&b.path, b.ordinal)));
    rows
}

/// Tokens `t1` (hash `hash-1`, tenant `T`) and `t2` (`hash-2`, `tenant-2`), live, and `t3`
/// (`hash-3`, `T`), revoked.
fn three_tokens(s: &DieselStore) {
    use scim_core::store::{CredentialStore, TokenRecord};
    s.ensure_tenant("tenant-2", "other", NOW).unwrap();
    for (tenant, id, hash) in [
        (T, "t1", "hash-1"),
        ("tenant-2", "t2", "hash-2"),
        (T, "t3", "hash-3"),
    ] {
        let record = TokenRecord {
            id: id.into(),
            tenant_id: tenant.into(),
            name: id.into(),
            created: NOW.into(),
        };
        s.create_token(&record, hash).unwrap();
    }
    assert!(s.revoke_token("t3", NOW).unwrap());
}

mod database;
mod filters;
mod index;
mod resources;
mod tokens;
mod writes;
