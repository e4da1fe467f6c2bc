//! Test support (feature `test-support`): a RabbitMQ vhost of its own per
//! test, created with `rabbitmqctl` (root or the rabbitmq user) and deleted,
//! queues and all, when the test ends.
//!
//! The broker is `TEST_AMQP_HOST` (default `127.0.0.1:5672`), user
//! guest/guest.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::connection::AmqpUrl;

/// Runs `rabbitmqctl` with `args`, panicking with its output on failure.
#[must_use]
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("tests need rabbitmqctl on PATH ({e})"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh vhost, deleted on drop.
#[derive(Debug)]
pub struct TestVhost {
    name: String,
    url: AmqpUrl,
}

impl TestVhost {
    #[must_use]
    pub fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ot_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let _ = rabbitmqctl(&["add_vhost", &name]);
        let _ = rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        let host = std::env::var("TEST_AMQP_HOST").unwrap_or_else(|_| "127.0.0.1:5672".into());
        let url = AmqpUrl::new(format!("amqp://guest:guest@{host}/{name}"));
        Self { name, url }
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    #[must_use]
    pub fn url(&self) -> &AmqpUrl {
        &self.url
    }

    /// `rabbitmqctl list_queues name arguments` for this vhost, as JSON
    /// values (`[{"name": ..., "arguments": {...}}, ...]`).
    #[must_use]
    pub fn list_queues(&self) -> serde_json::Value {
        let out = rabbitmqctl(&[
            "list_queues",
            "-p",
            &self.name,
            "name",
            "arguments",
            "messages",
            "--formatter",
            "json",
            "--quiet",
        ]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad rabbitmqctl JSON ({e}): {out}"))
    }

    /// Closes every client connection to this vhost, as a broker restart
    /// would.
    pub fn close_all_connections(&self) {
        let _ = rabbitmqctl(&[
            "close_all_connections",
            "-p",
            &self.name,
            "test: connection closed on purpose",
        ]);
    }
}

impl TestVhost {
    /// A user of its own with a password nobody else uses, allowed on this
    /// vhost (deleted on drop), and the URL that logs in as it: for tests
    /// that look for a password in logs and errors.
    #[must_use]
    pub fn secret_user(&self) -> TestUser {
        let name = format!("{}_user", self.name);
        let password = format!("mq-s3cret-{}", rand::random::<u64>());
        let _ = rabbitmqctl(&["add_user", &name, &password]);
        let _ = rabbitmqctl(&["set_permissions", "-p", &self.name, &name, ".*", ".*", ".*"]);
        let host = std::env::var("TEST_AMQP_HOST").unwrap_or_else(|_| "127.0.0.1:5672".into());
        let url = AmqpUrl::new(format!("amqp://{name}:{password}@{host}/{}", self.name));
        TestUser {
            name,
            password,
            url,
        }
    }
}

/// A RabbitMQ user made by [`TestVhost::secret_user`], deleted on drop.
#[derive(Debug)]
pub struct TestUser {
    pub name: String,
    pub password: String,
    pub url: AmqpUrl,
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

impl TestVhost {
    fn channel_do<T>(&self, f: impl FnOnce(&amiquip::Channel) -> T) -> T {
        let mut conn = crate::connect(&self.url).expect("connect to the test vhost");
        let channel = conn.channel("test").expect("open a channel");
        let out = f(&channel);
        let _ = channel.close();
        let _ = conn.close();
        out
    }

    /// Ready messages in `queue` (it must exist).
    #[must_use]
    pub fn depth(&self, queue: &str) -> u32 {
        self.channel_do(|c| {
            c.queue_declare_passive(queue)
                .expect("queue exists")
                .declared_message_count()
                .unwrap_or(0)
        })
    }

    /// Consumers of `queue` (it must exist).
    #[must_use]
    pub fn consumers(&self, queue: &str) -> u32 {
        self.channel_do(|c| {
            c.queue_declare_passive(queue)
                .expect("queue exists")
                .declared_consumer_count()
                .unwrap_or(0)
        })
    }

    /// Takes every message from `queue`: (body, properties), in order.
    #[must_use]
    pub fn drain(&self, queue: &str) -> Vec<(Vec<u8>, amiquip::AmqpProperties)> {
        self.channel_do(|c| {
            let mut out = Vec::new();
            while let Some(get) = c.basic_get(queue, true).expect("basic.get") {
                out.push((get.delivery.body, get.delivery.properties));
            }
            out
        })
    }

    /// Publishes raw bytes to `queue` through the default exchange, without
    /// confirm (as a misbehaving publisher would).
    pub fn publish_raw(&self, queue: &str, body: &[u8], properties: amiquip::AmqpProperties) {
        self.channel_do(|c| {
            c.basic_publish(
                "",
                amiquip::Publish::with_properties(body, queue, properties),
            )
            .expect("publish");
        });
    }
}

impl Default for TestVhost {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
}
