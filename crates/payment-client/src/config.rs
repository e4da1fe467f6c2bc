//! The client's typed configuration and the errors of loading it.
//!
//! Only paths and identifiers live here, never key material: the keys are
//! read by [`crate::Client::new`] and held in wrappers whose `Debug` is
//! redacted. The binaries fill this struct from flags and the environment
//! (`WECHATPAY_BASE_URL`, `WECHATPAY_MCHID`, `WECHATPAY_MERCHANT_SERIAL_NO`,
//! `WECHATPAY_MERCHANT_KEY_FILE`, `WECHATPAY_PUBLIC_KEY_ID`,
//! `WECHATPAY_PUBLIC_KEY_FILE`); this crate never reads the environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::{Position, Url};

/// The production API.
pub const DEFAULT_BASE_URL: &str = "https://api.mch.weixin.qq.com";
/// WeChat Pay's backup domain, worth trying only when the main one cannot be
/// reached at all.
pub const BACKUP_BASE_URL: &str = "https://api2.mch.weixin.qq.com";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// WeChat Pay public key mode: responses signed by this key carry
/// `Wechatpay-Serial: <id>`, and requests send the id in `Wechatpay-Serial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyConfig {
    /// `PUB_KEY_ID_...`
    pub id: String,
    /// PEM public key downloaded from the merchant platform.
    pub file: PathBuf,
}

/// A WeChat Pay platform certificate (the older mode) and its serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformCertificateConfig {
    /// Serial in hex, as in `Wechatpay-Serial`; checked against the file.
    pub serial: String,
    pub file: PathBuf,
}

/// Everything the client needs. Build with [`Config::new`] and adjust the
/// public fields; [`crate::Client::new`] validates it and loads the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Merchant id (`mchid`), digits.
    pub mchid: String,
    /// Serial number of the merchant API certificate (`serial_no` in
    /// `Authorization`).
    pub merchant_serial_no: String,
    /// Merchant RSA private key, PEM (PKCS#8 or PKCS#1).
    pub merchant_key_file: PathBuf,
    /// Public key mode (recommended by WeChat Pay for new merchants).
    pub wechatpay_public_key: Option<PublicKeyConfig>,
    /// Platform certificates; may be combined with public key mode during a
    /// migration, responses are verified by whichever key their serial names.
    pub platform_certificates: Vec<PlatformCertificateConfig>,
    /// Scheme and host, no trailing slash, e.g. `https://api.mch.weixin.qq.com`.
    pub base_url: String,
    /// Tried once after a connection-level failure (nothing was sent), never
    /// after a timeout or an HTTP error.
    pub backup_base_url: Option<String>,
    pub connect_timeout: Duration,
    /// Whole request: connect, send, wait, read.
    pub timeout: Duration,
    /// Idle connections kept for reuse (per host and in all). Set it to the
    /// number of threads sharing the client, or most calls pay a new TCP
    /// (and TLS) handshake.
    pub max_idle_connections: usize,
    /// An HTTP(S) proxy for WeChat Pay calls (`WECHATPAY_PROXY`). Proxy
    /// variables of the environment (`HTTPS_PROXY`, `ALL_PROXY`, ...) are
    /// never followed: only this setting routes calls through a proxy.
    pub proxy: Option<ProxyUrl>,
}

/// A proxy URL, which may carry a password: held as a [`SecretString`],
/// read only by the HTTP client ([`ProxyUrl::expose_secret`]); `Debug` and
/// `Display` hide the password.
#[derive(Clone)]
pub struct ProxyUrl(SecretString);

impl ProxyUrl {
    /// The URL as given (ureq reads it when the client is built:
    /// `[scheme://][user:password@]host:port`).
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    /// The URL with its password, for the HTTP client only.
    #[must_use]
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// `scheme://user:password@host` -> `scheme://user:***@host`, read by
    /// the `url` crate; what it cannot read is hidden whole.
    fn redacted(&self) -> String {
        let given = self.expose_secret();
        // ureq takes a proxy without a scheme as `http://`; so does the
        // `url` crate here (it would read `user:` as a scheme).
        let schemeless = !given.contains("://");
        let Ok(mut url) = Url::parse(&if schemeless {
            format!("http://{given}")
        } else {
            given.to_owned()
        }) else {
            return "[redacted: not a URL]".to_owned();
        };
        if url.password().is_some() {
            // Cannot fail: the URL has a host (it has a password).
            let _ = url.set_password(Some("***"));
        }
        // `url` writes the path `/` of an http URL given without one; shown
        // as given.
        let shown = if url.path() == "/"
            && !given.ends_with('/')
            && url.query().is_none()
            && url.fragment().is_none()
        {
            &url[..Position::AfterPort]
        } else {
            url.as_str()
        };
        let shown = if schemeless {
            shown.strip_prefix("http://").unwrap_or(shown)
        } else {
            shown
        };
        shown.to_owned()
    }
}

