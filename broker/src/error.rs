//! Errors of the broker library.

use crate::config::ConfigError;
use std::path::PathBuf;
use thiserror::Error;

/// Why the broker could not start or run, or refused a request.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listener failed.
    #[error("listener failed")]
    Listener(#[source] std::io::Error),
    /// The data directory cannot be created or used.
    #[error("cannot use the data directory {}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The message store cannot be opened or used.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A message handed to [`crate::BrokerHandle::publish`] is not valid.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// The broker has stopped.
    #[error("the broker has stopped")]
    Stopped,
}
