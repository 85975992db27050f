//! Test certificates, made at test time with rcgen: a CA, and leaf
//! certificates it signs (ECDSA P-256 by default), written as PEM files
//! into a directory of their own. Shared by the unit tests of `src/tls`
//! (included with `#[path]`) and the integration tests.

#![allow(dead_code)] // each user takes a different subset

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA of our own, and the directory its files go to (removed on drop).
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub dir: PathBuf,
    /// The CA certificate (what a client trusts).
    pub ca_pem: PathBuf,
}

/// A leaf certificate's files.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA, its certificate written to `<tmp>/wsgate-tls-<tag>-<pid>-<n>/ca.pem`.
    pub fn new(tag: &str) -> TestCa {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wsgate-tls-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("wsgate test CA {tag}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, issuer.pem()).expect("write ca.pem");
        TestCa {
            issuer,
            dir,
            ca_pem,
        }
    }

    /// A leaf for `names` (DNS names or IP addresses), ECDSA P-256, signed
    /// by this CA, written as `<file>.pem` and `<file>.key`.
    pub fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        self.leaf_with_key(file, names, &key)
    }

    /// The same with a given key pair.
    pub fn leaf_with_key(&self, file: &str, names: &[&str], key: &KeyPair) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let cert = params.signed_by(key, &self.issuer).expect("sign the leaf");
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        // Chain: the leaf, then the CA (as a server sends it).
        write_atomically(
            &leaf.cert,
            format!("{}{}", cert.pem(), self.issuer.pem()).as_bytes(),
        );
        write_atomically(&leaf.key, key.serialize_pem().as_bytes());
        leaf
    }

    /// A path in this CA's directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replace a file in one step (rename), as a deployment tool would.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write a certificate file");
    std::fs::rename(&tmp, path).expect("rename a certificate file");
}
