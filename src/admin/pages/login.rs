//! Sign-in and sign-out.

use super::super::accounts;
use super::super::session::{self, SignedIn};
use super::super::views;
use super::super::{AdminError, locale};
use crate::bootstrap;
use crate::startup::AppState;
use actix_session::Session;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::html;
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NextQuery {
    next: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LoginForm {
    email: String,
    password: String,
    csrf: String,
    next: String,
}

/// Only paths inside the dashboard: never an open redirect.
fn safe_next(next: &str) -> &str {
    let ok = next.starts_with("/admin")
        && !next.starts_with("//")
        && !next.contains("://")
        && !next.contains('\\')
        && next.chars().all(|c| !c.is_control());
    if ok { next } else { "/admin" }
}

fn login_page(
    state: &AppState,
    session: &Session,
    email: &str,
    next: &str,
    error: Option<&str>,
    status: StatusCode,
) -> HttpResponse {
    let l = locale(state);
    let csrf = session::csrf_token(session);
    let title = l.pick("Entrar no tokengate", "Sign in to tokengate");
    let body = html! {
        h1 { (title) }
        @if let Some(e) = error { p.flash.error role="alert" { (e) } }
        form.stack method="post" action="/admin/login" {
            (views::csrf_input(&csrf))
            input type="hidden" name="next" value=(safe_next(next));
            label { (l.pick("Email", "Email"))
                input type="email" name="email" value=(email) required autocomplete="username" autofocus; }
            label { (l.pick("Senha", "Password"))
                input type="password" name="password" required autocomplete="current-password"; }
            button type="submit" { (l.pick("Entrar", "Sign in")) }
        }
    };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(views::bare(l, title, body).into_string())
}

pub async fn show(
    state: web::Data<AppState>,
    session: Session,
    q: web::Query<NextQuery>,
) -> HttpResponse {
    login_page(&state, &session, "", &q.next, None, StatusCode::OK)
}

pub async fn submit(
    state: web::Data<AppState>,
    session: Session,
    req: HttpRequest,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, AdminError> {
    session::check_origin(&req, &state.config.public_url)?;
    session::check_csrf(&session, &form.csrf)?;
    let l = locale(&state);
    let email = form.email.trim().to_lowercase();
    let address = crate::net::client_address(&req, &state.config.trusted_proxies);
    let now = state.ledger.now().naive_utc();
    let refused = |text: &str, status| {
        Ok(login_page(
            &state,
            &session,
            &email,
            &form.next,
            Some(text),
            status,
        ))
    };
    let db = state.ledger.db().clone();
    let (e, a) = (email.clone(), address.clone());
    // The attempt is counted before its password is checked, so that attempts sent
    // in parallel cannot all pass the limit.
    if !web::block(move || accounts::begin_attempt(&db, &e, &a, now)).await?? {
        tracing::warn!(%address, "admin sign-in refused: too many failures");
        return refused(
            l.pick(
                "Muitas tentativas. Espere 15 minutos e tente de novo.",
                "Too many attempts. Wait 15 minutes and try again.",
            ),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let db = state.ledger.db().clone();
    let (e, password) = (email.clone(), form.password.clone());
    // Hashing is slow on purpose: off the async threads, a few at a time. An unknown
    // email is checked against a dummy hash so both answers take as long.
    let checked = accounts::with_hashing_slot(move || -> Result<_, crate::db::StoreError> {
        let admin = accounts::by_email(&db, &e)?;
        let hash = admin
            .as_ref()
            .map_or(accounts::dummy_hash(), |a| a.password_hash.as_str());
        let ok = bootstrap::verify_password(&password, hash);
        Ok(admin.filter(|a| ok && a.disabled_at.is_none()))
    })
    .await?;
    let Some(admin) = checked else {
        tracing::warn!(%address, "admin sign-in refused: every password check is busy");
        return refused(
            l.pick(
                "Muitas entradas ao mesmo tempo. Tente de novo em alguns segundos.",
                "Too many sign-ins at once. Try again in a few seconds.",
            ),
            StatusCode::SERVICE_UNAVAILABLE,
        );
    };
    let Some(admin) = admin? else {
        tracing::warn!(%address, "admin sign-in failed");
        return refused(
            l.pick("Email ou senha incorretos.", "Wrong email or password."),
            StatusCode::UNAUTHORIZED,
        );
    };
    let db = state.ledger.db().clone();
    let e = email.clone();
    web::block(move || accounts::clear_failures(&db, &e)).await??;
    session::sign_in(&session, &admin, state.ledger.now().timestamp());
    tracing::info!(admin = %admin.email, "admin signed in");
    Ok(HttpResponse::SeeOther()
        .insert_header(("location", safe_next(&form.next).to_owned()))
        .finish())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn logout(
    state: web::Data<AppState>,
    me: SignedIn,
    req: HttpRequest,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, AdminError> {
    me.check_post(&req, &state, &form.csrf)?;
    me.session.purge();
    Ok(HttpResponse::SeeOther()
        .insert_header(("location", "/admin/login"))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_never_leaves_the_dashboard() {
        assert_eq!(safe_next("/admin/users/3"), "/admin/users/3");
        assert_eq!(safe_next("https://evil.example/admin"), "/admin");
        assert_eq!(safe_next("//evil.example"), "/admin");
        assert_eq!(safe_next("/admin\\@evil"), "/admin");
        assert_eq!(safe_next(""), "/admin");
    }
}
