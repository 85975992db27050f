//! The crypto provider: *ring*.
//!
//! rustls leaves the cryptography to a provider; two are well kept, *ring*
//! and aws-lc-rs. wsgate uses *ring*:
//!
//! - it is already in the build (the NATS client's rustls uses it), so TLS
//!   adds no second cryptography library to compile and audit;
//! - it builds with a C compiler alone; aws-lc-rs needs cmake (and NASM or
//!   a prebuilt object for it) and several minutes more per clean build;
//! - what the handshake and the record layer cost is hand-written assembly
//!   in both (the same BoringSSL lineage for P-256, X25519, AES-GCM and
//!   ChaCha20-Poly1305), and the per-connection state does not depend on
//!   the provider (docs/tls.md has the figures).
//!
//! What it gives up: the post-quantum hybrid key exchange X25519MLKEM768,
//! which rustls 0.23 offers only with aws-lc-rs, and FIPS mode. Switching
//! is this file and one feature in Cargo.toml.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The provider every TLS configuration of the process is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Make *ring* the process-wide default, for libraries that build their
/// own rustls configuration with `ClientConfig::builder()` (the Redis
/// client). Harmless if a default is already installed.
pub fn install_default() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
