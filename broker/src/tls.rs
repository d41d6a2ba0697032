//! TLS on the client listener: rustls with the aws-lc-rs provider, passed explicitly, and a
//! certificate and key read from PEM files. Encrypted from the first byte (no plaintext
//! greeting, no STARTTLS). The configuration is held in a [`TlsConfig`] cell, so that a new
//! certificate applies to connections accepted after a reload while open ones go on.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use thiserror::Error;
use tokio_rustls::TlsAcceptor;

/// Why a certificate or key cannot be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file cannot be read or holds nothing usable.
    #[error("{}: {message}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refuses the certificate and key together.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Builds the server side of TLS from a certificate chain and its private key, both PEM. With
/// `client_ca`, clients may present a certificate, which must chain to one of the CA
/// certificates in that file (PEM); its names can then prove an identity (see
/// [`crate::auth`]). Clients without a certificate still connect (and present a token).
///
/// # Errors
/// [`TlsError`] naming the file at fault, or the mismatch.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let pem = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(cert, e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: cert.to_path_buf(),
            message: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| pem(ca, e))? {
                roots
                    .add(cert.map_err(|e| pem(ca, e))?)
                    .map_err(|e| TlsError::Pem {
                        path: ca.to_path_buf(),
                        message: e.to_string(),
                    })?;
            }
            if roots.is_empty() {
                return Err(TlsError::Pem {
                    path: ca.to_path_buf(),
                    message: "no CA certificate in the file".into(),
                });
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The names of a verified client certificate, as identities list them: `DNS:name`,
/// `URI:uri` and `EMAIL:address` for each DNS, URI and email subject alternative name.
pub(crate) fn peer_names(connection: &rustls::ServerConnection) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Some(cert) = connection.peer_certificates().and_then(|c| c.first()) else {
        return Vec::new();
    };
    // Verified by rustls already; parsed here for its names only.
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(n) => Some(format!("DNS:{n}")),
            GeneralName::URI(n) => Some(format!("URI:{n}")),
            GeneralName::RFC822Name(n) => Some(format!("EMAIL:{n}")),
            _ => None,
        })
        .collect()
}

/// The TLS configuration new connections are accepted with, replaceable while the broker
/// serves.
pub struct TlsConfig(RwLock<TlsAcceptor>);

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig")
    }
}

impl TlsConfig {
    /// A cell holding `config`.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self(RwLock::new(TlsAcceptor::from(config)))
    }

    /// The acceptor for the next connection.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the configuration for connections accepted from now on.
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = TlsAcceptor::from(config);
    }
}
