//! Key material of a simulated merchant and of the simulated WeChat Pay:
//! generated fresh or loaded from a directory, and written out as the files a
//! client is configured with.
//!
//! Files in a key directory (private keys written with mode 0600):
//!
//! | file | who uses it |
//! | --- | --- |
//! | `merchant_private_key.pem` | the client (`WECHATPAY_MERCHANT_KEY_FILE`) |
//! | `merchant_public_key.pem` | the simulator, to verify requests |
//! | `wechatpay_private_key.pem` | the simulator, to sign responses |
//! | `wechatpay_public_key.pem` | the client (`WECHATPAY_PUBLIC_KEY_FILE`) |
//! | `apiv3.key` | the notification receiver (`WECHATPAY_APIV3_KEY_FILE`) |
//!
//! The APIv3 key is the merchant's 32-byte symmetric key that WeChat Pay
//! encrypts notification resources with; [`ApiV3Key`] keeps it out of logs.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private, Public};
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder};

pub const MERCHANT_PRIVATE_KEY_FILE: &str = "merchant_private_key.pem";
pub const MERCHANT_PUBLIC_KEY_FILE: &str = "merchant_public_key.pem";
pub const WECHATPAY_PRIVATE_KEY_FILE: &str = "wechatpay_private_key.pem";
pub const WECHATPAY_PUBLIC_KEY_FILE: &str = "wechatpay_public_key.pem";
pub const APIV3_KEY_FILE: &str = "apiv3.key";

/// Why keys could not be made, read or written. Names files, never contents.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a PEM RSA {what}", path.display())]
    Parse { path: PathBuf, what: &'static str },
    #[error("{} is not an APIv3 key (exactly 32 bytes, one trailing newline allowed)", path.display())]
    ApiV3Key { path: PathBuf },
    #[error("openssl: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
}

/// The two key pairs of a simulated set-up. `Debug` shows no key.
#[derive(Clone)]
pub struct SimKeys {
    /// Absent when the simulator was given only the merchant's public key.
    pub(crate) merchant_private: Option<PKey<Private>>,
    pub(crate) merchant_public: PKey<Public>,
    pub(crate) wechatpay_private: PKey<Private>,
}

impl fmt::Debug for SimKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimKeys([redacted])")
    }
}

/// Paths a client is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFiles {
    pub merchant_key_file: PathBuf,
    pub wechatpay_public_key_file: PathBuf,
    /// The APIv3 key (32 bytes, mode 0600), for whoever decrypts payment
    /// notifications.
    pub apiv3_key_file: PathBuf,
}

impl ClientFiles {
    /// The `WECHATPAY_*` settings of the worker and `serve` for a simulator
    /// at `base_url` with these files and the default merchant and key ids:
    /// hand them to a child process with `Command::envs`.
    #[must_use]
    pub fn worker_env(&self, base_url: &str) -> Vec<(&'static str, std::ffi::OsString)> {
        vec![
            ("WECHATPAY_BASE_URL", base_url.into()),
            ("WECHATPAY_MCHID", crate::DEFAULT_MCHID.into()),
            (
                "WECHATPAY_MERCHANT_SERIAL_NO",
                crate::DEFAULT_MERCHANT_SERIAL_NO.into(),
            ),
            (
                "WECHATPAY_MERCHANT_KEY_FILE",
                self.merchant_key_file.clone().into(),
            ),
            (
                "WECHATPAY_PUBLIC_KEY_ID",
                crate::DEFAULT_PUBLIC_KEY_ID.into(),
            ),
            (
                "WECHATPAY_PUBLIC_KEY_FILE",
                self.wechatpay_public_key_file.clone().into(),
            ),
        ]
    }
}

/// The merchant's APIv3 key: exactly 32 bytes, the AES-256-GCM key of
/// notification resources. `Debug` shows `[redacted]`; `Default` is
/// [`crate::DEFAULT_APIV3_KEY`].
#[derive(Clone, PartialEq, Eq)]
pub struct ApiV3Key([u8; 32]);

impl ApiV3Key {
    /// `None` unless `key` is exactly 32 bytes.
    #[must_use]
    pub fn new(key: &[u8]) -> Option<Self> {
        key.try_into().ok().map(Self)
    }

