//! Errors on `/v1`, always in the OpenAI shape (docs/behaviour.md). LibreChat shows
//! their text in the chat, so every one of them is written in the configured language
//! (`V1Error`), down to a malformed body's: a user of LibreChat can meet any of them
//! (an operator's `addParams`, a switch the client offers). `Display` is the English
//! text, for logs.

use crate::config::{BlockStatus, Locale};
use crate::domain::Period;
use crate::domain::identity::IdentityError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;
use std::borrow::Cow;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Invalid or missing API key. Use one of tokengate's client keys.")]
    InvalidApiKey,
    #[error("{0}")]
    MissingUser(#[source] IdentityError),
    /// A distributor was named (`X-LibreChat-Tenant-Id`) with a key that may not
    /// name one: a distributor's key cannot reach another distributor's users.
    #[error(
        "This client key cannot name a distributor. Remove the X-LibreChat-Tenant-Id header, or use a key made with --names-distributors."
    )]
    TenantNotAllowed,
    /// A shared LibreChat named a distributor tokengate does not know.
    #[error(
        "No distributor has this tenant id. Ask your administrator to set it with tokengate distributors edit --tenant."
    )]
    UnknownTenant,
    #[error("{0}")]
    InvalidBody(BodyError),
    /// The request would make the provider bill what no reservation can cover.
    #[error("{0}")]
    NotReservable(Unreservable),
    #[error("The request body is larger than the limit of {0} bytes.")]
    BodyTooLarge(usize),
    /// The body did not arrive in time (`TOKENGATE_BODY_TIMEOUT_SECS`).
    #[error("The request body did not arrive in time.")]
    BodyTimeout,
    #[error("{0}")]
    Suspended(String),
    /// The user's plan does not include the model (`allowed` are the ones it does).
    #[error(
        "The model {} is not part of your plan. Your plan includes: {}.",
        shown(model),
        listed(allowed)
    )]
    ModelNotInPlan { model: String, allowed: Vec<String> },
    /// No admin has priced the model, and unpriced models are refused.
    #[error("The model {} has no price set here yet. Choose another model, or ask your administrator.", shown(.0))]
    ModelNotPriced(String),
    /// The block (`TOKENGATE_BLOCK_STATUS`); the text is user-facing, in the
    /// configured language.
    #[error("{message}")]
    InsufficientQuota {
        message: String,
        status: BlockStatus,
    },
    /// A plan's request limit: a minute's answers 429 with `Retry-After`
    /// (`retry_after`, seconds); a day's and a cycle's are the block, at
    /// `TOKENGATE_BLOCK_STATUS`. The text is user-facing, in the configured language.
    #[error("{message}")]
    RequestLimit {
        message: String,
        period: Period,
        retry_after: u64,
        status: BlockStatus,
    },
    #[error("The AI service is unreachable right now. Please try again in a moment.")]
    UpstreamUnavailable,
    // Not "took too long": LibreChat reads "too long" as a context-length problem.
    #[error("The AI service did not answer in time. Please try again.")]
    UpstreamTimeout,
    /// A success status with a body that is not an OpenAI answer (an HTML error page
    /// from a proxy, a truncated body): nothing usable happened, so nothing is charged.
    #[error(
        "The AI service sent an answer that could not be read. Please try again; this request was not charged."
    )]
    UpstreamGarbled,
    #[error("The usage database is unavailable right now; requests are refused until it is back.")]
    StorageUnavailable,
    #[error("Unknown API route: {}", shown(.0))]
    NotFound(String),
    #[error("Internal error; the request was not charged.")]
    Internal,
}

/// A request body tokengate cannot read as the endpoint's request, and the field at
/// fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.text(Locale::En))]
pub struct BodyError {
    pub problem: Problem,
    pub param: Option<&'static str>,
}

/// What is wrong with a body (or with its field `param`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Not JSON.
    NotJson(JsonFault),
    NotObject,
    /// The connection broke while the body was read.
    Unreadable,
    Model,
    Boolean,
    /// `stream` on an endpoint that does not stream.
    DoesNotStream,
    AtLeastOne,
    String,
    /// A whole number from 1 to `max`.
    Between {
        max: i64,
    },
    Array,
    NonEmptyArray,
    NotEmpty,
    StringOrArray,
    StringOrNonEmptyArray,
    /// A Chat Completions field sent to the Responses API.
    NotResponses,
}

