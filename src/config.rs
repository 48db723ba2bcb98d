//! Configuration from the environment (docs/configuration.md), validated in one pass so an
//! operator sees every problem at once.

use chrono_tz::Tz;
use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;
use std::time::Duration;

/// Which database, parsed from `TOKENGATE_DATABASE_URL`.
#[derive(Clone)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    /// Kept secret: it usually carries a password.
    Postgres(SecretString),
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if let Some(path) = raw.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path, like sqlite://data/tokengate.db".into());
            }
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            Ok(Self::Postgres(SecretString::from(raw.to_owned())))
        } else {
            Err("must start with sqlite:// or postgres://".into())
        }
    }

    /// A form safe to print: the password is never shown.
    pub fn redacted(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
            Self::Postgres(url) => redact_url(secrecy::ExposeSecret::expose_secret(url)),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `scheme://user:password@host/...` -> `scheme://user:***@host/...`
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locale {
    PtBr,
    En,
}

impl Locale {
    /// The text for this locale: `locale.pick("Usuários", "Users")`.
    pub fn pick<'a>(self, pt_br: &'a str, en: &'a str) -> &'a str {
        match self {
            Self::PtBr => pt_br,
            Self::En => en,
        }
    }

    pub fn html_lang(self) -> &'static str {
        match self {
            Self::PtBr => "pt-BR",
            Self::En => "en",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pt-br" | "pt_br" | "pt" => Some(Self::PtBr),
            "en" | "en-us" | "en_us" => Some(Self::En),
            _ => None,
        }
    }
}

/// The HTTP status of a refusal for balance (`TOKENGATE_BLOCK_STATUS`). Which one a
/// LibreChat shows with its text depends on its version: up to v0.8.8-rc1 all three;
/// from v0.8.8-rc2 on, any 429 is replaced by a generic "rate limit, wait and retry"
/// sentence, while 402 and 403 keep the text (README, "Which LibreChat").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockStatus {
    /// 429, the OpenAI convention for exhausted quota.
    TooManyRequests,
    /// 402 Payment Required.
    PaymentRequired,
    /// 403 Forbidden.
    Forbidden,
}

