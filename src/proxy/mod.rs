//! The OpenAI-compatible `/v1` surface: authenticate, identify, estimate, reserve,
//! forward, stream back unchanged, settle (docs/behaviour.md).

pub mod auth;
pub mod block;
pub mod body;
pub mod error;
pub mod estimate;
pub mod meter;
pub mod notice;
pub mod settler;
pub mod spool;
pub mod sse;
pub mod unreservable;
pub mod upstream;

pub use body::Endpoint;
pub use error::{ApiError, V1Error};

use crate::domain::identity::{IdentityError, Role, decode_header_value};
use crate::domain::{DisplayName, DistributorId, Email, Identity, PlanModels, TenantId, UserKey};
use crate::ledger::{Outcome, Reservation, ReserveOutcome, ReserveRequest, Settlement};
use crate::startup::AppState;
use crate::telemetry::Phase;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpRequest, HttpResponse, web};
use auth::{Caller, ClientKeys};
use bytes::BytesMut;
use futures_util::StreamExt;
use meter::{Meter, MeteredStream};
use std::time::{Duration, Instant};

pub const USER_ID_HEADER: &str = "x-librechat-user-id";
pub const USER_EMAIL_HEADER: &str = "x-librechat-user-email";
pub const USER_NAME_HEADER: &str = "x-librechat-user-name";
pub const USER_ROLE_HEADER: &str = "x-librechat-user-role";
/// The distributor a shared LibreChat names (`{{LIBRECHAT_USER_TENANTID}}`).
pub const TENANT_HEADER: &str = "x-librechat-tenant-id";
/// LibreChat's conversation (`{{LIBRECHAT_BODY_CONVERSATIONID}}`).
pub const CONVERSATION_HEADER: &str = "x-librechat-conversation-id";

/// Longest a request waits for its user's previous settlements, or for a backlog of
/// settlements to shrink (`Settler::caught_up`); after that it reserves against their
/// holds, which only errs on the safe side.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(2);
/// Longest a request waits for its user's other requests in flight when their
/// holds alone would cut it short or refuse it (`reserve`): long enough for a title
/// request at a slow reasoning model. After it, it is served with what is left, or
/// refused.
const CROWDED_WAIT: Duration = Duration::from_secs(10);
/// How often a crowded request reads its user's holds again, for holds that end on
/// another replica (a read, without a lock; it reserves again only when they shrank).
const CROWDED_POLL: Duration = Duration::from_millis(200);

/// Longest error body read from upstream before passing it on.
const MAX_UPSTREAM_ERROR_BYTES: usize = 1 << 20;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .route(
                "/chat/completions",
                metered_route(Endpoint::ChatCompletions),
            )
            .route("/completions", metered_route(Endpoint::Completions))
            .route("/embeddings", metered_route(Endpoint::Embeddings))
            .route("/responses", metered_route(Endpoint::Responses))
            .route("/models", web::get().to(models))
            .default_service(web::to(not_found)),
    );
}

/// `POST` on a metered route: `metered`, its errors in the configured language.
fn metered_route(endpoint: Endpoint) -> actix_web::Route {
    web::post().to(
        move |req: HttpRequest, payload: web::Payload, state: web::Data<AppState>| async move {
            let locale = state.config.locale;
            metered(req, payload, state, endpoint)
                .await
                .map_err(|e| e.in_locale(locale))
        },
    )
}

