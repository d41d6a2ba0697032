//! Who a connection is and what it may do.
//!
//! The `[auth]` table of the config file ([`AuthSettings`]) lists identities with their service
//! tokens (kept as SHA-256 hashes) and rights, and the keys that sign JWTs. Compiled, it is
//! [`Credentials`]: [`Credentials::authenticate`] turns the token of a `Hello` or `Reauth`
//! into a [`Grant`] (the identity, its [`Rights`], when it expires) or a refusal. Without any
//! identity or key, the broker requires no credentials.
//!
//! - `pattern`: name patterns (`*`, `>`) and allow/deny lists.
//! - `rights`: what an identity may do, as written and compiled.
//! - `token`: service tokens and their hashes.
//! - `jwt`: JWT keys and claims.

mod jwt;
pub mod pattern;
pub mod rights;
pub mod token;

pub use jwt::{JwtAlgorithm, JwtKeyConfig};
pub use rights::{Rights, RightsConfig};

use broadcast_protocol::validate_client_name;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use thiserror::Error;

/// The `[auth]` table of the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Identities that authenticate with service tokens.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<IdentityConfig>,
    /// Keys that sign JWTs; a JWT's `sub` is its identity and its `broadcast` claim its rights.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jwt_keys: Vec<JwtKeyConfig>,
    /// Seconds of clock difference allowed when checking a JWT's `exp` and `nbf`.
    pub jwt_leeway_secs: u64,
    /// JWT ids (`jti`) refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub revoked_jti: Vec<String>,
    /// Per identity, a Unix time in seconds: JWTs of that identity issued (`iat`) at or
    /// before it are refused, and so are JWTs of it without `iat`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub revoked_before: BTreeMap<String, u64>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            identities: Vec::new(),
            jwt_keys: Vec::new(),
            jwt_leeway_secs: 30,
            revoked_jti: Vec::new(),
            revoked_before: BTreeMap::new(),
        }
    }
}

/// One identity of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The identity's name, a valid client name.
    pub identity: String,
    /// The namespace it lives in; absent: the default namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// SHA-256 hashes (hex) of its service tokens (`broadcast-broker token new` makes one).
    #[serde(default)]
    pub tokens_sha256: Vec<String>,
    /// Names of TLS client certificates that prove this identity, as `DNS:name`, `URI:uri` or
    /// `EMAIL:address` (a subject alternative name of a certificate the TLS listener's
    /// `tls_client_ca` verified).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<String>,
    /// What it may do.
    #[serde(default)]
    pub rights: RightsConfig,
}

impl AuthSettings {
    /// Whether any credentials are configured: then every connection must present one.
    pub fn required(&self) -> bool {
        !self.identities.is_empty() || !self.jwt_keys.is_empty()
    }

    /// The settings with secrets replaced by `(set)`, to show.
    pub fn redacted(&self) -> AuthSettings {
        let mut shown = self.clone();
        for key in &mut shown.jwt_keys {
            if key.secret.is_some() {
                key.secret = Some("(set)".into());
            }
        }
        shown
    }
}

/// Credentials that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid [auth] settings: {0}")]
pub struct AuthError(pub String);

/// What a valid credential proves.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The identity.
    pub identity: Arc<str>,
    /// What it may do.
    pub rights: Arc<Rights>,
    /// The namespace it lives in; `None`: the default namespace.
    pub namespace: Option<Arc<str>>,
    /// When the credential expires, in milliseconds since the Unix epoch.
    pub expires_ms: Option<u64>,
}

/// An identity of the config file, compiled.
#[derive(Debug)]
struct Identity {
    name: Arc<str>,
    rights: Arc<Rights>,
    namespace: Option<Arc<str>>,
}

/// Checks a namespace's name: as a client name, at most 64 bytes.
///
/// # Errors
/// What is wrong with it.
pub fn validate_namespace(ns: &str) -> Result<(), String> {
    validate_client_name(ns).map_err(|e| format!("namespace: {e}"))?;
    if ns.len() > 64 {
        return Err(format!("namespace {ns:?} is longer than 64 bytes"));
    }
    Ok(())
}

/// The compiled `[auth]` settings.
#[derive(Debug)]
pub struct Credentials {
    tokens: Vec<([u8; 32], Arc<Identity>)>,
    certificates: std::collections::HashMap<String, Arc<Identity>>,
    jwt: jwt::Verifier,
}

