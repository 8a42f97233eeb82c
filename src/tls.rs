//! TLS settings: certificates from PEM files into a rustls server configuration, at start and on
//! SIGHUP. The TLS itself runs in the rings (`ringport_ring::TlsAcceptor`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::ServeArgs;

/// Where the TLS port's certificates come from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates signed by these CAs are required when given.
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files `serve` was given, or `None` without `--tls-listen`; checks that the flags go
    /// together.
    pub fn from_args(args: &ServeArgs) -> Result<Option<TlsFiles>, String> {
        let (cert, key) = (args.tls_cert.clone(), args.tls_key.clone());
        if args.tls_listen.is_none() {
            if cert.is_some() || key.is_some() || args.tls_ca.is_some() {
                return Err("--tls-cert, --tls-key and --tls-ca need --tls-listen".into());
            }
            if args.no_plain {
                return Err("--no-plain needs --tls-listen: nothing would be served".into());
            }
            return Ok(None);
        }
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert,
                key,
                ca: args.tls_ca.clone(),
            })),
            _ => Err("--tls-listen needs --tls-cert and --tls-key".into()),
        }
    }

    /// Reads the files into a server configuration; every error names the file.
    pub fn load(&self) -> Result<Arc<ServerConfig>, String> {
        let chain = read_certs(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("--tls-key {}: {}", self.key.display(), pem_error(&e)))?;
        let builder = match &self.ca {
            None => ServerConfig::builder().with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
                ServerConfig::builder().with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(chain, key).map_err(|e| {
            format!(
                "--tls-cert {} with --tls-key {}: {e}",
                self.cert.display(),
                self.key.display()
            )
        })?;
        Ok(Arc::new(config))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {}", path.display(), pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn pem_error(error: &rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}
