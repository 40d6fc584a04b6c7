//! The SCIM 2.0 server: configuration, the actix-web application, and startup.
//!
//! `main.rs` only parses the command line; everything else is here so that tests build the
//! very same application.

pub mod auth;
pub mod config;
pub mod error;
pub mod handlers;
pub mod http;
pub mod limit;
pub mod ops;
pub mod slashes;

use std::sync::Arc;

use actix_web::{web, App};
use anyhow::{Context, Result};
use scim_core::messages::ServerCapabilities;
use scim_core::store::{CredentialStore, ResourceStore, TokenRecord};
use scim_core::SchemaRegistry;
use scim_diesel::{DieselStore, StoreConfig};

pub use config::Config;

/// Shared state of every worker.
pub struct AppState {
    /// resources
    pub store: Arc<dyn ResourceStore>,
    /// tokens
    pub creds: Arc<dyn CredentialStore>,
    /// schemas and resource types
    pub registry: Arc<SchemaRegistry>,
    /// settings
    pub config: Config,
    /// what `/ServiceProviderConfig` advertises
    pub capabilities: ServerCapabilities,
    /// JWT bearer verification, when configured
    pub jwt: Option<scim_auth::jwt::JwtVerifier>,
    /// `SCIM_RATE_LIMIT`, when set
    pub limiter: Option<limit::RateLimiter>,
}

/// Route data: which resource type a route serves.
#[derive(Debug, Clone)]
pub struct ResourceTypeId(pub String);

/// The current time, formatted for storage.
pub fn now() -> String {
    scim_core::time_fmt::format_timestamp(time::OffsetDateTime::now_utc())
}

/// The built-in schemas plus the configured extension schemas (`SCIM_SCHEMA_EXTENSIONS`).
pub fn registry_with(extensions: &[(String, std::path::PathBuf)]) -> Result<SchemaRegistry> {
    let mut registry = SchemaRegistry::builtin().map_err(|e| anyhow::anyhow!("{e}"))?;
    for (rt, path) in extensions {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the extension schema {}", path.display()))?;
        let schema: scim_core::schema::Schema = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a SCIM schema (RFC 7643 section 7)",
                path.display()
            )
        })?;
        registry = registry
            .with_extension(rt, schema, false)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.detail))?;
    }
    Ok(registry)
}

/// Whether an index built with fingerprint `old` was derived by other rules than this
/// version's (an upgrade), rather than from other schemas.
fn rules_changed(old: &str) -> bool {
    scim_core::index::fingerprint_format(old) != Some(scim_core::index::INDEX_FORMAT)
}

/// Makes sure the store's attribute-value index was built by `registry`'s schemas, which
/// filters and writes derive rows with: rebuilt when `rebuild` (migrations on start, or
/// `scim-server migrate`), else a start with other schemas than the index's stops here.
fn open_index(store: &DieselStore, registry: &SchemaRegistry, rebuild: bool) -> Result<()> {
    use scim_diesel::IndexState;
    let fingerprint = scim_core::index::fingerprint(registry);
    let schemas = registry.clone();
    let derive: scim_diesel::DeriveRows = Arc::new(move |rt, doc| {
        scim_core::Ctx::new(&schemas, rt)
            .map(|ctx| scim_core::index::index_rows(&ctx, doc))
            .unwrap_or_default()
    });
    let state = store
        .open_index(&fingerprint, rebuild, derive)
        .with_context(|| "checking the attribute index (has `scim-server migrate` run?)")?;
    match state {
        IndexState::Current | IndexState::Recorded => {}
        IndexState::Rebuilt {
            built_with: None,
            resources,
        } => {
            log::info!("built the attribute index of {resources} resource(s) (index {fingerprint})")
        }
        IndexState::Rebuilt {
            built_with: Some(old),
            resources,
        } if rules_changed(&old) => log::info!(
            "this version derives the attribute index by other rules (index {old}, now \
             {fingerprint}): rebuilt it for {resources} resource(s)"
        ),
        IndexState::Rebuilt {
            built_with: Some(old),
            resources,
        } => log::warn!(
            "the schemas differ from the ones the attribute index was built with \
             (index {old}, now {fingerprint}): rebuilt it for {resources} resource(s); \
             every instance on this database must run with the same schemas"
        ),
        IndexState::Stale { built_with } => anyhow::bail!(
            "the attribute index of this database was built {} (index {}), not with the \
             schemas this server has (index {fingerprint}): run `scim-server migrate` with \
             the same SCIM_SCHEMA_EXTENSIONS to rebuild it, or start with \
             SCIM_MIGRATE_ON_START=true",
            match &built_with {
                Some(old) if rules_changed(old) => "by the rules of an earlier version",
                Some(_) => "with other schemas",
                None => "by an earlier version",
            },
            built_with.as_deref().unwrap_or("not recorded"),
        ),
    }
    Ok(())
}

