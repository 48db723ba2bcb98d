//! The HTTP client towards LiteLLM (or any OpenAI-compatible upstream).

use crate::config::Config;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;
use thread_local::ThreadLocal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Unreachable,
    Timeout,
}

impl UpstreamError {
    /// A connection that could not be made (in time or at all) is `Unreachable`:
    /// nothing was sent. A timeout after it is `Timeout`: the request was sent, and
    /// is charged its prompt.
    pub fn from_reqwest(e: &reqwest::Error) -> Self {
        if e.is_timeout() && !e.is_connect() {
            Self::Timeout
        } else {
            Self::Unreachable
        }
    }
}

impl From<UpstreamError> for super::ApiError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Unreachable => Self::UpstreamUnavailable,
            UpstreamError::Timeout => Self::UpstreamTimeout,
        }
    }
}

/// The client towards upstream. Each thread (each actix worker) gets a client and a
/// connection pool of its own: a hyper connection's task runs on the thread that
/// opened it, so a connection shared between workers would make every streamed chunk
/// cross threads twice (the body channel's wake-ups), which measured at about ten
/// extra syscalls and two context switches per request.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    per_thread: ThreadLocal<reqwest::Client>,
    /// Built at start, so a broken TLS backend fails there; also the fallback should a
    /// thread's own client fail to build later.
    shared: reqwest::Client,
    base: String,
    key: Option<SecretString>,
}

struct Settings {
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl Settings {
    fn build(&self) -> Result<reqwest::Client, reqwest::Error> {
        // A connect timeout and an idle (per-read) timeout, never a total timeout that
        // would cut a long, healthy generation.
        reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.idle_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
    }
}

impl Upstream {
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let settings = Settings {
            connect_timeout: config.upstream_connect_timeout,
            idle_timeout: config.upstream_idle_timeout,
        };
        let shared = settings.build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                per_thread: ThreadLocal::new(),
                shared,
                base: config.upstream_url.clone(),
                key: config.upstream_key.clone(),
            }),
        })
    }

    fn client(&self) -> &reqwest::Client {
        let inner = &*self.inner;
        inner
            .per_thread
            .get_or_try(|| inner.settings.build())
            .unwrap_or(&inner.shared)
    }

    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .client()
            .request(method, format!("{}{}", self.inner.base, path));
        if let Some(key) = &self.inner.key {
            req = req.bearer_auth(key.expose_secret());
        }
        req
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: Vec<u8>,
        stream: bool,
    ) -> Result<reqwest::Response, UpstreamError> {
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        self.request(reqwest::Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, accept)
            .body(body)
            .send()
            .await
            .map_err(|e| UpstreamError::from_reqwest(&e))
    }

    pub async fn get(
        &self,
        path: &str,
        timeout: Option<std::time::Duration>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut req = self.request(reqwest::Method::GET, path);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        req.send()
            .await
            .map_err(|e| UpstreamError::from_reqwest(&e))
    }
}