impl BodyError {
    pub fn new(problem: Problem, param: &'static str) -> Self {
        Self {
            problem,
            param: Some(param),
        }
    }

    pub fn whole(problem: Problem) -> Self {
        Self {
            problem,
            param: None,
        }
    }

    /// The text in `locale`. A field's name is written as the API spells it.
    pub fn text(&self, locale: Locale) -> String {
        let f = self.param.unwrap_or("");
        let pt = locale == Locale::PtBr;
        match (&self.problem, self.param) {
            (Problem::NotJson(fault), None) if pt => {
                format!("O corpo do pedido não é um JSON válido: {}.", fault.pt())
            }
            (Problem::NotJson(fault), None) => {
                format!("The request body is not valid JSON: {}.", fault.detail)
            }
            (Problem::NotJson(fault), Some(f)) if pt => {
                format!("`{f}` não é um JSON válido: {}.", fault.pt())
            }
            (Problem::NotJson(fault), Some(f)) => {
                format!("`{f}` is not valid JSON: {}.", fault.detail)
            }
            (Problem::NotObject, _) if pt => "O corpo do pedido deve ser um objeto JSON.".into(),
            (Problem::NotObject, _) => "The request body must be a JSON object.".into(),
            (Problem::Unreadable, _) if pt => {
                "O corpo do pedido não pôde ser lido: a conexão caiu. Envie de novo.".into()
            }
            (Problem::Unreadable, _) => {
                "The request body could not be read: the connection broke. Send it again.".into()
            }
            (Problem::Model, _) if pt => {
                "`model` deve ser o nome de um só modelo: de 1 a 256 caracteres, sem vírgulas nem caracteres de controle."
                    .into()
            }
            (Problem::Model, _) => {
                "`model` must name one model: 1 to 256 characters, with no commas or control characters.".into()
            }
            (Problem::Boolean, _) if pt => format!("`{f}` deve ser true ou false."),
            (Problem::Boolean, _) => format!("`{f}` must be true or false."),
            (Problem::DoesNotStream, _) if pt => "Esta rota não responde em stream.".into(),
            (Problem::DoesNotStream, _) => "This endpoint does not stream.".into(),
            (Problem::AtLeastOne, _) if pt => {
                format!("`{f}` deve ser um número inteiro de pelo menos 1.")
            }
            (Problem::AtLeastOne, _) => format!("`{f}` must be a whole number of at least 1."),
            (Problem::String, _) if pt => format!("`{f}` deve ser um texto."),
            (Problem::String, _) => format!("`{f}` must be a string."),
            (Problem::Between { max }, _) if pt => {
                format!("`{f}` deve ser um número inteiro de 1 a {max}.")
            }
            (Problem::Between { max }, _) => {
                format!("`{f}` must be a whole number from 1 to {max}.")
            }
            (Problem::Array, _) if pt => format!("`{f}` deve ser uma lista."),
            (Problem::Array, _) => format!("`{f}` must be an array."),
            (Problem::NonEmptyArray, _) if pt => format!("`{f}` deve ser uma lista não vazia."),
            (Problem::NonEmptyArray, _) => format!("`{f}` must be a non-empty array."),
            (Problem::NotEmpty, _) if pt => format!("`{f}` não pode estar vazio."),
            (Problem::NotEmpty, _) => format!("`{f}` must not be empty."),
            (Problem::StringOrArray, _) if pt => format!("`{f}` deve ser um texto ou uma lista."),
            (Problem::StringOrArray, _) => format!("`{f}` must be a string or an array."),
            (Problem::StringOrNonEmptyArray, _) if pt => {
                format!("`{f}` deve ser um texto ou uma lista não vazia.")
            }
            (Problem::StringOrNonEmptyArray, _) => {
                format!("`{f}` must be a string or a non-empty array.")
            }
            (Problem::NotResponses, _) if pt => format!(
                "`{f}` não faz parte da API Responses (o limite da resposta é `max_output_tokens`)."
            ),
            (Problem::NotResponses, _) => format!(
                "`{f}` is not part of the Responses API (the limit is `max_output_tokens`)."
            ),
        }
    }
}

