//! The TLS flags of the example servers: `--tls-cert PEM --tls-key PEM`, or
//! `--self-signed` (a certificate for `localhost` and 127.0.0.1 made at start,
//! its SHA-256 fingerprint printed after the `listening on` line). Included by
//! the examples that serve TLS (`#[path = "common/tls.rs"] mod tls;`), so the
//! others do not build TLS.

use std::path::PathBuf;
use std::sync::Arc;

use gaio_tls::rustls::ServerConfig;

use crate::common::Cli;

/// The usage lines of the TLS flags.
pub const USAGE: &str = "\
  --tls-cert PEM      serve TLS with this certificate chain (leaf first)
  --tls-key PEM       and this private key (PKCS#8, PKCS#1 or SEC1)
  --self-signed       serve TLS with a certificate made at start for localhost and
                      127.0.0.1 (its SHA-256 fingerprint is printed after the
                      `listening on` line)
";

/// The TLS flags seen so far.
#[derive(Default)]
pub struct Flags {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    self_signed: bool,
}

/// A server configuration, and the line to print once listening.
pub struct Server {
    pub config: Arc<ServerConfig>,
    pub note: Option<String>,
}

impl Flags {
    /// Takes `flag` if it is a TLS flag.
    pub fn take(&mut self, cli: &mut Cli, flag: &str) -> bool {
        match flag {
            "--tls-cert" => self.cert = Some(cli.parse(flag)),
            "--tls-key" => self.key = Some(cli.parse(flag)),
            "--self-signed" => self.self_signed = true,
            _ => return false,
        }
        true
    }

    /// The configuration the flags ask for (`None`: plaintext). Bad files end
    /// the example with one line naming them.
    pub fn server(&self, cli: &Cli) -> Option<Server> {
        let (chain, key, note) = match (&self.cert, &self.key, self.self_signed) {
            (None, None, false) => return None,
            (Some(_), Some(_), true) | (None, Some(_), true) | (Some(_), None, true) => {
                cli.usage_error("--self-signed replaces --tls-cert and --tls-key")
            }
            (Some(cert), Some(key), false) => {
                let chain = gaio_tls::load_certs(cert).unwrap_or_else(|e| cli.fail(e));
                let key = gaio_tls::load_key(key).unwrap_or_else(|e| cli.fail(e));
                (chain, key, None)
            }
            (None, None, true) => {
                let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
                let made = rcgen::generate_simple_self_signed(names)
                    .unwrap_or_else(|e| cli.fail(format!("cannot make a certificate: {e}")));
                let der = made.cert.der().clone();
                let digest = ring::digest::digest(&ring::digest::SHA256, &der);
                let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
                let key = gaio_tls::rustls::pki_types::PrivateKeyDer::Pkcs8(
                    made.key_pair.serialize_der().into(),
                );
                let note = format!(
                    "self-signed certificate, SHA-256 fingerprint {}",
                    hex.join(":")
                );
                (vec![der], key, Some(note))
            }
            _ => cli.usage_error("--tls-cert and --tls-key go together"),
        };
        let config = gaio_tls::server_config()
            .cert(chain, key)
            .build()
            .unwrap_or_else(|e| cli.fail(format!("TLS configuration: {e}")));
        Some(Server { config, note })
    }
}
