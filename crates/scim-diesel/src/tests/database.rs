//! The databases themselves: migrations, the schema module, timeouts, plan settings, TLS, and
//! bytewise text.

use super::*;

#[test]
fn migrations_go_down_and_up_again() {
    for db in databases() {
        let mut conn = db.store.connection().unwrap();
        let c: &mut AnyConnection = &mut conn;
        revert_all_migrations(c).unwrap();
        assert_eq!(run_migrations(c).unwrap(), 8, "{}", db.name);
    }
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Col {
    #[diesel(sql_type = diesel::sql_types::Text)]
    table_name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    column_name: String,
}

#[test]
fn schema_rs_matches_migrated_columns_on_both_databases() {
    // Column names per table from diesel's table! definitions.
    let mut expected: Vec<(String, String)> = Vec::new();
    macro_rules! cols {
        ($t:ident, $($c:ident),*) => { $( let _ = crate::schema::$t::$c; expected.push((stringify!($t).to_string(), stringify!($c).to_string())); )* };
    }
    cols!(tenants, id, name, created);
    cols!(tokens, id, tenant_id, name, token_hash, created, revoked);
    cols!(
        resources,
        id,
        tenant_id,
        resource_type,
        version,
        created,
        last_modified,
        external_id,
        user_name_ci,
        display_name_ci,
        display,
        data,
        password_hash
    );
    cols!(group_members, group_id, member_id);
    cols!(
        resource_values,
        resource_id,
        tenant_id,
        resource_type,
        path,
        ordinal,
        str_value,
        num_value,
        bool_value
    );
    cols!(resource_counts, tenant_id, resource_type, slot, n);
    cols!(store_state, name, value);
    expected.sort();
    for db in databases() {
        let mut conn = db.store.connection().unwrap();
        let sql = match &mut *conn {
            AnyConnection::Sqlite(_) => "SELECT m.name AS table_name, p.name AS column_name FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table' AND m.name NOT LIKE '\\_\\_%' ESCAPE '\\' AND m.name NOT LIKE 'sqlite%'",
            AnyConnection::Postgres(_) => "SELECT table_name::text AS table_name, column_name::text AS column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_\\_%'",
        };
        let mut got: Vec<(String, String)> = diesel::sql_query(sql)
            .load::<Col>(&mut *conn)
            .unwrap()
            .into_iter()
            .map(|c| (c.table_name, c.column_name))
            .collect();
        got.sort();
        assert_eq!(got, expected, "{}", db.name);
    }
}

#[test]
fn a_filter_running_past_the_query_timeout_is_cancelled_as_too_many() {
    use scim_core::store::{CompareOp, ValueTest};
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    for db in databases() {
        for i in 0..500 {
            let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": format!("t{i}"),
                "emails": [{"value": format!("t{i}@example.com")}, {"value": format!("t{i}@example.org")}]});
            let write = prepare_create(&ctx, &body).unwrap();
            let id = format!("t{i}");
            db.store
                .create(T, "User", &id, NOW, write, Include::default())
                .unwrap();
        }
        // 200 `co` tests, each a scan of every email: seconds of work at this size on SQLite,
        // far more than a millisecond on either database.
        let hostile = ListQuery {
            filter: StoreFilter::Or(
                (0..200)
                    .map(|i| StoreFilter::Value {
                        path: "emails.value".into(),
                        test: ValueTest::Str(CompareOp::Co, format!("absent{i}")),
                    })
                    .collect(),
            ),
            start_index: 1,
            count: 10,
            include: Include::default(),
            sort: None,
            after: None,
        };
        let mut config = StoreConfig::new(db.url.clone());
        config.query_timeout = Some(std::time::Duration::from_millis(1));
        let hurried = DieselStore::open(&config).unwrap();
        match hurried.list(T, "User", &hostile) {
            Err(StoreError::Scim(e)) => {
                assert_eq!(
                    (e.status, e.scim_type),
                    (400, Some(scim_core::ScimType::TooMany)),
                    "{}",
                    db.name
                );
            }
            other => panic!("{}: expected tooMany, got {other:?}", db.name),
        }
        // Without the hurry the same filter runs to its (empty) end: the refusal above was the
        // deadline, not the query.
        let page = db.store.list(T, "User", &hostile).unwrap();
        assert_eq!(page.total, 0, "{}", db.name);
    }
}

