//! Renewing the credential before it expires ([`ConnectOptions::token_refresh`]).
//!
//! [`ConnectOptions::token_refresh`]: crate::ConnectOptions::token_refresh

use crate::ReauthError;
use crate::client::{Client, Inner};
use crate::options::TokenRefresh;
use std::sync::Weak;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long after a failed renewal the next is tried.
const RETRY: Duration = Duration::from_secs(1);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Renews the credential at 80% of the time left, for as long as the client lives.
pub(crate) async fn run(client: Weak<Inner>, refresh: TokenRefresh) {
    let Some(mut expiry) = client.upgrade().map(|c| c.shared.expires_ms.subscribe()) else {
        return;
    };
    loop {
        let expires = *expiry.borrow_and_update();
        let wait = match expires {
            Some(at) => Duration::from_millis(at.saturating_sub(now_ms()) / 5 * 4),
            None => Duration::MAX,
        };
        tokio::select! {
            changed = expiry.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            () = tokio::time::sleep(wait.min(Duration::from_secs(86_400 * 365))) => {}
        }
        let Some(inner) = client.upgrade() else {
            return;
        };
        let client = Client::from_inner(inner);
        let renewed = match refresh().await {
            Ok(token) => client.reauth(token).await.map_err(Some),
            Err(error) => {
                tracing::warn!(%error, "the token source failed");
                Err(None)
            }
        };
        drop(client);
        match renewed {
            Ok(expires_ms) => tracing::info!(?expires_ms, "credential renewed"),
            Err(Some(ReauthError::Closed)) => {
                // The reconnection renews the credential if it must, and its Welcome starts
                // the count again.
                if expiry.changed().await.is_err() {
                    return;
                }
            }
            Err(error) => {
                if let Some(error) = error {
                    tracing::warn!(%error, "cannot renew the credential; trying again");
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