/// Any other route under `/v1`: refused, never forwarded unmetered.
async fn not_found(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, V1Error> {
    let error = if state
        .keys
        .check_header(req.headers().get(header::AUTHORIZATION))
    {
        let path: String = req.path().chars().take(200).collect();
        ApiError::NotFound(format!("{} {}", req.method(), path))
    } else {
        ApiError::InvalidApiKey
    };
    Err(error.in_locale(state.config.locale))
}

/// `GET /v1/models`: passed through; needs a client key, never a balance.
async fn models(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, V1Error> {
    let locale = state.config.locale;
    list_models(req, state)
        .await
        .map_err(|e| e.in_locale(locale))
}

async fn list_models(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&req, &state).await?;
    // LibreChat names the user when it fetches the models: they see their plan's.
    // Without a user, every model (a request is still checked when it is made).
    let user = match caller {
        Caller::LibreChat(grant) => {
            let distributor = distributor_of(req.headers(), grant, &state)?;
            identify(req.headers(), None, distributor).ok()
        }
        Caller::Service(key) => Some(Identity {
            distributor: DistributorId::DIRECT,
            key,
            email: None,
            name: None,
            role: None,
        }),
    };
    let plan_models = match user {
        Some(who) => {
            let ledger = state.ledger.clone();
            match web::block(move || ledger.models_for(&who)).await {
                Ok(Ok(models)) => models,
                // The list only fills LibreChat's menu; every request is still
                // checked against the plan (and refused while the database is out).
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the user's plan; listing every model");
                    PlanModels::All
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading the user's plan failed; listing every model");
                    PlanModels::All
                }
            }
        }
        None => PlanModels::All,
    };
    let res = state.upstream.get("/models", None).await?;
    let status = res.status().as_u16();
    let mut content_type = content_type_of(&res);
    let mut body = read_limited(res, MAX_UPSTREAM_ERROR_BYTES * 8).await?;
    if let (PlanModels::Only(_), 200) = (&plan_models, status) {
        body = only_models(&body, &plan_models);
        content_type = "application/json".into();
    }
    Ok(HttpResponse::build(status_code(status))
        .insert_header((header::CONTENT_TYPE, content_type))
        .body(body))
}

/// An OpenAI model list with only the entries `models` allows. A body that is not
/// such a list lists nothing: a plan's user never sees a model outside it.
fn only_models(body: &[u8], models: &PlanModels) -> bytes::Bytes {
    let mut list: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "upstream's model list is not JSON; listing no models");
            serde_json::Value::Null
        }
    };
    let kept: Vec<serde_json::Value> = list
        .get_mut("data")
        .and_then(serde_json::Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            m.get("id")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|id| models.allows(id))
        })
        .collect();
    let out = serde_json::json!({"object": "list", "data": kept});
    bytes::Bytes::from(out.to_string())
}

/// A metered request, step by step (docs/behaviour.md): who calls, what they ask,
/// the reservation, upstream, and the answer, whose end waits for its settlement.
async fn metered(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    endpoint: Endpoint,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let caller = authenticate(&req, &state).await?;
    let admitted = admit(&req, payload, &state, endpoint, caller).await?;
    let mut timing = Timing {
        parse: started.elapsed(),
        ..Timing::default()
    };
    state.metrics.record_phase(Phase::Parse, timing.parse);
    // Time-ordered (UUIDv7): holds and usage records are keyed by it, and ids that
    // grow with time append at the end of those B-trees instead of writing a random
    // page each, so consecutive requests (one group commit) share their index pages.
    let request_id = uuid::Uuid::now_v7().to_string();
    let reserving = Instant::now();
    let reservation = reserve(&state, &admitted, endpoint, &request_id).await?;
    timing.reserve = reserving.elapsed();
    state.metrics.record_phase(Phase::Reserve, timing.reserve);
    state.settler.started(&request_id);

    let Admitted {
        identity,
        prepared,
        model,
        stream,
        completions,
        plain_text,
        requested_completion,
        conversation: admitted_conversation,
        ..
    } = admitted;
    let answer = Answer {
        balance_headers: balance_headers(&state, &reservation),
        request_id: request_id.clone(),
    };
    let meter = Meter {
        settler: state.settler.clone(),
        user: identity.key.clone(),
        user_id: reservation.user_id,
        request_id,
        weights: reservation.weights,
        prompt_estimate: reservation.prompt_estimate,
        completion_cap: reservation
            .allowed_completion
            .map_or(0, |limit| limit.saturating_mul(completions)),
        started,
        open: true,
        conversation: admitted_conversation,
    };
    // A streamed text answer may end with a line of tokengate's own: the notice
    // (claimed now, or by its settlement should it cross the threshold), or why it
    // stopped, when the balance lowered its limit.
    let lowered_to = reservation
        .allowed_completion
        .filter(|allowed| requested_completion.is_some_and(|r| *allowed < r));
    let end_line = plain_text
        .then(|| end_line(&state, &model, &reservation, lowered_to))
        .flatten();
    let upstream_body = prepared.finish(reservation.allowed_completion);

    let sending = Instant::now();
    let response = match state
        .upstream
        .post_json(endpoint.path(), upstream_body, stream)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let (outcome, status) = match e {
                upstream::UpstreamError::Timeout => (Outcome::UpstreamTimeout, 504),
                upstream::UpstreamError::Unreachable => (Outcome::UpstreamUnreachable, 502),
            };
            tracing::warn!(request_id = %answer.request_id, outcome = outcome.as_str(), "upstream request failed");
            meter.close(outcome, status, None, "", None).wait().await;
            return Err(e.into());
        }
    };
    timing.upstream = sending.elapsed();
    state.metrics.record_phase(Phase::Upstream, timing.upstream);

    let status = response.status().as_u16();
    let content_type = content_type_of(&response);
    if !response.status().is_success() {
        // Upstream's own error, passed through unchanged; nothing was used.
        let ttfb = Some(started.elapsed());
        let body = read_limited(response, MAX_UPSTREAM_ERROR_BYTES).await;
        meter
            .close(Outcome::UpstreamError, status, None, "", ttfb)
            .wait()
            .await;
        return Ok(answer
            .headers(HttpResponse::build(status_code(status)))
            .insert_header((header::CONTENT_TYPE, content_type))
            .body(body?));
    }
    if stream && content_type.starts_with("text/event-stream") {
        // The stream's end waits for its settlement (`MeteredStream`); the
        // settlement's own time is only in /metrics.
        let metered = MeteredStream::new(Box::pin(response.bytes_stream()), meter, status)
            .with_end_line(end_line);
        return Ok(answer
            .headers(HttpResponse::build(status_code(status)))
            .insert_header((header::CONTENT_TYPE, content_type))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header(("x-accel-buffering", "no"))
            .insert_header(("server-timing", timing.header()))
            .streaming(metered));
    }
    respond_whole(
        response,
        meter,
        &answer,
        status,
        content_type,
        &timing,
        started,
    )
    .await
}

