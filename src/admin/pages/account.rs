//! The admins: change your password, add admins, disable or enable them.

use super::{back, locale, render};
use crate::admin::AdminError;
use crate::admin::accounts::{self, AccountError};
use crate::admin::session::SignedIn;
use crate::admin::views::{self, Nav};
use crate::bootstrap::{BootstrapError, MIN_PASSWORD_CHARS};
use crate::config::Locale;
use crate::domain::Email;
use crate::i18n;
use crate::startup::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::html;
use serde::Deserialize;

fn account_error(e: AccountError, l: Locale) -> Result<String, AdminError> {
    Ok(match e {
        AccountError::WrongPassword => l
            .pick(
                "A senha atual está errada.",
                "The current password is wrong.",
            )
            .into(),
        AccountError::Mismatch => l
            .pick(
                "As duas senhas novas são diferentes.",
                "The two new passwords differ.",
            )
            .into(),
        AccountError::WeakPassword | AccountError::Bootstrap(BootstrapError::WeakPassword) => {
            format!(
                "{} {MIN_PASSWORD_CHARS} {}",
                l.pick(
                    "A senha precisa de pelo menos",
                    "The password needs at least"
                ),
                l.pick("caracteres.", "characters.")
            )
        }
        AccountError::Bootstrap(BootstrapError::AdminExists(email)) => format!(
            "{} {email}.",
            l.pick(
                "Já existe um administrador com o email",
                "There is already an admin with the email"
            )
        ),
        AccountError::SelfDisable => l
            .pick(
                "Você não pode desativar a própria conta.",
                "You cannot disable your own account.",
            )
            .into(),
        AccountError::NotFound => return Err(AdminError::NotFound),
        AccountError::Store(e) | AccountError::Bootstrap(BootstrapError::Store(e)) => {
            return Err(AdminError::Store(e));
        }
        AccountError::Bootstrap(other) => return Err(AdminError::Internal(other.to_string())),
    })
}