    /// Reads a key file: 32 bytes, optionally followed by one newline.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let data = read(path)?;
        let key = data.strip_suffix(b"\n").unwrap_or(&data);
        Self::new(key).ok_or_else(|| KeyError::ApiV3Key {
            path: path.to_owned(),
        })
    }

    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Default for ApiV3Key {
    fn default() -> Self {
        Self::new(crate::DEFAULT_APIV3_KEY.as_bytes()).expect("DEFAULT_APIV3_KEY has 32 bytes")
    }
}

impl fmt::Debug for ApiV3Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiV3Key([redacted])")
    }
}

fn public_of(key: &PKey<Private>) -> Result<PKey<Public>, KeyError> {
    Ok(PKey::public_key_from_pem(&key.public_key_to_pem()?)?)
}

impl SimKeys {
    /// One set of keys per process, generated on first use: what tests share
    /// (generating costs a fraction of a second each time).
    #[must_use]
    pub fn shared() -> &'static SimKeys {
        static KEYS: std::sync::OnceLock<SimKeys> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| SimKeys::generate().expect("generate simulator keys"))
    }

    /// Two fresh RSA-2048 key pairs (about 0.1 s each).
    pub fn generate() -> Result<Self, KeyError> {
        let merchant = PKey::from_rsa(Rsa::generate(2048)?)?;
        let wechatpay = PKey::from_rsa(Rsa::generate(2048)?)?;
        Ok(Self {
            merchant_public: public_of(&merchant)?,
            merchant_private: Some(merchant),
            wechatpay_private: wechatpay,
        })
    }

    /// From PEM: the merchant's public key (SPKI) or private key (PKCS#8 or
    /// PKCS#1; only its public half is used to verify), and the simulated
    /// WeChat Pay private key.
    #[must_use]
    pub fn from_pem(merchant_key: &[u8], wechatpay_private_key: &[u8]) -> Option<Self> {
        let wechatpay_private = private_from_pem(wechatpay_private_key)?;
        let (merchant_private, merchant_public) = match private_from_pem(merchant_key) {
            Some(private) => {
                let public = public_of(&private).ok()?;
                (Some(private), public)
            }
            None => (None, PKey::public_key_from_pem(merchant_key).ok()?),
        };
        Some(Self {
            merchant_private,
            merchant_public,
            wechatpay_private,
        })
    }

    /// Loads the keys from `dir` if it holds them (see the module docs),
    /// otherwise generates them and writes all four files there.
    pub fn load_or_generate(dir: &Path) -> Result<Self, KeyError> {
        let wechatpay_path = dir.join(WECHATPAY_PRIVATE_KEY_FILE);
        if wechatpay_path.exists() {
            let merchant_path = [MERCHANT_PRIVATE_KEY_FILE, MERCHANT_PUBLIC_KEY_FILE]
                .iter()
                .map(|f| dir.join(f))
                .find(|p| p.exists())
                .unwrap_or_else(|| dir.join(MERCHANT_PUBLIC_KEY_FILE));
            let merchant = read(&merchant_path)?;
            let wechatpay = read(&wechatpay_path)?;
            let wechatpay_private = private_from_pem(&wechatpay).ok_or(KeyError::Parse {
                path: wechatpay_path,
                what: "private key",
            })?;
            let (merchant_private, merchant_public) = match private_from_pem(&merchant) {
                Some(private) => (Some(private.clone()), public_of(&private)?),
                None => (
                    None,
                    PKey::public_key_from_pem(&merchant).map_err(|_| KeyError::Parse {
                        path: merchant_path,
                        what: "key",
                    })?,
                ),
            };
            return Ok(Self {
                merchant_private,
                merchant_public,
                wechatpay_private,
            });
        }
        let keys = Self::generate()?;
        keys.write_all(dir)?;
        Ok(keys)
    }

    /// Writes every key file into `dir` (created if needed).
    pub fn write_all(&self, dir: &Path) -> Result<ClientFiles, KeyError> {
        let files = self.write_client_files(dir)?;
        write(
            &dir.join(MERCHANT_PUBLIC_KEY_FILE),
            &self.merchant_public.public_key_to_pem()?,
            false,
        )?;
        write(
            &dir.join(WECHATPAY_PRIVATE_KEY_FILE),
            &self.wechatpay_private.private_key_to_pem_pkcs8()?,
            true,
        )?;
        Ok(files)
    }

    /// Writes the files a client needs into `dir`: the merchant private key
    /// (PKCS#8), the simulated WeChat Pay public key and the default APIv3
    /// key ([`crate::DEFAULT_APIV3_KEY`], what [`crate::SimConfig`] uses
    /// unless told otherwise). Requires a merchant private key (generated,
    /// or loaded as one) for the first file.
    pub fn write_client_files(&self, dir: &Path) -> Result<ClientFiles, KeyError> {
        self.write_client_files_with(dir, &ApiV3Key::default())
    }

    /// [`SimKeys::write_client_files`] with this APIv3 key.
    pub fn write_client_files_with(
        &self,
        dir: &Path,
        apiv3_key: &ApiV3Key,
    ) -> Result<ClientFiles, KeyError> {
        fs::create_dir_all(dir).map_err(|source| KeyError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let files = ClientFiles {
            merchant_key_file: dir.join(MERCHANT_PRIVATE_KEY_FILE),
            wechatpay_public_key_file: dir.join(WECHATPAY_PUBLIC_KEY_FILE),
            apiv3_key_file: dir.join(APIV3_KEY_FILE),
        };
        write(&files.apiv3_key_file, apiv3_key.as_bytes(), true)?;
        if let Some(merchant) = &self.merchant_private {
            write(
                &files.merchant_key_file,
                &merchant.private_key_to_pem_pkcs8()?,
                true,
            )?;
        }
        write(
            &files.wechatpay_public_key_file,
            &self.wechatpay_private.public_key_to_pem()?,
            false,
        )?;
        Ok(files)
    }

    /// The merchant private key as PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`), for
    /// tests of that format.
    #[must_use]
    pub fn merchant_private_key_pkcs1_pem(&self) -> Option<Vec<u8>> {
        let key = self.merchant_private.as_ref()?;
        key.rsa().ok()?.private_key_to_pem().ok()
    }

    /// A self-signed X.509 certificate over the simulated WeChat Pay key with
    /// serial `serial_hex`, for testing platform certificate mode (start the
    /// simulator with that serial as its signing serial).
    pub fn wechatpay_certificate_pem(&self, serial_hex: &str) -> Result<Vec<u8>, KeyError> {
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_text("CN", "Tenpay.com Root CA (simulated)")?;
        let name = name.build();
        let mut b = X509Builder::new()?;
        b.set_version(2)?;
        let serial = BigNum::from_hex_str(serial_hex)?.to_asn1_integer()?;
        b.set_serial_number(&serial)?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(&name)?;
        b.set_pubkey(&self.wechatpay_private)?;
        let not_before = Asn1Time::days_from_now(0)?;
        let not_after = Asn1Time::days_from_now(365)?;
        b.set_not_before(&not_before)?;
        b.set_not_after(&not_after)?;
        b.sign(&self.wechatpay_private, MessageDigest::sha256())?;
        Ok(b.build().to_pem()?)
    }
}

