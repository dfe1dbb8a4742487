//! The middleware of the REST API: bearer authentication of mutations (before their body is
//! read), the time limit of a request, and the catching of panics, which become a 500 for that
//! request while the server goes on serving.

use std::any::Any;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::errors::shown_path;
use super::Authorizer;
use crate::jobmanager::api::{ApiError, ApiErrorCode};

/// Whether a request with this method changes something and so needs the secret.
pub(super) fn is_mutation(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Refuses a mutation whose `Authorization` header the authorizer does not accept, with 401.
pub(super) async fn authorize(authorizer: Option<Authorizer>, req: Request, next: Next) -> Response {
    if let Some(authorizer) = authorizer.filter(|_| is_mutation(req.method())) {
        let verdict = match req.headers().get(header::AUTHORIZATION).map(|v| v.to_str()) {
            None => authorizer(None),
            Some(Ok(value)) => authorizer(Some(value)),
            Some(Err(_)) => Err("the Authorization header is not ASCII".to_string()),
        };
        if let Err(reason) = verdict {
            tracing::info!(method = %req.method(), path = %shown_path(req.uri()), %reason, "refused an unauthenticated request");
            return ApiError::new(
                ApiErrorCode::Unauthorized,
                format!(
                    "{} {} needs `Authorization: Bearer <cluster secret>`: {reason}",
                    req.method(),
                    shown_path(req.uri())
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Answers 408 when a request is not served within `limit` (typically a body sent too slowly).
pub(super) async fn time_limit(limit: Duration, req: Request, next: Next) -> Response {
    let what = format!("{} {}", req.method(), shown_path(req.uri()));
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ApiErrorCode::RequestTimeout,
            format!("{what} was not served within {} ms; was its body sent too slowly?", limit.as_millis()),
        )
        .into_response(),
    }
}

/// Turns a panic while serving a request into a 500 for that request.
pub(super) async fn catch_panic(req: Request, next: Next) -> Response {
    let what = format!("{} {}", req.method(), shown_path(req.uri()));
    match CatchUnwind(Box::pin(next.run(req))).await {
        Ok(response) => response,
        Err(payload) => {
            let cause = panic_message(payload.as_ref());
            tracing::error!(request = %what, %cause, "a REST handler panicked");
            ApiError::new(ApiErrorCode::Internal, format!("internal error while serving {what}: {cause}"))
                .into_response()
        }
    }
}

/// A future that returns a panic of its inner future as `Err` instead of unwinding further.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match panic::catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// The message a panic was raised with, when it is text.
pub(super) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_the_methods_that_change_something() {
        for m in [Method::POST, Method::PATCH, Method::DELETE, Method::PUT] {
            assert!(is_mutation(&m), "{m}");
        }
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(!is_mutation(&m), "{m}");
        }
    }

    #[test]
    fn panic_messages_are_recovered() {
        let p = panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "boom 1");
        let p = panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "static");
        let p = panic::catch_unwind(|| panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "a panic without a message");
    }
}
