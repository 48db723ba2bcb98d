//! Client keys: only their SHA-256 digests are kept in memory and in the database,
//! and a presented key is compared against every digest in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Clone, Default)]
pub struct ClientKeys {
    digests: Vec<[u8; 32]>,
}

impl ClientKeys {
    pub fn from_digests(digests: Vec<[u8; 32]>) -> Self {
        Self { digests }
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
        let Some(value) = header.and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let mut parts = value.trim().splitn(2, ' ');
        match (parts.next(), parts.next()) {
            (Some(scheme), Some(token)) if scheme.eq_ignore_ascii_case("bearer") => {
                self.verify(token.trim())
            }
            _ => false,
        }
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
}
