//! Connections. The AMQP URL carries a password: [`AmqpUrl`] never shows it,
//! and errors are scrubbed of it. [`Connection`] wraps amiquip's, so that no
//! other crate of the workspace calls amiquip: it opens what they need
//! (publishers, consumer lanes, the parking queue reader).

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use crate::error::{BrokerError, UnknownNodeOrder};

/// How a process picks among the nodes of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeOrder {
    /// Start at a node picked at random when the process starts (the same
    /// one for all its connections), then the others in list order:
    /// instances given the same list spread over the nodes. (Not by process
    /// id: in containers every instance has the same one.)
    #[default]
    Spread,
    /// Always start at the first node listed.
    Listed,
}

impl NodeOrder {
    /// `spread` or `listed`.
    pub fn parse(s: &str) -> Result<Self, UnknownNodeOrder> {
        match s {
            "spread" => Ok(Self::Spread),
            "listed" => Ok(Self::Listed),
            other => Err(UnknownNodeOrder(other.to_owned())),
        }
    }
}

/// An AMQP URL (`amqp://user:pass@host:port/vhost`, vhost `%2f` for `/`),
/// or several separated by commas: the nodes of one cluster, tried in turn
/// (see [`connect`]). The URLs are [`SecretString`]s: the passwords never
/// reach logs, errors or `Debug`, and each is read only through
/// [`AmqpUrl::expose_secret`], to connect.
#[derive(Clone)]
pub struct AmqpUrl {
    raw: SecretString,
    nodes: Vec<SecretString>,
    order: NodeOrder,
}

