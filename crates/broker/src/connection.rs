//! Opening connections. The AMQP URL carries a password: [`AmqpUrl`] never
//! shows it, and errors are scrubbed of it.

use std::fmt;

use amiquip::Connection;

use crate::error::BrokerError;

/// An AMQP URL (`amqp://user:pass@host:port/vhost`, vhost `%2f` for `/`)
/// whose password never reaches logs, errors or `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl(String);

impl AmqpUrl {
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The full URL, password included: only for handing to amiquip.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by `***`.
    #[must_use]
    pub fn redacted(&self) -> String {
        domain::db::redact_password(&self.0)
    }

    /// `text` with every occurrence of the password (raw and
    /// percent-decoded) replaced by `***`.
    #[must_use]
    pub fn scrub(&self, text: &str) -> String {
        let Some(pw) = domain::db::password_of(&self.0).filter(|p| !p.is_empty()) else {
            return text.to_owned();
        };
        let mut out = text.replace(pw, "***");
        let decoded = percent_decode(pw);
        if !decoded.is_empty() && decoded != pw {
            out = out.replace(&decoded, "***");
        }
        out
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AmqpUrl").field(&self.redacted()).finish()
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens a connection (`amqp://` plain, `amqps://` TLS). Errors name the
/// URL without its password.
pub fn connect(url: &AmqpUrl) -> Result<Connection, BrokerError> {
    let result = if url.expose().starts_with("amqps://") {
        Connection::open(url.expose())
    } else {
        Connection::insecure_open(url.expose())
    };
    result.map_err(|e| BrokerError::from_amiquip(url, &format!("could not connect to {url}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let url = AmqpUrl::new("amqp://app:s%40cret@mq:5672/%2f");
        assert_eq!(url.to_string(), "amqp://app:***@mq:5672/%2f");
        assert!(!format!("{url:?}").contains("cret"));
        assert_eq!(
            url.scrub("failed to connect to amqp://app:s%40cret@mq (s@cret)"),
            "failed to connect to amqp://app:***@mq (***)"
        );
    }

    #[test]
    fn a_refused_connection_is_transient_and_scrubbed() {
        let url = AmqpUrl::new("amqp://app:hunter2@127.0.0.1:1/%2f");
        let Err(err) = connect(&url) else {
            panic!("nothing listens on port 1");
        };
        assert!(err.is_transient(), "{err:?}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("127.0.0.1:1"), "{text}");
    }
}