#[test]
fn migrations_are_not_held_to_the_query_timeout() {
    let Some(base) = crate::testing::postgres_test_url() else {
        return; // SQLite has no statement timeout; `databases()` fails under CI without PG
    };
    let mut config = StoreConfig::new(crate::testing::fresh_postgres_schema(&base).unwrap());
    config.query_timeout = Some(std::time::Duration::from_millis(1));
    let store = DieselStore::open(&config).unwrap();
    // Building the schema takes far longer than a millisecond.
    assert!(store.migrate().unwrap() > 0);
    // The connection is back under the timeout afterwards.
    let mut conn = store.connection().unwrap();
    let shown = diesel::sql_query("SHOW statement_timeout")
        .get_result::<ShowRow>(&mut *conn)
        .unwrap();
    assert_eq!(shown.statement_timeout, "1ms");
}

#[test]
fn postgresql_connections_keep_generic_plans_for_prepared_statements() {
    let Some(store) = postgres_store() else {
        return; // a PostgreSQL setting; `postgres_test_url` fails under CI without PG
    };
    let mut conn = store.connection().unwrap();
    let shown = diesel::sql_query("SHOW plan_cache_mode")
        .get_result::<PlanCacheMode>(&mut *conn)
        .unwrap();
    assert_eq!(shown.plan_cache_mode, "force_generic_plan");
    #[derive(diesel::QueryableByName)]
    struct Jit {
        #[diesel(sql_type = diesel::sql_types::Text)]
        jit: String,
    }
    let shown = diesel::sql_query("SHOW jit")
        .get_result::<Jit>(&mut *conn)
        .unwrap();
    assert_eq!(shown.jit, "off", "no JIT compilation of short statements");
}

/// A PostgreSQL on loopback that accepts only TLS (as `hostssl` lines alone in `pg_hba.conf`
/// make it) still gets connections from a URL that names no `sslmode`: the plain attempt is
/// refused, and the URL as given (libpq's `prefer`) connects with TLS. The test's
/// PostgreSQL is put behind a relay that closes every connection not opened with a TLS
/// request.
#[cfg(feature = "postgres-tls")]
#[test]
fn a_loopback_postgresql_that_requires_tls_still_gets_connections() {
    use std::io::{Read, Write};
    let Some(base) = crate::testing::postgres_test_url() else {
        return; // `postgres_test_url` fails under CI without PG
    };
    if !crate::testing::postgres_offers_tls(&base).unwrap() {
        eprintln!("this PostgreSQL has no TLS: nothing to require");
        return;
    }
    let url = crate::testing::fresh_postgres_schema(&base).unwrap();
    // `postgres://user@host:port/db?…`: the authority's host and port.
    let rest = url.split_once("://").unwrap().1;
    let authority = &rest[..rest.find('/').unwrap()];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let upstream = match host_port.contains(':') {
        true => host_port.to_string(),
        false => format!("{host_port}:5432"),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relayed = url.replacen(host_port, &listener.local_addr().unwrap().to_string(), 1);
    std::thread::spawn(move || {
        const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];
        const GSS_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 48];
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let mut first = [0u8; 8];
                if client.read_exact(&mut first).is_err() {
                    return;
                }
                if first == GSS_REQUEST {
                    // no GSS encryption here; libpq goes on with its next request
                    if client.write_all(b"N").is_err() || client.read_exact(&mut first).is_err() {
                        return;
                    }
                }
                if first != SSL_REQUEST {
                    return; // a plain start-up: refused, the connection closed
                }
                let Ok(mut server) = std::net::TcpStream::connect(&upstream) else {
                    return;
                };
                if server.write_all(&first).is_err() {
                    return;
                }
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut s2, &mut c2));
                let _ = std::io::copy(&mut client, &mut server);
            });
        }
    });
    assert!(!relayed.contains("sslmode"), "{relayed}");
    let store = DieselStore::open(&StoreConfig::new(relayed)).unwrap();
    assert!(
        tls_version(&store).is_some(),
        "connected, with TLS, through the TLS-only relay"
    );
}

