//! TLS to PostgreSQL, with libpq's semantics.
//!
//! The database URL's `sslmode` decides whether TLS is used (tokio-postgres
//! reads it): `disable` never, `prefer` (the default) when the server offers
//! it, `require` always. What a certificate must prove is this module's
//! choice, as in libpq: without a CA file the connection is encrypted but the
//! server is not authenticated (libpq's `prefer`/`require`); with one
//! (`MASKPIPE_DATABASE_CA`), the server's chain must lead to it and name the
//! URL's host (libpq's `verify-full`), which is what a deployment should use.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS connector for every PostgreSQL connection of the process.
pub fn connector(ca_file: Option<&Path>) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?;
    let config = match ca_file {
        Some(path) => builder
            .with_root_certificates(roots(path)?)
            .with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

fn roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read the database CA file {}", path.display()))?
    {
        let certificate = certificate
            .with_context(|| format!("bad PEM in the database CA file {}", path.display()))?;
        roots
            .add(certificate)
            .with_context(|| format!("bad certificate in {}", path.display()))?;
    }
    if roots.is_empty() {
        bail!("no certificate in the database CA file {}", path.display());
    }
    Ok(roots)
}

/// libpq's `sslmode=require`: any certificate is accepted (there is no CA
/// to check it against), but the handshake must still be signed by its key,
/// so the session is encrypted to whoever holds it.
#[derive(Debug)]
struct EncryptOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
