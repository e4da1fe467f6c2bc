//! Request signing: the message format, the merchant key and the
//! `Authorization` header.
//!
//! The signed message is `METHOD\nPATH?QUERY\nTIMESTAMP\nNONCE\nBODY\n`, each
//! part exactly as it goes on the wire (a GET has an empty body but keeps the
//! final newline). Signing is SHA256withRSA with PKCS#1 v1.5 padding through
//! OpenSSL: it is the CPU hot spot of the whole system (two or three
//! signatures per settled order) and OpenSSL is the fastest implementation
//! measured on our machines (see docs/benchmarks.md).

use std::fmt;
use std::path::Path;

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use rand::distr::{Alphanumeric, SampleString};

use crate::config::ConfigError;

/// Authorization scheme of APIv3 requests signed with an RSA merchant key.
pub const AUTH_SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// Builds the message a request signature covers.
#[must_use]
pub fn request_message(
    method: &str,
    path_and_query: &str,
    timestamp: u64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let ts = timestamp.to_string();
    let mut msg = Vec::with_capacity(
        method.len() + path_and_query.len() + ts.len() + nonce.len() + body.len() + 5,
    );
    for part in [
        method.as_bytes(),
        path_and_query.as_bytes(),
        ts.as_bytes(),
        nonce.as_bytes(),
        body,
    ] {
        msg.extend_from_slice(part);
        msg.push(b'\n');
    }
    msg
}

/// A fresh 32-character alphanumeric nonce (about 190 bits of randomness).
#[must_use]
pub fn new_nonce() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// The merchant's RSA private key. Its `Debug` never shows the key.
///
/// Not a `secrecy::SecretBox`: that needs a key it can zero itself
/// (`Zeroize`), and this one lives in OpenSSL's memory, which OpenSSL
/// clears when the key is freed; `Debug` is written by hand instead.
pub struct MerchantKey {
    key: PKey<Private>,
}

impl fmt::Debug for MerchantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MerchantKey([redacted])")
    }
}

impl MerchantKey {
    /// Parses a PEM RSA private key, PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`). Encrypted keys are refused rather than
    /// prompting for a passphrase on the terminal of a daemon.
    ///
    /// The error text never contains the PEM.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        // A callback that supplies no passphrase: OpenSSL's default would
        // read one from the controlling terminal.
        let key = PKey::private_key_from_pem_callback(pem, |_| Ok(0))
            .map_err(|_| KeyError::NotAPrivateKey)?;
        if key.rsa().is_err() {
            return Err(KeyError::NotRsa);
        }
        Ok(Self { key })
    }

    /// Loads a key file; errors name the file, never its contents.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let pem = std::fs::read(path).map_err(|e| ConfigError::KeyFile {
            what: "merchant private key",
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::from_pem(&pem).map_err(|e| ConfigError::KeyFile {
            what: "merchant private key",
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// SHA256withRSA (PKCS#1 v1.5) over `message`, base64 encoded.
    pub fn sign(&self, message: &[u8]) -> Result<String, openssl::error::ErrorStack> {
        let mut signer = Signer::new(MessageDigest::sha256(), &self.key)?;
        signer.update(message)?;
        Ok(openssl::base64::encode_block(&signer.sign_to_vec()?))
    }
}

/// Why a PEM is not a merchant key. The text never contains the PEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not PEM, not a private key, or encrypted.
    #[error("not an unencrypted PEM private key (expected PKCS#8 `BEGIN PRIVATE KEY` or PKCS#1 `BEGIN RSA PRIVATE KEY`)")]
    NotAPrivateKey,
    /// A private key, but not RSA.
    #[error("not an RSA key (WeChat Pay APIv3 merchant keys are RSA 2048)")]
    NotRsa,
}