/// The TLS version of a connection of `store` to PostgreSQL (`pg_stat_ssl`); `None` when the
/// connection is plain.
fn tls_version(store: &DieselStore) -> Option<String> {
    #[derive(diesel::QueryableByName)]
    struct Encrypted {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        ssl: bool,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        version: Option<String>,
    }
    let mut conn = store.connection().unwrap();
    let row =
        diesel::sql_query("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .get_result::<Encrypted>(&mut *conn)
            .unwrap();
    row.ssl.then(|| row.version.unwrap_or_default())
}

/// A URL to PostgreSQL on this machine that names no `sslmode` connects without TLS (it
/// protects nothing on loopback and costs CPU on every message). One that asks for TLS gets
/// it: `postgresql_connections_use_tls_when_the_url_asks_for_it`.
#[test]
fn postgresql_on_loopback_is_reached_without_tls_unless_asked_for() {
    let Some(base) = crate::testing::postgres_test_url() else {
        return; // `postgres_test_url` fails under CI without PG
    };
    let url = crate::testing::fresh_postgres_schema(&base).unwrap();
    assert!(
        url.contains("127.0.0.1") || url.contains("localhost"),
        "the test database is on this machine: {url}"
    );
    assert!(!url.contains("sslmode"), "{url}");
    if std::env::var_os("PGSSLMODE").is_none() {
        let store = DieselStore::open(&StoreConfig::new(url)).unwrap();
        assert_eq!(tls_version(&store), None, "no TLS on loopback by default");
    }
}

/// The bundled SQLite is built the way the workspace's `.cargo/config.toml` asks
/// (`LIBSQLITE3_FLAGS`): multi-thread mode (no mutex around every call on a connection, which
/// the store never shares between threads at once), no process-wide page-cache mutex, no
/// allocation statistics. Without them the store is as correct, only slower.
#[test]
fn the_bundled_sqlite_is_built_for_one_thread_per_connection() {
    #[derive(diesel::QueryableByName)]
    struct CompileOption {
        #[diesel(sql_type = diesel::sql_types::Text)]
        compile_options: String,
    }
    let db = sqlite();
    let mut conn = db.store.connection().unwrap();
    let options: Vec<String> = diesel::sql_query("PRAGMA compile_options")
        .load::<CompileOption>(&mut *conn)
        .unwrap()
        .into_iter()
        .map(|o| o.compile_options)
        .collect();
    assert!(options.iter().any(|o| o == "THREADSAFE=2"), "{options:?}");
    assert!(
        options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
        "{options:?}"
    );
    assert!(
        !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
        "{options:?}"
    );
}

/// With the `postgres-tls` feature libpq is built with OpenSSL: `sslmode=require` in the URL
/// gives an encrypted connection when the server offers TLS (this machine's PostgreSQL does,
/// as Debian's packages set it up), and a refusal naming the server otherwise; never libpq's
/// "SSL is not supported by this build".
#[cfg(feature = "postgres-tls")]
#[test]
fn postgresql_connections_use_tls_when_the_url_asks_for_it() {
    let Some(base) = crate::testing::postgres_test_url() else {
        return; // a PostgreSQL connection setting; `postgres_test_url` fails under CI without PG
    };
    let offered = crate::testing::postgres_offers_tls(&base).unwrap();
    let url = crate::testing::fresh_postgres_schema(&base).unwrap() + "&sslmode=require";
    match DieselStore::open(&StoreConfig::new(url)) {
        Ok(store) => {
            assert!(offered, "an encrypted connection to a server without TLS?");
            store.migrate().unwrap();
            let version = tls_version(&store).expect("sslmode=require gave a plain connection");
            assert!(version.starts_with("TLS"), "{version}");
        }
        Err(e) => {
            let e = e.to_string();
            assert!(!offered, "the server offers TLS, yet: {e}");
            assert!(
                !e.contains("not supported") && !e.contains("not compiled"),
                "{e}"
            );
        }
    }
}

#[derive(diesel::QueryableByName)]
struct PlanCacheMode {
    #[diesel(sql_type = diesel::sql_types::Text)]
    plan_cache_mode: String,
}

#[derive(diesel::QueryableByName)]
struct ShowRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    statement_timeout: String,
}