/// Makes the names the store keeps unique match the resource types whose `displayName` the
/// registry declares unique (`SCIM_UNIQUE_GROUP_NAMES`; see
/// `DieselStore::open_unique_display_names`): applied when `apply` (migrations on start, or
/// `scim-server migrate`), else a start with another setting than the database's stops here.
fn open_unique_names(store: &DieselStore, registry: &SchemaRegistry, apply: bool) -> Result<()> {
    let types: Vec<String> = registry
        .resource_types()
        .iter()
        .filter(|rt| scim_core::resource::unique_attribute(registry, rt) == Some("displayName"))
        .map(|rt| rt.id.clone())
        .collect();
    let opened = store
        .open_unique_display_names(&types, apply)
        .with_context(|| "SCIM_UNIQUE_GROUP_NAMES")?;
    match opened {
        Some(0) => {}
        Some(n) => log::info!(
            "unique display names now apply to {}: {n} resource(s) updated; every instance \
             on this database must run with the same SCIM_UNIQUE_GROUP_NAMES",
            if types.is_empty() {
                "no resource type".to_string()
            } else {
                types.join(", ")
            }
        ),
        None => anyhow::bail!(
            "SCIM_UNIQUE_GROUP_NAMES differs from the setting this database was opened with: \
             run `scim-server migrate` with the new setting, or start with \
             SCIM_MIGRATE_ON_START=true"
        ),
    }
    Ok(())
}

impl AppState {
    /// Opens the store to serve: migrates when configured, and checks (or rebuilds) the
    /// attribute index against the configured schemas (see `open_index`).
    pub fn open(config: Config) -> Result<Self> {
        Self::open_with(config, true)
    }

    /// Opens the store for the token commands, which read and write nothing that filters
    /// search: the attribute index is neither checked nor rebuilt, so a `scim-server token
    /// create` run without the service's `SCIM_SCHEMA_EXTENSIONS` cannot rebuild the index
    /// for other schemas under the running servers.
    pub fn open_for_tokens(config: Config) -> Result<Self> {
        Self::open_with(config, false)
    }

