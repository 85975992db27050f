//! The client side, for wsgate-load and tests: which servers to trust,
//! and the rustls client configuration.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::UnbufferedClientConnection;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::certs::CertError;
use super::error::TlsError;
use super::provider;
use super::server::ALPN_HTTP11;
use super::session::Session;

/// Which server certificates a client accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The system's roots (the OS store).
    System,
    /// The certificates of a PEM file (a test CA, a self-signed server).
    CaFile(PathBuf),
    /// Any certificate (signatures are still checked): for load tests
    /// against a throwaway certificate, never for anything else.
    Insecure,
}

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub trust: Trust,
    /// Keep session tickets and resume (false: every handshake is full, as
    /// from as many browsers).
    pub resume: bool,
    /// Only TLS 1.2 (to test it); otherwise 1.3, falling back to 1.2.
    pub tls12_only: bool,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            trust: Trust::System,
            resume: false,
            tls12_only: false,
        }
    }
}

/// A client configuration offering ALPN `http/1.1`.
pub fn client_config(s: &ClientSettings) -> Result<Arc<ClientConfig>, CertError> {
    let provider = provider::provider();
    let versions: &[&rustls::SupportedProtocolVersion] = if s.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| CertError(format!("tls: {e}")))?;
    let mut config = match &s.trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        Trust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| CertError(format!("{}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(CertError(format!(
                    "{}: no usable CA certificate",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::System => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(CertError(
                    "no system CA certificates found: use --ca FILE or --insecure".into(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    if !s.resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// A client session to `host` (a DNS name, or an IP address: then no SNI
/// is sent); its ClientHello goes into `out`.
pub fn connect(
    config: &Arc<ClientConfig>,
    host: &str,
    out: &mut Vec<u8>,
) -> Result<Session<UnbufferedClientConnection>, TlsError> {
    let name = ServerName::try_from(host.to_string()).map_err(|_| {
        TlsError::from_rustls(
            rustls::Error::General(format!("bad server name {host:?}")),
            false,
        )
    })?;
    Session::client(config.clone(), name, out)
}

/// Accepts any server certificate, checking only that the handshake is
/// signed by its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