/// The value of the `Authorization` header for one signed request.
#[must_use]
pub fn authorization_header(
    mchid: &str,
    serial_no: &str,
    timestamp: u64,
    nonce: &str,
    signature: &str,
) -> String {
    format!(
        r#"{AUTH_SCHEME} mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",timestamp="{timestamp}",serial_no="{serial_no}""#
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // The public test vector of the official Go SDK (wechatpay-go,
    // core/auth/signers/sha256withrsa_signer_test.go): a throwaway key.
    pub(crate) const GO_SDK_PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDZUJN33V+dSfvd
fL0Mu+39XrZNXFFMQSy1V15FpncHeV47SmV0TzTqZc7hHB0ddqAdDi8Z5k3TKqb7
6sOwYr5TcAfuR6PIPaleyE0/0KrljBum2Isa2Nyq7Dgc3ElBQ6YN4l/a+DpvKaz1
FSKmKrhLNskqokWVSlu4g8OlKlbPXQ9ibII14MZRQrrkTmHYHzfi7GXXM0thAKuR
0HNvyhTHBh4/lrYM3GaMvmWwkwvsMavnOex6+eioZHBOb1/EIZ/LzC6zuHArPpyW
3daGaZ1rtQB1vVzTyERAVVFsXXgBHvfFud3w3ShsJYk8JvMwK2RpJ5/gV0QSARcm
LDRUAlPzAgMBAAECggEBAMc7rDeUaXiWv6bMGbZ3BTXpg1FhdddnWUnYE8HfX/km
OFI7XtBHXcgYFpcjYz4D5787pcsk7ezPidAj58zqenuclmjKnUmT3pfbI5eCA2v4
C9HnbYDrmUPK1ZcADtka4D6ScDccpNYNa1g2TFHzkIrEa6H+q7S3O2fqxY/DRVtN
0JIXalBb8daaqL5QVzSmM2BMVnHy+YITJWIkP2a3pKs9C0W65JGDsnG0wVrHinHF
+cnhFZIbaPEI//DAFMc9NkrWOKVRTEgcCUxCFaHOZVNxDWZD7A2ZfJB2rK6eg//y
gEiFDR2h6mTaDowMB4YF2n2dsIO4/dCG8vPHI20jn4ECgYEA/ZGu6lEMlO0XZnam
AZGtiNgLcCfM/C2ZERZE7QTRPZH1WdK92Al9ndldsswFw4baJrJLCmghjF/iG4zi
hhBvLnOLksnZUfjdumxoHDWXo2QBWbI5QsWIE7AuTiWgWj1I7X4fCXSQf6i+M/y2
6TogQ7d0ANpZFyOkTNMn/tiJvLECgYEA22XqlamG/yfAGWery5KNH2DGlTIyd6xJ
WtJ9j3jU99lZ0bCQ5xhiBbU9ImxCi3zgTsoqLWgA/p00HhNFNoUcTl9ofc0G3zwT
D1y0ZzcnVKxGJdZ6ohW52V0hJStAigtjYAsUgjm7//FH7PiQDBDP1Wa6xSRkDQU/
aSbQxvEE8+MCgYEA3bb8krW7opyM0XL9RHH0oqsFlVO30Oit5lrqebS0oHl3Zsr2
ZGgoBlWBsEzk3UqUhTFwm/DhJLTSJ/TQPRkxnhQ5/mewNhS9C7yua7wQkzVmWN+V
YeUGTvDGDF6qDz12/vJAgSwDDRym8x4NcXD5tTw7mmNRcwIfL22SkysThIECgYAV
BgccoEoXWS/HP2/u6fQr9ZIR6eV8Ij5FPbZacTG3LlS1Cz5XZra95UgebFFUHHtC
EY1JHJY7z8SWvTH8r3Su7eWNaIAoFBGffzqqSVazfm6aYZsOvRY6BfqPHT3p/H1h
Tq6AbBffxrcltgvXnCTORjHPglU0CjSxVs7awW3AEQKBgB5WtaC8VLROM7rkfVIq
+RXqE5vtJfa3e3N7W3RqxKp4zHFAPfr82FK5CX2bppEaxY7SEZVvVInKDc5gKdG/
jWNRBmvvftZhY59PILHO2X5vO4FXh7suEjy6VIh0gsnK36mmRboYIBGsNuDHjXLe
BDa+8mDLkWu5nHEhOxy2JJZl
-----END PRIVATE KEY-----
";
    pub(crate) const GO_SDK_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA2VCTd91fnUn73Xy9DLvt
/V62TVxRTEEstVdeRaZ3B3leO0pldE806mXO4RwdHXagHQ4vGeZN0yqm++rDsGK+
U3AH7kejyD2pXshNP9Cq5YwbptiLGtjcquw4HNxJQUOmDeJf2vg6byms9RUipiq4
SzbJKqJFlUpbuIPDpSpWz10PYmyCNeDGUUK65E5h2B834uxl1zNLYQCrkdBzb8oU
xwYeP5a2DNxmjL5lsJML7DGr5znsevnoqGRwTm9fxCGfy8wus7hwKz6clt3Whmmd
a7UAdb1c08hEQFVRbF14AR73xbnd8N0obCWJPCbzMCtkaSef4FdEEgEXJiw0VAJT
8wIDAQAB
-----END PUBLIC KEY-----
";
    pub(crate) const GO_SDK_SIGNATURE: &str = "BKyAfU4iMCuvXMXS0Wzam3V/cnxZ+JaqigPM5OhljS2iOT95OO6Fsuml2JkFANJU9K6q9bLlDhPXuoVz+pp4hAm6pHU4ld815U4jsKu1RkyaII+1CYBUYC8TK0XtJ8FwUXXz8vZHh58rrAVN1XwNyvD1vfpxrMT4SL536GLwvpUHlCqIMzoZUguLli/K8V29QiOhuH6IEqLNJn8e9b3nwNcQ7be3CzYGpDAKBfDGPCqCv8Rw5zndhlffk2FEA70G4hvMwe51qMN/RAJbknXG23bSlObuTCN7Ndj1aJGH6/L+hdwfLpUtJm4QYVazzW7DFD27EpSQEqA8bX9+8m1rLg==";

    #[test]
    fn go_sdk_signature_vector() {
        let key = MerchantKey::from_pem(GO_SDK_PRIVATE_KEY.as_bytes()).unwrap();
        assert_eq!(key.sign(b"source").unwrap(), GO_SDK_SIGNATURE);
    }

    #[test]
    fn go_sdk_vector_also_signs_from_a_pkcs1_key() {
        let pkcs8 = PKey::private_key_from_pem(GO_SDK_PRIVATE_KEY.as_bytes()).unwrap();
        let pkcs1 = pkcs8.rsa().unwrap().private_key_to_pem().unwrap();
        assert!(String::from_utf8_lossy(&pkcs1).starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let key = MerchantKey::from_pem(&pkcs1).unwrap();
        assert_eq!(key.sign(b"source").unwrap(), GO_SDK_SIGNATURE);
    }

    #[test]
    fn message_format_vector() {
        let msg = request_message(
            "GET",
            "/v3/certificates",
            1_624_523_846,
            "A1B2C3D4E5F6G7",
            b"",
        );
        assert_eq!(
            msg,
            b"GET\n/v3/certificates\n1624523846\nA1B2C3D4E5F6G7\n\n"
        );
    }

    #[test]
    fn post_message_carries_the_body_verbatim() {
        let body = br#"{"mchid":"1230000109"}"#;
        let msg = request_message(
            "POST",
            "/v3/pay/transactions/out-trade-no/A1/close",
            1,
            "N",
            body,
        );
        assert_eq!(
            msg,
            b"POST\n/v3/pay/transactions/out-trade-no/A1/close\n1\nN\n{\"mchid\":\"1230000109\"}\n"
        );
    }

    #[test]
    fn authorization_header_format() {
        let h = authorization_header(
            "1900000001",
            "5157F09EFDC096DE",
            1_554_208_460,
            "593BEC0C930BF1AFEB40B4A08C8FB242",
            "c2ln",
        );
        assert_eq!(
            h,
            r#"WECHATPAY2-SHA256-RSA2048 mchid="1900000001",nonce_str="593BEC0C930BF1AFEB40B4A08C8FB242",signature="c2ln",timestamp="1554208460",serial_no="5157F09EFDC096DE""#
        );
    }

    #[test]
    fn nonces_are_fresh() {
        let a = new_nonce();
        let b = new_nonce();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = MerchantKey::from_pem(GO_SDK_PRIVATE_KEY.as_bytes()).unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "MerchantKey([redacted])");
    }

    #[test]
    fn refuses_public_keys_and_garbage_without_echoing_them() {
        let err = MerchantKey::from_pem(GO_SDK_PUBLIC_KEY.as_bytes()).unwrap_err();
        assert_eq!(err, KeyError::NotAPrivateKey);
        assert!(!err.to_string().contains("MIIB"), "{err}");
        assert!(MerchantKey::from_pem(b"not a key at all").is_err());
    }

    #[test]
    fn refuses_encrypted_keys_instead_of_prompting() {
        let pkey = PKey::private_key_from_pem(GO_SDK_PRIVATE_KEY.as_bytes()).unwrap();
        let enc = pkey
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_128_cbc(), b"secret")
            .unwrap();
        assert!(MerchantKey::from_pem(&enc).is_err());
    }
}
