//! What one connection proved at its handshake and may do: its identity's [`Grant`], checked
//! again when it sends a `Reauth`, when the broker's credentials are reloaded, and when the
//! credential expires.

use crate::auth::{Credentials, Grant, validate_namespace};
use crate::engine::now_ms;
use crate::namespace::{scoped, shown};
use broadcast_protocol::{ErrorCode, Hello, Target, validate_client_name};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The broker's current credentials (`None`: none required), replaced on reload.
pub(crate) type CredentialsRx = watch::Receiver<Option<Arc<Credentials>>>;

/// A refusal: the error code and message to close the connection with.
pub(crate) type Refused = (ErrorCode, String);

/// One connection's access.
#[derive(Debug)]
pub(crate) struct Access {
    version: u16,
    credentials: CredentialsRx,
    /// The token the grant came from, checked again on reload.
    token: Option<String>,
    /// The names of the client's verified TLS certificate (`DNS:...`, `URI:...`), which
    /// prove an identity when no token is sent.
    certificate: Vec<String>,
    grant: Option<Grant>,
    /// When the connection is closed for its credential's expiry.
    deadline: Option<Instant>,
    /// A reload was seen by [`Access::wait_reload`] and not yet checked.
    reload_seen: bool,
    /// The connection's namespace; `None`: the default namespace.
    namespace: Option<Arc<str>>,
}

impl Access {
    /// Admits a `Hello`: the name it registers under (in its namespace: see
    /// [`crate::namespace`]) and its access, or the refusal.
    pub(crate) fn admit(
        hello: &Hello,
        mut credentials: CredentialsRx,
        certificate: Vec<String>,
    ) -> Result<(Arc<str>, Access), Refused> {
        if let Some(name) = &hello.name {
            validate_client_name(name).map_err(|e| (ErrorCode::InvalidName, e.to_string()))?;
        }
        if let Some(ns) = &hello.namespace {
            validate_namespace(ns).map_err(|e| (ErrorCode::InvalidName, e))?;
        }
        let name: String = match &hello.name {
            Some(n) => n.clone(),
            None => format!("client-{}", nanoid::nanoid!(12)),
        };
        let current = credentials.borrow_and_update().clone();
        let mut access = Access {
            version: hello.version,
            credentials,
            token: None,
            certificate,
            grant: None,
            deadline: None,
            reload_seen: false,
            namespace: hello.namespace.as_deref().map(Arc::from),
        };
        let Some(creds) = current else {
            // Without credentials a client picks its namespace.
            let scoped = Arc::from(scoped(access.namespace(), &name));
            return Ok((scoped, access));
        };
        if hello.version < 2 {
            return Err((
                ErrorCode::BadHandshake,
                "this broker requires credentials: speak protocol version 2 and send a token"
                    .into(),
            ));
        }
        let grant = match &hello.token {
            Some(token) => creds.authenticate(token),
            None if !access.certificate.is_empty() => {
                creds.authenticate_certificate(&access.certificate)
            }
            None => Err("this broker requires credentials: Hello.token is absent".into()),
        }
        .map_err(|e| (ErrorCode::Unauthorized, e))?;
        check_name(&grant, &name)?;
        if hello.namespace.is_some() && hello.namespace.as_deref() != grant.namespace.as_deref() {
            return Err((
                ErrorCode::Unauthorized,
                format!(
                    "{} lives in {}, not in namespace {}",
                    grant.identity,
                    grant
                        .namespace
                        .as_deref()
                        .map_or("the default namespace".to_owned(), |n| format!(
                            "namespace {n}"
                        )),
                    hello.namespace.as_deref().unwrap_or_default()
                ),
            ));
        }
        access.namespace = grant.namespace.clone();
        access.set(grant, hello.token.clone(), creds.leeway_ms());
        let scoped = Arc::from(scoped(access.namespace(), &name));
        Ok((scoped, access))
    }

    /// The connection's namespace; `None`: the default namespace.
    pub(crate) fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    fn set(&mut self, grant: Grant, token: Option<String>, leeway_ms: u64) {
        self.deadline = grant.expires_ms.map(|expires| {
            let left = expires.saturating_add(leeway_ms).saturating_sub(now_ms());
            Instant::now() + Duration::from_millis(left)
        });
        self.grant = Some(grant);
        self.token = token;
    }

    /// The identity, when the broker requires credentials.
    pub(crate) fn identity(&self) -> Option<&str> {
        self.grant.as_ref().map(|g| &*g.identity)
    }

