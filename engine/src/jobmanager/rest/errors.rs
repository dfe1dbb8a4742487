//! How failures become responses: [`ApiError`] as `{"error": code, "message": ...}` with its
//! status, the checks of a JSON request body (content type, size, syntax, fields) as pure
//! functions, and the answers for unknown paths and wrong methods.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use super::status_of;
use crate::jobmanager::api::{ApiError, ApiErrorCode};

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.error);
        if status.is_server_error() {
            tracing::warn!(code = ?self.error, message = %self.message, "REST request failed");
        } else {
            tracing::debug!(code = ?self.error, message = %self.message, "REST request refused");
        }
        let unauthorized = self.error == ApiErrorCode::Unauthorized;
        let mut response = (status, Json(self)).into_response();
        if unauthorized {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Whether a `Content-Type` value announces JSON: `application/json` or a `+json` type, in any
/// case, with or without parameters (`; charset=utf-8`).
pub fn is_json_content_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.split_once('/') {
        Some((kind, subtype)) => kind == "application" && (subtype == "json" || subtype.ends_with("+json")),
        None => false,
    }
}

/// Decodes a JSON request body of type `T`, given its `Content-Type` header (`None` when
/// absent). The error names what was wrong: the content type, an empty body, or serde's
/// message with the line and column of the problem (syntax, unknown or missing fields, types).
pub fn decode_json<T: DeserializeOwned>(content_type: Option<&HeaderValue>, body: &[u8]) -> Result<T, ApiError> {
    let unsupported = |m: String| Err(ApiError::new(ApiErrorCode::UnsupportedMediaType, m));
    match content_type.map(|v| v.to_str()) {
        None => {
            return unsupported(
                "the request has no Content-Type; send the body as JSON with `Content-Type: application/json`".into(),
            )
        }
        Some(Err(_)) => {
            return unsupported("the request's Content-Type is not ASCII; expected `application/json`".into())
        }
        Some(Ok(v)) if !is_json_content_type(v) => {
            let shown: String = v.chars().take(100).collect();
            return unsupported(format!("the request's Content-Type is `{shown}`; expected `application/json`"));
        }
        Some(Ok(_)) => {}
    }
    let refused = |e: serde_json::Error| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "invalid request body",
            _ => "malformed JSON in the request body",
        };
        ApiError::bad_request(format!("{what}: {e}"))
    };
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(ApiError::bad_request("the request body is empty; expected a JSON object")),
        // serde would take an array for a struct, field by field in order.
        Some(b'{') => serde_json::from_slice(body).map_err(refused),
        Some(_) => match serde_json::from_slice::<serde_json::Value>(body) {
            Err(e) => Err(refused(e)),
            Ok(value) => {
                Err(ApiError::bad_request(format!("the request body is {}; expected a JSON object", json_kind(&value))))
            }
        },
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The error for a body that could not be read: over the limit (413) or cut off.
pub(super) fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ApiErrorCode::PayloadTooLarge,
            "the request body is larger than the server accepts (see `max_body_bytes` in GET /v1/config)",
        )
    } else {
        ApiError::bad_request(format!("the request body could not be read: {}", rejection.body_text()))
    }
}

/// The fallback for paths no route serves.
pub(super) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route for {method} {}; the API is under /v1 (GET /v1/overview, /v1/jobs, /v1/taskmanagers, /v1/job-types, /v1/config)",
        shown_path(&uri)
    ))
}

/// The fallback for a path served with other methods (axum adds the `Allow` header).
pub(super) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(ApiErrorCode::MethodNotAllowed, format!("{method} is not allowed on {}", shown_path(&uri)))
}

/// A request's path, cut to a length that fits a message.
pub(super) fn shown_path(uri: &Uri) -> String {
    let path = uri.path();
    match path.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &path[..cut]),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobmanager::api::SubmitRequest;

    fn json() -> HeaderValue {
        HeaderValue::from_static("application/json")
    }

    #[test]
    fn json_content_types() {
        for yes in ["application/json", "Application/JSON; charset=utf-8", " application/problem+json "] {
            assert!(is_json_content_type(yes), "{yes}");
        }
        for no in ["", "text/plain", "application/jsonx", "application", "json", "text/json", "multipart/form-data"] {
            assert!(!is_json_content_type(no), "{no}");
        }
    }

    #[test]
    fn a_valid_body_decodes() {
        let r: SubmitRequest =
            decode_json(Some(&json()), br#"{"job":"wordcount","args":["a"],"parallelism":2}"#).unwrap();
        assert_eq!(
            r,
            SubmitRequest {
                job: "wordcount".into(),
                args: vec!["a".into()],
                parallelism: Some(2),
                ..Default::default()
            }
        );
        let r: SubmitRequest = decode_json(Some(&json()), br#"{"job":"wordcount"}"#).unwrap();
        assert_eq!((r.args.len(), r.parallelism), (0, None));
    }

    #[test]
    fn each_fault_of_a_body_is_named() {
        let cases: &[(Option<HeaderValue>, &[u8], ApiErrorCode, &str)] = &[
            (None, b"{}", ApiErrorCode::UnsupportedMediaType, "no Content-Type"),
            (Some(HeaderValue::from_static("text/plain")), b"{}", ApiErrorCode::UnsupportedMediaType, "`text/plain`"),
            (Some(HeaderValue::from_bytes(&[0xff]).unwrap()), b"{}", ApiErrorCode::UnsupportedMediaType, "not ASCII"),
            (Some(json()), b"", ApiErrorCode::BadRequest, "empty"),
            (
                Some(json()),
                b"{\"job\": ",
                ApiErrorCode::BadRequest,
                "malformed JSON in the request body: EOF while parsing a value at line 1 column 8",
            ),
            (
                Some(json()),
                b"{\"job\": \"x\",\n \"jobs\": 1}",
                ApiErrorCode::BadRequest,
                "unknown field `jobs`, expected one of `job`, `args`, `parallelism`, `checkpoints`, `restore`, `allow_non_restored_state`, `restart_strategy` at line 2 column 7",
            ),
            (Some(json()), b"{\"args\": []}", ApiErrorCode::BadRequest, "missing field `job`"),
            (
                Some(json()),
                b"{\"job\": \"x\", \"parallelism\": -1}",
                ApiErrorCode::BadRequest,
                "invalid request body: invalid value: integer `-1`",
            ),
            (Some(json()), b"[\"wordcount\", [], 1]", ApiErrorCode::BadRequest, "is an array; expected a JSON object"),
            (Some(json()), b" 12", ApiErrorCode::BadRequest, "is a number; expected a JSON object"),
            (Some(json()), b"[1, ", ApiErrorCode::BadRequest, "malformed JSON in the request body: EOF"),
            (Some(json()), b"{\"job\": \"x\"} {}", ApiErrorCode::BadRequest, "trailing characters at line 1 column 14"),
            (Some(json()), b"{\"job\": \"\xff\"}", ApiErrorCode::BadRequest, "line 1 column"),
        ];
        for (content_type, body, code, needle) in cases {
            let e = decode_json::<SubmitRequest>(content_type.as_ref(), body).unwrap_err();
            assert_eq!(e.error, *code, "{e}");
            assert!(e.message.contains(needle), "{:?}: {e}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn long_paths_are_cut_in_messages() {
        let uri: Uri = format!("/v1/{}", "a".repeat(5000)).parse().unwrap();
        assert_eq!(shown_path(&uri).len(), 203);
        assert_eq!(shown_path(&"/v1/jobs".parse().unwrap()), "/v1/jobs");
    }
}