    fn open_with(config: Config, serving: bool) -> Result<Self> {
        // Before the database is touched: a schema the server cannot honour stops it first.
        let mut registry = registry_with(&config.schema_extensions)?;
        if config.unique_group_names {
            registry = registry
                .with_unique_display_names("Group")
                .map_err(|e| anyhow::anyhow!("SCIM_UNIQUE_GROUP_NAMES: {}", e.detail))?;
        }
        let mut sc = StoreConfig::new(config.database_url.clone());
        sc.pool_size = config.pool_size;
        sc.connection_timeout = config.connect_timeout;
        sc.query_timeout = config.query_timeout;
        let store = DieselStore::open(&sc).with_context(|| "opening the database")?;
        if config.migrate_on_start {
            let n = store.migrate().with_context(|| "applying migrations")?;
            if n > 0 {
                log::info!("applied {n} migration(s)");
            }
        }
        if serving {
            open_index(&store, &registry, config.migrate_on_start)?;
            open_unique_names(&store, &registry, config.migrate_on_start)?;
        }
        let capabilities = ServerCapabilities {
            query: config.query,
            max_body_bytes: config.max_body_bytes,
            documentation_uri: None,
            bulk_max_operations: config.bulk_max_operations,
            change_password: config.hash_passwords,
        };
        let jwt = match &config.jwt {
            Some(j) => Some(
                scim_auth::jwt::JwtVerifier::new(
                    &j.key,
                    j.issuer.as_deref(),
                    j.audience.as_deref(),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
            None => None,
        };
        let store = Arc::new(store);
        let limiter = (config.rate_limit > 0)
            .then(|| limit::RateLimiter::new(config.rate_limit, config.rate_limit_burst));
        Ok(AppState {
            limiter,
            jwt,
            store: store.clone(),
            creds: store,
            registry: Arc::new(registry),
            config,
            capabilities,
        })
    }

    /// On a database without tokens: creates the first tenant and token. Returns the token
    /// when one was generated or taken from `SCIM_BOOTSTRAP_TOKEN`, so the caller can show it once.
    pub fn bootstrap(&self) -> Result<Option<String>> {
        if self.creds.has_tokens()? {
            return Ok(None);
        }
        let tenant = match self.creds.default_tenant()? {
            Some(t) => t,
            None => {
                let t = uuid::Uuid::new_v4().to_string();
                self.creds.ensure_tenant(&t, "default", &now())?;
                t
            }
        };
        let token = match &self.config.bootstrap_token {
            Some(t) => t.clone(),
            None => scim_auth::generate_token()?,
        };
        self.create_token(&tenant, "bootstrap", &token)?;
        Ok(Some(token))
    }

    /// Stores a token for a tenant; returns its id.
    pub fn create_token(&self, tenant: &str, name: &str, token: &str) -> Result<String> {
        let rec = TokenRecord {
            id: uuid::Uuid::new_v4().to_string(),
            tenant_id: tenant.to_string(),
            name: name.to_string(),
            created: now(),
        };
        self.creds
            .create_token(&rec, &scim_auth::hash_token(token))?;
        Ok(rec.id)
    }
}

/// Registers every route under `/scim/v2`.
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        use handlers::discovery as d;
        use handlers::resources as r;
        let mut scope = web::scope("/scim/v2")
            .service(
                web::resource("/ServiceProviderConfig")
                    .route(web::get().to(d::service_provider))
                    .default_service(web::to(d::method_not_allowed)),
            )
            .service(
                web::resource("/Schemas")
                    .route(web::get().to(d::schemas))
                    .default_service(web::to(d::method_not_allowed)),
            )
            .service(
                web::resource("/Schemas/{id}")
                    .route(web::get().to(d::schema))
                    .default_service(web::to(d::method_not_allowed)),
            )
            .service(
                web::resource("/ResourceTypes")
                    .route(web::get().to(d::resource_types))
                    .default_service(web::to(d::method_not_allowed)),
            )
            .service(
                web::resource("/ResourceTypes/{id}")
                    .route(web::get().to(d::resource_type))
                    .default_service(web::to(d::method_not_allowed)),
            );
        scope = scope.service(
            web::resource("/.search")
                .route(web::post().to(r::search_all))
                .default_service(web::to(d::method_not_allowed)),
        );
        if state.config.bulk_max_operations > 0 {
            scope = scope.service(
                web::resource("/Bulk")
                    .route(web::post().to(r::bulk))
                    .default_service(web::to(d::method_not_allowed)),
            );
        }
        for rt in state.registry.resource_types() {
            let data = web::Data::new(ResourceTypeId(rt.id.clone()));
            scope = scope
                .service(
                    web::resource(rt.endpoint.clone())
                        .app_data(data.clone())
                        .route(web::get().to(r::list))
                        .route(web::post().to(r::create))
                        .default_service(web::to(d::method_not_allowed)),
                )
                .service(
                    web::resource(format!("{}/.search", rt.endpoint))
                        .app_data(data.clone())
                        .route(web::post().to(r::search))
                        .default_service(web::to(d::method_not_allowed)),
                )
                .service(
                    web::resource(format!("{}/{{id}}", rt.endpoint))
                        .app_data(data)
                        .route(web::get().to(r::get))
                        .route(web::put().to(r::replace))
                        .route(web::patch().to(r::patch))
                        .route(web::delete().to(r::delete))
                        .default_service(web::to(d::method_not_allowed)),
                );
        }
        // Last: the hot routes above are matched first.
        scope = scope
            .service(web::resource("/Me").to(d::me_not_implemented))
            .service(web::resource("/Me/{rest:.*}").to(d::me_not_implemented));
        cfg.app_data(state)
            .service(
                web::resource("/healthz")
                    .route(web::get().to(d::health))
                    .route(web::head().to(d::health))
                    .default_service(web::to(d::method_not_allowed)),
            )
            .service(scope);
    }
}

/// The application, as served and as tested.
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    // The access log (at `info`) is formatted per request even when nothing would print
    // it, so it is only installed when its level is enabled (`RUST_LOG`).
    let access_log = log::log_enabled!(target: "actix_web::middleware::logger", log::Level::Info);
    let limited = state.limiter.is_some();
    App::new()
        .wrap(actix_web::middleware::Condition::new(
            limited,
            actix_web::middleware::from_fn(limit::middleware),
        ))
        .wrap(actix_web::middleware::Condition::new(
            access_log,
            actix_web::middleware::Logger::new("%s %Dms \"%{request}xi\"").custom_request_replace(
                "request",
                |req| {
                    // Method and path only (no query: filters may carry personal data),
                    // escaped so that nothing a client sends can forge log lines.
                    format!("{} {}", req.method(), req.path())
                        .escape_debug()
                        .to_string()
                },
            ),
        ))
        .configure(configure(state))
        .default_service(web::to(handlers::discovery::not_found))
        // A base URL configured with a trailing slash gives `/scim/v2//Users` (and some
        // clients send `/Users/`): both reach `/scim/v2/Users`.
        .wrap(slashes::FoldSlashes)
}

