//! The WeChat Pay settings every binary that calls WeChat Pay takes (the
//! worker, `order-producer serve`): flags and environment variables, turned
//! into a `payment_client::Config` with an error naming the missing one.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// WeChat Pay settings. The worker and the front door refuse to start without them.
#[derive(Debug, Clone, Args)]
pub struct PaymentArgs {
    /// WeChat Pay API base URL (scheme and host). When not set: the real
    /// API, with its backup domain tried after a connection failure.
    #[arg(long = "wechatpay-base-url", env = "WECHATPAY_BASE_URL")]
    pub base_url: Option<String>,
    /// Merchant id.
    #[arg(long = "wechatpay-mchid", env = "WECHATPAY_MCHID")]
    pub mchid: Option<String>,
    /// Serial number of the merchant API certificate.
    #[arg(
        long = "wechatpay-merchant-serial-no",
        env = "WECHATPAY_MERCHANT_SERIAL_NO"
    )]
    pub merchant_serial_no: Option<String>,
    /// Merchant private key, PEM (PKCS#8 or PKCS#1). Never printed.
    #[arg(
        long = "wechatpay-merchant-key-file",
        env = "WECHATPAY_MERCHANT_KEY_FILE"
    )]
    pub merchant_key_file: Option<PathBuf>,
    /// WeChat Pay public key id (`PUB_KEY_ID_...`), public key mode.
    #[arg(long = "wechatpay-public-key-id", env = "WECHATPAY_PUBLIC_KEY_ID")]
    pub public_key_id: Option<String>,
    /// WeChat Pay public key, PEM, public key mode.
    #[arg(long = "wechatpay-public-key-file", env = "WECHATPAY_PUBLIC_KEY_FILE")]
    pub public_key_file: Option<PathBuf>,
    /// Platform certificates as SERIAL=FILE, comma-separated or the flag
    /// repeated (older mode, instead of the public key).
    #[arg(
        long = "wechatpay-platform-certs",
        env = "WECHATPAY_PLATFORM_CERTS",
        value_delimiter = ',',
        value_name = "SERIAL=FILE"
    )]
    pub platform_certs: Vec<String>,
    /// Whole-request timeout of a WeChat Pay call.
    #[arg(long = "wechatpay-timeout", env = "WECHATPAY_TIMEOUT", default_value = "10s", value_parser = crate::parse_duration)]
    pub timeout: Duration,
    /// Connect timeout of a WeChat Pay call.
    #[arg(long = "wechatpay-connect-timeout", env = "WECHATPAY_CONNECT_TIMEOUT", default_value = "3s", value_parser = crate::parse_duration)]
    pub connect_timeout: Duration,
    /// An HTTP(S) proxy for WeChat Pay calls, e.g. `http://proxy.internal:3128`.
    /// Proxy variables of the environment (`HTTPS_PROXY`, `ALL_PROXY`,
    /// `HTTP_PROXY`) are never followed for WeChat Pay: only this setting
    /// routes its calls through a proxy. A password in it is never printed.
    #[arg(long = "wechatpay-proxy", env = "WECHATPAY_PROXY", hide_env_values = true, value_parser = parse_proxy)]
    pub proxy: Option<payment_client::ProxyUrl>,
}

/// Wrapped at once, so that `Debug` of the parsed arguments hides a password.
#[allow(clippy::unnecessary_wraps)] // clap's value_parser signature
fn parse_proxy(s: &str) -> Result<payment_client::ProxyUrl, String> {
    Ok(payment_client::ProxyUrl::new(s))
}

/// A required setting is missing or malformed (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingError(pub String);

fn required<T: Clone>(v: Option<&T>, var: &str, flag: &str) -> Result<T, SettingError> {
    v.cloned().ok_or_else(|| {
        SettingError(format!(
            "missing payment setting {var} (or --{flag}); WeChat Pay cannot be called without it"
        ))
    })
}

impl PaymentArgs {
    /// The client configuration, or an error naming the first missing setting.
    pub fn config(&self) -> Result<payment_client::Config, SettingError> {
        let mchid = required(self.mchid.as_ref(), "WECHATPAY_MCHID", "wechatpay-mchid")?;
        let serial = required(
            self.merchant_serial_no.as_ref(),
            "WECHATPAY_MERCHANT_SERIAL_NO",
            "wechatpay-merchant-serial-no",
        )?;
        let key = required(
            self.merchant_key_file.as_ref(),
            "WECHATPAY_MERCHANT_KEY_FILE",
            "wechatpay-merchant-key-file",
        )?;
        let mut config = payment_client::Config::new(mchid, serial, key)
            .with_timeouts(self.connect_timeout, self.timeout);
        match (&self.public_key_id, &self.public_key_file) {
            (Some(id), Some(file)) => config = config.with_public_key(id.clone(), file.clone()),
            (Some(_), None) => {
                return Err(SettingError(
                    "missing payment setting WECHATPAY_PUBLIC_KEY_FILE (or --wechatpay-public-key-file): \
                     WECHATPAY_PUBLIC_KEY_ID is set without its key file"
                        .into(),
                ))
            }
            (None, Some(_)) => {
                return Err(SettingError(
                    "missing payment setting WECHATPAY_PUBLIC_KEY_ID (or --wechatpay-public-key-id): \
                     WECHATPAY_PUBLIC_KEY_FILE is set without its id"
                        .into(),
                ))
            }
            (None, None) if self.platform_certs.is_empty() => {
                return Err(SettingError(
                    "missing payment setting WECHATPAY_PUBLIC_KEY_ID and WECHATPAY_PUBLIC_KEY_FILE \
                     (or platform certificates, WECHATPAY_PLATFORM_CERTS / --wechatpay-platform-certs SERIAL=FILE): \
                     without a WeChat Pay key no answer can be verified"
                        .into(),
                ))
            }
            (None, None) => {}
        }
        for cert in &self.platform_certs {
            let (serial, file) = cert.split_once('=').ok_or_else(|| {
                SettingError(format!(
                    "WECHATPAY_PLATFORM_CERTS (--wechatpay-platform-certs) must be SERIAL=FILE, got {cert:?}"
                ))
            })?;
            config = config.with_platform_certificate(serial, file);
        }
        if let Some(url) = &self.base_url {
            config = config.with_base_url(url.clone());
        }
        if let Some(proxy) = &self.proxy {
            config = config.with_proxy(proxy.clone());
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        payment: PaymentArgs,
    }

    #[test]
    fn a_proxy_password_never_shows_in_the_parsed_arguments() {
        let cli = Cli::try_parse_from(["x", "--wechatpay-proxy", "ops:s3cret@proxy:3128"]).unwrap();
        let debug = format!("{cli:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("ops:***@proxy:3128"), "{debug}");
        let proxy = cli.payment.proxy.unwrap();
        assert_eq!(proxy.expose_secret(), "ops:s3cret@proxy:3128");
    }

    #[test]
    fn the_default_timeouts_are_the_clients() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.payment.timeout, payment_client::DEFAULT_TIMEOUT);
        assert_eq!(
            cli.payment.connect_timeout,
            payment_client::DEFAULT_CONNECT_TIMEOUT
        );
    }
}
