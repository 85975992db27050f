//! The server side: the rustls configuration of the TLS listener, built
//! once from `[tls]`, and the sessions made from it.

use std::sync::Arc;

use rustls::server::{ServerConfig, UnbufferedServerConnection};

use super::certs::{CertError, CertStore, Reloaded};
use super::error::TlsError;
use super::provider;
use super::session::Session;
use crate::config::TlsConfig;

/// The protocol ALPN names for HTTP/1.1 (RFC 7301 §6). `h2` is added here
/// once the gateway speaks HTTP/2.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Everything the TLS listener needs: one per process, shared by the
/// workers (`Arc`), reloaded in place.
#[derive(Debug, Clone)]
pub struct TlsServer {
    config: Arc<ServerConfig>,
    certs: Arc<CertStore>,
}

impl TlsServer {
    /// Read the certificates and build the configuration:
    /// - TLS 1.3 and 1.2 (RFC 8446, 5246), *ring*'s cipher suites (AES-GCM
    ///   and ChaCha20-Poly1305, ECDHE with X25519, P-256 or P-384);
    /// - ALPN `http/1.1`; a client that offers only other protocols gets
    ///   the no_application_protocol alert (RFC 7301 §3.2: "the server
    ///   MUST respond with a fatal no_application_protocol alert"); one
    ///   that offers none is served;
    /// - resumption: stateless tickets (TLS 1.3 and 1.2, keys rotated every
    ///   6 hours, in memory, so per process) and a 256-entry session-id
    ///   cache for TLS 1.2 clients without tickets;
    /// - no 0-RTT data (replayable), no client certificates.
    pub fn new(cfg: &TlsConfig) -> Result<TlsServer, CertError> {
        let provider = provider::provider();
        let certs = Arc::new(CertStore::load(cfg, provider.clone())?);
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| CertError(format!("tls: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| CertError(format!("tls: session tickets: {e}")))?;
        config.max_early_data_size = 0;
        Ok(TlsServer {
            config: Arc::new(config),
            certs,
        })
    }

    /// A session for a connection just accepted.
    pub fn session(&self) -> Result<Session<UnbufferedServerConnection>, TlsError> {
        Session::server(self.config.clone())
    }

    /// Re-read the certificate files (SIGHUP); see [`CertStore::reload`].
    pub fn reload(&self) -> Result<Reloaded, CertError> {
        self.certs.reload()
    }

    pub fn certs(&self) -> &Arc<CertStore> {
        &self.certs
    }

    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }
}
