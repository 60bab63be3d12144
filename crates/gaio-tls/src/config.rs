//! Certificates and configurations: PEM loading, a server configuration with
//! SNI, ALPN, optional client authentication and session tickets, and a client
//! configuration — all on the crypto provider the crate's feature chose.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!("gaio-tls needs a crypto provider: enable the `ring` or the `aws-lc-rs` feature");

/// The crypto provider of this build: `ring` by default, `aws-lc-rs` with that
/// feature (which wins if both are on).
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    let p = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    let p = rustls::crypto::ring::default_provider();
    Arc::new(p)
}

fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    #[cfg(feature = "aws-lc-rs")]
    let t = rustls::crypto::aws_lc_rs::Ticketer::new();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    let t = rustls::crypto::ring::Ticketer::new();
    t
}

fn pem_error(path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {e}", path.display()),
    )
}

/// Every certificate in a PEM file, in order (leaf first, for a chain).
///
/// # Errors
/// The file cannot be read, holds a malformed PEM section, or holds no
/// certificate.
pub fn load_certs(path: impl AsRef<Path>) -> io::Result<Vec<CertificateDer<'static>>> {
    let path = path.as_ref();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
///
/// # Errors
/// The file cannot be read or holds no private key.
pub fn load_key(path: impl AsRef<Path>) -> io::Result<PrivateKeyDer<'static>> {
    let path = path.as_ref();
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// A server configuration to build: see [`ServerConfigBuilder`].
pub fn server_config() -> ServerConfigBuilder {
    ServerConfigBuilder {
        default: None,
        by_name: Vec::new(),
        alpn: Vec::new(),
        client_auth: None,
        tickets: true,
        session_cache: 1024,
    }
}

/// A server configuration: TLS 1.3 and 1.2, one certificate or one per name
/// (SNI), ALPN, client certificates (optional or required), session resumption
/// by tickets (on by default) and by a session cache.
///
/// ```
/// let cert = rcgen::generate_simple_self_signed(vec!["example.test".into()])?;
/// let chain = vec![cert.cert.der().clone()];
/// let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
/// let config = gaio_tls::server_config()
///     .cert(chain, key)
///     .alpn(&[b"h2", b"http/1.1"])
///     .build()?;
/// assert_eq!(config.alpn_protocols.len(), 2);
/// assert!(config.ticketer.enabled());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ServerConfigBuilder {
    default: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    by_name: Vec<(String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: Vec<Vec<u8>>,
    client_auth: Option<(RootCertStore, bool)>,
    tickets: bool,
    session_cache: usize,
}

impl ServerConfigBuilder {
    /// The certificate chain (leaf first) and key served to a client whose SNI
    /// names no other certificate, or who sends none.
    pub fn cert(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.default = Some((chain, key));
        self
    }

    /// A certificate served to clients that ask for `name` (SNI). Without a
    /// [`cert`](Self::cert), a client asking for another name (or none) is
    /// refused with an alert.
    pub fn sni(
        mut self,
        name: impl Into<String>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.by_name
            .push((name.into().to_ascii_lowercase(), chain, key));
        self
    }

    /// Application protocols offered, in order of preference (ALPN). A client
    /// that offers only others is refused.
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Asks clients for a certificate signed by one of `roots`; `required`
    /// refuses a client without one (otherwise it may go on unauthenticated).
    /// The certificate it sent is in [`Tls::state`](crate::Tls::state)
    /// (`peer_certificates`).
    pub fn client_auth(mut self, roots: RootCertStore, required: bool) -> Self {
        self.client_auth = Some((roots, required));
        self
    }

    /// Session tickets (stateless resumption, TLS 1.3 and 1.2): on by default.
    /// Resumption by the session cache stays on either way.
    pub fn tickets(mut self, on: bool) -> Self {
        self.tickets = on;
        self
    }

    /// Sessions kept for resumption by session ID (default 1,024).
    pub fn session_cache(mut self, sessions: usize) -> Self {
        self.session_cache = sessions;
        self
    }

    /// The configuration, ready for [`Tls::accept`](crate::Tls::accept).
    ///
    /// # Errors
    /// No certificate given, a key that does not match its certificate or that
    /// the provider cannot use, or client-auth roots it cannot use.
    pub fn build(self) -> Result<Arc<ServerConfig>, rustls::Error> {
        let provider = provider();
        let certified = |chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>| {
            CertifiedKey::from_der(chain, key, &provider).map(Arc::new)
        };
        let default = self.default.map(|(c, k)| certified(c, k)).transpose()?;
        let mut by_name = HashMap::new();
        for (name, chain, key) in self.by_name {
            by_name.insert(name, certified(chain, key)?);
        }
        if default.is_none() && by_name.is_empty() {
            return Err(rustls::Error::General("no certificate given".into()));
        }
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match self.client_auth {
            None => builder.with_no_client_auth(),
            Some((roots, required)) => {
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let v = if required {
                    v
                } else {
                    v.allow_unauthenticated()
                };
                let v = v
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                builder.with_client_cert_verifier(v)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(Resolver { default, by_name }));
        config.alpn_protocols = self.alpn;
        config.session_storage = ServerSessionMemoryCache::new(self.session_cache);
        if self.tickets {
            config.ticketer = ticketer()?;
        }
        Ok(Arc::new(config))
    }
}

/// Picks the certificate by SNI, else the default.
#[derive(Debug)]
struct Resolver {
    default: Option<Arc<CertifiedKey>>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|name| self.by_name.get(&name.to_ascii_lowercase()))
            .or(self.default.as_ref())
            .cloned()
    }
}

/// A client configuration trusting `roots` (TLS 1.3 and 1.2, resumption on).
///
/// ```
/// let config = gaio_tls::client_config(rustls::RootCertStore::empty());
/// assert!(config.enable_sni && config.alpn_protocols.is_empty());
/// ```
pub fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the provider supports TLS 1.3 and 1.2")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
