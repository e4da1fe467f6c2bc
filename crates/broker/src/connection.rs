//! Connections. The AMQP URL carries a password: [`AmqpUrl`] never shows it,
//! and errors are scrubbed of it. [`Connection`] wraps amiquip's, so that no
//! other crate of the workspace calls amiquip: it opens what they need
//! (publishers, consumer lanes, the parking queue reader).

use std::fmt;

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

/// An open connection to the broker. Close it with [`Connection::close`];
/// dropping it closes it too, less politely.
pub struct Connection {
    inner: amiquip::Connection,
    url: AmqpUrl,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The URL it was opened with (its password hidden when printed).
    #[must_use]
    pub fn url(&self) -> &AmqpUrl {
        &self.url
    }

    /// A new channel on this connection.
    pub(crate) fn channel(&mut self, what: &str) -> Result<amiquip::Channel, BrokerError> {
        let url = self.url.clone();
        self.inner.open_channel(None).map_err(|e| {
            BrokerError::from_amiquip(&url, &format!("failed to open a channel ({what})"), e)
        })
    }

    /// Closes the connection cleanly.
    pub fn close(self) -> Result<(), BrokerError> {
        let url = self.url;
        self.inner
            .close()
            .map_err(|e| BrokerError::from_amiquip(&url, "failed to close the connection", e))
    }
}

/// Opens a connection (`amqp://` plain, `amqps://` TLS). Errors name the
/// URL without its password.
pub fn connect(url: &AmqpUrl) -> Result<Connection, BrokerError> {
    let result = if url.expose().starts_with("amqps://") {
        amiquip::Connection::open(url.expose())
    } else {
        amiquip::Connection::insecure_open(url.expose())
    };
    result
        .map(|inner| Connection {
            inner,
            url: url.clone(),
        })
        .map_err(|e| BrokerError::from_amiquip(url, &format!("could not connect to {url}"), e))
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
