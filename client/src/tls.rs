//! TLS for the client: a rustls configuration from PEM files, with the aws-lc-rs provider
//! passed explicitly.

use crate::ConnectError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;

/// A client configuration that trusts the CA certificates in `ca` (PEM) and, with
/// `identity` (certificate chain and key, PEM), presents a client certificate.
///
/// # Errors
/// [`ConnectError::Tls`] naming the file that cannot be used.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    let tls = |path: &Path, e: &dyn std::fmt::Display| {
        ConnectError::Tls(format!("{}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| tls(ca, &e))?;
    for cert in certs {
        roots
            .add(cert.map_err(|e| tls(ca, &e))?)
            .map_err(|e| tls(ca, &e))?;
    }
    if roots.is_empty() {
        return Err(tls(ca, &"no CA certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| tls(cert, &e))?
                .collect::<Result<_, _>>()
                .map_err(|e| tls(cert, &e))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls(key, &e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| ConnectError::Tls(e.to_string()))?
        }
    };
    Ok(Arc::new(config))
}

/// The name to check the broker's certificate against: `name`, or the host of `addr`.
pub(crate) fn server_name(
    name: Option<&str>,
    addr: &str,
) -> Result<ServerName<'static>, ConnectError> {
    let host = match name {
        Some(name) => name,
        // host:port, [v6]:port
        None => addr
            .rsplit_once(':')
            .map_or(addr, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']'),
    };
    ServerName::try_from(host.to_owned())
        .map_err(|e| ConnectError::Tls(format!("{host:?} is not a server name: {e}")))
}