#[derive(QueryableByName, Debug)]
struct Collated {
    #[diesel(sql_type = diesel::sql_types::Text)]
    column: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    collation: Option<String>,
}

#[test]
fn every_text_column_compares_bytewise_on_postgresql() {
    let Some(store) = postgres_store() else {
        return; // SQLite's BINARY is bytewise; `databases()` fails under CI without PG
    };
    store.migrate().unwrap();
    let mut conn = store.connection().unwrap();
    let columns: Vec<Collated> = diesel::sql_query(
        "SELECT table_name || '.' || column_name AS column, collation_name::text AS collation \
         FROM information_schema.columns WHERE table_schema = current_schema() \
         AND data_type = 'text' AND table_name NOT LIKE '\\_\\_%'",
    )
    .load(&mut *conn)
    .unwrap();
    assert!(columns.len() > 20, "{columns:?}");
    let other: Vec<(&str, Option<&str>)> = columns
        .iter()
        .filter(|c| c.collation.as_deref() != Some("C"))
        .map(|c| (c.column.as_str(), c.collation.as_deref()))
        .collect();
    assert!(other.is_empty(), "not bytewise: {other:?}");
}

/// On a PostgreSQL database whose default collation is linguistic (ICU `en-US`, as production
/// databases created with `en_US.UTF-8` are), `userName` comparisons and sorting still follow
/// bytes, exactly as on SQLite: `"émile"` sorts after `"frank"` (0xC3 > 'f').
#[test]
fn comparisons_and_order_are_bytewise_on_a_linguistic_postgresql_database() {
    use scim_core::store::CompareOp;
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let mut dbs = vec![(sqlite(), None)];
    let icu_db = format!("scim_icu_{}", std::process::id());
    if let Some(base) = crate::testing::postgres_test_url() {
        let mut admin = diesel::PgConnection::establish(&base).unwrap();
        for sql in [
            format!("DROP DATABASE IF EXISTS {icu_db}"),
            format!(
                "CREATE DATABASE {icu_db} TEMPLATE template0 LOCALE_PROVIDER icu \
                 ICU_LOCALE 'en-US' LC_COLLATE 'C' LC_CTYPE 'C'"
            ),
        ] {
            diesel::connection::SimpleConnection::batch_execute(&mut admin, &sql).unwrap();
        }
        let (head, _) = base.split_once('?').unwrap_or((&base, ""));
        let url = format!("{}/{icu_db}", &head[..head.rfind('/').unwrap()]);
        let store = DieselStore::open(&StoreConfig::new(url.clone())).unwrap();
        dbs.push((
            TestDb {
                store,
                url,
                _dir: None,
                name: "postgres (ICU en-US)",
            },
            Some((admin, icu_db.clone())),
        ));
    }
    for (db, admin) in dbs {
        {
            let store = &db.store;
            store.migrate().unwrap();
            use scim_core::store::CredentialStore;
            store.ensure_tenant(T, "test", NOW).unwrap();
            for name in ["émile", "frank", "eve"] {
                let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name});
                let write = prepare_create(&ctx, &body).unwrap();
                store
                    .create(T, "User", name, NOW, write, Include::default())
                    .unwrap();
            }
            let names = |filter: StoreFilter| -> Vec<String> {
                let page = store
                    .list(
                        T,
                        "User",
                        &ListQuery {
                            filter,
                            start_index: 1,
                            count: 10,
                            include: Include::default(),
                            sort: Some(SortKey {
                                target: SortTarget::Column(Column::UserName),
                                descending: false,
                            }),
                            after: None,
                        },
                    )
                    .unwrap();
                page.resources.into_iter().map(|r| r.id).collect()
            };
            assert_eq!(
                names(StoreFilter::All),
                ["eve", "frank", "émile"],
                "{}",
                db.name
            );
            assert_eq!(
                names(StoreFilter::Column(
                    Column::UserName,
                    CompareOp::Gt,
                    "f".into()
                )),
                ["frank", "émile"],
                "{}",
                db.name
            );
        }
        if let Some((mut admin, name)) = admin {
            drop(db);
            diesel::connection::SimpleConnection::batch_execute(
                &mut admin,
                &format!("DROP DATABASE {name} WITH (FORCE)"),
            )
            .unwrap();
        }
    }
}