pub async fn show(state: web::Data<AppState>, me: SignedIn) -> Result<HttpResponse, AdminError> {
    let l = locale(&state);
    let tz = state.config.timezone;
    let db = state.ledger.db().clone();
    let by = me.admin.clone();
    let admins = web::block(move || accounts::list(&db, &by)).await??;
    let body = html! {
        section.actions {
            form.stack method="post" action="/admin/account/password" {
                h2 { (l.pick("Trocar minha senha", "Change my password")) }
                (views::csrf_input(&me.csrf))
                label { (l.pick("Senha atual", "Current password")) input type="password" name="current" required autocomplete="current-password"; }
                label { (l.pick("Nova senha", "New password")) input type="password" name="new" required minlength=(MIN_PASSWORD_CHARS) autocomplete="new-password"; }
                label { (l.pick("Repita a nova senha", "Repeat the new password")) input type="password" name="confirm" required minlength=(MIN_PASSWORD_CHARS) autocomplete="new-password"; }
                button type="submit" { (l.pick("Trocar senha", "Change password")) }
                p.muted { (l.pick("Outras sessões abertas com a senha antiga são encerradas.", "Other sessions signed in with the old password end.")) }
            }
            form.stack method="post" action="/admin/admins" {
                h2 { (l.pick("Adicionar administrador", "Add an admin")) }
                (views::csrf_input(&me.csrf))
                label { "Email" input type="email" name="email" required; }
                label { (l.pick("Senha inicial", "Initial password")) input type="password" name="password" required minlength=(MIN_PASSWORD_CHARS) autocomplete="new-password"; }
                button type="submit" { (l.pick("Adicionar", "Add")) }
            }
        }
        section {
            h2 { (l.pick("Administradores", "Admins")) }
            table.admins {
                thead { tr { th { "Email" } th { (l.pick("Desde", "Since")) } th { (l.pick("Situação", "State")) } th {} } }
                tbody { @for a in &admins { tr {
                    td { (a.email) @if a.id == me.admin.id { " " small.muted { (l.pick("(você)", "(you)")) } } }
                    td { (i18n::datetime(a.created_at, tz, l)) }
                    td { @if a.disabled_at.is_some() { span.badge.suspended { (l.pick("desativado", "disabled")) } } @else { span.badge.ok { (l.pick("ativo", "active")) } } }
                    td { @if a.id != me.admin.id {
                        form method="post" action=(format!("/admin/admins/{}/status", a.id)) {
                            (views::csrf_input(&me.csrf))
                            @if a.disabled_at.is_some() {
                                input type="hidden" name="enable" value="1";
                                button type="submit" { (l.pick("Reativar", "Enable")) }
                            } @else {
                                input type="hidden" name="enable" value="0";
                                button.danger type="submit" { (l.pick("Desativar", "Disable")) }
                            }
                        }
                    } }
                } } }
            }
        }
    };
    Ok(render(
        &state,
        &me,
        l.pick("Administradores", "Admins"),
        Nav::Account,
        body,
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct PasswordForm {
    csrf: String,
    current: String,
    new: String,
    confirm: String,
}

pub async fn change_password(
    state: web::Data<AppState>,
    me: SignedIn,
    req: HttpRequest,
    form: web::Form<PasswordForm>,
) -> Result<HttpResponse, AdminError> {
    me.check_post(&req, &state, &form.csrf)?;
    let l = locale(&state);
    let db = state.ledger.db().clone();
    let admin = me.admin.clone();
    let now = state.ledger.now().naive_utc();
    let form = form.into_inner();
    let result = accounts::with_hashing_slot(move || {
        accounts::change_password(&db, &admin, &form.current, &form.new, &form.confirm, now)?;
        accounts::by_id(&db, admin.id).map_err(AccountError::from)
    })
    .await?
    .ok_or(AdminError::Busy)?;
    match result {
        Ok(Some(updated)) => {
            // This session continues under the new password; the others end.
            crate::admin::session::sign_in(&me.session, &updated, state.ledger.now().timestamp());
            Ok(back(
                &me,
                "/admin/account",
                true,
                l.pick("Senha trocada.", "Password changed."),
            ))
        }
        Ok(None) => Err(AdminError::NotFound),
        Err(e) => account_error(e, l).map(|t| back(&me, "/admin/account", false, t)),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AddForm {
    csrf: String,
    email: String,
    password: String,
}

pub async fn add_admin(
    state: web::Data<AppState>,
    me: SignedIn,
    req: HttpRequest,
    form: web::Form<AddForm>,
) -> Result<HttpResponse, AdminError> {
    me.check_post(&req, &state, &form.csrf)?;
    let l = locale(&state);
    let Ok(email) = Email::parse(&form.email) else {
        return Ok(back(
            &me,
            "/admin/account",
            false,
            l.pick("Esse email não é válido.", "That email is not valid."),
        ));
    };
    let db = state.ledger.db().clone();
    let by = me.admin.clone();
    let now = state.ledger.now().naive_utc();
    let (e, password) = (email.to_string(), form.password.clone());
    match accounts::with_hashing_slot(move || accounts::add(&db, &by, &e, &password, now))
        .await?
        .ok_or(AdminError::Busy)?
    {
        Ok(()) => Ok(back(
            &me,
            "/admin/account",
            true,
            format!(
                "{} {email}.",
                l.pick("Administrador adicionado:", "Admin added:")
            ),
        )),
        Err(e) => account_error(e, l).map(|t| back(&me, "/admin/account", false, t)),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct StatusForm {
    csrf: String,
    enable: String,
}

pub async fn set_status(
    state: web::Data<AppState>,
    me: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    form: web::Form<StatusForm>,
) -> Result<HttpResponse, AdminError> {
    me.check_post(&req, &state, &form.csrf)?;
    let l = locale(&state);
    let db = state.ledger.db().clone();
    let by = me.admin.clone();
    let now = state.ledger.now().naive_utc();
    let target = path.into_inner();
    let disable = form.enable != "1";
    match web::block(move || accounts::set_disabled(&db, &by, target, disable, now)).await? {
        Ok(()) => Ok(back(
            &me,
            "/admin/account",
            true,
            if disable {
                l.pick("Administrador desativado.", "Admin disabled.")
            } else {
                l.pick("Administrador reativado.", "Admin enabled.")
            },
        )),
        Err(e) => account_error(e, l).map(|t| back(&me, "/admin/account", false, t)),
    }
}