/// The client key: LibreChat's (the install's or a distributor's), or a service's.
/// A key not found may have been made since the stored keys were last read: it is
/// looked up by its digest.
async fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Caller, ApiError> {
    let presented = req.headers().get(header::AUTHORIZATION);
    if state.keys.claim_reload(auth::STORED_KEYS_MAX_AGE) {
        reload_keys(state).await;
    }
    if let Some(caller) = state.keys.caller(presented) {
        return Ok(caller);
    }
    if let Some(digest) = ClientKeys::presented_digest(presented) {
        let ledger = state.ledger.clone();
        match web::block(move || ledger.find_client_key(&hex::encode(digest))).await {
            Ok(Ok(Some((distributor, names_distributors)))) => {
                let grant = auth::Grant {
                    distributor: DistributorId::from_db(distributor),
                    names_distributors,
                };
                state.keys.add_stored(digest, grant);
                return Ok(Caller::LibreChat(grant));
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot look up a client key");
                return Err(ApiError::StorageUnavailable);
            }
            Err(_) => return Err(ApiError::Internal),
        }
    }
    state.metrics.record_rejection("invalid_api_key");
    Err(ApiError::InvalidApiKey)
}

/// Reads the stored client keys and tenant ids again. While the database cannot be
/// read, the last keys read stay in use (and the install's own always work).
pub async fn reload_keys(state: &AppState) {
    let ledger = state.ledger.clone();
    match web::block(move || ledger.key_ring()).await {
        Ok(Ok(ring)) => state.keys.set_stored(&ring.keys, &ring.tenants),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the stored client keys; keeping the last ones read")
        }
        Err(e) => tracing::warn!(error = %e, "reading the stored client keys failed"),
    }
}

/// Whose users a LibreChat request's are: the key's distributor, or the one a
/// shared LibreChat names in `X-LibreChat-Tenant-Id` (only with a key allowed to).
fn distributor_of(
    headers: &HeaderMap,
    grant: auth::Grant,
    state: &AppState,
) -> Result<DistributorId, ApiError> {
    let named = headers
        .get(TENANT_HEADER)
        .and_then(|v| decode_header_value(v.as_bytes()));
    let Some(named) = named else {
        return Ok(grant.distributor);
    };
    if !grant.names_distributors {
        state.metrics.record_rejection("tenant_not_allowed");
        return Err(ApiError::TenantNotAllowed);
    }
    TenantId::parse(named.trim())
        .and_then(|t| state.keys.tenant(&t))
        .ok_or_else(|| {
            state.metrics.record_rejection("unknown_tenant");
            ApiError::UnknownTenant
        })
}

