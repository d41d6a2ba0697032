//! JWTs: keys from the config file, claims checked with jsonwebtoken (which checks the
//! signature, `exp` and `nbf`), then revocation.

use super::{AuthSettings, Grant, Rights, RightsConfig};
use broadcast_protocol::validate_client_name;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// The signature algorithms a key may be for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    HS256,
    /// Ed25519 signatures, checked with a public key.
    EdDSA,
    /// RSA PKCS#1 v1.5 with SHA-256, checked with a public key.
    RS256,
}

/// One key of the config file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// Key id: when set, only JWTs whose header names this `kid` are checked with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The algorithm.
    pub algorithm: JwtAlgorithm,
    /// HS256: the shared secret, at least 32 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// HS256: a file holding the shared secret (its bytes, a final newline left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// EdDSA and RS256: the public key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// EdDSA and RS256: a file holding the public key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
}

impl fmt::Debug for JwtKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeyConfig")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("secret", &self.secret.as_ref().map(|_| "(set)"))
            .field("secret_file", &self.secret_file)
            .field("public_key", &self.public_key)
            .field("public_key_file", &self.public_key_file)
            .finish()
    }
}

/// The claims Broadcast reads; others are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
    /// The identity's namespace and rights: a [`RightsConfig`] with `namespace` beside.
    #[serde(default)]
    broadcast: serde_json::Map<String, serde_json::Value>,
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The compiled keys and revocations.
pub(super) struct Verifier {
    keys: Vec<Key>,
    leeway: u64,
    revoked_jti: HashSet<String>,
    revoked_before: HashMap<String, u64>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub(super) fn new(settings: &AuthSettings) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, c) in settings.jwt_keys.iter().enumerate() {
            let name = c.kid.clone().unwrap_or_else(|| format!("#{}", i + 1));
            let key = compile(c).map_err(|e| format!("jwt key {name}: {e}"))?;
            keys.push(key);
        }
        Ok(Self {
            keys,
            leeway: settings.jwt_leeway_secs,
            revoked_jti: settings.revoked_jti.iter().cloned().collect(),
            revoked_before: settings
                .revoked_before
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        })
    }

    pub(super) fn verify(&self, token: &str) -> Result<Grant, String> {
        if self.keys.is_empty() {
            return Err("this broker takes no JWTs".into());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("invalid JWT: {e}"))?;
        let mut last = String::from("no key for this JWT's algorithm and kid");
        for key in &self.keys {
            if key.algorithm != header.alg || (key.kid.is_some() && key.kid != header.kid) {
                continue;
            }
            let mut validation = Validation::new(key.algorithm);
            validation.leeway = self.leeway;
            validation.validate_nbf = true;
            validation.validate_aud = false;
            validation.set_required_spec_claims(&["exp", "sub"]);
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return self.grant(data.claims),
                Err(e) => last = format!("invalid JWT: {e}"),
            }
        }
        Err(last)
    }

    fn grant(&self, claims: Claims) -> Result<Grant, String> {
        validate_client_name(&claims.sub).map_err(|e| format!("JWT sub: {e}"))?;
        if let Some(jti) = &claims.jti
            && self.revoked_jti.contains(jti)
        {
            return Err(format!("JWT {jti} is revoked"));
        }
        if let Some(before) = self.revoked_before.get(&claims.sub)
            && claims.iat.is_none_or(|iat| iat <= *before)
        {
            return Err(format!(
                "JWTs of {} issued at or before {before} are revoked",
                claims.sub
            ));
        }
        let mut broadcast = claims.broadcast;
        let namespace = match broadcast.remove("namespace") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(ns)) => {
                super::validate_namespace(&ns).map_err(|e| format!("JWT broadcast claim: {e}"))?;
                Some(Arc::from(ns.as_str()))
            }
            Some(other) => {
                return Err(format!(
                    "JWT broadcast claim: namespace {other} is not a string"
                ));
            }
        };
        let config: RightsConfig = serde_json::from_value(serde_json::Value::Object(broadcast))
            .map_err(|e| format!("JWT broadcast claim: {e}"))?;
        let rights =
            Rights::new(&claims.sub, &config).map_err(|e| format!("JWT broadcast claim: {e}"))?;
        Ok(Grant {
            identity: Arc::from(claims.sub.as_str()),
            rights: Arc::new(rights),
            namespace,
            expires_ms: Some(claims.exp.saturating_mul(1000)),
        })
    }

    /// Milliseconds a credential is still taken after it expired.
    pub(super) fn leeway_ms(&self) -> u64 {
        self.leeway.saturating_mul(1000)
    }
}

fn compile(c: &JwtKeyConfig) -> Result<Key, String> {
    let pem = || -> Result<Vec<u8>, String> {
        match (&c.public_key, &c.public_key_file) {
            (Some(pem), None) => Ok(pem.as_bytes().to_vec()),
            (None, Some(path)) => {
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
            }
            _ => Err("needs exactly one of public_key and public_key_file".into()),
        }
    };
    let (algorithm, key) = match c.algorithm {
        JwtAlgorithm::HS256 => {
            if c.public_key.is_some() || c.public_key_file.is_some() {
                return Err("HS256 takes a secret, not a public key".into());
            }
            let secret = match (&c.secret, &c.secret_file) {
                (Some(secret), None) => secret.as_bytes().to_vec(),
                (None, Some(path)) => {
                    let mut bytes = std::fs::read(path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    if bytes.last() == Some(&b'\n') {
                        bytes.pop();
                    }
                    bytes
                }
                _ => return Err("HS256 needs exactly one of secret and secret_file".into()),
            };
            if secret.len() < 32 {
                return Err("an HS256 secret must be at least 32 bytes".into());
            }
            (Algorithm::HS256, DecodingKey::from_secret(&secret))
        }
        JwtAlgorithm::EdDSA | JwtAlgorithm::RS256 => {
            if c.secret.is_some() || c.secret_file.is_some() {
                return Err("EdDSA and RS256 take a public key, not a secret".into());
            }
            let pem = pem()?;
            if c.algorithm == JwtAlgorithm::EdDSA {
                let key = DecodingKey::from_ed_pem(&pem).map_err(|e| e.to_string())?;
                (Algorithm::EdDSA, key)
            } else {
                let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| e.to_string())?;
                (Algorithm::RS256, key)
            }
        }
    };
    Ok(Key {
        kid: c.kid.clone(),
        algorithm,
        key,
    })
}
