//! Model weights: what a token of each model costs from the balance.

use super::{actor, back, locale, one_line, render, with_scoped};
use crate::admin::AdminError;
use crate::admin::session::SignedIn;
use crate::admin::views::{self, Nav};
use crate::config::Locale;
use crate::domain::Weights;
use crate::domain::tokens::UnpricedModels;
use crate::ledger::ModelCost;
use crate::startup::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::html;
use serde::Deserialize;
use std::time::Duration;

pub use crate::domain::tokens::parse_weight;

fn show_weight(milli: i64, l: Locale) -> String {
    let s = format!("{}.{:03}", milli / 1000, milli % 1000);
    let s = s.trim_end_matches('0').trim_end_matches('.').to_owned();
    match l {
        Locale::PtBr => s.replace('.', ","),
        Locale::En => s,
    }
}

/// The models LiteLLM serves, offered as suggestions; empty when it cannot be reached.
pub(super) async fn upstream_models(state: &AppState) -> Vec<String> {
    let Ok(res) = state
        .upstream
        .get("/models", Some(Duration::from_secs(3)))
        .await
    else {
        return Vec::new();
    };
    let Ok(bytes) = res.bytes().await else {
        return Vec::new();
    };
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = body["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(|s| one_line(s, 200)))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids.dedup();
    ids
}

pub async fn list(state: web::Data<AppState>, me: SignedIn) -> Result<HttpResponse, AdminError> {
    let l = locale(&state);
    let weights = with_scoped(&state, &me, |ledger| ledger.weights()).await?;
    let models = upstream_models(&state).await;
    let unpriced = match state.config.unpriced_models {
        UnpricedModels::Weight(w) => {
            let w = show_weight(w.input_milli(), l);
            match l {
                Locale::PtBr => format!("Um modelo sem pesos custa {w} e {w}."),
                Locale::En => format!("A model without weights costs {w} and {w}."),
            }
        }
        UnpricedModels::Refuse => l
            .pick(
                "Um modelo sem pesos é recusado até que você defina os dele.",
                "A model without weights is refused until you set its own.",
            )
            .to_owned(),
    };
    let body = html! {
        p.muted { (l.pick(
            "Um pedido custa tokens de entrada × peso de entrada + tokens de saída × peso de saída.",
            "A request costs input tokens × input weight + output tokens × output weight.")) " "
            (unpriced) " (TOKENGATE_UNPRICED_MODELS)" }
        @if weights.is_empty() {
            p.empty { (l.pick("Nenhum peso definido.", "No weights set.")) }
        } @else {
            table.weights {
                thead { tr { th { (l.pick("Modelo", "Model")) } th.num { (l.pick("Entrada", "Input")) } th.num { (l.pick("Saída", "Output")) } th.num { (l.pick("Tokens por imagem", "Tokens per image")) } th.num { (l.pick("Extra por chamada", "Extra per call")) } } }
                tbody { @for row in &weights { tr {
                    td { code { (row.model) } } td.num { (show_weight(row.weights.input_milli(), l)) } td.num { (show_weight(row.weights.output_milli(), l)) } td.num { (views::tokens(row.image_tokens, l)) }
                    td.num { @match row.call_extra { Some(n) => (views::tokens(n, l)), None => span.muted { (l.pick("recusa", "refused")) } } }
                } } }
            }
        }
        form.stack method="post" action="/admin/weights" {
            h2 { (l.pick("Definir pesos", "Set weights")) }
            (views::csrf_input(&me.csrf))
            label { (l.pick("Modelo", "Model"))
                input type="text" name="model" list="models" required maxlength="200"; }
            datalist #models { @for m in &models { option value=(m) {} } }
            label { (l.pick("Peso de entrada", "Input weight")) input type="text" name="input" required inputmode="decimal" placeholder="1"; }
            label { (l.pick("Peso de saída", "Output weight")) input type="text" name="output" required inputmode="decimal" placeholder="1"; }
            label { (l.pick("Tokens por imagem, no pior caso (opcional)", "Tokens per image, at worst (optional)"))
                input type="text" name="image_tokens" inputmode="numeric" placeholder=(l.pick("o que o provedor documenta", "what the provider documents")); }
            label { (l.pick("Extra por chamada, no pior caso (opcional)", "Extra per call, at worst (optional)"))
                input type="text" name="call_extra" inputmode="numeric" placeholder=(l.pick("em branco: recusar", "blank: refuse")); }
            p.muted { (l.pick(
                "O que uma chamada pode custar a mais, em tokens do saldo, quando usa o que o provedor cobra à parte: busca na web, ferramentas que rodam no provedor, conteúdo guardado lá; e toda chamada de um modelo que busca sempre (como gpt-4o-search-preview ou sonar). Esse valor é reservado além do resto; cobra-se o uso que o provedor informar. Em branco: esses pedidos são recusados com uma mensagem clara. Taxas por busca que o provedor não conta em tokens: ponha-as nos pesos.",
                "What a call may cost on top, in balance tokens, when it uses what the provider bills apart: web search, tools run at the provider, content kept there; and every call of a model that always searches (such as gpt-4o-search-preview or sonar). This figure is reserved on top of the rest; the usage the provider reports is what is charged. Blank: such requests are refused with a clear message. Per-search fees the provider does not count in tokens: price them into the weights.")) }
            p.muted { (l.pick(
                "Cada imagem é reservada por esse valor antes de ir ao provedor. Em branco: o pior caso documentado para o nome do modelo (1.445 para gpt-4o, 48.169 para gpt-4o-mini); um nome que o tokengate não conhece (um apelido do LiteLLM) reserva 48.169, o maior deles.",
                "Each image is reserved at this figure before it goes to the provider. Blank: the worst case documented for the model's name (1,445 for gpt-4o, 48,169 for gpt-4o-mini); a name tokengate cannot place (a LiteLLM alias) reserves 48,169, the largest.")) }
            button type="submit" { (l.pick("Salvar", "Save")) }
            @if models.is_empty() { p.muted { (l.pick("O LiteLLM não respondeu: digite o nome do modelo.", "LiteLLM did not answer: type the model name.")) } }
        }
    };
    Ok(render(
        &state,
        &me,
        l.pick("Pesos dos modelos", "Model weights"),
        Nav::Weights,
        body,
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct WeightForm {
    csrf: String,
    model: String,
    input: String,
    output: String,
    image_tokens: String,
    call_extra: String,
}

pub async fn set(
    state: web::Data<AppState>,
    me: SignedIn,
    req: HttpRequest,
    form: web::Form<WeightForm>,
) -> Result<HttpResponse, AdminError> {
    me.check_post(&req, &state, &form.csrf)?;
    let l = locale(&state);
    let model = one_line(&form.model, 200);
    let weights = parse_weight(&form.input)
        .zip(parse_weight(&form.output))
        .and_then(|(i, o)| Weights::from_milli(i, o));
    let (true, Some(w)) = (!model.is_empty(), weights) else {
        return Ok(back(&me, "/admin/weights", false, l.pick(
            "Pesos recusados: informe o modelo e pesos de 0 a 1000, com até 3 casas decimais (como 1,5).",
            "Weights refused: give the model and weights from 0 to 1000, with up to 3 decimals (like 1.5).")));
    };
    let image_tokens = match form.image_tokens.trim() {
        "" => None,
        raw => match crate::domain::TokenAmount::parse(raw) {
            Ok(n) if n.get() <= 10_000_000 => Some(n.get()),
            _ => {
                return Ok(back(&me, "/admin/weights", false, l.pick(
                    "Tokens por imagem recusados: use um número inteiro de 1 a 10.000.000, ou deixe em branco.",
                    "Tokens per image refused: use a whole number from 1 to 10,000,000, or leave it blank.")));
            }
        },
    };
    let call_extra = match form.call_extra.trim() {
        "" => None,
        raw => match crate::domain::TokenAmount::parse(raw) {
            Ok(n) if n.get() <= 10_000_000 => Some(n.get()),
            // No extra: such calls allowed, reserved like any other.
            _ if raw == "0" => Some(0),
            _ => {
                return Ok(back(&me, "/admin/weights", false, l.pick(
                    "Extra por chamada recusado: use um número inteiro de 0 a 10.000.000, ou deixe em branco.",
                    "Extra per call refused: use a whole number from 0 to 10,000,000, or leave it blank.")));
            }
        },
    };
    let who = actor(&me);
    let m = model.clone();
    let cost = ModelCost {
        weights: w,
        image_tokens,
        call_extra,
    };
    with_scoped(&state, &me, move |ledger| {
        ledger.set_weights(&m, cost, &who)
    })
    .await?;
    Ok(back(
        &me,
        "/admin/weights",
        true,
        format!(
            "{} {model}.",
            l.pick("Pesos salvos para", "Weights saved for")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_like_people_write_them() {
        assert_eq!(parse_weight("1"), Some(1000));
        assert_eq!(parse_weight("1,5"), Some(1500));
        assert_eq!(parse_weight("0.125"), Some(125));
        assert_eq!(parse_weight("1000"), Some(1_000_000));
        assert_eq!(parse_weight("1000.001"), None);
        assert_eq!(parse_weight("-1"), None);
        assert_eq!(parse_weight("1.2345"), None);
        assert_eq!(parse_weight("abc"), None);
        assert_eq!(parse_weight(""), None);
        assert_eq!(show_weight(1500, Locale::PtBr), "1,5");
        assert_eq!(show_weight(2000, Locale::En), "2");
    }
}
