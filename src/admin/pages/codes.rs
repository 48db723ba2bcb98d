//! Codes worth tokens: make a batch (downloaded once, as CSV: the codes are kept
//! only as hashes) and see how each batch is being used.

use super::{actor, back, locale, one_line, render, with_scoped};
use crate::admin::AdminError;
use crate::admin::session::SignedIn;
use crate::admin::views::{self, Nav};
use crate::config::Locale;
use crate::domain::TokenAmount;
use crate::i18n;
use crate::ledger::credits::MAX_BATCH;
use crate::startup::AppState;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{NaiveDate, NaiveDateTime};
use maud::html;
use serde::Deserialize;

pub async fn list(state: web::Data<AppState>, me: SignedIn) -> Result<HttpResponse, AdminError> {
    let l = locale(&state);
    let tz = state.config.timezone;
    let batches = with_scoped(&state, &me, |ledger| ledger.code_batches(100)).await?;
    let now = state.ledger.now().naive_utc();
    let body = html! {
        section.actions {
            form.stack method="post" action="/admin/codes" {
                h2 { (l.pick("Novo lote de códigos", "New batch of codes")) }
                (views::csrf_input(&me.csrf))
                label { (l.pick("Tokens por código", "Tokens per code"))
                    input type="text" name="tokens" inputmode="numeric" required placeholder="100.000"; }
                label { (l.pick("Quantos códigos", "How many codes"))
                    input type="number" name="count" min="1" max=(MAX_BATCH) required value="10"; }
                label { (l.pick("Válidos até o fim do dia", "Valid until the end of"))
                    input type="date" name="expires" required; }
                label { (l.pick("Observação (opcional)", "Note (optional)"))
                    input type="text" name="note" maxlength="300"; }
                button type="submit" { (l.pick("Criar e baixar o CSV", "Create and download the CSV")) }
                p.muted { (l.pick(
                    "Os códigos aparecem uma única vez, neste download: guarde o arquivo. O tokengate guarda só um resumo (hash) de cada um.",
                    "The codes appear once, in this download: keep the file. tokengate keeps only a digest (hash) of each.",
                )) }
            }
        }
        section {
            h2 { (l.pick("Lotes", "Batches")) }
            @if batches.is_empty() { p.empty { (l.pick("Nenhum lote ainda.", "No batches yet.")) } }
            @else {
                table #batches {
                    thead { tr {
                        th { (l.pick("Lote", "Batch")) } th.num { (l.pick("Tokens por código", "Tokens per code")) }
                        th.num { (l.pick("Usados", "Redeemed")) } th { (l.pick("Validade", "Valid until")) }
                        th { (l.pick("Observação", "Note")) } th { (l.pick("Criado por", "Created by")) }
                    } }
                    tbody { @for b in &batches { tr {
                        td { "#" (b.id) }
                        td.num { (views::tokens(b.tokens, l)) }
                        td.num { (b.redeemed) " / " (b.codes) }
                        td { (i18n::date(last_day(b.expires_at, tz), l))
                             @if b.expires_at <= now { " " span.badge.blocked { (l.pick("expirado", "expired")) } } }
                        td { (b.note.as_deref().unwrap_or("")) }
                        td { (b.created_by) " · " (i18n::datetime(b.created_at, tz, l)) }
                    } } }
                }
            }
        }
    };
    Ok(render(
        &state,
        &me,
        l.pick("Códigos de tokens", "Token codes"),
        Nav::Codes,
        body,
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct BatchForm {
    csrf: String,
    tokens: String,
    count: String,
    expires: String,
    note: String,
}

/// The first moment a code of a batch valid until `day` (inclusive, in the
/// configured time zone) no longer works, in UTC: the next day's first instant,
/// which is later than midnight where a clock change skips midnight.
pub fn end_of(day: NaiveDate, tz: chrono_tz::Tz) -> Option<NaiveDateTime> {
    let next = day.succ_opt()?;
    (0..=4 * 60).find_map(|minutes| {
        next.and_hms_opt(minutes / 60, minutes % 60, 0)?
            .and_local_timezone(tz)
            .earliest()
            .map(|t| t.naive_utc())
    })
}

/// The last day a batch expiring at `expires_at` (UTC) is valid, in `tz`.
pub fn last_day(expires_at: NaiveDateTime, tz: chrono_tz::Tz) -> NaiveDate {
    (expires_at - chrono::Duration::seconds(1))
        .and_utc()
        .with_timezone(&tz)
        .date_naive()
}

/// The latest last day a batch may have: ten years on.
pub fn latest_day(today: NaiveDate) -> NaiveDate {
    today
        .checked_add_months(chrono::Months::new(120))
        .unwrap_or(today)
}

/// The codes of a batch as CSV: one code per line, with its worth and validity.
pub fn csv(batch: i64, tokens: i64, valid_until: NaiveDate, codes: &[String]) -> String {
    let mut out = String::from("code,tokens,valid_until,batch\n");
    for code in codes {
        out.push_str(&format!("{code},{tokens},{valid_until},{batch}\n"));
    }
    out
}

pub async fn create(
    state: web::Data<AppState>,
    me: SignedIn,
    req: HttpRequest,
    form: web::Form<BatchForm>,
) -> Result<HttpResponse, AdminError> {
    me.check_post(&req, &state, &form.csrf)?;
    let l = locale(&state);
    let refuse = |text: &str| Ok(back(&me, "/admin/codes", false, text.to_owned()));
    let Ok(tokens) = TokenAmount::parse(&form.tokens) else {
        return refuse(l.pick(
            "Tokens por código: use só números, como 100000 ou 100.000.",
            "Tokens per code: use digits only, like 100000 or 100,000.",
        ));
    };
    let Some(count) = form
        .count
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| (1..=MAX_BATCH).contains(n))
    else {
        return refuse(&too_many(l));
    };
    let today = state
        .ledger
        .now()
        .with_timezone(&state.config.timezone)
        .date_naive();
    let Some((day, expires_at)) = NaiveDate::parse_from_str(form.expires.trim(), "%Y-%m-%d")
        .ok()
        .filter(|d| *d >= today && *d <= latest_day(today))
        .and_then(|d| end_of(d, state.config.timezone).map(|e| (d, e)))
    else {
        return refuse(l.pick(
            "Validade: escolha uma data de hoje até daqui a 10 anos.",
            "Valid until: choose a date from today to ten years on.",
        ));
    };
    let note = Some(one_line(&form.note, 300)).filter(|n| !n.is_empty());
    let who = actor(&me);
    let (batch, codes) = with_scoped(&state, &me, move |ledger| {
        ledger.create_code_batch(tokens, count, expires_at, note.as_deref(), &who)
    })
    .await?;
    tracing::info!(admin = %me.admin.email, batch, codes = count, tokens = tokens.get(), "code batch created");
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/csv; charset=utf-8"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"tokengate-codigos-lote-{batch}.csv\""),
        ))
        .body(csv(batch, tokens.get(), day, &codes)))
}

fn too_many(l: Locale) -> String {
    format!(
        "{} {}.",
        l.pick("Quantos códigos: de 1 a", "How many codes: from 1 to"),
        views::tokens(MAX_BATCH, l)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_ends_after_its_last_local_day_even_where_midnight_is_skipped() {
        let sp: chrono_tz::Tz = chrono_tz::America::Sao_Paulo;
        let day = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap_or_default();
        let end = end_of(day, sp).unwrap_or_default();
        assert_eq!(end.to_string(), "2027-01-01 03:00:00");
        assert_eq!(last_day(end, sp), day);
        // Santiago skips from 00:00 to 01:00 on 2027-09-05.
        let santiago: chrono_tz::Tz = chrono_tz::America::Santiago;
        let day = NaiveDate::from_ymd_opt(2027, 9, 4).unwrap_or_default();
        let end = end_of(day, santiago);
        assert!(end.is_some());
        assert_eq!(last_day(end.unwrap_or_default(), santiago), day);
    }
}
