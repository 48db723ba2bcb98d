//! The sign-in mail: a one-time link to the user's page, sent to the address
//! LibreChat sent for the user (never to the address typed, which may differ in
//! case or carry anything).
//!
//! It is sent by a background task after the form has been answered, so the answer
//! is the same, and as fast, whether or not the address is known. A link that could
//! not be sent is not retried: it expires in minutes, and the user can ask again.

use super::store::{self, TokenKind};
use crate::mail::Outgoing;
use crate::mail::templates::Kind;
use crate::startup::AppState;
use serde::Serialize;

#[derive(Serialize)]
struct SignInContext {
    name: Option<String>,
    link: String,
    minutes: i64,
}

/// The address of a link to the user's page.
pub fn link_url(public_url: &str, token: &str) -> String {
    format!("{}/me/link/{token}", public_url.trim_end_matches('/'))
}

/// Mails a sign-in link to the user LibreChat knows by `email`, if any.
pub async fn send_sign_in(state: actix_web::web::Data<AppState>, email: String) {
    if let Err(e) = try_send(&state, &email).await {
        // The address is not logged: it was typed by anyone.
        tracing::warn!(error = %e, "sign-in mail not sent");
    }
}

async fn try_send(state: &AppState, email: &str) -> Result<(), String> {
    let db = state.ledger.db().clone();
    let typed = email.to_owned();
    let found = actix_web::web::block(move || store::user_by_email(&db, &typed))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let Some((user_id, address)) = found else {
        tracing::info!("sign-in mail asked for an address no user has");
        return Ok(());
    };
    let name = user_name(state, user_id).await?;
    let now = state.ledger.now().naive_utc();
    let token = store::issue(
        state.ledger.db(),
        user_id,
        TokenKind::Link,
        now,
        super::SIGN_IN_LINK_TTL,
    )
    .await
    .map_err(|e| e.to_string())?;
    let ctx = SignInContext {
        name,
        link: link_url(&state.config.public_url, &token),
        minutes: super::SIGN_IN_LINK_TTL.num_minutes(),
    };
    let rendered = state
        .templates
        .render(Kind::SignIn, state.config.locale, &ctx)
        .map_err(|e| e.to_string())?;
    let mail = Outgoing {
        to: address,
        rendered,
        message_id: format!(
            "tokengate.sign-in-{user_id}.{}",
            now.and_utc().timestamp_micros()
        ),
    };
    state.mailer.send(&mail).await.map_err(|e| e.to_string())?;
    tracing::info!(user = user_id, "sign-in mail sent");
    Ok(())
}

async fn user_name(state: &AppState, user_id: i64) -> Result<Option<String>, String> {
    let ledger = state.ledger.clone();
    let summary = actix_web::web::block(move || ledger.user_summary(user_id))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(summary.name)
}
