//! The emulator's RS256 signing keys: the current key, generated once per start (or loaded from
//! `key_file` so ID tokens and sessions survive a restart in development), and the keys it
//! replaced. All are published as a JWKS; new tokens are signed with the current one.
//!
//! Rotation works as at Auth0: the new key signs from then on, and the previous key stays
//! published (until revoked) so tokens it signed still verify.
//! https://auth0.com/docs/get-started/tenant-settings/signing-keys/rotate-signing-keys

use std::path::Path;

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rsa::{
    RsaPrivateKey, RsaPublicKey,
    pkcs1v15::{Signature, SigningKey, VerifyingKey},
    pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding},
    signature::{SignatureEncoding, Signer, Verifier},
    traits::PublicKeyParts,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One RSA key pair and its `kid`.
struct KeyPair {
    signing: SigningKey<Sha256>,
    verifying: VerifyingKey<Sha256>,
    public: RsaPublicKey,
    kid: String,
}

/// The current signing key and the ones it replaced (newest first).
pub struct Keys {
    current: KeyPair,
    previous: Vec<KeyPair>,
}

/// How many replaced keys stay published.
const PREVIOUS_KEPT: usize = 2;

impl Keys {
    /// Loads the PEM at `key_file`, or generates RSA-2048 (and saves it there when a path is
    /// given). Generation takes a moment, so callers run this off the async runtime.
    pub fn load_or_generate(key_file: Option<&Path>) -> anyhow::Result<Self> {
        let private = match key_file {
            Some(path) if path.exists() => {
                let pem = std::fs::read_to_string(path)
                    .with_context(|| format!("reading emulator key {}", path.display()))?;
                RsaPrivateKey::from_pkcs8_pem(&pem).with_context(|| {
                    format!(
                        "{} is not a PKCS#8 RSA private key; delete it to get a fresh one",
                        path.display()
                    )
                })?
            }
            Some(path) => {
                let key = generate()?;
                save(&key, path)?;
                key
            }
            None => generate()?,
        };
        Ok(Self {
            current: KeyPair::from_private(private),
            previous: Vec::new(),
        })
    }

    /// A fresh key becomes the signing key; the current one stays published. Generation takes a
    /// moment, so callers run this off the async runtime.
    pub fn rotate(&mut self) -> anyhow::Result<()> {
        let fresh = KeyPair::from_private(generate()?);
        let replaced = std::mem::replace(&mut self.current, fresh);
        self.previous.insert(0, replaced);
        self.previous.truncate(PREVIOUS_KEPT);
        Ok(())
    }

    /// The JSON Web Key Set served at `/.well-known/jwks.json` (RFC 7517): the signing key
    /// first, then the ones it replaced.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = std::iter::once(&self.current)
            .chain(&self.previous)
            .map(KeyPair::jwk)
            .collect();
        json!({ "keys": keys })
    }

    /// Signs `claims` as a compact RS256 JWS. `corrupt` flips a signature bit (the
    /// `BadSignature` fault) so clients must reject the token.
    pub fn sign(&self, claims: &Value, corrupt: bool) -> String {
        self.sign_typed("JWT", claims, corrupt)
    }

    /// [`Keys::sign`] with another `typ` header (e.g. `logout+jwt`, or a wrong one in tests).
    pub fn sign_typed(&self, typ: &str, claims: &Value, corrupt: bool) -> String {
        let key = &self.current;
        let header = json!({ "alg": "RS256", "typ": typ, "kid": key.kid });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = key.signing.sign(signing_input.as_bytes()).to_vec();
        if corrupt && let Some(byte) = signature.last_mut() {
            *byte ^= 0x01;
        }
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// The claims of a JWT this emulator signed with any published key (expiry is not checked:
    /// callers decide, e.g. an `id_token_hint` may be expired). `None` for anything malformed
    /// or not ours.
    pub fn verify(&self, token: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let kid = serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(header).ok()?)
            .ok()?
            .get("kid")
            .cloned()?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|key| kid == json!(key.kid))?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let signature = Signature::try_from(signature.as_slice()).ok()?;
        key.verifying
            .verify(format!("{header}.{payload}").as_bytes(), &signature)
            .ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }
}

impl KeyPair {
    fn from_private(private: RsaPrivateKey) -> Self {
        let public = private.to_public_key();
        // A stable kid derived from the key, so a persisted key keeps its kid across restarts.
        let digest = Sha256::digest(public.n().to_bytes_be());
        let kid = URL_SAFE_NO_PAD.encode(&digest[..16]);
        Self {
            signing: SigningKey::new(private),
            verifying: VerifyingKey::new(public.clone()),
            public,
            kid,
        }
    }

    fn jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(self.public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(self.public.e().to_bytes_be()),
        })
    }
}

fn generate() -> anyhow::Result<RsaPrivateKey> {
    RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).context("generating the emulator's RSA key")
}

fn save(key: &RsaPrivateKey, path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .context("encoding the emulator key")?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A private key: readable by its owner only.
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing emulator key {}", path.display()))?;
    file.write_all(pem.as_bytes())
        .with_context(|| format!("writing emulator key {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persisted_key_is_reused_and_tokens_verify() {
        let path = std::env::temp_dir().join(format!("qb-emulator-key-{}.pem", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let first = Keys::load_or_generate(Some(&path)).unwrap();
        let second = Keys::load_or_generate(Some(&path)).unwrap();
        assert_eq!(first.jwks(), second.jwks());
        let token = first.sign(&json!({"sub": "auth0|1"}), false);
        assert_eq!(second.verify(&token).unwrap()["sub"], "auth0|1");
        let bad = first.sign(&json!({"sub": "auth0|1"}), true);
        assert!(second.verify(&bad).is_none());
        assert!(second.verify("garbage").is_none());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn rotation_signs_with_a_new_key_and_keeps_the_old_one_published() {
        let kids = |keys: &Keys| -> Vec<Value> {
            keys.jwks()["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].clone())
                .collect()
        };
        let mut keys = Keys::load_or_generate(None).unwrap();
        let before = keys.sign(&json!({"sub": "auth0|1"}), false);
        let old = kids(&keys);
        keys.rotate().unwrap();
        let now = kids(&keys);
        assert_eq!(now.len(), 2);
        assert_ne!(now[0], old[0], "a new signing key");
        assert_eq!(now[1], old[0], "the previous key stays published");
        assert!(keys.verify(&before).is_some(), "old tokens still verify");
        let after = keys.sign(&json!({"sub": "auth0|1"}), false);
        assert!(keys.verify(&after).is_some());
    }
}
