//! Viewer TLS: the rustls server config (TLS 1.2 and 1.3, ALPN h2 and http/1.1, session
//! resumption with tickets under a rotating key plus a server-side session cache) and a
//! certificate resolver that picks a certificate by SNI (`[[tls.cert]] hosts`, exact names first,
//! then `*.` wildcards, then the default) and can be reloaded from its files while the server
//! runs: `reload()` swaps the whole table at once, so new handshakes see the new certificates and
//! connections already open keep theirs.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{CertFiles, TlsConfig};

/// A certificate or key file that cannot be used, by name.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{cert} / {key}: the key does not match the certificate ({reason})")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The viewer TLS state: the acceptor handshakes go through and the resolver reloads swap.
pub struct Tls {
    config: TlsConfig,
    resolver: Arc<Resolver>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl Tls {
    /// Loads every certificate in `config` (any unusable file is an error: nothing starts on
    /// half a configuration) and builds the server config.
    pub fn new(config: &TlsConfig) -> Result<Arc<Tls>, TlsError> {
        let resolver = Arc::new(Resolver {
            table: RwLock::new(Arc::new(CertTable::load(config)?)),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if config.tickets {
            // Stateless resumption: keys rotate every 6 hours, each valid 12 (rustls' defaults).
            cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
        }
        // TLS 1.2 clients without ticket support resume from this cache (rustls' default size).
        cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
        Ok(Arc::new(Tls {
            config: config.clone(),
            resolver,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
        }))
    }

    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Re-reads every certificate and key file. On success new handshakes use them; on error
    /// (a file mid-rewrite, a mismatched pair) the old ones stay and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let table = CertTable::load(&self.config)?;
        *self.resolver.table.write() = Arc::new(table);
        Ok(())
    }
}

/// Server-side TLS 1.2 session IDs kept for resumption.
const SESSION_CACHE: usize = 4096;

/// Picks the certificate for a handshake from the current table.
struct Resolver {
    table: RwLock<Arc<CertTable>>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.read().clone();
        table.pick(hello.server_name())
    }
}

/// Certificates by host name, as loaded at one moment.
struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertTable {
    fn load(config: &TlsConfig) -> Result<CertTable, TlsError> {
        let mut t = CertTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: config.default.as_ref().map(load_pair).transpose()?,
        };
        for host in &config.hosts {
            let key = load_pair(&host.files)?;
            for name in &host.hosts {
                // The first certificate naming a host wins, as in the file's order.
                let (map, name) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut t.wildcard, parent),
                    None => (&mut t.exact, name.as_str()),
                };
                map.entry(name.to_string()).or_insert_with(|| key.clone());
            }
            if t.default.is_none() {
                t.default = Some(key);
            }
        }
        Ok(t)
    }

    /// Exact name, then a wildcard one label up, then the default (also for clients that send
    /// no SNI, e.g. a request to an IP address).
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = self.wildcard.get(parent) {
                    return Some(k.clone());
                }
            }
        }
        self.default.clone()
    }
}

fn load_pair(files: &CertFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let file_err = |path: &Path, reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let open =
        |path: &Path| std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")));
    let cert_pem = open(&files.cert)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(&files.cert, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(&files.cert, "no certificate found".into()));
    }
    let key_pem = open(&files.key)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| file_err(&files.key, format!("not a PEM key: {e}")))?
        .ok_or_else(|| file_err(&files.key, "no private key found".into()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| file_err(&files.key, format!("unsupported key: {e}")))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match().map_err(|e| TlsError::Mismatch {
        cert: files.cert.display().to_string(),
        key: files.key.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(ck))
}