fn private_from_pem(pem: &[u8]) -> Option<PKey<Private>> {
    // No passphrase callback: never prompt on a terminal.
    PKey::private_key_from_pem_callback(pem, |_| Ok(0))
        .ok()
        .filter(|k| k.rsa().is_ok())
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, data: &[u8], private: bool) -> Result<(), KeyError> {
    let err = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(data).map_err(err)
}

/// This machine's RSA-2048 SHA256withRSA signatures per second on one
/// thread, measured now for a second: the figure every benchmark prints
/// beside its own (RSA signing speed differs several-fold between machines
/// and between hours on a shared one).
#[must_use]
pub fn signature_rate() -> f64 {
    let key = Rsa::generate(2048)
        .and_then(PKey::from_rsa)
        .expect("an RSA-2048 key");
    let started = std::time::Instant::now();
    let mut n = 0u32;
    while started.elapsed() < std::time::Duration::from_secs(1) {
        let mut s = openssl::sign::Signer::new(MessageDigest::sha256(), &key).expect("a signer");
        s.update(b"GET\n/v3/pay/transactions\n1700000000\nnonce\n\n")
            .expect("signing input");
        let _ = s.sign_to_vec().expect("a signature");
        n += 1;
    }
    f64::from(n) / started.elapsed().as_secs_f64()
}
