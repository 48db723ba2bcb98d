//! Operations endpoints: liveness, readiness, metrics.

use crate::startup::AppState;
use actix_web::{HttpResponse, web};
use serde_json::json;
use std::time::Duration;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the database answers; upstream reachability is reported, not required
/// (tokengate still answers /v1 with clear errors while LiteLLM restarts).
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let ledger = state.ledger.clone();
    let db_ok = matches!(web::block(move || ledger.db().ping()).await, Ok(Ok(())));
    let upstream_ok = state
        .upstream
        .get("/models", Some(Duration::from_secs(2)))
        .await
        .is_ok();
    let body = json!({
        "status": if db_ok { "ready" } else { "unavailable" },
        "database": if db_ok { "ok" } else { "unavailable" },
        "upstream": if upstream_ok { "ok" } else { "unreachable" },
    });
    if db_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let mut text = state.metrics.render();
    crate::telemetry::render_spooled(&mut text, state.settler.spooled());
    if let Some(w) = state.ledger.db().write_counts() {
        crate::telemetry::render_sqlite_writes(&mut text, w);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}