/// The reservation, or why there is none. A request that only its user's own
/// requests in flight would cut short or refuse waits for them, up to
/// `CROWDED_WAIT`: LibreChat sends a conversation's title at the moment of its first
/// message, and near the end of a balance the title's hold (a default limit it never
/// uses) must not cut the user's answer.
async fn reserve(
    state: &AppState,
    admitted: &Admitted,
    endpoint: Endpoint,
    request_id: &str,
) -> Result<Reservation, ApiError> {
    let identity = &admitted.identity;
    // A request of this user that ended a moment ago may still be settling; its hold
    // must not shrink what this one may spend (LibreChat's title request follows the
    // first answer at once). This is also where a backlog of settlements slows
    // admissions down.
    if !state.settler.caught_up(&identity.key, CATCH_UP_LIMIT).await {
        tracing::warn!(user = %identity.key, "settlements are still being written; reserving against their holds");
    }
    let mut request = ReserveRequest {
        request_id: request_id.to_owned(),
        identity: identity.clone(),
        model: admitted.model.clone(),
        endpoint: endpoint.name(),
        stream: admitted.stream,
        prompt_tokens: admitted.prompt_tokens,
        requested_completion: admitted.requested_completion,
        min_completion: endpoint.min_completion(),
        completions: admitted.completions,
        images: admitted.images,
        notice_eligible: admitted.plain_text && state.config.chat_notice,
        needs_extra: admitted.unreservable.is_some(),
        patient: true,
        unpriced: state.config.unpriced_models,
    };
    let crowded_until = Instant::now() + CROWDED_WAIT;
    let outcome = loop {
        // Should the client go away while this waits, the reservation is still
        // written and then released at once: nothing reached upstream.
        let settler = state.settler.clone();
        let user = identity.key.clone();
        let outcome = state
            .ledger
            .reserve(request.clone(), move |r| {
                let released = Settlement::released(r.request_id, Outcome::ClientDisconnected, 499);
                drop(settler.submit(user, r.user_id, released));
            })
            .await?;
        let ReserveOutcome::Crowded { user_id, held } = outcome else {
            break outcome;
        };
        // Wait until the holds shrink (woken by a settlement of this user's here;
        // another replica's shows in a read), or the wait is over.
        loop {
            let left = crowded_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                request.patient = false;
                break;
            }
            state
                .settler
                .user_settled(&identity.key, left.min(CROWDED_POLL))
                .await;
            let ledger = state.ledger.clone();
            match web::block(move || ledger.held(user_id)).await {
                Ok(Ok(now)) if now >= held => {}
                // Shrank, or cannot be read: try the reservation again.
                _ => break,
            }
        }
    };
    match outcome {
        ReserveOutcome::Reserved(r) => Ok(r),
        refused => Err(refusal(state, admitted, refused)),
    }
}

