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
    /// The account's name, when the mail is for one account.
    name: Option<String>,
    /// Its link, or the first account's.
    link: String,
    minutes: i64,
    /// Every account with the address, each with its own link, when there are
    /// several: the person chooses.
    accounts: Vec<AccountLink>,
    /// There are more than `store::MAX_ACCOUNTS_PER_MAIL`, and only those are listed.
    more: bool,
}

#[derive(Serialize)]
struct AccountLink {
    name: Option<String>,
    /// When the account was created, as the locale writes a date.
    since: String,
    link: String,
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
    let accounts = actix_web::web::block(move || store::accounts_by_email(&db, &typed))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut accounts = accounts;
    let more = accounts.len() > store::MAX_ACCOUNTS_PER_MAIL;
    accounts.truncate(store::MAX_ACCOUNTS_PER_MAIL);
    let Some(first) = accounts.first().cloned() else {
        tracing::info!("sign-in mail asked for an address no user has");
        return Ok(());
    };
    let now = state.ledger.now().naive_utc();
    let mut links = Vec::with_capacity(accounts.len());
    for account in &accounts {
        let token = store::issue(
            state.ledger.db(),
            account.user_id,
            TokenKind::Link,
            now,
            super::SIGN_IN_LINK_TTL,
        )
        .await
        .map_err(|e| e.to_string())?;
        links.push(AccountLink {
            name: account.name.clone(),
            since: crate::i18n::date(
                account
                    .created_at
                    .and_utc()
                    .with_timezone(&state.ledger.timezone())
                    .date_naive(),
                state.config.locale,
            ),
            link: link_url(&state.config.public_url, &token),
        });
    }
    let ctx = SignInContext {
        name: first.name.clone(),
        link: links[0].link.clone(),
        minutes: super::SIGN_IN_LINK_TTL.num_minutes(),
        accounts: if links.len() > 1 { links } else { Vec::new() },
        more,
    };
    let rendered = state
        .templates
        .render(Kind::SignIn, state.config.locale, &ctx)
        .map_err(|e| e.to_string())?;
    let mail = Outgoing {
        to: first.email,
        rendered,
        message_id: format!(
            "tokengate.sign-in-{}.{}",
            first.user_id,
            now.and_utc().timestamp_micros()
        ),
    };
    state.mailer.send(&mail).await.map_err(|e| e.to_string())?;
    tracing::info!(
        user = first.user_id,
        accounts = accounts.len(),
        "sign-in mail sent"
    );
    Ok(())
}