impl PartialEq for ProxyUrl {
    fn eq(&self, other: &Self) -> bool {
        self.expose_secret() == other.expose_secret()
    }
}

impl Eq for ProxyUrl {}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

impl Config {
    /// The production API (with its backup domain) and default timeouts; add
    /// a WeChat Pay public key or a platform certificate before use.
    #[must_use]
    pub fn new(
        mchid: impl Into<String>,
        merchant_serial_no: impl Into<String>,
        merchant_key_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            mchid: mchid.into(),
            merchant_serial_no: merchant_serial_no.into(),
            merchant_key_file: merchant_key_file.into(),
            wechatpay_public_key: None,
            platform_certificates: Vec::new(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            backup_base_url: Some(BACKUP_BASE_URL.to_owned()),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            max_idle_connections: 10,
            proxy: None,
        }
    }

    /// Routes every call through this proxy.
    #[must_use]
    pub fn with_proxy(mut self, url: ProxyUrl) -> Self {
        self.proxy = Some(url);
        self
    }

    #[must_use]
    pub fn with_public_key(mut self, id: impl Into<String>, file: impl Into<PathBuf>) -> Self {
        self.wechatpay_public_key = Some(PublicKeyConfig {
            id: id.into(),
            file: file.into(),
        });
        self
    }

    #[must_use]
    pub fn with_platform_certificate(
        mut self,
        serial: impl Into<String>,
        file: impl Into<PathBuf>,
    ) -> Self {
        self.platform_certificates.push(PlatformCertificateConfig {
            serial: serial.into(),
            file: file.into(),
        });
        self
    }

    /// Points the client elsewhere (a simulator). Clears the backup
    /// domain: a fallback from a local URL to the real API would be wrong.
    #[must_use]
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self.backup_base_url = None;
        self
    }

    #[must_use]
    pub fn with_max_idle_connections(mut self, n: usize) -> Self {
        self.max_idle_connections = n.max(1);
        self
    }

    #[must_use]
    pub fn with_timeouts(mut self, connect: Duration, overall: Duration) -> Self {
        self.connect_timeout = connect;
        self.timeout = overall;
        self
    }
}

/// Why the client could not be built. Messages name the setting or file at
/// fault and never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("WeChat Pay setting {setting} is invalid: {reason}")]
    Invalid {
        /// The environment variable the binaries read it from.
        setting: &'static str,
        reason: String,
    },
    #[error("no WeChat Pay key to verify responses with: set WECHATPAY_PUBLIC_KEY_ID and WECHATPAY_PUBLIC_KEY_FILE (or a platform certificate)")]
    NoVerificationKey,
    #[error("cannot load {what} from {}: {reason}", path.display())]
    KeyFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// An APIv3 key given as bytes is not 32 bytes long (a key file of the
    /// wrong length is [`ConfigError::KeyFile`], naming the file).
    #[error("the WeChat Pay APIv3 key must be exactly 32 bytes, got {0}")]
    ApiV3KeyLength(usize),
    #[error("cannot set up the HTTP client: {0}")]
    Http(#[source] ureq::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_password_never_prints() {
        let p = ProxyUrl::new("http://ops:s3cret@proxy.internal:3128");
        assert_eq!(p.to_string(), "http://ops:***@proxy.internal:3128");
        assert!(!format!("{p:?}").contains("s3cret"));
        let c = Config::new("1", "AB", "/k.pem").with_proxy(p.clone());
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(
            ProxyUrl::new("http://proxy:3128").to_string(),
            "http://proxy:3128"
        );
        assert_eq!(
            p.expose_secret(),
            "http://ops:s3cret@proxy.internal:3128",
            "handed to ureq as given"
        );
    }

    #[test]
    fn a_proxy_password_never_prints_whatever_the_form() {
        for (given, shown) in [
            // ureq takes a proxy without a scheme as http.
            (
                "ops:s3cret@proxy.internal:3128",
                "ops:***@proxy.internal:3128",
            ),
            (
                "socks5://ops:s3cret@proxy:1080",
                "socks5://ops:***@proxy:1080",
            ),
            ("https://ops:s%40s3cret@proxy/", "https://ops:***@proxy/"),
            ("http://ops:s3cret@bad proxy", "[redacted: not a URL]"),
            ("proxy.internal:3128", "proxy.internal:3128"),
        ] {
            let p = ProxyUrl::new(given);
            assert_eq!(p.to_string(), shown, "{given}");
            assert!(!format!("{p:?}").contains("s3cret"), "{given}");
        }
    }
}