/// Why the admission step did not admit a request, as its client reads it: each
/// refusal's metric, log line and answer, in one place.
fn refusal(state: &AppState, admitted: &Admitted, outcome: ReserveOutcome) -> ApiError {
    let identity = &admitted.identity;
    match outcome {
        ReserveOutcome::Blocked(b) => {
            state.metrics.record_rejection("insufficient_quota");
            tracing::info!(user = %identity.key, model = %admitted.model, reason = b.reason.as_str(), remaining = b.remaining, used_percent = b.used_percent, "blocked for balance");
            ApiError::InsufficientQuota {
                message: block::block_message(
                    state.config.locale,
                    &b,
                    b.contact
                        .as_deref()
                        .or(state.config.support_contact.as_deref()),
                    state.config.block_text.as_ref(),
                ),
                status: state.config.block_status,
            }
        }
        ReserveOutcome::LimitReached(reached) => {
            state.metrics.record_rejection("request_limit");
            tracing::info!(user = %identity.key, limit = reached.period.field(), count = reached.limit.get(), "refused: a request limit of the user's plan");
            let now = state.ledger.now();
            ApiError::RequestLimit {
                message: block::limit_message(
                    state.config.locale,
                    &reached,
                    now,
                    state.config.timezone,
                ),
                period: reached.period,
                retry_after: reached.seconds_left(now),
                status: state.config.block_status,
            }
        }
        ReserveOutcome::Suspended { contact } => {
            state.metrics.record_rejection("user_suspended");
            ApiError::Suspended(block::suspended_message(
                state.config.locale,
                contact
                    .as_deref()
                    .or(state.config.support_contact.as_deref()),
            ))
        }
        ReserveOutcome::ModelNotInPlan(models) => {
            state.metrics.record_rejection("model_not_in_plan");
            tracing::info!(user = %identity.key, model = %admitted.model, "refused: the model is not in the user's plan");
            ApiError::ModelNotInPlan {
                model: admitted.model.clone(),
                allowed: models.listed().into_iter().map(str::to_owned).collect(),
            }
        }
        ReserveOutcome::ModelNotPriced => {
            state.metrics.record_rejection("model_not_priced");
            tracing::warn!(model = %admitted.model, "refused: the model has no weights and TOKENGATE_UNPRICED_MODELS is refuse");
            ApiError::ModelNotPriced(admitted.model.clone())
        }
        ReserveOutcome::NotReservable => {
            state.metrics.record_rejection("not_reservable");
            let Some(what) = admitted.unreservable.clone() else {
                tracing::error!("the ledger asked for an extra cost the request does not need");
                return ApiError::Internal;
            };
            tracing::info!(user = %identity.key, model = %admitted.model, refused = %what, "refused: the provider would bill beyond the reservation");
            ApiError::NotReservable(what)
        }
        // Only a patient reservation waits; the last try is not patient.
        ReserveOutcome::Crowded { .. } => {
            tracing::error!("a last reservation came back crowded");
            ApiError::Internal
        }
        ReserveOutcome::Reserved(_) => {
            tracing::error!("an admitted request was taken for a refusal");
            ApiError::Internal
        }
    }
}

/// The line a streamed text answer may end with, unless there is nothing it could
/// say (the notice off, and the limit left as asked).
fn end_line(
    state: &AppState,
    model: &str,
    reservation: &Reservation,
    lowered_to: Option<i64>,
) -> Option<meter::EndLine> {
    if !state.config.chat_notice && lowered_to.is_none() {
        return None;
    }
    let ledger = state.ledger.clone();
    let user_id = reservation.user_id;
    Some(notice::end_line(
        model.to_owned(),
        state.config.locale,
        format!("{}/me", state.config.public_url),
        reservation.notice,
        // Without the journal (PostgreSQL) every answer waits for its write, and
        // any may carry the notice its write crossed.
        reservation.may_cross_notice || !state.settler.uses_journal(),
        lowered_to,
        move || ledger.notice_still_due(user_id),
    ))
}

