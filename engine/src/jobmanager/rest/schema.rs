//! The OpenAPI description's frame: the document's info and tags, the schemas of the types the
//! API borrows from the control plane (ids, task states, accumulators), and [`complete`], which
//! adds to every operation what the middleware does to it — 401 and the bearer requirement on
//! mutations, 408 and 500 everywhere — from the same rule the middleware uses.

use std::borrow::Cow;

use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Ref, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::layers::is_mutation;
use crate::jobmanager::api::{ApiError, ApiErrorCode};
use crate::rpc::ids::{JobId, TaskManagerId};
use crate::rpc::messages::{Accumulator, TaskState};

const DESCRIPTION: &str = "The JobManager's REST API. Jobs are submitted by name (a registered job type, \
see `GET /v1/job-types`) with string arguments and a parallelism.\n\n\
**Access.** GETs are open. Requests that change something (POST, PATCH) need \
`Authorization: Bearer <cluster secret>` unless authentication is off (`GET /v1/config` tells); without \
it or with a wrong secret they are answered 401 and change nothing.\n\n\
**Errors.** Every failure is `{\"error\": code, \"message\": text}` (schema `ApiError`) with the status of \
its code: 400 bad_request (malformed JSON, unknown fields, invalid ids, unknown job types, bad \
arguments), 401 unauthorized, 404 not_found (no such job, TaskManager or path), 405 \
method_not_allowed (with an `Allow` header), 408 request_timeout, 409 conflict, 413 \
payload_too_large, 415 unsupported_media_type (a body without `Content-Type: application/json`), \
500 internal, 503 unavailable.\n\n\
**Limits.** Request bodies up to `max_body_bytes`, requests up to `request_timeout_ms` (both in \
`GET /v1/config`); a bounded number of connections, idle ones closed after a timeout.";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "corestream JobManager REST API", version = "1", description = DESCRIPTION),
    tags(
        (name = "cluster", description = "The cluster and the REST API itself"),
        (name = "taskmanagers", description = "Registered TaskManagers and their slots"),
        (name = "jobs", description = "Submitting, watching and cancelling jobs"),
        (name = "checkpoints", description = "A job's checkpoints: statistics, configuration, manual triggers"),
        (name = "savepoints", description = "Savepoints on request, stop-with-savepoint, their status")
    ),
    components(schemas(ApiError, ApiErrorCode))
)]
pub(super) struct ApiDoc;

/// Adds the responses and security the middleware gives every operation.
pub(super) fn complete(mut doc: OpenApi) -> OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The cluster secret (`security.cluster.secret`), as `Authorization: Bearer <secret>`",
                ))
                .build(),
        ),
    );
    for item in doc.paths.paths.values_mut() {
        for (method, operation) in operations(item) {
            if is_mutation(&method) {
                operation.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
                add_error(operation, 401, "No secret, or a wrong one; nothing was changed");
            }
            add_error(operation, 408, "The request was not served within the request timeout");
            add_error(operation, 500, "The server failed while serving the request");
        }
    }
    doc
}

fn add_error(operation: &mut Operation, status: u16, description: &str) {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ApiError"))).build();
    operation.responses.responses.entry(status.to_string()).or_insert_with(|| {
        ResponseBuilder::new().description(description).content("application/json", content).build().into()
    });
}

fn operations(item: &mut PathItem) -> Vec<(axum::http::Method, &mut Operation)> {
    use axum::http::Method;
    [
        (Method::GET, item.get.as_mut()),
        (Method::PUT, item.put.as_mut()),
        (Method::POST, item.post.as_mut()),
        (Method::DELETE, item.delete.as_mut()),
        (Method::OPTIONS, item.options.as_mut()),
        (Method::HEAD, item.head.as_mut()),
        (Method::PATCH, item.patch.as_mut()),
        (Method::TRACE, item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
    .collect()
}

fn hex_id(what: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[0-9a-fA-F]{32}$"))
        .description(Some(format!("A {what}: 16 random bytes as 32 hexadecimal digits")))
        .examples(["8f3a0c5e1b7d49a2b6c4e0f1a2b3c4d5"])
        .into()
}

impl PartialSchema for JobId {
    fn schema() -> RefOr<Schema> {
        hex_id("job id")
    }
}

impl ToSchema for JobId {}

impl PartialSchema for TaskManagerId {
    fn schema() -> RefOr<Schema> {
        hex_id("TaskManager id")
    }
}

impl ToSchema for TaskManagerId {}

impl PartialSchema for TaskState {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["DEPLOYING", "RUNNING", "FINISHED", "FAILED", "CANCELLED"]))
            .description(Some("The state of one subtask, as its TaskManager reports it"))
            .into()
    }
}

impl ToSchema for TaskState {}

impl PartialSchema for Accumulator {
    fn schema() -> RefOr<Schema> {
        let integer = |description: &str, minimum: Option<i64>| -> Schema {
            ObjectBuilder::new().schema_type(Type::Integer).minimum(minimum).description(Some(description)).into()
        };
        let kind = |name: &str, description: &str, value: Schema| -> Schema {
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(description))
                .property("kind", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([name])))
                .property("value", value)
                .required("kind")
                .required("value")
                .into()
        };
        let bytes = ArrayBuilder::new()
            .items(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)).maximum(Some(255)));
        let lines = ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String));
        OneOfBuilder::new()
            .description(Some("A value a job computes across subtasks and TaskManagers, merged by the job master"))
            .item(kind("count", "Added up", integer("A count", Some(0))))
            .item(kind("sum", "Added up exactly (a 128-bit integer)", integer("A sum", None)))
            .item(kind("max", "The largest value", integer("A 64-bit integer", None)))
            .item(kind("min", "The smallest value", integer("A 64-bit integer", None)))
            .item(kind(
                "checksum",
                "An order-independent checksum (wrapping sum)",
                integer("A 64-bit checksum", Some(0)),
            ))
            .item(kind("lines", "Lines, kept sorted", lines.into()))
            .item(kind("histogram", "An HDR histogram in its V2 serialization", bytes.into()))
            .into()
    }
}

impl ToSchema for Accumulator {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Accumulator")
    }
}
