//! Repeated and trailing slashes in request paths are folded before routing: an identity
//! provider given a base URL with a trailing slash sends `/scim/v2//Users`, and some clients
//! send `/Users/`. actix-web's `NormalizePath` does the same with an allocation and a regular
//! expression on every request; this looks at the path and rewrites only the rare one that
//! needs it, so the hot paths (lookups) pay a scan of a few bytes.

use std::future::{ready, Ready};

use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::uri::{PathAndQuery, Uri};

/// The middleware (see the module documentation).
pub struct FoldSlashes;

impl<S, B> Transform<S, ServiceRequest> for FoldSlashes
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = FoldSlashesService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(FoldSlashesService { service }))
    }
}

/// [`FoldSlashes`] around a service.
pub struct FoldSlashesService<S> {
    service: S,
}

impl<S, B> Service<ServiceRequest> for FoldSlashesService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = S::Future;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        if let Some(uri) = folded(req.path()).and_then(|path| with_path(req.uri(), &path)) {
            req.match_info_mut().get_mut().update(&uri);
            req.head_mut().uri = uri;
        }
        self.service.call(req)
    }
}

/// `path` without repeated slashes and without a trailing one, when it has any.
pub fn folded(path: &str) -> Option<String> {
    let trailing = path.len() > 1 && path.ends_with('/');
    if !trailing && !path.contains("//") {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    while out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    Some(out)
}

/// `uri` with another path, its query kept.
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::folded;

    #[test]
    fn only_paths_with_repeated_or_trailing_slashes_are_rewritten() {
        assert_eq!(folded("/scim/v2/Users"), None);
        assert_eq!(folded("/"), None);
        assert_eq!(folded("/scim/v2//Users").as_deref(), Some("/scim/v2/Users"));
        assert_eq!(folded("/scim/v2/Users/").as_deref(), Some("/scim/v2/Users"));
        assert_eq!(
            folded("//scim///v2//Users//").as_deref(),
            Some("/scim/v2/Users")
        );
        assert_eq!(folded("///").as_deref(), Some("/"));
    }
}