/// Why a body is not JSON: the parser's words (English, for developers) with its
/// braces spelled out (LibreChat parses `{...}` in an error as JSON), and the kind of
/// fault, which is what a Portuguese text can say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonFault {
    kind: serde_json::error::Category,
    detail: String,
    /// Line and column; `None` inside a field, where they would count from the
    /// field's start.
    at: Option<(usize, usize)>,
}

impl JsonFault {
    pub fn of(e: &serde_json::Error, whole_body: bool) -> Self {
        let cause = e.to_string();
        let cause = cause.split(" at line ").next().unwrap_or_default();
        let detail = cause
            .replace("`{`", "an opening brace")
            .replace("`}`", "a closing brace")
            .replace(['{', '}'], "");
        let at = whole_body.then(|| (e.line(), e.column()));
        let detail = match at {
            Some((line, column)) => format!("{detail} at line {line} column {column}"),
            None => detail,
        };
        Self {
            kind: e.classify(),
            detail,
            at,
        }
    }

    fn pt(&self) -> String {
        use serde_json::error::Category;
        let what = match self.kind {
            Category::Eof => "ele termina antes do fim",
            Category::Data => "um valor fora do que o JSON permite",
            Category::Syntax | Category::Io => "erro de sintaxe",
        };
        match self.at {
            Some((line, column)) => format!("{what} na linha {line}, coluna {column}"),
            None => what.to_owned(),
        }
    }
}