/// For API clients: what is left, and when the allowance renews.
fn balance_headers(state: &AppState, reservation: &Reservation) -> [(&'static str, String); 2] {
    [
        (
            "x-tokengate-remaining",
            reservation.remaining.max(0).to_string(),
        ),
        (
            "x-tokengate-resets-at",
            state
                .ledger
                .current_cycle()
                .ends_at(state.ledger.timezone())
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
    ]
}

/// What every metered answer carries, whatever it is.
struct Answer {
    balance_headers: [(&'static str, String); 2],
    request_id: String,
}

impl Answer {
    fn headers(&self, mut res: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
        for (name, value) in &self.balance_headers {
            res.insert_header((*name, value.as_str()));
        }
        res.insert_header(("x-request-id", self.request_id.as_str()));
        res
    }
}

/// A whole (not streamed) answer: read, settled, and sent once its settlement is
/// durable.
async fn respond_whole(
    response: reqwest::Response,
    meter: Meter,
    answer: &Answer,
    status: u16,
    content_type: String,
    timing: &Timing,
    started: Instant,
) -> Result<HttpResponse, ApiError> {
    let ttfb = Some(started.elapsed());
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            let err = upstream::UpstreamError::from_reqwest(&e);
            meter
                .close(Outcome::UpstreamBroken, status, None, "", ttfb)
                .wait()
                .await;
            return Err(err.into());
        }
    };
    let Some(scanned) = sse::scan_json_response(&body) else {
        tracing::warn!(request_id = %answer.request_id, status, content_type = %content_type, "upstream answered with a body that is not JSON; not charged");
        meter
            .close(Outcome::UpstreamError, 502, None, "", ttfb)
            .wait()
            .await;
        return Err(ApiError::UpstreamGarbled);
    };
    let durable = if scanned.error_only {
        // LiteLLM's error after its 200: passed on as it came, and nothing was
        // generated to charge for.
        tracing::warn!(request_id = %answer.request_id, status, "upstream answered 200 with only an error; not charged");
        meter.close(Outcome::UpstreamError, status, None, "", ttfb)
    } else {
        meter.close(
            Outcome::Completed,
            status,
            scanned.usage,
            &scanned.text,
            ttfb,
        )
    };
    durable.wait().await;
    Ok(answer
        .headers(HttpResponse::build(status_code(status)))
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header(("server-timing", timing.header()))
        .body(body))
}

/// A metered request once its body is read, checked and written out for upstream
/// (all but the limit, which depends on the reservation).
struct Admitted {
    identity: Identity,
    prepared: body::Prepared,
    model: String,
    stream: bool,
    prompt_tokens: i64,
    /// The completion the client asked for (or the configured default); `None` for
    /// embeddings.
    requested_completion: Option<i64>,
    completions: i64,
    images: i64,
    /// A streamed chat answer that can only be text (may end with a line of
    /// tokengate's).
    plain_text: bool,
    /// What the provider would bill beyond what the request shows, if anything.
    unreservable: Option<error::Unreservable>,
    /// LibreChat's conversation (`X-LibreChat-Conversation-Id`), when it names one.
    conversation: Option<String>,
}

/// Reads and checks the body and the user. Done before the reservation waits, so
/// that the client's bytes are freed before it: under a burst of long conversations
/// they were most of the memory.
async fn admit(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    endpoint: Endpoint,
    caller: Caller,
) -> Result<Admitted, ApiError> {
    let bytes = read_body(req, payload, state.config.max_body_bytes).await?;
    let page = format!("{}/me", state.config.public_url);
    let parsed = body::parse_for(&bytes, endpoint, Some(&page))?;
    let unknown = parsed
        .unknown_fields
        .iter()
        .find(|f| !state.config.extra_fields.contains(f))
        .map(|f| error::Unreservable::Unknown(f.clone()));
    if let Some(never) = unknown.or_else(|| parsed.unreservable.clone().filter(|u| !u.coverable()))
    {
        state.metrics.record_rejection("not_reservable");
        tracing::info!(refused = %never, "refused: the provider would bill beyond the reservation");
        return Err(ApiError::NotReservable(never));
    }
    let identity = match caller {
        Caller::LibreChat(grant) => {
            let distributor = distributor_of(req.headers(), grant, state)?;
            identify(req.headers(), parsed.body_user.as_deref(), distributor)?
        }
        // A service is its own account, whatever user it names.
        Caller::Service(key) => Identity {
            distributor: DistributorId::DIRECT,
            name: DisplayName::parse(key.as_str()),
            key,
            email: None,
            role: None,
        },
    };
    let prepared = parsed.prepare(identity.key.as_str())?;
    let plain_text = parsed.is_plain_text_stream();
    let requested_completion = match endpoint {
        Endpoint::Embeddings => None,
        _ => Some(
            parsed
                .requested_max
                .unwrap_or(state.config.default_max_completion)
                .max(endpoint.min_completion()),
        ),
    };
    Ok(Admitted {
        identity,
        prepared,
        model: parsed.model,
        stream: parsed.stream,
        prompt_tokens: parsed.prompt_tokens,
        requested_completion,
        completions: parsed.completions,
        images: parsed.images,
        plain_text,
        unreservable: parsed.unreservable,
        conversation: conversation_of(req.headers()),
    })
}

/// tokengate's own time on one request, sent back as `Server-Timing` so a slow answer
/// can be told apart from a slow upstream. The settlement is written after the answer
/// has gone (`settler`): its time is in /metrics only.
#[derive(Default)]
struct Timing {
    parse: Duration,
    reserve: Duration,
    upstream: Duration,
}

impl Timing {
    fn header(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "parse;dur={:.3}, reserve;dur={:.3}, upstream;dur={:.3}",
            ms(self.parse),
            ms(self.reserve),
            ms(self.upstream)
        )
    }
}

/// LibreChat's conversation id: 1 to 128 printable ASCII characters (its ids are
/// UUIDs), else none: it only labels the usage record.
fn conversation_of(headers: &HeaderMap) -> Option<String> {
    let raw = decode_header_value(headers.get(CONVERSATION_HEADER)?.as_bytes())?;
    let id = raw.trim();
    (id.len() <= 128 && !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| id.to_owned())
}

/// Identity from LibreChat's headers, else the body's `user` (docs/behaviour.md).
pub fn identify(
    headers: &HeaderMap,
    body_user: Option<&str>,
    distributor: DistributorId,
) -> Result<Identity, ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| decode_header_value(v.as_bytes()))
    };
    let key = match header(USER_ID_HEADER).or_else(|| body_user.map(str::to_owned)) {
        // A service's account is reached only with its own key (`auth::Caller`).
        Some(raw) if raw.trim().starts_with(auth::SERVICE_PREFIX) => {
            Err(IdentityError::ServiceAccount)
        }
        Some(raw) => UserKey::parse(&raw),
        None => Err(IdentityError::Missing),
    }
    .map_err(ApiError::MissingUser)?;
    Ok(Identity {
        distributor,
        key,
        // A malformed email is ignored rather than refused: the chat must still work.
        email: header(USER_EMAIL_HEADER).and_then(|e| Email::parse(&e).ok()),
        name: header(USER_NAME_HEADER).and_then(|n| DisplayName::parse(&n)),
        role: header(USER_ROLE_HEADER).and_then(|r| Role::parse(&r)),
    })
}

