//! Client keys: only their SHA-256 digests are kept in memory and in the database,
//! and a presented key is compared against every digest in constant time.
//!
//! Two kinds of caller hold keys. LibreChat names the user of each request in its
//! headers (docs/behaviour.md). A *service* (LibreChat's RAG API, which sends no user)
//! holds a key of its own (`TOKENGATE_SERVICE_KEYS`), and everything it sends is
//! metered to its own account, `service:NAME`, with a plan and budget like any user's:
//! the user headers it might send are ignored, so a service key cannot spend a
//! person's balance.
//!
//! A LibreChat key belongs to a distributor: those in `TOKENGATE_CLIENT_KEYS` (or
//! generated at first start) to the install's own, those made with `tokengate
//! distributors add-key` to theirs. The stored ones are read again every few
//! seconds, so a key revoked beside the running server stops within seconds; a key
//! not found is looked up by its digest at once, so one just made works on its
//! first request.

use crate::domain::{DistributorId, TenantId, UserKey};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The accounts of services start with this; LibreChat cannot name them.
pub const SERVICE_PREFIX: &str = "service:";

/// How old the stored keys may be before a request reads them again.
pub const STORED_KEYS_MAX_AGE: Duration = Duration::from_secs(5);

#[derive(Clone, Default)]
pub struct ClientKeys {
    digests: Vec<[u8; 32]>,
    services: Vec<([u8; 32], UserKey)>,
    stored: Arc<RwLock<StoredKeys>>,
}

/// The keys kept in the database, as last read.
#[derive(Default)]
struct StoredKeys {
    keys: Vec<([u8; 32], Grant)>,
    tenants: HashMap<TenantId, DistributorId>,
    read_at: Option<Instant>,
}

/// What a LibreChat key lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Whose users its requests are.
    pub distributor: DistributorId,
    /// A shared LibreChat's key may name another distributor per request.
    pub names_distributors: bool,
}

impl Grant {
    /// The install's own keys (`TOKENGATE_CLIENT_KEYS`).
    pub const DIRECT: Self = Self {
        distributor: DistributorId::DIRECT,
        names_distributors: false,
    };
}

/// Who presented a valid key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// LibreChat: the user is in the request's headers.
    LibreChat(Grant),
    /// A service, metered to its own account.
    Service(UserKey),
}

impl ClientKeys {
    pub fn from_digests(digests: Vec<[u8; 32]>) -> Self {
        Self {
            digests,
            ..Self::default()
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

    /// Replaces the stored keys: (hex digest, distributor, may name distributors),
    /// and the tenant ids a shared LibreChat may send.
    pub fn set_stored(&self, keys: &[(String, i64, bool)], tenants: &[(String, i64)]) {
        let keys = keys
            .iter()
            .filter_map(|(hex_digest, distributor, names)| {
                let digest = <[u8; 32]>::try_from(hex::decode(hex_digest).ok()?).ok()?;
                Some((
                    digest,
                    Grant {
                        distributor: DistributorId::from_db(*distributor),
                        names_distributors: *names,
                    },
                ))
            })
            .collect();
        let tenants = tenants
            .iter()
            .filter_map(|(t, id)| Some((TenantId::parse(t)?, DistributorId::from_db(*id))))
            .collect();
        let fresh = StoredKeys {
            keys,
            tenants,
            read_at: Some(Instant::now()),
        };
        match self.stored.write() {
            Ok(mut stored) => *stored = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
    }

    /// Adds a stored key found by its digest since the keys were last read.
    pub fn add_stored(&self, digest: [u8; 32], grant: Grant) {
        let mut stored = match self.stored.write() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !stored.keys.iter().any(|(d, _)| *d == digest) {
            stored.keys.push((digest, grant));
        }
    }

    /// The digest of the key in `Authorization: Bearer <key>`, if there is one.
    pub fn presented_digest(
        header: Option<&actix_web::http::header::HeaderValue>,
    ) -> Option<[u8; 32]> {
        bearer(header).map(Self::digest)
    }

    /// Whether the stored keys were read longer than `age` ago (or never).
    pub fn stored_older_than(&self, age: Duration) -> bool {
        let read_at = match self.stored.read() {
            Ok(s) => s.read_at,
            Err(poisoned) => poisoned.into_inner().read_at,
        };
        read_at.is_none_or(|t| t.elapsed() > age)
    }

    /// True for the one caller that is to read the stored keys again, when they are
    /// older than `age`: the others go on with the keys they have meanwhile.
    pub fn claim_reload(&self, age: Duration) -> bool {
        if !self.stored_older_than(age) {
            return false;
        }
        let mut stored = match self.stored.write() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if stored.read_at.is_some_and(|t| t.elapsed() <= age) {
            return false;
        }
        stored.read_at = Some(Instant::now());
        true
    }

    /// The distributor a shared LibreChat names by its tenant id.
    pub fn tenant(&self, tenant: &TenantId) -> Option<DistributorId> {
        match self.stored.read() {
            Ok(s) => s.tenants.get(tenant).copied(),
            Err(poisoned) => poisoned.into_inner().tenants.get(tenant).copied(),
        }
    }

    /// True when `presented` is one of the install's own keys. Checks every digest,
    /// so the time taken does not tell which key (or how much of one) matched.
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
        let token = bearer(header)?;
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
        if self.verify(token) {
            return Some(Caller::LibreChat(Grant::DIRECT));
        }
        let stored = match self.stored.read() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut grant = None;
        for (known, g) in &stored.keys {
            if bool::from(known.ct_eq(&digest)) {
                grant = Some(*g);
            }
        }
        grant.map(Caller::LibreChat)
    }
}

/// The key in `Authorization: Bearer <key>`.
fn bearer(header: Option<&actix_web::http::header::HeaderValue>) -> Option<&str> {
    let value = header.and_then(|h| h.to_str().ok())?;
    let mut parts = value.trim().splitn(2, ' ');
    match (parts.next(), parts.next()) {
        (Some(scheme), Some(token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim()),
        _ => None,
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
        assert_eq!(
            keys.caller(Some(&librechat)),
            Some(Caller::LibreChat(Grant::DIRECT))
        );
        let other = HeaderValue::from_static("Bearer tg-rag-key-012345678");
        assert_eq!(keys.caller(Some(&other)), None);
    }

    #[test]
    fn a_stored_key_names_its_distributor_and_a_revoked_one_nothing() {
        let keys = ClientKeys::from_digests(vec![ClientKeys::digest("tg-one-key-0123456789")]);
        let stored = hex::encode(ClientKeys::digest("tg-dist-key-0123456789"));
        let presented = HeaderValue::from_static("Bearer tg-dist-key-0123456789");
        assert_eq!(keys.caller(Some(&presented)), None);
        assert!(keys.stored_older_than(Duration::from_secs(1_000)));
        keys.set_stored(&[(stored, 7, true)], &[("rede-sul".into(), 7)]);
        assert_eq!(
            keys.caller(Some(&presented)),
            Some(Caller::LibreChat(Grant {
                distributor: DistributorId::from_db(7),
                names_distributors: true,
            }))
        );
        assert!(!keys.stored_older_than(Duration::from_secs(1_000)));
        let Some(tenant) = TenantId::parse("rede-sul") else {
            panic!("a tenant id")
        };
        assert_eq!(keys.tenant(&tenant), Some(DistributorId::from_db(7)));
        // Revoked: the next read no longer has it.
        keys.set_stored(&[], &[]);
        assert_eq!(keys.caller(Some(&presented)), None);
        assert_eq!(keys.tenant(&tenant), None);
    }
}