impl AmqpUrl {
    /// One URL, or several separated by commas (blanks around them ignored).
    /// Each is handed to amiquip exactly as written here.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        let raw: String = url.into();
        let mut nodes: Vec<SecretString> = raw
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(SecretString::from)
            .collect();
        if nodes.is_empty() {
            nodes.push(SecretString::from(raw.as_str()));
        }
        Self {
            raw: SecretString::from(raw),
            nodes,
            order: NodeOrder::default(),
        }
    }

    /// The same nodes, picked in `order`.
    #[must_use]
    pub fn with_order(mut self, order: NodeOrder) -> Self {
        self.order = order;
        self
    }

    /// The URL(s) as given, passwords included: only for handing on (to
    /// amiquip, or to a child process's environment).
    #[must_use]
    pub fn expose_secret(&self) -> &str {
        self.raw.expose_secret()
    }

    /// Each node as a URL of its own, in the order [`connect`] tries them
    /// from this process.
    #[must_use]
    pub fn nodes(&self) -> Vec<AmqpUrl> {
        let n = self.nodes.len();
        let start = match self.order {
            NodeOrder::Listed => 0,
            NodeOrder::Spread => spread_start() % n,
        };
        (0..n)
            .map(|i| Self {
                raw: self.nodes[(start + i) % n].clone(),
                nodes: vec![self.nodes[(start + i) % n].clone()],
                order: self.order,
            })
            .collect()
    }

    /// The URL(s) with every password replaced by `***`.
    #[must_use]
    pub fn redacted(&self) -> String {
        self.nodes
            .iter()
            .map(|n| domain::db::redact_password(n.expose_secret()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `text` with every occurrence of a node's password (as written and
    /// percent-decoded) replaced by `***`.
    #[must_use]
    pub fn scrub(&self, text: &str) -> String {
        self.nodes.iter().fold(text.to_owned(), |out, node| {
            domain::db::scrub_password(node.expose_secret(), &out)
        })
    }
}

impl PartialEq for AmqpUrl {
    fn eq(&self, other: &Self) -> bool {
        self.expose_secret() == other.expose_secret() && self.order == other.order
    }
}

impl Eq for AmqpUrl {}

/// This process's starting point among the nodes, picked once.
fn spread_start() -> usize {
    static START: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *START.get_or_init(|| rand::random::<u16>().into())
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

/// Opens a connection (`amqp://` plain, `amqps://` TLS). With several
/// nodes, to the first that answers, in this process's order
/// ([`AmqpUrl::nodes`]); each failure is logged and the next node tried.
/// Errors name the URL(s) without the password.
pub fn connect(url: &AmqpUrl) -> Result<Connection, BrokerError> {
    let nodes = url.nodes();
    let count = nodes.len();
    let mut last = None;
    for (i, node) in nodes.into_iter().enumerate() {
        match connect_node(&node) {
            Ok(c) => {
                if i > 0 {
                    log::warn!("connected to {node}, node {} of {count} tried", i + 1);
                }
                return Ok(c);
            }
            Err(e) => {
                if count > 1 {
                    log::warn!("node {node} did not answer ({e}); trying the next");
                }
                last = Some(e);
            }
        }
    }
    Err(match last {
        Some(BrokerError::Connection { context, message }) if count > 1 => {
            BrokerError::Connection {
                context: format!(
                    "none of the {count} nodes of {url} answered; the last: {context}"
                ),
                message,
            }
        }
        // One node, or the last refused us for a reason of its own (bad
        // credentials, no such vhost): as it said.
        Some(e) => e,
        None => BrokerError::Connection {
            context: format!("connecting to {url}"),
            message: "no node given".into(),
        },
    })
}

fn connect_node(url: &AmqpUrl) -> Result<Connection, BrokerError> {
    let result = if url.expose_secret().starts_with("amqps://") {
        amiquip::Connection::open(url.expose_secret())
    } else {
        amiquip::Connection::insecure_open(url.expose_secret())
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
    fn amiquip_is_handed_each_url_as_written_and_debug_never_shows_one() {
        let given = "amqps://app:s%40cr%C3%A9t@mq.example.com:5671/%2f?heartbeat=10 , amqp://app:%中x@[::1]/v";
        let url = AmqpUrl::new(given).with_order(NodeOrder::Listed);
        assert_eq!(url.expose_secret(), given);
        let nodes = url.nodes();
        assert_eq!(
            nodes.iter().map(AmqpUrl::expose_secret).collect::<Vec<_>>(),
            [
                "amqps://app:s%40cr%C3%A9t@mq.example.com:5671/%2f?heartbeat=10",
                "amqp://app:%中x@[::1]/v"
            ]
        );
        assert_eq!(
            url.to_string(),
            "amqps://app:***@mq.example.com:5671/%2f?heartbeat=10,amqp://app:***@[::1]/v"
        );
        let debug = format!("{url:?} {nodes:?}");
        for secret in ["s%40cr", "s@cr", "%中x", "中"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        // As amiquip quotes it (the `url` crate's writing) and as meant.
        assert_eq!(
            url.scrub("amqp://app:%%E4%B8%ADx@[::1]/v: s@cr\u{e9}t"),
            "amqp://app:***@[::1]/v: ***"
        );
    }

    #[test]
    fn a_password_with_a_percent_before_a_wide_character_is_scrubbed_without_a_panic() {
        // A hand-written decoder sliced `%中x` inside the character and
        // panicked while scrubbing a connection error.
        let url = AmqpUrl::new("amqp://app:%中x@mq:5672/%2f");
        assert_eq!(url.to_string(), "amqp://app:***@mq:5672/%2f");
        assert_eq!(
            url.scrub("refused for app:%中x here"),
            "refused for app:*** here"
        );
        let url = AmqpUrl::new("amqp://app:a%E4%B8%AD%25b@mq/%2f");
        assert_eq!(url.scrub("password a中%b"), "password ***");
    }

    #[test]
    fn several_nodes_are_split_spread_and_redacted() {
        let url = AmqpUrl::new(
            "amqp://app:s3cret@mq1:5672/v, amqp://app:s3cret@mq2:5672/v,amqp://app:s3cret@mq3:5672/v",
        );
        assert_eq!(
            url.to_string(),
            "amqp://app:***@mq1:5672/v,amqp://app:***@mq2:5672/v,amqp://app:***@mq3:5672/v"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.scrub("x s3cret y"), "x *** y");
        let listed: Vec<String> = url
            .clone()
            .with_order(NodeOrder::Listed)
            .nodes()
            .iter()
            .map(AmqpUrl::to_string)
            .collect();
        assert_eq!(
            listed,
            [
                "amqp://app:***@mq1:5672/v",
                "amqp://app:***@mq2:5672/v",
                "amqp://app:***@mq3:5672/v"
            ]
        );
        // Spread: a rotation of the list, the same for every connection of
        // this process.
        let spread: Vec<String> = url.nodes().iter().map(AmqpUrl::to_string).collect();
        assert_eq!(
            spread,
            url.nodes()
                .iter()
                .map(AmqpUrl::to_string)
                .collect::<Vec<_>>()
        );
        let start = listed.iter().position(|n| *n == spread[0]).unwrap();
        assert_eq!(spread[0], listed[start]);
        assert_eq!(spread[1], listed[(start + 1) % 3]);
        assert_eq!(AmqpUrl::new("amqp://a@h/v").nodes().len(), 1);
        assert_eq!(
            NodeOrder::parse("random").unwrap_err().to_string(),
            "expected spread or listed, got \"random\""
        );
    }

    #[test]
    fn a_stopped_node_is_skipped_and_when_all_are_down_the_error_names_them() {
        let url =
            AmqpUrl::new("amqp://app:hunter2@127.0.0.1:1/%2f,amqp://app:hunter2@127.0.0.1:2/%2f")
                .with_order(NodeOrder::Listed);
        let Err(err) = connect(&url) else {
            panic!("nothing listens on ports 1 and 2");
        };
        assert!(err.is_transient(), "{err:?}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("none of the 2 nodes"), "{text}");
        assert!(text.contains("127.0.0.1:2"), "{text}");
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
