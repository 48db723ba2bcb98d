//! One module per page; handlers next to their markup.

mod account;
mod alerts;
mod audit;
pub mod codes;
mod login;
mod overview;
mod plans;
mod reports;
mod requests;
mod users;
mod weights;

use super::session::{self, SignedIn};
use super::views::{self, Nav, Page};
use super::{AdminError, locale};
use crate::ledger::{Actor, Scoped};
use crate::startup::AppState;
use actix_web::{HttpResponse, web};
use maud::Markup;
use serde::Deserialize;

/// The dashboard's routes, written once: the router is built from this list, and
/// the isolation test walks the same list (`ROUTES`), so a page added here is a page
/// that test tries with another distributor's ids.
macro_rules! admin_routes {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every route of the dashboard: (method, path under /admin).
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        pub fn routes(cfg: &mut web::ServiceConfig) {
            $(cfg.route($path, web::$method().to($handler));)*
            cfg.default_service(web::to(not_found));
        }
    };
}

admin_routes! {
    get "" => overview::show,
    get "/" => overview::show,
    get "/login" => login::show,
    post "/login" => login::submit,
    post "/logout" => login::logout,
    get "/users" => users::list,
    get "/users/{id}" => users::detail,
    post "/users/{id}/credits" => users::grant,
    post "/users/{id}/plan" => users::change_plan,
    post "/users/{id}/suspension" => users::suspension,
    get "/plans" => plans::list,
    post "/plans" => plans::create,
    post "/plans/{id}" => plans::update,
    post "/plans/{id}/default" => plans::make_default,
    get "/weights" => weights::list,
    post "/weights" => weights::set,
    get "/alerts" => alerts::list,
    get "/requests" => requests::list,
    post "/requests/{id}/approve" => requests::approve,
    post "/requests/{id}/decline" => requests::decline,
    get "/codes" => codes::list,
    post "/codes" => codes::create,
    get "/audit" => audit::list,
    get "/reports" => reports::show,
    get "/reports/usage.csv" => reports::usage_csv,
    get "/reports/ledger.csv" => reports::ledger_csv,
    get "/account" => account::show,
    post "/account/password" => account::change_password,
    post "/admins" => account::add_admin,
    post "/admins/{id}/status" => account::set_status,
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
            global: me.admin.scope().is_global(),
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

/// Runs blocking ledger work off the async threads, through the signed-in admin's
/// scope: the only handle a page has on the ledger (`ledger::Scoped`).
async fn with_scoped<T, E>(
    state: &AppState,
    me: &SignedIn,
    f: impl FnOnce(&Scoped) -> Result<T, E> + Send + 'static,
) -> Result<T, AdminError>
where
    T: Send + 'static,
    E: Into<AdminError> + Send + 'static,
{
    let scoped = state.ledger.scoped(me.admin.scope());
    web::block(move || f(&scoped)).await?.map_err(Into::into)
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
