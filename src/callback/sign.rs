//! Standard Webhooks signatures for callback POSTs (`--callback-secret`, SPEC §4.2).
//!
//! Each attempt carries `webhook-id`, `webhook-timestamp` (Unix seconds, fresh per attempt)
//! and `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

/// The signing key, never printed.
#[derive(Clone)]
pub struct Signer {
    key: hmac::Key,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer(…)")
    }
}

impl Signer {
    /// A key from the secret: `whsec_<base64>` (the Standard Webhooks form) is the decoded
    /// bytes, anything else is used as is. Empty or undecodable secrets are refused.
    pub fn new(secret: &str) -> Result<Self, String> {
        let bytes = match secret.strip_prefix("whsec_") {
            Some(encoded) => STANDARD
                .decode(encoded)
                .map_err(|e| format!("the whsec_ part is not base64 ({e})"))?,
            None => secret.as_bytes().to_vec(),
        };
        if bytes.is_empty() {
            return Err("the secret is empty".to_string());
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        })
    }

    /// The `webhook-signature` value for one attempt.
    pub fn signature(&self, id: &str, timestamp: u64, body: &str) -> String {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body.as_bytes());
        format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::Signer;

    /// The example from the Standard Webhooks specification.
    #[test]
    fn matches_the_standard_webhooks_example() {
        let signer = Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            signer.signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn refuses_empty_and_undecodable_secrets() {
        assert!(Signer::new("").is_err());
        assert!(Signer::new("whsec_").is_err());
        assert!(Signer::new("whsec_!!!").is_err());
        assert!(Signer::new("plain secret").is_ok());
    }
}
