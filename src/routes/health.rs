//! Liveness: answers without touching storage (the benchmark baseline).

use actix_web::{get, HttpResponse};

/// Handles `GET /healthz`.
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok")
}
