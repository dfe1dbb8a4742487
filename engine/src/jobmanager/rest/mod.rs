//! The JobManager's REST API: axum routes over a [`ClusterApi`], JSON in and out, versioned
//! under `/v1` with Flink's paths where Flink has one (`/v1/overview`, `/v1/jobs`,
//! `PATCH /v1/jobs/{id}?mode=cancel`, ...). The routes and the OpenAPI description
//! ([`openapi`], committed as `docs/rest-api.json`) come from one list, so neither can name a
//! route the other lacks.
//!
//! Every failure is answered as `{"error": code, "message": ...}` with the status of its
//! [`ApiErrorCode`]: malformed JSON (serde's message, with line and column), a body without
//! `Content-Type: application/json`, unknown fields, invalid ids, unknown paths (404), wrong
//! methods (405), bodies over [`RestSettings::max_body_bytes`] (413), requests slower than
//! [`RestSettings::request_timeout`] (408), and a panic anywhere in a handler (500; the server
//! keeps serving). Requests that change something (POST, PATCH, DELETE, PUT) must carry
//! `Authorization: Bearer <secret>` when [`RestSettings::authorizer`] is set; they are refused
//! with 401 before their body is read. GETs are open: they show the cluster's state, never the
//! secret.
//!
//! Everything a client can make the server hold is bounded: connections
//! ([`ConnectionLimits::max_connections`]; more wait in the kernel's accept queue), header bytes
//! and the time to send them ([`ConnectionLimits::header_read_timeout`], which also closes idle
//! keep-alive connections), body bytes, and the time a request takes. Handlers call the
//! dispatcher directly: its operations are short and never wait for a TaskManager; a
//! checkpoint trigger then awaits its job master's answer, bounded in time.

mod errors;
mod handlers;
mod layers;
mod schema;
mod server;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;

use crate::jobmanager::api::{ApiErrorCode, ClusterApi, RestConfig};

pub use errors::{decode_json, is_json_content_type};
pub use server::{serve, RestServer};

/// Decides whether a request that changes something may proceed, from its `Authorization`
/// header (`None` when absent). `Err` carries the reason given to the client (never the secret).
pub type Authorizer = Arc<dyn Fn(Option<&str>) -> Result<(), String> + Send + Sync>;

/// The limits on the connections [`serve`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and how long a keep-alive
    /// connection may stay idle between requests.
    pub header_read_timeout: Duration,
    /// Buffer for a request's head (request line and headers); a longer head is refused.
    pub max_header_bytes: usize,
    /// On shutdown, how long requests in flight may take to finish before their connections
    /// are dropped.
    pub shutdown_grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// How the REST API serves requests.
#[derive(Clone)]
pub struct RestSettings {
    /// The largest request body accepted (`rest.server.max-content-length`).
    pub max_body_bytes: usize,
    /// How long one request may take, from its routing to its response (its body included).
    pub request_timeout: Duration,
    /// `None`: authentication is off and anyone who reaches the port may submit and cancel.
    pub authorizer: Option<Authorizer>,
    pub connections: ConnectionLimits,
}

impl Default for RestSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            authorizer: None,
            connections: ConnectionLimits::default(),
        }
    }
}

impl fmt::Debug for RestSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestSettings")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout", &self.request_timeout)
            .field("auth", &if self.authorizer.is_some() { "on" } else { "off" })
            .field("connections", &self.connections)
            .finish()
    }
}

impl RestSettings {
    /// What `GET /v1/config` answers.
    pub fn client_config(&self) -> RestConfig {
        RestConfig {
            version: env!("CARGO_PKG_VERSION").to_string(),
            auth_required: self.authorizer.is_some(),
            max_body_bytes: self.max_body_bytes as u64,
            request_timeout_ms: u64::try_from(self.request_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub api: Arc<dyn ClusterApi>,
    pub config: Arc<RestConfig>,
}

/// The REST API's routes over `api`, with the error handling, authentication and limits of
/// `settings`. Serve it with [`serve`].
pub fn router(api: Arc<dyn ClusterApi>, settings: RestSettings) -> Router {
    let state = AppState { api, config: Arc::new(settings.client_config()) };
    let (routes, _) = handlers::routes().split_for_parts();
    let authorizer = settings.authorizer.clone();
    let timeout = settings.request_timeout;
    routes
        .route_layer(axum::middleware::from_fn(move |req, next| layers::authorize(authorizer.clone(), req, next)))
        .method_not_allowed_fallback(errors::method_not_allowed)
        .fallback(errors::not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(axum::middleware::from_fn(move |req, next| layers::time_limit(timeout, req, next)))
        .layer(axum::middleware::from_fn(layers::catch_panic))
}

/// The OpenAPI description of the routes [`router`] serves, with the error responses and the
/// bearer authentication of mutations.
pub fn openapi() -> utoipa::openapi::OpenApi {
    schema::complete(handlers::routes().into_openapi())
}

/// [`openapi`] as the pretty-printed JSON committed in `docs/rest-api.json`, ending in a newline.
pub fn openapi_json() -> Result<String, serde_json::Error> {
    let mut text = openapi().to_pretty_json()?;
    text.push('\n');
    Ok(text)
}

/// The status code of an error code, as the `http` crate's type.
fn status_of(code: ApiErrorCode) -> axum::http::StatusCode {
    axum::http::StatusCode::from_u16(code.http_status()).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed description, `docs/rest-api.json`, must be what the routes generate.
    /// `CORESTREAM_UPDATE_REST_API=1 cargo test --release -p corestream --lib rest::tests` rewrites it.
    #[test]
    fn committed_openapi_matches_the_routes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/rest-api.json");
        let generated = openapi_json().unwrap();
        if std::env::var_os("CORESTREAM_UPDATE_REST_API").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "{path} differs from the description the routes generate; if the change of the API is \
             intended, regenerate it with `CORESTREAM_UPDATE_REST_API=1 cargo test --release -p corestream --lib \
             rest::tests::committed_openapi_matches_the_routes` and commit it"
        );
    }

    #[test]
    fn mutations_need_the_bearer_and_every_operation_documents_its_errors() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 7);
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let mutation = layers::is_mutation(&method.to_uppercase().parse().unwrap());
                assert_eq!(op.get("security").is_some(), mutation, "{method} {path}");
                let responses = op["responses"].as_object().unwrap();
                for status in ["408", "500"].into_iter().chain(mutation.then_some("401")) {
                    let schema = &responses[status]["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, "#/components/schemas/ApiError", "{method} {path} {status}");
                }
            }
        }
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    }
}
