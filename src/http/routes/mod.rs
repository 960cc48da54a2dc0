//! HTTP routes, one file per area. Handlers extract, call the store, map.

pub mod admin;
pub mod docs;
pub mod events;
pub mod health;
pub mod leaks;
pub mod oauth2;
pub mod tokens;
pub mod verify;

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, FromRequest, Handler, HttpResponse, Responder};

use crate::http::error::ApiError;

/// Registers every route. The router tries resources in this order, so the
/// ones called on every request come first: liveness probes, verify (what
/// gateways call for each request they pass), then the management routes.
/// `/metrics` is left out when `server.metrics_bind` gives it a private
/// listener (see [`configure_private`]).
pub fn configure(cfg: &mut web::ServiceConfig, with_metrics: bool) {
    health::configure_liveness(cfg);
    verify::configure(cfg);
    tokens::configure(cfg);
    events::configure(cfg);
    leaks::configure(cfg);
    health::configure(cfg, with_metrics);
    docs::configure(cfg);
}

/// The routes of the private `server.metrics_bind` listener: metrics and
/// the health probes, nothing a user or agent calls.
pub fn configure_private(cfg: &mut web::ServiceConfig) {
    health::configure_liveness(cfg);
    health::configure(cfg, true);
}

/// A route and the methods it answers, each said once: any other method
/// gets the JSON 405 whose `Allow` header lists exactly these.
pub struct Resource {
    inner: actix_web::Resource,
    allow: Vec<&'static str>,
}

impl Resource {
    pub fn new(path: &'static str) -> Self {
        Self {
            inner: web::resource(path).name(path),
            allow: Vec::new(),
        }
    }

    /// Answers `method` with `handler`.
    pub fn on<F, Args>(mut self, method: Method, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.allow.push(allow_name(&method));
        self.inner = self.inner.route(web::method(method).to(handler));
        self
    }

    /// The resource, with the 405 for every other method.
    pub fn done(self) -> actix_web::Resource {
        let allow: Arc<str> = self.allow.join(", ").into();
        self.inner.default_service(web::to(move || {
            let allow = Arc::clone(&allow);
            async move { Err::<HttpResponse, ApiError>(ApiError::MethodNotAllowed { allow }) }
        }))
    }
}

/// The methods routes use, as `Allow` spells them.
fn allow_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OPTIONS",
    }
}

/// The JSON 404 for every unknown path.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}
