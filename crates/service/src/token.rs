//! Bearer tokens read from files (the shop's API token, the metrics
//! token): read once, kept only as a SHA-256 digest, compared in constant
//! time, never printed.

use std::path::Path;

use openssl::hash::{hash, MessageDigest};

use crate::UsageError;

/// A bearer token, held as its digest.
#[derive(Clone)]
pub struct BearerToken {
    digest: Vec<u8>,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// Reads the token from `path` (one trailing newline ignored; at least
    /// 16 printable characters, no spaces). Errors name `setting` and the
    /// file, never the content.
    pub fn load(path: &Path, setting: &str) -> Result<Self, UsageError> {
        let raw = std::fs::read_to_string(path).map_err(|e| {
            UsageError(format!(
                "cannot read the token file {} ({setting}): {e}",
                path.display()
            ))
        })?;
        let token = raw
            .strip_suffix("\r\n")
            .or_else(|| raw.strip_suffix('\n'))
            .unwrap_or(&raw);
        if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(UsageError(format!(
                "the token in {} ({setting}) must be at least 16 printable characters without spaces ({} found)",
                path.display(),
                token.len()
            )));
        }
        Self::new(token)
    }

    /// A token from memory (for tests).
    pub fn new(token: &str) -> Result<Self, UsageError> {
        Ok(Self {
            digest: digest(token.as_bytes())
                .ok_or_else(|| UsageError("SHA-256 unavailable".into()))?,
        })
    }

    /// True when `presented` is the token. Constant time in the token's
    /// content: both sides are hashed first.
    #[must_use]
    pub fn matches(&self, presented: &str) -> bool {
        digest(presented.as_bytes()).is_some_and(|d| openssl::memcmp::eq(&d, &self.digest))
    }

    /// True when an `Authorization` header value is `Bearer <the token>`
    /// (the scheme is case-insensitive, RFC 9110; the token is not).
    #[must_use]
    pub fn authorizes(&self, authorization: Option<&str>) -> bool {
        authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .is_some_and(|(_, token)| self.matches(token))
    }
}

fn digest(bytes: &[u8]) -> Option<Vec<u8>> {
    hash(MessageDigest::sha256(), bytes)
        .ok()
        .map(|d| d.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_never_echoed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let short = dir.join("short");
        std::fs::write(&short, "tiny-secret\n").unwrap();
        let err = BearerToken::load(&short, "API_TOKEN_FILE")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("tiny-secret"), "{err}");
        assert!(err.contains("API_TOKEN_FILE"), "{err}");
        let good = dir.join("good");
        std::fs::write(&good, "0123456789abcdef-token\n").unwrap();
        let token = BearerToken::load(&good, "API_TOKEN_FILE").unwrap();
        assert!(token.matches("0123456789abcdef-token"));
        assert!(!token.matches("0123456789abcdef-token\n"));
        assert!(!format!("{token:?}").contains("0123"));
        let missing = BearerToken::load(&dir.join("none"), "METRICS_TOKEN_FILE")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("METRICS_TOKEN_FILE"), "{missing}");
    }

    #[test]
    fn authorization_headers() {
        let token = BearerToken::new("0123456789abcdef-token").unwrap();
        assert!(token.authorizes(Some("Bearer 0123456789abcdef-token")));
        assert!(token.authorizes(Some("bearer 0123456789abcdef-token")));
        assert!(!token.authorizes(Some("Basic 0123456789abcdef-token")));
        assert!(!token.authorizes(Some("Bearer  0123456789abcdef-token")));
        assert!(!token.authorizes(Some("Bearer")));
        assert!(!token.authorizes(None));
    }
}
