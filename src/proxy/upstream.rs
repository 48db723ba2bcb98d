//! The HTTP client towards LiteLLM (or any OpenAI-compatible upstream).

use crate::config::Config;
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Unreachable,
    Timeout,
}

impl UpstreamError {
    pub fn from_reqwest(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
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

#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    base: String,
    key: Option<SecretString>,
}

impl Upstream {
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        // A connect timeout and an idle (per-read) timeout, never a total timeout that
        // would cut a long, healthy generation.
        let client = reqwest::Client::builder()
            .connect_timeout(config.upstream_connect_timeout)
            .read_timeout(config.upstream_idle_timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            client,
            base: config.upstream_url.clone(),
            key: config.upstream_key.clone(),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(key) = &self.key {
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
