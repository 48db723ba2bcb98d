//! Sending mail: lettre over SMTP (plain, STARTTLS or implicit TLS, with
//! authentication and timeouts), or `.eml` files under `TOKENGATE_MAIL_DIR` when no
//! `TOKENGATE_SMTP_URL` is set, so a first run loses nothing.

pub mod templates;

use crate::config::{Config, redact_url};
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::{Address, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use templates::{Kind, Rendered, Templates};

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("TOKENGATE_SMTP_URL is not usable: {0}")]
    Config(String),
    #[error("{0:?} is not a deliverable email address")]
    InvalidAddress(String),
    #[error("cannot build the message: {0}")]
    Build(String),
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("SMTP: timed out: the server did not finish within {} s (TOKENGATE_SMTP_TIMEOUT_SECS)", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("cannot write {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl MailError {
    /// Errors no retry can fix: the message itself is wrong.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::InvalidAddress(_) | Self::Build(_))
    }
}

/// One message ready to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub to: String,
    pub rendered: Rendered,
    /// Unique per outbox row, so a receiver can drop a duplicate after a crash
    /// between "sent" and "recorded".
    pub message_id: String,
}

/// Where a message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    Smtp,
    File(PathBuf),
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(PathBuf),
}

pub struct Mailer {
    transport: Transport,
    /// The longest one SMTP conversation may take. lettre's own timeout covers only
    /// the connect on its async transport, so a server that accepts and then stalls
    /// would otherwise hold a send forever.
    deadline: Duration,
    from: Mailbox,
    /// Shown in logs and the test mail; never carries a password.
    description: String,
}

impl Mailer {
    pub fn from_config(config: &Config) -> Result<Self, MailError> {
        let from = parse_address(&config.mail_from)?;
        let (transport, description) = match &config.smtp_url {
            Some(url) => {
                let url = url.expose_secret();
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| MailError::Config(e.to_string()))?
                    .timeout(Some(config.smtp_timeout))
                    .build();
                (Transport::Smtp(transport), redact_url(url))
            }
            None => (
                Transport::Files(config.mail_dir.clone()),
                format!("files in {}", config.mail_dir.display()),
            ),
        };
        Ok(Self {
            transport,
            deadline: config.smtp_timeout,
            from: Mailbox::new(None, from),
            description,
        })
    }

    pub fn describe(&self) -> &str {
        &self.description
    }

    pub fn from_address(&self) -> String {
        self.from.email.to_string()
    }

    /// Connects (and authenticates) without sending, or checks the mail folder.
    pub async fn check(&self) -> Result<(), MailError> {
        match &self.transport {
            Transport::Smtp(smtp) => {
                self.bounded(smtp.test_connection()).await?;
                Ok(())
            }
            Transport::Files(dir) => {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|source| MailError::File {
                        path: dir.clone(),
                        source,
                    })
            }
        }
    }

    pub async fn send(&self, mail: &Outgoing) -> Result<Delivered, MailError> {
        let message = self.build(mail)?;
        match &self.transport {
            Transport::Smtp(smtp) => {
                self.bounded(smtp.send(message)).await?;
                Ok(Delivered::Smtp)
            }
            Transport::Files(dir) => write_eml(dir, &mail.message_id, &message.formatted())
                .await
                .map(Delivered::File),
        }
    }

    async fn bounded<T>(
        &self,
        conversation: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, MailError> {
        match tokio::time::timeout(self.deadline, conversation).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(MailError::Timeout(self.deadline)),
        }
    }

    fn build(&self, mail: &Outgoing) -> Result<Message, MailError> {
        let to = parse_address(&mail.to)?;
        let domain = self.from.email.domain().to_owned();
        Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(mail.rendered.subject.clone())
            .message_id(Some(format!("<{}@{domain}>", mail.message_id)))
            .header(AutoSubmitted)
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(mail.rendered.text.clone()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(mail.rendered.html.clone()),
                    ),
            )
            .map_err(|e| MailError::Build(e.to_string()))
    }
}

/// Sends the message `tokengate mail test` asks for, with the configured transport.
pub async fn send_test(config: &Config, to: &str) -> Result<(Delivered, String), MailError> {
    let mailer = Mailer::from_config(config)?;
    let templates = Templates::new().map_err(|e| MailError::Build(e.to_string()))?;
    #[derive(Serialize)]
    struct TestContext<'a> {
        transport: &'a str,
        from: String,
    }
    let rendered = templates
        .render(
            Kind::Test,
            config.locale,
            &TestContext {
                transport: mailer.describe(),
                from: mailer.from_address(),
            },
        )
        .map_err(|e| MailError::Build(e.to_string()))?;
    let mail = Outgoing {
        to: to.to_owned(),
        rendered,
        message_id: format!("tokengate.test-{}", chrono::Utc::now().timestamp_micros()),
    };
    let delivered = mailer.send(&mail).await?;
    Ok((delivered, mailer.describe().to_owned()))
}

/// Addresses are checked again here, whatever checked them before: a bad one fails
/// its own message and nothing else.
fn parse_address(raw: &str) -> Result<Address, MailError> {
    if raw.chars().any(char::is_control) {
        return Err(MailError::InvalidAddress(raw.escape_debug().to_string()));
    }
    raw.parse::<Address>()
        .map_err(|_| MailError::InvalidAddress(raw.to_owned()))
}

/// Writes atomically under a name derived from the message id: a retry overwrites
/// rather than duplicates.
async fn write_eml(dir: &Path, message_id: &str, bytes: &[u8]) -> Result<PathBuf, MailError> {
    let safe: String = message_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{safe}.eml"));
    let tmp = dir.join(format!(".{safe}.eml.tmp"));
    let io = |source| MailError::File {
        path: path.clone(),
        source,
    };
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    tokio::fs::write(&tmp, bytes).await.map_err(io)?;
    tokio::fs::rename(&tmp, &path).await.map_err(io)?;
    Ok(path)
}

/// `Auto-Submitted: auto-generated` (RFC 3834): tells mail servers and vacation
/// responders not to answer automatically.
#[derive(Clone)]
struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_line_breaks_are_refused() {
        assert!(matches!(
            parse_address("ana@example.com\r\nBcc: x@evil.com"),
            Err(MailError::InvalidAddress(_))
        ));
        assert!(matches!(
            parse_address("not an address"),
            Err(MailError::InvalidAddress(_))
        ));
        assert!(parse_address("ana@example.com").is_ok());
    }
}