/// Something in a request that makes the provider bill what tokengate cannot see
/// before the answer: work done at the provider (its own tools, web search), content
/// kept there, or work billed later out of sight. Refused unless the admin has given
/// the model a worst-case extra cost per call, which is then reserved; `Background`
/// is refused whatever the model, as its answer never says what it used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.text(Locale::En))]
pub enum Unreservable {
    /// A `tools` entry that is not a function the client runs itself, by its type
    /// (or its only key, as Gemini writes them: `googleSearch`).
    Tool(String),
    /// A top-level field that turns on a provider's web search.
    WebSearch(&'static str),
    /// A top-level field that has the provider run something else of its own (remote
    /// MCP servers, a code container).
    Feature(&'static str),
    /// A conversation, prompt, item or file kept at the provider, named by `param`.
    Stored(&'static str),
    /// A part of the conversation the provider bills in a way its size does not
    /// tell (a document by its pages, a video by its length, an image it fetches),
    /// by the field it is in and its type.
    Content(&'static str, String),
    /// A model that searches the web on every call.
    SearchModel(String),
    /// A `background` response of the Responses API.
    Background,
    /// A `cache_control` that keeps content at the provider longer than an hour.
    LongCache,
    /// A top-level field tokengate does not know (nor the operator allows).
    Unknown(String),
}

impl Unreservable {
    /// The field at fault.
    pub fn param(&self) -> &'static str {
        match self {
            Self::Tool(_) => "tools",
            Self::WebSearch(f) | Self::Feature(f) | Self::Stored(f) => f,
            Self::Content(f, _) => f,
            Self::SearchModel(_) => "model",
            Self::Background => "background",
            Self::LongCache => "cache_control",
            // Its own name, as the client sent it (`ApiError::param`).
            Self::Unknown(_) => "",
        }
    }

    /// Whether an admin's extra cost for the model makes it reservable. A
    /// background response never says what it used, a cache kept for days is
    /// billed by the hour, and an unknown field may do anything.
    pub fn coverable(&self) -> bool {
        !matches!(self, Self::Background | Self::LongCache | Self::Unknown(_))
    }

    pub fn text(&self, locale: Locale) -> String {
        let pt = locale == Locale::PtBr;
        match self {
            Self::Tool(name) if pt => format!(
                "A ferramenta {} roda no provedor de IA, que a cobra à parte, e não está disponível aqui. Envie sem ela.",
                shown(name)
            ),
            Self::Tool(name) => format!(
                "The tool {} runs at the AI provider, which bills it separately, and is not available here. Send without it.",
                shown(name)
            ),
            Self::WebSearch(_) if pt => "A busca na web não está disponível aqui: o provedor de IA a cobra à parte. Desligue a busca na web e envie de novo.".into(),
            Self::WebSearch(_) => "Web search is not available here: the AI provider bills it separately. Turn web search off and send again.".into(),
            Self::Feature(f) if pt => format!(
                "Este pedido liga um recurso do provedor de IA ({f}) que ele cobra à parte e que não está disponível aqui. Desligue-o e envie de novo."
            ),
            Self::Feature(f) => format!(
                "This request turns on a feature the AI provider bills separately ({f}), which is not available here. Turn it off and send again."
            ),
            Self::Stored(f) if pt => format!(
                "Parte deste pedido está guardada no provedor de IA ({f}), que cobra por ela um valor que não se sabe antes. Envie o próprio conteúdo."
            ),
            Self::Stored(f) => format!(
                "Part of this request is kept at the AI provider ({f}), which bills an amount not known in advance. Send the content itself."
            ),
            Self::Content(_, kind) if pt => format!(
                "Esta mensagem traz um conteúdo ({}) que o provedor de IA cobra por páginas ou duração, o que não se sabe antes. Envie como texto ou imagem.",
                shown(kind)
            ),
            Self::Content(_, kind) => format!(
                "This message carries content ({}) the AI provider bills by pages or length, which is not known in advance. Send it as text or an image.",
                shown(kind)
            ),
            Self::SearchModel(model) if pt => format!(
                "O modelo {} busca na web a cada mensagem, o que o provedor de IA cobra à parte, e não está disponível aqui. Escolha outro modelo.",
                shown(model)
            ),
            Self::SearchModel(model) => format!(
                "The model {} searches the web on every message, which the AI provider bills separately, and is not available here. Choose another model.",
                shown(model)
            ),
            Self::Background if pt => "Respostas em segundo plano (background) não estão disponíveis aqui: o provedor as cobra depois, sem dizer quanto. Espere a resposta.".into(),
            Self::Background => "Background responses are not available here: the provider bills them later without saying how much. Wait for the answer instead.".into(),
            Self::LongCache if pt => "Guardar conteúdo no provedor de IA por mais de uma hora (cache_control com ttl) é cobrado à parte e não está disponível aqui. Use ttl de 5m ou 1h.".into(),
            Self::LongCache => "Keeping content at the AI provider for over an hour (cache_control with a ttl) is billed separately and not available here. Use a ttl of 5m or 1h.".into(),
            Self::Unknown(field) if pt => format!(
                "O campo {} não é aceito aqui: só passam campos que o saldo pode cobrir. O administrador pode liberar um campo inofensivo.",
                shown(field)
            ),
            Self::Unknown(field) => format!(
                "The field {} is not accepted here: only fields the balance can cover go through. Your administrator can allow a harmless one.",
                shown(field)
            ),
        }
    }
}

/// A name from the request inside a sentence LibreChat shows: short, one line, no
/// braces (LibreChat parses `{...}` as JSON), and none at all when it holds words
/// LibreChat takes for a context-length problem (it would cut the conversation and
/// send it again).
fn shown(name: &str) -> String {
    let clean = on_one_line(name, 40);
    let lower = clean.to_lowercase();
    if ["context", "too long", "too large"]
        .iter()
        .any(|w| lower.contains(w))
    {
        "…".to_owned()
    } else {
        clean
    }
}

/// A plan's models as a user reads them: as many as fit in a short line (LibreChat
/// shows the text inline), then how many more.
fn listed(models: &[String]) -> String {
    const BUDGET: usize = 80;
    let mut text = String::new();
    for (i, m) in models.iter().enumerate() {
        let name = shown(m);
        if i > 0 && text.chars().count() + name.chars().count() + 2 > BUDGET {
            text.push_str(&format!(" (+{})", models.len() - i));
            break;
        }
        if i > 0 {
            text.push_str(", ");
        }
        text.push_str(&name);
    }
    text
}

/// `name`'s first `max` characters, without control characters or braces.
fn on_one_line(name: &str, max: usize) -> String {
    name.chars()
        .filter(|c| !c.is_control() && !matches!(c, '{' | '}'))
        .take(max)
        .collect()
}

impl ApiError {
    pub fn body(problem: Problem, param: &'static str) -> Self {
        Self::InvalidBody(BodyError::new(problem, param))
    }

    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::InvalidApiKey => ("invalid_request_error", "invalid_api_key"),
            Self::MissingUser(_) => ("invalid_request_error", "missing_user"),
            Self::TenantNotAllowed => ("permission_error", "tenant_not_allowed"),
            Self::UnknownTenant => ("invalid_request_error", "unknown_tenant"),
            Self::InvalidBody(_) => ("invalid_request_error", "invalid_body"),
            Self::NotReservable(_) => ("invalid_request_error", "not_reservable"),
            Self::BodyTooLarge(_) => ("invalid_request_error", "body_too_large"),
            Self::BodyTimeout => ("invalid_request_error", "body_timeout"),
            Self::Suspended(_) => ("permission_error", "user_suspended"),
            Self::ModelNotInPlan { .. } => ("permission_error", "model_not_in_plan"),
            Self::ModelNotPriced(_) => ("permission_error", "model_not_priced"),
            Self::InsufficientQuota { .. } => ("insufficient_quota", "insufficient_quota"),
            // The code every OpenAI client and LangChain take for "do not retry"; a
            // minute's is a rate limit (OpenAI's `requests`), the others a block.
            Self::RequestLimit {
                period: Period::Minute,
                ..
            } => ("requests", "insufficient_quota"),
            Self::RequestLimit { .. } => ("insufficient_quota", "insufficient_quota"),
            Self::UpstreamUnavailable | Self::UpstreamGarbled => {
                ("upstream_error", "upstream_unavailable")
            }
            Self::UpstreamTimeout => ("upstream_error", "upstream_timeout"),
            Self::StorageUnavailable => ("server_error", "storage_unavailable"),
            Self::NotFound(_) => ("invalid_request_error", "not_found"),
            Self::Internal => ("server_error", "internal_error"),
        }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::MissingUser(_) | Self::InvalidBody(_) | Self::NotReservable(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Suspended(_)
            | Self::ModelNotInPlan { .. }
            | Self::ModelNotPriced(_)
            | Self::TenantNotAllowed => StatusCode::FORBIDDEN,
            Self::UnknownTenant => StatusCode::BAD_REQUEST,
            Self::InsufficientQuota { status, .. } => status.status(),
            Self::RequestLimit {
                period: Period::Minute,
                ..
            } => StatusCode::TOO_MANY_REQUESTS,
            Self::RequestLimit { status, .. } => status.status(),
            Self::UpstreamUnavailable | Self::UpstreamGarbled => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn param(&self) -> Option<String> {
        match self {
            Self::InvalidBody(e) => e.param.map(str::to_owned),
            Self::NotReservable(Unreservable::Unknown(field)) => Some(on_one_line(field, 64)),
            Self::NotReservable(u) => Some(u.param().to_owned()),
            Self::ModelNotInPlan { .. } | Self::ModelNotPriced(_) => Some("model".to_owned()),
            Self::RequestLimit { period, .. } => Some(period.field().to_owned()),
            _ => None,
        }
    }

    /// The text the client reads, in `locale`.
    pub fn message(&self, locale: Locale) -> Cow<'_, str> {
        if locale == Locale::En {
            return match self {
                // Said to a user more plainly than in the logs.
                Self::BodyTooLarge(limit) => Cow::Owned(format!(
                    "This message is over the limit of {}. Send smaller files, or send them in parts.",
                    size(*limit)
                )),
                Self::StorageUnavailable => Cow::Borrowed(
                    "Usage tracking is down right now; requests are served again once it is back. Please try again in a few minutes.",
                ),
                _ => Cow::Owned(self.to_string()),
            };
        }
        let text = match self {
            Self::InvalidApiKey => {
                "Chave de API ausente ou inválida. Use uma das chaves de cliente do tokengate."
            }
            Self::MissingUser(e) => return Cow::Owned(identity_text(*e)),
            Self::TenantNotAllowed => {
                "Esta chave de cliente não pode indicar um distribuidor. Tire o cabeçalho X-LibreChat-Tenant-Id ou use uma chave criada com --names-distributors."
            }
            Self::UnknownTenant => {
                "Nenhum distribuidor tem este tenant id. Peça ao administrador que o defina com tokengate distributors edit --tenant."
            }
            Self::InvalidBody(e) => return Cow::Owned(e.text(locale)),
            Self::NotReservable(u) => return Cow::Owned(u.text(locale)),
            Self::ModelNotInPlan { model, allowed } => {
                return Cow::Owned(format!(
                    "O modelo {} não faz parte do seu plano. Seu plano inclui: {}.",
                    shown(model),
                    listed(allowed)
                ));
            }
            Self::ModelNotPriced(model) => {
                return Cow::Owned(format!(
                    "O modelo {} ainda não tem preço definido aqui. Escolha outro modelo ou fale com o administrador.",
                    shown(model)
                ));
            }
            Self::BodyTooLarge(limit) => {
                return Cow::Owned(format!(
                    "Esta mensagem passa do limite de {}. Envie arquivos menores ou em partes.",
                    size(*limit)
                ));
            }
            Self::BodyTimeout => {
                "A mensagem não chegou inteira a tempo. Verifique a conexão e envie de novo."
            }
            // Written in the configured language where they are made.
            Self::Suspended(text)
            | Self::InsufficientQuota { message: text, .. }
            | Self::RequestLimit { message: text, .. } => text,
            Self::UpstreamUnavailable => {
                "O serviço de IA não está acessível agora. Tente de novo em instantes."
            }
            Self::UpstreamTimeout => "O serviço de IA não respondeu a tempo. Tente de novo.",
            Self::UpstreamGarbled => {
                "O serviço de IA enviou uma resposta que não pôde ser lida. Tente de novo; este pedido não foi cobrado."
            }
            Self::StorageUnavailable => {
                "O controle de uso está fora do ar agora; os pedidos voltam a ser atendidos quando ele voltar. Tente de novo em alguns minutos."
            }
            Self::NotFound(route) => {
                return Cow::Owned(format!("Rota de API desconhecida: {}", shown(route)));
            }
            Self::Internal => "Erro interno; este pedido não foi cobrado.",
        };
        Cow::Borrowed(text)
    }

    /// The OpenAI-shaped answer, its text in `locale`.
    fn response(&self, locale: Locale) -> HttpResponse {
        let (kind, code) = self.kind();
        let body = json!({"error": {"message": self.message(locale), "type": kind, "code": code, "param": self.param()}});
        let mut res = HttpResponse::build(self.status_code());
        if matches!(
            self,
            Self::InsufficientQuota { .. } | Self::RequestLimit { .. }
        ) {
            // Stops the official OpenAI SDKs from retrying; no Retry-After on the
            // block on purpose.
            res.insert_header(("x-should-retry", "false"));
        }
        if let Self::RequestLimit {
            period: Period::Minute,
            retry_after,
            ..
        } = self
        {
            // When the minute starts over; the code above keeps clients from
            // retrying on their own, and people and scripts read when to.
            res.insert_header(("retry-after", retry_after.to_string()));
        }
        if matches!(self, Self::InvalidApiKey) {
            res.insert_header(("www-authenticate", "Bearer"));
        }
        if matches!(self, Self::BodyTimeout) {
            // What is left of the body is never read: the connection cannot carry
            // another request.
            res.insert_header((actix_web::http::header::CONNECTION, "close"));
        }
        res.json(body)
    }

    /// This error as the client will get it, in the configured language.
    pub fn in_locale(self, locale: Locale) -> V1Error {
        V1Error {
            error: self,
            locale,
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        Self::InvalidBody(e)
    }
}

fn identity_text(e: IdentityError) -> String {
    match e {
        IdentityError::Missing => "Falta a identidade do usuário: envie o cabeçalho X-LibreChat-User-Id ou o campo `user`.",
        IdentityError::InvalidUserId => "O id do usuário deve ter de 1 a 128 caracteres ASCII visíveis.",
        IdentityError::ServiceAccount => "Ids de usuário que começam com `service:` são contas de chaves de serviço.",
        IdentityError::InvalidEmail => "Endereço de e-mail inválido.",
    }
    .to_owned()
}

/// A size limit as a person reads it: whole megabytes, or kilobytes below one.
fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MB", bytes >> 20)
    } else {
        format!("{} KB", bytes.div_ceil(1 << 10))
    }
}

/// An `ApiError` on its way to the client: what `/v1` handlers return.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct V1Error {
    pub error: ApiError,
    pub locale: Locale,
}