async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge(limit));
    }
    // A body that arrives in one piece is used as it is: actix reads whatever the
    // socket holds (up to 32 KiB) before it hands the payload on, so a LibreChat chat
    // usually comes as one chunk, and copying it would only add a transient buffer of
    // its size per request. Only a body in several pieces is gathered into one.
    let mut first = bytes::Bytes::new();
    let mut gathered: Option<BytesMut> = None;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            if crate::limits::timed_out(&e) {
                return ApiError::BodyTimeout;
            }
            tracing::info!(error = %e, "the request body could not be read");
            ApiError::InvalidBody(error::BodyError::whole(error::Problem::Unreadable))
        })?;
        let read = gathered.as_ref().map_or(first.len(), BytesMut::len);
        if read + chunk.len() > limit {
            return Err(ApiError::BodyTooLarge(limit));
        }
        match &mut gathered {
            Some(buf) => buf.extend_from_slice(&chunk),
            None if first.is_empty() => first = chunk,
            None => {
                let capacity = declared.unwrap_or(read + chunk.len()).min(limit);
                let mut buf = BytesMut::with_capacity(capacity);
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&chunk);
                gathered = Some(buf);
            }
        }
    }
    Ok(gathered.map_or(first, BytesMut::freeze))
}

async fn read_limited(res: reqwest::Response, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let mut stream = res.bytes_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::from(upstream::UpstreamError::from_reqwest(&e)))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::UpstreamUnavailable);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn content_type_of(res: &reqwest::Response) -> String {
    res.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned()
}

fn status_code(status: u16) -> actix_web::http::StatusCode {
    actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ids(body: &[u8]) -> Vec<String> {
        let list: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(list["object"], "list");
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_plans_list_keeps_only_its_models_whatever_upstream_sends() {
        let plan = PlanModels::parse("gpt-4o, fake-model").unwrap();
        let upstream = br#"{"object":"list","data":[{"id":"gpt-4o","created":1},{"id":"o3"},{"no_id":true},{"id":7},"gpt-4o",{"id":"fake-model"}]}"#;
        assert_eq!(ids(&only_models(upstream, &plan)), ["gpt-4o", "fake-model"]);
        // What is not such a list lists nothing, never everything.
        for odd in [
            &b"<html>oops</html>"[..],
            b"[]",
            b"{}",
            br#"{"data":"gpt-4o"}"#,
            b"",
        ] {
            assert!(ids(&only_models(odd, &plan)).is_empty(), "{odd:?}");
        }
    }
}
