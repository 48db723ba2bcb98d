//! Client keys: only their SHA-256 digests are kept in memory and in the database,
//! and a presented key is compared against every digest in constant time.
//!
//! Two kinds of caller hold keys. LibreChat names the user of each request in its
//! headers (docs/behaviour.md). A *service* (LibreChat's RAG API, which sends no user)
//! holds a key of its own (`TOKENGATE_SERVICE_KEYS`), and everything it sends is
//! metered to its own account, `service:NAME`, with a plan and budget like any user's:
//! the user headers it might send are ignored, so a service key cannot spend a
//! person's balance.

use crate::domain::UserKey;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The accounts of services start with this; LibreChat cannot name them.
pub const SERVICE_PREFIX: &str = "service:";

#[derive(Clone, Default)]
pub struct ClientKeys {
    digests: Vec<[u8; 32]>,
    services: Vec<([u8; 32], UserKey)>,
}

/// Who presented a valid key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// LibreChat: the user is in the request's headers.
    LibreChat,
    /// A service, metered to its own account.
    Service(UserKey),
}

impl ClientKeys {
    pub fn from_digests(digests: Vec<[u8; 32]>) -> Self {
        Self {
            digests,
            services: Vec::new(),
        }
    }

    /// Adds the services' keys: (the service's account, its key's digest).
    pub fn with_services(mut self, services: Vec<(UserKey, [u8; 32])>) -> Self {
        self.services = services.into_iter().map(|(k, d)| (d, k)).collect();
        self
    }

    /// The account a service's requests are metered to.
    pub fn service_account(name: &str) -> Option<UserKey> {
        UserKey::parse(&format!("{SERVICE_PREFIX}{name}")).ok()
    }

    pub fn digest(key: &str) -> [u8; 32] {
        Sha256::digest(key.as_bytes()).into()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// True when `presented` is one of the keys. Checks every digest, so the time
    /// taken does not tell which key (or how much of one) matched.
    pub fn verify(&self, presented: &str) -> bool {
        let digest = Self::digest(presented);
        let mut found = subtle::Choice::from(0);
        for known in &self.digests {
            found |= known.ct_eq(&digest);
        }
        found.into()
    }

    /// Reads `Authorization: Bearer <key>` and checks it.
    pub fn check_header(&self, header: Option<&actix_web::http::header::HeaderValue>) -> bool {
        self.caller(header).is_some()
    }

    /// Who holds the key in `Authorization: Bearer <key>`, if it is one. Every digest
    /// is compared, so the time taken does not tell which key matched.
    pub fn caller(&self, header: Option<&actix_web::http::header::HeaderValue>) -> Option<Caller> {
        let value = header.and_then(|h| h.to_str().ok())?;
        let mut parts = value.trim().splitn(2, ' ');
        let token = match (parts.next(), parts.next()) {
            (Some(scheme), Some(token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return None,
        };
        let digest = Self::digest(token);
        let mut service = None;
        for (known, account) in &self.services {
            if bool::from(known.ct_eq(&digest)) {
                service = Some(account);
            }
        }
        if let Some(account) = service {
            return Some(Caller::Service(account.clone()));
        }
        self.verify(token).then_some(Caller::LibreChat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    #[test]
    fn only_known_keys_pass() {
        let keys = ClientKeys::from_digests(vec![
            ClientKeys::digest("tg-one-key-0123456789"),
            ClientKeys::digest("tg-two-key-0123456789"),
        ]);
        assert!(keys.verify("tg-two-key-0123456789"));
        assert!(!keys.verify("tg-two-key-012345678"));
        assert!(!keys.verify(""));
        let ok = HeaderValue::from_static("Bearer tg-one-key-0123456789");
        assert!(keys.check_header(Some(&ok)));
        let lower = HeaderValue::from_static("bearer tg-one-key-0123456789");
        assert!(keys.check_header(Some(&lower)));
        let basic = HeaderValue::from_static("Basic tg-one-key-0123456789");
        assert!(!keys.check_header(Some(&basic)));
        assert!(!keys.check_header(None));
    }

    #[test]
    fn a_service_key_names_its_own_account() {
        let Some(rag) = ClientKeys::service_account("rag-api") else {
            panic!("a valid service name");
        };
        let keys = ClientKeys::from_digests(vec![ClientKeys::digest("tg-one-key-0123456789")])
            .with_services(vec![(
                rag.clone(),
                ClientKeys::digest("tg-rag-key-0123456789"),
            )]);
        let service = HeaderValue::from_static("Bearer tg-rag-key-0123456789");
        assert_eq!(keys.caller(Some(&service)), Some(Caller::Service(rag)));
        let librechat = HeaderValue::from_static("Bearer tg-one-key-0123456789");
        assert_eq!(keys.caller(Some(&librechat)), Some(Caller::LibreChat));
        let other = HeaderValue::from_static("Bearer tg-rag-key-012345678");
        assert_eq!(keys.caller(Some(&other)), None);
    }
}
