//! One module per page; handlers next to their markup.

mod account;
mod alerts;
mod audit;
pub mod codes;
mod login;
mod overview;
mod plans;
mod requests;
mod users;
mod weights;

use super::session::{self, SignedIn};
use super::views::{self, Nav, Page};
use super::{AdminError, locale};
use crate::ledger::{Actor, Ledger};
use crate::startup::AppState;
use actix_web::{HttpResponse, web};
use maud::Markup;
use serde::Deserialize;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("", web::get().to(overview::show))
        .route("/", web::get().to(overview::show))
        .route("/login", web::get().to(login::show))
        .route("/login", web::post().to(login::submit))
        .route("/logout", web::post().to(login::logout))
        .route("/users", web::get().to(users::list))
        .route("/users/{id}", web::get().to(users::detail))
        .route("/users/{id}/credits", web::post().to(users::grant))
        .route("/users/{id}/plan", web::post().to(users::change_plan))
        .route("/users/{id}/suspension", web::post().to(users::suspension))
        .route("/plans", web::get().to(plans::list))
        .route("/plans", web::post().to(plans::create))
        .route("/plans/{id}", web::post().to(plans::update))
        .route("/plans/{id}/default", web::post().to(plans::make_default))
        .route("/weights", web::get().to(weights::list))
        .route("/weights", web::post().to(weights::set))
        .route("/alerts", web::get().to(alerts::list))
        .route("/requests", web::get().to(requests::list))
        .route("/requests/{id}/approve", web::post().to(requests::approve))
        .route("/requests/{id}/decline", web::post().to(requests::decline))
        .route("/codes", web::get().to(codes::list))
        .route("/codes", web::post().to(codes::create))
        .route("/audit", web::get().to(audit::list))
        .route("/account", web::get().to(account::show))
        .route(
            "/account/password",
            web::post().to(account::change_password),
        )
        .route("/admins", web::post().to(account::add_admin))
        .route("/admins/{id}/status", web::post().to(account::set_status))
        .default_service(web::to(not_found));
}

async fn not_found() -> Result<HttpResponse, AdminError> {
    Err(AdminError::NotFound)
}

/// A signed-in page, with the flash message of the previous action.
fn render(state: &AppState, me: &SignedIn, title: &str, nav: Nav, body: Markup) -> HttpResponse {
    let flash = session::take_flash(&me.session);
    let markup = views::layout(
        Page {
            locale: locale(state),
            title,
            nav,
            admin_email: &me.admin.email,
            csrf: &me.csrf,
            flash,
        },
        body,
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

/// After a POST: back to a page (303), with a message for it.
fn back(me: &SignedIn, to: &str, ok: bool, text: impl Into<String>) -> HttpResponse {
    session::set_flash(&me.session, ok, text);
    HttpResponse::SeeOther()
        .insert_header(("location", to.to_owned()))
        .finish()
}

/// Runs blocking ledger work off the async threads.
async fn with_ledger<T, E>(
    state: &AppState,
    f: impl FnOnce(&Ledger) -> Result<T, E> + Send + 'static,
) -> Result<T, AdminError>
where
    T: Send + 'static,
    E: Into<AdminError> + Send + 'static,
{
    let ledger = state.ledger.clone();
    web::block(move || f(&ledger)).await?.map_err(Into::into)
}

fn actor(me: &SignedIn) -> Actor {
    Actor::Admin(me.admin.email.clone())
}

/// A form field meant to be one line of text (shared with the user's page).
use crate::i18n::one_line;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CsrfOnly {
    csrf: String,
}