impl BlockStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "429" => Some(Self::TooManyRequests),
            "402" => Some(Self::PaymentRequired),
            "403" => Some(Self::Forbidden),
            _ => None,
        }
    }

    pub fn status(self) -> actix_web::http::StatusCode {
        use actix_web::http::StatusCode;
        match self {
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::PaymentRequired => StatusCode::PAYMENT_REQUIRED,
            Self::Forbidden => StatusCode::FORBIDDEN,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything tokengate reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub database_url: DatabaseUrl,
    pub upstream_url: String,
    pub upstream_key: Option<SecretString>,
    /// Empty: keys are generated once and stored (see `bootstrap`).
    pub client_keys: Vec<SecretString>,
    /// `TOKENGATE_SERVICE_KEYS`: services (LibreChat's RAG API) metered to an account
    /// of their own, `service:NAME` (`proxy::auth`).
    pub service_keys: Vec<(String, SecretString)>,
    pub smtp_url: Option<SecretString>,
    pub mail_from: String,
    pub admin_emails: Vec<String>,
    pub alert_thresholds: Vec<u8>,
    pub timezone: Tz,
    pub locale: Locale,
    pub block_status: BlockStatus,
    /// The in-chat notice after a threshold below 100% (`TOKENGATE_CHAT_NOTICE`).
    pub chat_notice: bool,
    /// What a model no admin has weighted costs, or that it is refused
    /// (`TOKENGATE_UNPRICED_MODELS`).
    pub unpriced_models: crate::domain::tokens::UnpricedModels,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`TOKENGATE_TRUSTED_PROXIES`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub support_contact: Option<String>,
    /// The operator's text for an exhausted balance (`TOKENGATE_BLOCK_TEXT`).
    pub block_text: Option<crate::proxy::block::BlockText>,
    pub public_url: String,
    pub admin_email: Option<String>,
    pub admin_password: Option<SecretString>,
    pub default_max_completion: i64,
    /// Request fields the operator lets through on top of those tokengate knows
    /// (`TOKENGATE_EXTRA_FIELDS`, `proxy::unreservable`).
    pub extra_fields: Vec<String>,
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive (`TOKENGATE_BODY_TIMEOUT_SECS`).
    pub body_timeout: Duration,
    /// Requests one client may have open at once on the pages that face the
    /// internet (`TOKENGATE_CLIENT_REQUESTS`, `limits`).
    pub client_requests: usize,
    pub log_format: LogFormat,
    /// Beyond the spec's table: operational knobs with safe defaults.
    pub upstream_connect_timeout: Duration,
    /// Longest silence from upstream (before the first byte or between chunks).
    pub upstream_idle_timeout: Duration,
    /// A hold older than this is released even if its instance is alive.
    pub hold_max_age: Duration,
    /// Identifies this process's holds; a restart with the same id frees them at once.
    pub instance_id: String,
    /// How often an instance proves it is alive (`TOKENGATE_HEARTBEAT_SECS`).
    pub heartbeat_every: Duration,
    /// An instance silent this long (by the database's clock) is taken for dead and
    /// its holds are released (`TOKENGATE_INSTANCE_TIMEOUT_SECS`).
    pub instance_timeout: Duration,
    pub db_pool_size: u32,
    /// Where mail goes as `.eml` files when no SMTP server is configured.
    pub mail_dir: PathBuf,
    /// Local state of this process: the settlement spool (`proxy::spool`).
    pub data_dir: PathBuf,
    /// Per SMTP command (connect, each reply).
    pub smtp_timeout: Duration,
    pub mail_retry: crate::alerts::RetryPolicy,
    /// `TOKENGATE_STATIC_DIR`: a folder served at `/static` instead of the files built
    /// into the binary (`assets`), for an operator who restyles the pages.
    pub static_dir: Option<PathBuf>,
    /// `TOKENGATE_TEST_NOW`: a fixed instant that replaces the clock of the ledger
    /// (cycles, holds, timestamps), so that the server and the command line of one
    /// test agree on the date whatever the calendar says. For tests only.
    pub test_now: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Builds the configuration from any key lookup (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let problems = std::cell::RefCell::new(Vec::new());
        let get = |key: &str| {
            lookup(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let parse = |key: &str, default: &str, f: &dyn Fn(&str) -> Result<(), String>| {
            let value = get(key).unwrap_or_else(|| default.to_owned());
            if let Err(e) = f(&value) {
                problems.borrow_mut().push(format!("{key}={value:?}: {e}"));
            }
            value
        };

        let listen = parse("TOKENGATE_LISTEN", "127.0.0.1:8080", &|v| {
            v.parse::<std::net::SocketAddr>()
                .map(|_| ())
                .map_err(|_| "expected HOST:PORT, like 0.0.0.0:8080".into())
        });
        let db_raw =
            get("TOKENGATE_DATABASE_URL").unwrap_or_else(|| "sqlite://data/tokengate.db".into());
        let database_url = match DatabaseUrl::parse(&db_raw) {
            Ok(u) => Some(u),
            Err(e) => {
                problems.borrow_mut().push(format!(
                    "TOKENGATE_DATABASE_URL={}: {e}",
                    redact_url(&db_raw)
                ));
                None
            }
        };
        let upstream_url = parse("TOKENGATE_UPSTREAM_URL", "http://127.0.0.1:4000/v1", &|v| {
            if v.starts_with("http://") || v.starts_with("https://") {
                Ok(())
            } else {
                Err("must be an http:// or https:// URL, like http://litellm:4000/v1".into())
            }
        })
        .trim_end_matches('/')
        .to_owned();
        let mail_from = parse("TOKENGATE_MAIL_FROM", "tokengate@localhost", &|v| {
            crate::domain::Email::parse(v)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        let admin_emails_raw = get("TOKENGATE_ADMIN_EMAILS").unwrap_or_default();
        let mut admin_emails = Vec::new();
        for part in admin_emails_raw
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match crate::domain::Email::parse(part) {
                Ok(e) => admin_emails.push(e.to_string()),
                Err(_) => problems.borrow_mut().push(format!(
                    "TOKENGATE_ADMIN_EMAILS: {part:?} is not an email address"
                )),
            }
        }
        let thresholds_raw = parse("TOKENGATE_ALERT_THRESHOLDS", "80,100", &|v| {
            parse_thresholds(v).map(|_| ())
        });
        let alert_thresholds = parse_thresholds(&thresholds_raw).unwrap_or_else(|_| vec![80, 100]);
        let tz_raw = parse("TOKENGATE_TIMEZONE", "America/Sao_Paulo", &|v| {
            v.parse::<Tz>()
                .map(|_| ())
                .map_err(|_| "unknown IANA time zone, like America/Sao_Paulo".into())
        });
        let timezone = tz_raw
            .parse::<Tz>()
            .unwrap_or(chrono_tz::America::Sao_Paulo);
        let locale_raw = parse("TOKENGATE_LOCALE", "pt-BR", &|v| {
            Locale::parse(v)
                .map(|_| ())
                .ok_or_else(|| "expected pt-BR or en".into())
        });
        let locale = Locale::parse(&locale_raw).unwrap_or(Locale::PtBr);
        let block_status_raw = parse("TOKENGATE_BLOCK_STATUS", "429", &|v| {
            BlockStatus::parse(v)
                .map(|_| ())
                .ok_or_else(|| "expected 429, 402 or 403".into())
        });
        let block_status =
            BlockStatus::parse(&block_status_raw).unwrap_or(BlockStatus::TooManyRequests);
        let chat_notice = parse("TOKENGATE_CHAT_NOTICE", "on", &|v| match v {
            "on" | "off" => Ok(()),
            _ => Err("expected on or off".into()),
        }) == "on";
        let unpriced_raw = parse("TOKENGATE_UNPRICED_MODELS", "1", &|v| {
            crate::domain::tokens::UnpricedModels::parse(v)
                .map(|_| ())
                .ok_or_else(|| {
                    "expected refuse, or a weight from 0 to 1000 such as 1 or 2.5".into()
                })
        });
        let unpriced_models =
            crate::domain::tokens::UnpricedModels::parse(&unpriced_raw).unwrap_or_default();
        let trusted_proxies =
            match crate::net::parse_networks(&get("TOKENGATE_TRUSTED_PROXIES").unwrap_or_default())
            {
                Ok(n) => n,
                Err(e) => {
                    problems
                        .borrow_mut()
                        .push(format!("TOKENGATE_TRUSTED_PROXIES: {e}"));
                    Vec::new()
                }
            };
        let support_contact = get("TOKENGATE_SUPPORT_CONTACT").map(|c| {
            // One line, no braces: it is shown inside LibreChat's error bubble.
            c.chars()
                .filter(|ch| !ch.is_control() && *ch != '{' && *ch != '}')
                .take(120)
                .collect()
        });
        let public_url = parse("TOKENGATE_PUBLIC_URL", "http://127.0.0.1:8080", &|v| {
            if v.starts_with("http://") || v.starts_with("https://") {
                Ok(())
            } else {
                Err("must be an http:// or https:// URL".into())
            }
        })
        .trim_end_matches('/')
        .to_owned();
        let block_text = get("TOKENGATE_BLOCK_TEXT").and_then(|raw| {
            crate::proxy::block::BlockText::parse(&raw, &public_url, support_contact.as_deref())
                .map_err(|e| {
                    problems
                        .borrow_mut()
                        .push(format!("TOKENGATE_BLOCK_TEXT={raw:?}: {e}"));
                })
                .ok()
        });
        let admin_email = get("TOKENGATE_ADMIN_EMAIL");
        if let Some(e) = &admin_email
            && crate::domain::Email::parse(e).is_err()
        {
            problems
                .borrow_mut()
                .push(format!("TOKENGATE_ADMIN_EMAIL={e:?}: not an email address"));
        }
        let admin_password = get("TOKENGATE_ADMIN_PASSWORD");
        if let Some(p) = &admin_password
            && p.chars().count() < crate::bootstrap::MIN_PASSWORD_CHARS
        {
            problems.borrow_mut().push(format!(
                "TOKENGATE_ADMIN_PASSWORD: must have at least {} characters",
                crate::bootstrap::MIN_PASSWORD_CHARS
            ));
        }
        let default_max_raw = parse("TOKENGATE_DEFAULT_MAX_COMPLETION", "4096", &|v| match v
            .parse::<i64>()
        {
            Ok(n) if (1..=10_000_000).contains(&n) => Ok(()),
            _ => Err("expected a whole number of tokens from 1 to 10000000".into()),
        });
        let max_body_raw = parse("TOKENGATE_MAX_BODY_BYTES", "20971520", &|v| match v
            .parse::<usize>()
        {
            Ok(n) if (1024..=1_073_741_824).contains(&n) => Ok(()),
            _ => Err("expected a number of bytes from 1024 to 1073741824".into()),
        });
        let log_raw = parse("TOKENGATE_LOG_FORMAT", "text", &|v| match v {
            "text" | "json" => Ok(()),
            _ => Err("expected text or json".into()),
        });
        let mut durations = Vec::new();
        for (key, default) in [
            ("TOKENGATE_UPSTREAM_CONNECT_TIMEOUT_SECS", "5"),
            ("TOKENGATE_UPSTREAM_IDLE_TIMEOUT_SECS", "300"),
            ("TOKENGATE_HOLD_MAX_AGE_SECS", "3600"),
            ("TOKENGATE_BODY_TIMEOUT_SECS", "30"),
        ] {
            let value = get(key).unwrap_or_else(|| default.to_owned());
            match value.parse::<u64>() {
                Ok(n) if (1..=86_400).contains(&n) => durations.push(Duration::from_secs(n)),
                _ => {
                    problems
                        .borrow_mut()
                        .push(format!("{key}={value:?}: expected seconds from 1 to 86400"));
                    durations.push(Duration::from_secs(default.parse().unwrap_or(60)));
                }
            }
        }
        let client_requests_raw = parse("TOKENGATE_CLIENT_REQUESTS", "32", &|v| match v
            .parse::<usize>()
        {
            Ok(n) if (1..=100_000).contains(&n) => Ok(()),
            _ => Err("expected a number of requests from 1 to 100000".into()),
        });
        let pool_raw = parse(
            "TOKENGATE_DB_POOL_SIZE",
            "16",
            &|v| match v.parse::<u32>() {
                Ok(n) if (1..=256).contains(&n) => Ok(()),
                _ => Err("expected a number from 1 to 256".into()),
            },
        );
        let mut mail_durations = Vec::new();
        for (key, default, max) in [
            ("TOKENGATE_SMTP_TIMEOUT_SECS", "30", 600.0),
            ("TOKENGATE_MAIL_RETRY_BASE_SECS", "30", 86_400.0),
            ("TOKENGATE_MAIL_RETRY_MAX_SECS", "3600", 604_800.0),
        ] {
            let value = get(key).unwrap_or_else(|| default.to_owned());
            match value.parse::<f64>() {
                Ok(n) if (0.01..=max).contains(&n) => {
                    mail_durations.push(Duration::from_secs_f64(n));
                }
                _ => {
                    problems.borrow_mut().push(format!(
                        "{key}={value:?}: expected seconds from 0.01 to {max}"
                    ));
                    mail_durations.push(Duration::from_secs(default.parse().unwrap_or(30)));
                }
            }
        }
        let mut liveness = Vec::new();
        for (key, default, min, max) in [
            ("TOKENGATE_HEARTBEAT_SECS", "5", 0.05, 60.0),
            ("TOKENGATE_INSTANCE_TIMEOUT_SECS", "30", 0.2, 3600.0),
        ] {
            let value = get(key).unwrap_or_else(|| default.to_owned());
            match value.parse::<f64>() {
                Ok(n) if (min..=max).contains(&n) => liveness.push(Duration::from_secs_f64(n)),
                _ => {
                    problems.borrow_mut().push(format!(
                        "{key}={value:?}: expected seconds from {min} to {max}"
                    ));
                    liveness.push(Duration::from_secs(default.parse().unwrap_or(5)));
                }
            }
        }
        if liveness[1] < liveness[0] * 3 {
            problems.borrow_mut().push(format!(
                "TOKENGATE_INSTANCE_TIMEOUT_SECS ({:?}) must be at least three heartbeats (TOKENGATE_HEARTBEAT_SECS: {:?})",
                liveness[1], liveness[0]
            ));
        }
        let max_attempts_raw = parse("TOKENGATE_MAIL_MAX_ATTEMPTS", "10", &|v| match v
            .parse::<u32>()
        {
            Ok(n) if (1..=100).contains(&n) => Ok(()),
            _ => Err("expected a number of attempts from 1 to 100".into()),
        });
        let static_dir = get("TOKENGATE_STATIC_DIR").map(PathBuf::from);
        if let Some(dir) = &static_dir
            && !dir.is_dir()
        {
            problems.borrow_mut().push(format!(
                "TOKENGATE_STATIC_DIR={}: not a folder (leave it unset to serve the files built into tokengate)",
                dir.display()
            ));
        }
        let mail_dir =
            PathBuf::from(get("TOKENGATE_MAIL_DIR").unwrap_or_else(|| "data/mail".into()));
        // Beside an SQLite database by default: one folder holds all of its state.
        let data_dir =
            get("TOKENGATE_DATA_DIR")
                .map(PathBuf::from)
                .or_else(|| match &database_url {
                    Some(DatabaseUrl::Sqlite(path)) => Some(
                        path.parent()
                            .filter(|p| !p.as_os_str().is_empty())
                            .map_or_else(|| PathBuf::from("."), PathBuf::from),
                    ),
                    _ => None,
                });
        let data_dir = data_dir.unwrap_or_else(|| PathBuf::from("data"));
        let instance_id =
            get("TOKENGATE_INSTANCE_ID").unwrap_or_else(|| default_instance_id(&listen));
        let test_now = get("TOKENGATE_TEST_NOW").and_then(|v| {
            match chrono::DateTime::parse_from_rfc3339(&v) {
                Ok(t) => Some(t.with_timezone(&chrono::Utc)),
                Err(_) => {
                    problems.borrow_mut().push(format!(
                        "TOKENGATE_TEST_NOW={v:?}: expected an RFC 3339 instant, like 2026-11-15T12:00:00Z"
                    ));
                    None
                }
            }
        });

        let client_keys: Vec<SecretString> = get("TOKENGATE_CLIENT_KEYS")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(|k| SecretString::from(k.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(v) = get("TOKENGATE_CLIENT_KEYS")
            && v.split(',')
                .map(str::trim)
                .any(|k| !k.is_empty() && k.len() < 16)
        {
            problems
                .borrow_mut()
                .push("TOKENGATE_CLIENT_KEYS: every key must have at least 16 characters".into());
        }
        let mut service_keys: Vec<(String, SecretString)> = Vec::new();
        for entry in get("TOKENGATE_SERVICE_KEYS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (name, key) = entry.split_once('=').unwrap_or((entry, ""));
            let (name, key) = (name.trim(), key.trim());
            let name_ok = !name.is_empty()
                && name.len() <= 40
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !name_ok {
                problems.borrow_mut().push(format!(
                    "TOKENGATE_SERVICE_KEYS: {:?} must be NAME=KEY, NAME of lowercase letters, digits and dashes (at most 40)",
                    name.chars().take(40).collect::<String>()
                ));
            } else if key.len() < 16 {
                problems.borrow_mut().push(format!(
                    "TOKENGATE_SERVICE_KEYS: the key of {name} must have at least 16 characters"
                ));
            } else if service_keys.iter().any(|(n, _)| n == name) {
                problems
                    .borrow_mut()
                    .push(format!("TOKENGATE_SERVICE_KEYS: {name} is named twice"));
            } else if service_keys.iter().any(|(_, k)| k.expose_secret() == key)
                || client_keys.iter().any(|k| k.expose_secret() == key)
            {
                // One key for two callers would bill every user to the service, or
                // the service to whichever user LibreChat names.
                problems.borrow_mut().push(format!(
                    "TOKENGATE_SERVICE_KEYS: the key of {name} is also another key; each service needs a key of its own"
                ));
            } else {
                service_keys.push((name.to_owned(), SecretString::from(key.to_owned())));
            }
        }
        let mut extra_fields = Vec::new();
        for field in get("TOKENGATE_EXTRA_FIELDS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
        {
            let name_ok = field.len() <= 64
                && field
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !name_ok {
                problems.borrow_mut().push(format!(
                    "TOKENGATE_EXTRA_FIELDS: {:?} is not a field name (letters, digits, _ - . and at most 64)",
                    field.chars().take(64).collect::<String>()
                ));
            } else if !crate::proxy::unreservable::allowable(field) {
                problems.borrow_mut().push(format!(
                    "TOKENGATE_EXTRA_FIELDS: {field} cannot be allowed: it lets a request set its own limits, or have LiteLLM call again or elsewhere"
                ));
            } else {
                extra_fields.push(field.to_owned());
            }
        }
        let smtp_url = get("TOKENGATE_SMTP_URL");
        if let Some(url) = &smtp_url
            && !(url.starts_with("smtp://") || url.starts_with("smtps://"))
        {
            problems.borrow_mut().push(format!(
                "TOKENGATE_SMTP_URL={}: must start with smtp:// or smtps://",
                redact_url(url)
            ));
        } else if let Some(url) = &smtp_url
            && lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url).is_err()
        {
            problems.borrow_mut().push(format!(
                "TOKENGATE_SMTP_URL={}: expected smtps://user:pass@host:465, smtp://user:pass@host:587?tls=required or smtp://host:25",
                redact_url(url)
            ));
        }

        match database_url {
            Some(database_url) if problems.borrow().is_empty() => Ok(Self {
                listen,
                database_url,
                upstream_url,
                upstream_key: get("TOKENGATE_UPSTREAM_KEY").map(SecretString::from),
                client_keys,
                service_keys,
                smtp_url: smtp_url.map(SecretString::from),
                mail_from,
                admin_emails,
                alert_thresholds,
                timezone,
                locale,
                block_status,
                chat_notice,
                unpriced_models,
                trusted_proxies,
                support_contact,
                block_text,
                public_url,
                admin_email,
                admin_password: admin_password.map(SecretString::from),
                default_max_completion: default_max_raw.parse().unwrap_or(4096),
                extra_fields,
                max_body_bytes: max_body_raw.parse().unwrap_or(20_971_520),
                body_timeout: durations[3],
                client_requests: client_requests_raw.parse().unwrap_or(32),
                log_format: if log_raw == "json" {
                    LogFormat::Json
                } else {
                    LogFormat::Text
                },
                upstream_connect_timeout: durations[0],
                upstream_idle_timeout: durations[1],
                hold_max_age: durations[2],
                instance_id,
                heartbeat_every: liveness[0],
                instance_timeout: liveness[1],
                db_pool_size: pool_raw.parse().unwrap_or(16),
                mail_dir,
                data_dir,
                static_dir,
                smtp_timeout: mail_durations[0],
                mail_retry: crate::alerts::RetryPolicy {
                    base: mail_durations[1],
                    max_delay: mail_durations[2],
                    max_attempts: max_attempts_raw.parse().unwrap_or(10),
                },
                test_now,
            }),
            _ => Err(ConfigError {
                problems: problems.into_inner(),
            }),
        }
    }
}

impl Config {
    /// The ledger's clock: the system's, or the fixed instant of `TOKENGATE_TEST_NOW`.
    pub fn clock(&self) -> std::sync::Arc<dyn crate::domain::Clock> {
        match self.test_now {
            Some(t) => std::sync::Arc::new(crate::domain::ManualClock::new(t)),
            None => std::sync::Arc::new(crate::domain::SystemClock),
        }
    }
}

fn parse_thresholds(v: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u8>() {
            Ok(n) if (1..=100).contains(&n) => out.push(n),
            _ => return Err(format!("{part:?} is not a percent from 1 to 100")),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `hostname:port`: stable across restarts of one container or host, distinct
/// between replicas.
fn default_instance_id(listen: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    let port = listen.rsplit(':').next().unwrap_or("0");
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = config(&[]);
        assert!(c.is_ok());
        if let Ok(c) = c {
            assert_eq!(c.listen, "127.0.0.1:8080");
            assert_eq!(c.database_url.redacted(), "sqlite://data/tokengate.db");
            assert_eq!(c.upstream_url, "http://127.0.0.1:4000/v1");
            assert_eq!(c.alert_thresholds, vec![80, 100]);
            assert_eq!(c.locale, Locale::PtBr);
            assert_eq!(c.block_status, BlockStatus::TooManyRequests);
            assert_eq!(c.default_max_completion, 4096);
            assert_eq!(c.max_body_bytes, 20_971_520);
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = config(&[
            ("TOKENGATE_LISTEN", "nope"),
            ("TOKENGATE_DATABASE_URL", "mysql://x"),
            ("TOKENGATE_TIMEZONE", "Mars/Olympus"),
            ("TOKENGATE_LOCALE", "fr"),
            ("TOKENGATE_ALERT_THRESHOLDS", "80,150"),
            ("TOKENGATE_BLOCK_STATUS", "401"),
        ]);
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        for key in [
            "TOKENGATE_LISTEN",
            "TOKENGATE_DATABASE_URL",
            "TOKENGATE_TIMEZONE",
            "TOKENGATE_LOCALE",
            "TOKENGATE_ALERT_THRESHOLDS",
            "TOKENGATE_BLOCK_STATUS",
        ] {
            assert!(msg.contains(key), "{key} missing from: {msg}");
        }
    }

    /// One key for two callers would bill every user to a service (or a service to
    /// any user): refused at start, as are names outside the allowed form.
    #[test]
    fn service_keys_are_keys_of_their_own() {
        let shared = config(&[
            ("TOKENGATE_CLIENT_KEYS", "tg-the-same-key-0123456789"),
            (
                "TOKENGATE_SERVICE_KEYS",
                "rag-api=tg-the-same-key-0123456789",
            ),
        ]);
        assert!(shared.is_err_and(|e| e.to_string().contains("a key of its own")));
        let twice = config(&[(
            "TOKENGATE_SERVICE_KEYS",
            "rag-api=tg-rag-key-0123456789,rag-api=tg-other-key-0123456789",
        )]);
        assert!(twice.is_err_and(|e| e.to_string().contains("named twice")));
        for bad in ["Rag=tg-rag-key-0123456789", "rag-api=short", "rag-api"] {
            let c = config(&[("TOKENGATE_SERVICE_KEYS", bad)]);
            assert!(c.is_err(), "{bad} accepted");
        }
        let ok = config(&[("TOKENGATE_SERVICE_KEYS", "rag-api=tg-rag-key-0123456789")]);
        assert!(ok.is_ok_and(|c| c.service_keys.len() == 1));
    }

    /// Without configuration two processes never share an instance id: it names the
    /// host (a container's id, in Docker) and the port.
    #[test]
    fn instance_ids_default_to_host_and_port() {
        let a = config(&[("TOKENGATE_LISTEN", "127.0.0.1:8080")]).map(|c| c.instance_id);
        let b = config(&[("TOKENGATE_LISTEN", "127.0.0.1:8081")]).map(|c| c.instance_id);
        let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
        assert!(
            a.ends_with(":8080") && b.ends_with(":8081") && a != b,
            "{a} {b}"
        );
        // Heartbeats must fit several times in the timeout, or live instances die.
        let err = config(&[
            ("TOKENGATE_HEARTBEAT_SECS", "5"),
            ("TOKENGATE_INSTANCE_TIMEOUT_SECS", "10"),
        ]);
        assert!(err.is_err_and(|e| e.to_string().contains("at least three heartbeats")));
    }

    #[test]
    fn passwords_never_appear_in_redacted_urls() {
        let url = DatabaseUrl::parse("postgres://tg:s3cret@db:5432/tokengate");
        let shown = url.map(|u| u.redacted()).unwrap_or_default();
        assert_eq!(shown, "postgres://tg:***@db:5432/tokengate");
        assert!(
            !format!("{:?}", DatabaseUrl::parse("postgres://tg:s3cret@db/x").ok())
                .contains("s3cret")
        );
        let err = config(&[("TOKENGATE_DATABASE_URL", "mysql://u:hunter2@h/db")]);
        assert!(
            !err.err()
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains("hunter2")
        );
    }
}