impl ResponseError for V1Error {
    fn status_code(&self) -> StatusCode {
        self.error.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        self.error.response(self.locale)
    }
}

impl From<crate::db::StoreError> for ApiError {
    fn from(e: crate::db::StoreError) -> Self {
        match e {
            crate::db::StoreError::Unavailable(msg) => {
                tracing::warn!(error = %msg, "database unavailable; failing closed");
                Self::StorageUnavailable
            }
            crate::db::StoreError::Query(err) => {
                tracing::error!(error = %err, "database query failed");
                Self::Internal
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every error a request can meet, once.
    fn every_error() -> Vec<ApiError> {
        let mut errors = vec![
            ApiError::InvalidApiKey,
            ApiError::TenantNotAllowed,
            ApiError::UnknownTenant,
            ApiError::BodyTooLarge(20_971_520),
            ApiError::BodyTooLarge(2048),
            ApiError::BodyTimeout,
            ApiError::UpstreamUnavailable,
            ApiError::UpstreamTimeout,
            ApiError::UpstreamGarbled,
            ApiError::StorageUnavailable,
            ApiError::NotFound("GET /v1/files".into()),
            ApiError::NotFound("POST /v1/{context}/too_long".into()),
            ApiError::Internal,
        ];
        for e in [
            IdentityError::Missing,
            IdentityError::InvalidUserId,
            IdentityError::ServiceAccount,
            IdentityError::InvalidEmail,
        ] {
            errors.push(ApiError::MissingUser(e));
        }
        let long = "x".repeat(300);
        for u in [
            Unreservable::Tool("web_search_preview".into()),
            Unreservable::Tool(format!("{{{long}}}\n")),
            Unreservable::WebSearch("web_search_options"),
            Unreservable::Feature("mcp_servers"),
            Unreservable::Stored("previous_response_id"),
            Unreservable::Content("messages", "file".into()),
            Unreservable::SearchModel(long.clone()),
            Unreservable::Background,
            Unreservable::LongCache,
            Unreservable::Unknown(long.clone()),
            Unreservable::Unknown("max_context_tokens".into()),
            Unreservable::Tool("context too long x".into()),
        ] {
            errors.push(ApiError::NotReservable(u));
        }
        for allowed in [
            vec!["gpt-4o-mini".to_owned()],
            (0..100).map(|i| format!("{long}{i}")).collect(),
        ] {
            errors.push(ApiError::ModelNotInPlan {
                model: long.clone(),
                allowed,
            });
        }
        errors.push(ApiError::ModelNotPriced(long.clone()));
        for problem in [
            Problem::NotJson(JsonFault::of(
                &serde_json::from_str::<serde_json::Value>("{\"a\" 1}").unwrap_err(),
                true,
            )),
            Problem::NotObject,
            Problem::Unreadable,
            Problem::Model,
            Problem::Boolean,
            Problem::DoesNotStream,
            Problem::AtLeastOne,
            Problem::String,
            Problem::Between { max: 128 },
            Problem::Array,
            Problem::NonEmptyArray,
            Problem::NotEmpty,
            Problem::StringOrArray,
            Problem::StringOrNonEmptyArray,
            Problem::NotResponses,
        ] {
            errors.push(ApiError::body(problem.clone(), "max_completion_tokens"));
            errors.push(ApiError::InvalidBody(BodyError::whole(problem)));
        }
        errors
    }

    /// LibreChat shows these texts in the chat: one plain line, no braces (parsed as
    /// JSON there), no words it reads as a context-length problem (it would summarize
    /// and send again), short enough to be shown inline, and in Portuguese by default.
    #[test]
    fn every_text_is_translated_and_safe_for_librechat() {
        for error in every_error() {
            let (pt, en) = (error.message(Locale::PtBr), error.message(Locale::En));
            assert_ne!(pt, en, "not translated: {en}");
            for text in [pt, en] {
                let lower = text.to_lowercase();
                assert!(!text.contains(['{', '}', '\n', '\r']), "{text}");
                assert!(text.chars().count() <= 185, "{}: {text}", text.len());
                for word in ["context", "too long", "too large"] {
                    assert!(!lower.contains(word), "{text}");
                }
            }
        }
        assert_eq!(
            ApiError::BodyTooLarge(20_971_520).message(Locale::PtBr),
            "Esta mensagem passa do limite de 20 MB. Envie arquivos menores ou em partes."
        );
    }
}