impl Credentials {
    /// Compiles and checks the settings. `None` when no credentials are configured.
    ///
    /// # Errors
    /// [`AuthError`] naming what is wrong: an identity that is not a valid name or is listed
    /// twice, a hash that is not one, a pattern that does not compile, a key that cannot be
    /// read.
    pub fn new(settings: &AuthSettings) -> Result<Option<Self>, AuthError> {
        if !settings.required() {
            return Ok(None);
        }
        let mut tokens = Vec::new();
        let mut certificates = std::collections::HashMap::new();
        let mut seen = HashSet::new();
        let mut hashes = HashSet::new();
        for id in &settings.identities {
            let name = &id.identity;
            validate_client_name(name).map_err(|e| AuthError(format!("identity: {e}")))?;
            if !seen.insert(name.clone()) {
                return Err(AuthError(format!("identity {name:?} is listed twice")));
            }
            let rights = Arc::new(
                Rights::new(name, &id.rights)
                    .map_err(|e| AuthError(format!("identity {name:?}: {e}")))?,
            );
            if let Some(ns) = &id.namespace {
                validate_namespace(ns).map_err(|e| AuthError(format!("identity {name:?}: {e}")))?;
            }
            let identity = Arc::new(Identity {
                name: Arc::from(name.as_str()),
                rights,
                namespace: id.namespace.as_deref().map(Arc::from),
            });
            for hex in &id.tokens_sha256 {
                let hash = token::from_hex(hex)
                    .map_err(|e| AuthError(format!("identity {name:?}: {e}")))?;
                if !hashes.insert(hash) {
                    return Err(AuthError(format!(
                        "identity {name:?}: token hash {hex} is listed twice"
                    )));
                }
                tokens.push((hash, identity.clone()));
            }
            for san in &id.certificates {
                let kind = ["DNS:", "URI:", "EMAIL:"]
                    .into_iter()
                    .find(|kind| san.starts_with(kind));
                if kind.is_none_or(|kind| san.len() == kind.len()) {
                    return Err(AuthError(format!(
                        "identity {name:?}: certificate name {san:?} is not DNS:name, URI:uri \
                         or EMAIL:address"
                    )));
                }
                if certificates.insert(san.clone(), identity.clone()).is_some() {
                    return Err(AuthError(format!(
                        "certificate name {san:?} is listed for two identities"
                    )));
                }
            }
        }
        let jwt = jwt::Verifier::new(settings).map_err(AuthError)?;
        Ok(Some(Self {
            tokens,
            certificates,
            jwt,
        }))
    }

    /// Milliseconds a JWT is still taken after its `exp`.
    pub fn leeway_ms(&self) -> u64 {
        self.jwt.leeway_ms()
    }

    /// The identity a verified TLS client certificate proves, by the first of its names
    /// (`DNS:...`, `URI:...`) that an identity lists.
    ///
    /// # Errors
    /// When no identity lists any of its names.
    pub fn authenticate_certificate(&self, names: &[String]) -> Result<Grant, String> {
        let identity = names
            .iter()
            .find_map(|n| self.certificates.get(n))
            .ok_or_else(|| {
                format!(
                    "the client certificate ({}) proves no identity, and Hello.token is absent",
                    names.join(", ")
                )
            })?;
        Ok(Grant {
            identity: identity.name.clone(),
            rights: identity.rights.clone(),
            namespace: identity.namespace.clone(),
            expires_ms: None,
        })
    }

    /// Checks a token: a JWT (three dot-separated parts) or a service token.
    ///
    /// # Errors
    /// Why it is refused, to tell the client.
    pub fn authenticate(&self, token: &str) -> Result<Grant, String> {
        if token.split('.').count() == 3 {
            return self.jwt.verify(token);
        }
        let presented = token::hash(token);
        // Every stored hash is compared, each in constant time.
        let mut found = None;
        for (hash, identity) in &self.tokens {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(identity);
            }
        }
        match found {
            Some(identity) => Ok(Grant {
                identity: identity.name.clone(),
                rights: identity.rights.clone(),
                namespace: identity.namespace.clone(),
                expires_ms: None,
            }),
            None => Err("unknown token".into()),
        }
    }
}

#[cfg(test)]
mod tests;