    /// When the credential expires, in milliseconds since the Unix epoch.
    pub(crate) fn expires_ms(&self) -> Option<u64> {
        self.grant.as_ref().and_then(|g| g.expires_ms)
    }

    /// The protocol version of the connection.
    pub(crate) fn version(&self) -> u16 {
        self.version
    }

    /// Checks every recipient of a message.
    pub(crate) fn check_send(&self, target: &Target) -> Result<(), String> {
        match &self.grant {
            None => Ok(()),
            Some(g) => g.rights.check_send(target),
        }
    }

    /// The channels (broker names) the connection may receive queued messages through, when
    /// its rights restrict them.
    pub(crate) fn channel_filter(&self) -> Option<crate::core::ChannelFilter> {
        let rights = self.grant.as_ref()?.rights.clone();
        Some(crate::core::ChannelFilter(Arc::new(
            move |channel: &str| rights.may_subscribe(shown(channel)),
        )))
    }

    /// Whether the connection may subscribe to `channel` (as the client names it).
    pub(crate) fn may_subscribe(&self, channel: &str) -> bool {
        self.grant
            .as_ref()
            .is_none_or(|g| g.rights.may_subscribe(channel))
    }

    /// Whether the credential has expired (beyond the leeway).
    pub(crate) fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Time left before the credential expires, if it does.
    pub(crate) fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the broker's credentials were replaced since the last look.
    pub(crate) fn reloaded(&self) -> bool {
        self.reload_seen || self.credentials.has_changed().unwrap_or(false)
    }

    /// Resolves when the broker's credentials are replaced (never, once the broker is gone).
    pub(crate) async fn wait_reload(&mut self) {
        if self.credentials.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.reload_seen = true;
    }

    /// Checks the connection against reloaded credentials: its token must still prove the same
    /// identity, allowed its name. Its rights become the new ones.
    pub(crate) fn recheck(&mut self, name: &str) -> Result<(), Refused> {
        self.reload_seen = false;
        let current = self.credentials.borrow_and_update().clone();
        let Some(creds) = current else {
            // Credentials are no longer required: what the connection does is no longer
            // checked, as for a connection admitted without.
            self.grant = None;
            self.token = None;
            self.deadline = None;
            return Ok(());
        };
        let unauthorized = self.unauthorized_code();
        let token = self.token.clone();
        let grant = match &token {
            Some(token) => creds.authenticate(token),
            None if !self.certificate.is_empty() => {
                creds.authenticate_certificate(&self.certificate)
            }
            None => {
                return Err((
                    unauthorized,
                    "this broker now requires credentials; connect again with a token".into(),
                ));
            }
        }
        .map_err(|e| (unauthorized, format!("credentials reloaded: {e}")))?;
        self.replace(grant, token, name, creds.leeway_ms())
    }

    /// Takes a fresh token for the same identity (`Reauth`); returns its expiry.
    pub(crate) fn reauth(&mut self, token: String, name: &str) -> Result<Option<u64>, Refused> {
        let current = self.credentials.borrow().clone();
        let Some(creds) = current else {
            return Ok(None);
        };
        let grant = creds
            .authenticate(&token)
            .map_err(|e| (ErrorCode::Unauthorized, e))?;
        self.replace(grant, Some(token), name, creds.leeway_ms())?;
        Ok(self.expires_ms())
    }

    fn replace(
        &mut self,
        grant: Grant,
        token: Option<String>,
        name: &str,
        leeway_ms: u64,
    ) -> Result<(), Refused> {
        if grant.namespace != self.namespace {
            return Err((
                self.unauthorized_code(),
                format!(
                    "the credential is for another namespace than {}'s",
                    grant.identity
                ),
            ));
        }
        if let Some(identity) = self.identity()
            && identity != &*grant.identity
        {
            return Err((
                self.unauthorized_code(),
                format!("the credential is for {}, not {identity}", grant.identity),
            ));
        }
        check_name(&grant, shown(name)).map_err(|(_, m)| (self.unauthorized_code(), m))?;
        self.set(grant, token, leeway_ms);
        Ok(())
    }

    /// `Unauthorized`, or for a version 1 connection (which does not know it) `BadHandshake`.
    fn unauthorized_code(&self) -> ErrorCode {
        if self.version >= 2 {
            ErrorCode::Unauthorized
        } else {
            ErrorCode::BadHandshake
        }
    }
}

fn check_name(grant: &Grant, name: &str) -> Result<(), Refused> {
    if grant.rights.may_take(name) {
        Ok(())
    } else {
        Err((
            ErrorCode::Unauthorized,
            format!("{} may not register as {name}", grant.identity),
        ))
    }
}