/// Builds the HTTP server on an already bound listener (tests bind port 0 first).
pub fn server_on(
    state: AppState,
    listener: std::net::TcpListener,
) -> Result<actix_web::dev::Server> {
    let workers = state.config.workers;
    let drain = state.config.shutdown_timeout.as_secs();
    let state = web::Data::new(state);
    // Answers written page by page leave in several writes; without this the second waits for
    // the client's delayed ACK of the first (40 ms on Linux).
    // A graceful stop (`ServerHandle::stop(true)`, see `serve` for the signals) closes the
    // listener, lets the requests in flight finish for up to `drain` seconds (each connection
    // closes after its answer) and then drops what is left.
    let mut server = actix_web::HttpServer::new(move || app(state.clone()))
        .tcp_nodelay(true)
        .disable_signals()
        .shutdown_timeout(drain);
    if workers > 0 {
        server = server.workers(workers);
    }
    Ok(server.listen(listener)?.run())
}

/// Binds `SCIM_LISTEN` and serves; returns when the server stops.
pub async fn serve(state: AppState) -> Result<()> {
    let listen = state.config.listen.clone();
    let listener =
        std::net::TcpListener::bind(&listen).with_context(|| format!("binding {listen}"))?;
    log::info!("listening on http://{}/scim/v2", listener.local_addr()?);
    let store = state.store.clone();
    let server = server_on(state, listener)?;
    stop_on_signals(server.handle());
    server.await?;
    // Nothing is served any more: leave the database's files complete in themselves (a
    // SQLite file copied alone then holds every answered write).
    match web::block(move || store.flush()).await {
        Ok(Ok(())) => log::info!("stopped"),
        Ok(Err(e)) => log::warn!("stopped; {e}"),
        Err(e) => log::warn!("stopped; {e}"),
    }
    Ok(())
}

/// `SIGTERM` (container runtimes, systemd) and `SIGINT` (Ctrl-C): stop listening and let the
/// requests in flight finish, for up to `SCIM_SHUTDOWN_TIMEOUT_S`; `SIGQUIT`: stop at once.
/// Any of them while the server is already stopping ends the process there and then (an
/// operator's second Ctrl-C): what was answered is committed, and a write cut off is rolled
/// back by its database.
#[cfg(unix)]
fn stop_on_signals(handle: actix_web::dev::ServerHandle) {
    use actix_web::rt::signal::unix::{signal, SignalKind};
    use std::sync::atomic::{AtomicBool, Ordering};
    let stopping = Arc::new(AtomicBool::new(false));
    for (kind, name, graceful) in [
        (SignalKind::terminate(), "SIGTERM", true),
        (SignalKind::interrupt(), "SIGINT", true),
        (SignalKind::quit(), "SIGQUIT", false),
    ] {
        let mut received = match signal(kind) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("cannot handle {name}: {e}");
                continue;
            }
        };
        let (handle, stopping) = (handle.clone(), Arc::clone(&stopping));
        actix_web::rt::spawn(async move {
            while received.recv().await.is_some() {
                if stopping.swap(true, Ordering::SeqCst) {
                    log::warn!("{name} while stopping: exiting now");
                    std::process::exit(1);
                }
                if graceful {
                    log::info!("{name}: no new connections; finishing the requests in flight");
                } else {
                    log::info!("{name}: stopping at once");
                }
                // Not awaited here: this task goes on listening for a second signal.
                let handle = handle.clone();
                actix_web::rt::spawn(async move { handle.stop(graceful).await });
            }
        });
    }
}

/// Ctrl-C: stop listening and let the requests in flight finish.
#[cfg(not(unix))]
fn stop_on_signals(handle: actix_web::dev::ServerHandle) {
    actix_web::rt::spawn(async move {
        if actix_web::rt::signal::ctrl_c().await.is_ok() {
            log::info!("Ctrl-C: no new connections; finishing the requests in flight");
            handle.stop(true).await;
        }
    });
}
