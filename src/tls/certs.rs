//! Certificates from PEM files, chosen by the name the client asks for
//! (SNI), and swapped whole on reload.
//!
//! A [`CertSet`] is what one reading of the files gives: the default
//! certificate and those of `[[tls.certificates]]`, by exact name and by
//! wildcard. A [`CertStore`] holds the current set behind a lock that a
//! handshake takes for reading once (to clone an `Arc`), and that
//! [`CertStore::reload`] takes for writing only to swap in a set it has
//! already read and checked: a broken file leaves the old set in place.
//! The rustls configuration (session tickets, the resumption cache) is not
//! rebuilt, so sessions resume across a reload.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ResolvesServerCertUsingSni};
use rustls::sign::CertifiedKey;

use crate::config::TlsConfig;

/// Why a certificate could not be used: the file and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError(pub String);

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CertError {}

/// A certificate chain and its key, read from two PEM files and checked:
/// the chain is not empty, the key is one the provider can sign with, and
/// it belongs to the leaf certificate.
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| CertError(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(CertError(format!(
            "{}: no CERTIFICATE in the file",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| CertError(format!("{}: {e}", key.display())))?;
    let ck = CertifiedKey::from_der(chain, key_der, provider)
        .map_err(|e| CertError(format!("{} with {}: {e}", cert.display(), key.display())))?;
    Ok(ck)
}

/// One reading of the certificate files.
pub struct CertSet {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is kept under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl fmt::Debug for CertSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSet")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CertSet {
    /// Read every file `cfg` names. Each name of `[[tls.certificates]]`
    /// must be one its certificate is valid for (a typo would otherwise
    /// serve the default certificate to that name's clients).
    pub fn load(cfg: &TlsConfig, provider: &CryptoProvider) -> Result<CertSet, CertError> {
        let default = Arc::new(load_certified_key(&cfg.cert, &cfg.key, provider)?);
        let mut set = CertSet {
            default,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for entry in &cfg.certificates {
            let ck = load_certified_key(&entry.cert, &entry.key, provider)?;
            for name in &entry.server_names {
                // A wildcard is checked with a name it covers.
                let probe = match name.strip_prefix("*.") {
                    Some(rest) => format!("wsgate-check.{rest}"),
                    None => name.clone(),
                };
                ResolvesServerCertUsingSni::new()
                    .add(&probe, ck.clone())
                    .map_err(|e| {
                        CertError(format!(
                            "{}: not valid for server name {name:?}: {e}",
                            entry.cert.display()
                        ))
                    })?;
            }
            let ck = Arc::new(ck);
            for name in &entry.server_names {
                match name.strip_prefix("*.") {
                    Some(rest) => set.wildcard.insert(rest.to_string(), ck.clone()),
                    None => set.exact.insert(name.clone(), ck.clone()),
                };
            }
        }
        Ok(set)
    }

    /// The certificate for `server_name` (already lower case, as rustls
    /// hands it over): an exact name, else a wildcard for its parent, else
    /// the default. No SNI (a client that connects by IP address) gets the
    /// default.
    pub fn choose(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return &self.default;
        };
        if let Some(ck) = self.exact.get(name) {
            return ck;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }

    /// Names served with a certificate of their own.
    pub fn names(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// How many sets were loaded so far (1 at start).
    pub generation: u64,
    /// Server names with a certificate of their own.
    pub names: usize,
}

/// The certificates of the TLS listener: the current [`CertSet`], and the
/// files to read it from again. It is the rustls configuration's
/// certificate resolver.
pub struct CertStore {
    cfg: TlsConfig,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertSet>>,
    generation: AtomicU64,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cfg.cert)
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish()
    }
}

impl CertStore {
    /// Read the files once; an error here stops the start.
    pub fn load(cfg: &TlsConfig, provider: Arc<CryptoProvider>) -> Result<CertStore, CertError> {
        let set = CertSet::load(cfg, &provider)?;
        Ok(CertStore {
            cfg: cfg.clone(),
            provider,
            current: RwLock::new(Arc::new(set)),
            generation: AtomicU64::new(1),
        })
    }

    /// Re-read every file and swap the new set in at once: handshakes that
    /// start afterwards see only the new certificates, live connections
    /// keep theirs (a TLS session does not look at its certificate again).
    /// If any file is missing or broken, the error is logged and returned
    /// and the old set stays.
    pub fn reload(&self) -> Result<Reloaded, CertError> {
        match CertSet::load(&self.cfg, &self.provider) {
            Ok(set) => {
                let names = set.names();
                let set = Arc::new(set);
                // A poisoned lock only means a panic elsewhere while holding
                // it; the Arc inside is whole either way.
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = set;
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                log::info!(
                    "tls: certificates reloaded from {} (generation {generation}, {names} server names)",
                    self.cfg.cert.display()
                );
                Ok(Reloaded { generation, names })
            }
            Err(e) => {
                log::error!("tls: reload failed, the previous certificates stay in use: {e}");
                Err(e)
            }
        }
    }

    /// The set handshakes use now.
    pub fn current(&self) -> Arc<CertSet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The files this store reads.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.cfg.cert.clone(), self.cfg.key.clone()];
        for c in &self.cfg.certificates {
            v.push(c.cert.clone());
            v.push(c.key.clone());
        }
        v
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.current();
        Some(set.choose(hello.server_name()).clone())
    }
}
