//! TLS for every session the bench opens (`--tls`): the client configuration built from the
//! flags, the name each target's certificate is checked against, and a verifier for
//! `--tls-insecure`.
//!
//! rustls runs sans-I/O: set-up drives it on blocking sockets (`session.rs`), the load loop on
//! non-blocking ones (`engine.rs`); this module knows neither. The handshake is done during set-up, so the
//! measured phase starts on established sessions.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The TLS flags, as given.
#[derive(Debug, Clone, Default)]
pub struct TlsFlags {
    /// PEM CA bundle the server's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// Accept any server certificate (`--tls-insecure`).
    pub insecure: bool,
    /// Client certificate chain and its key, for servers that want one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// How to open TLS sessions to one target.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl TlsTarget {
    /// A new client session, handshake not started.
    pub fn connect(&self) -> Result<rustls::ClientConnection, rustls::Error> {
        rustls::ClientConnection::new(self.config.clone(), self.server_name.clone())
    }
}

/// The rustls client configuration the flags describe; every error names the flag and file.
pub fn client_config(flags: &TlsFlags) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let builder = match (&flags.ca, flags.insecure) {
        (Some(_), true) => return Err("--tls-ca and --tls-insecure exclude each other".into()),
        (None, false) => {
            return Err(
                "--tls needs --tls-ca FILE (the CA bundle, PEM, that signed the \
                 server's certificate; a self-signed certificate is its own CA) or \
                 --tls-insecure (no verification)"
                    .into(),
            )
        }
        (Some(ca), false) => {
            let bundle = read_certs(ca, "--tls-ca")?;
            let mut roots = RootCertStore::empty();
            for cert in &bundle {
                roots
                    .add(cert.clone())
                    .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(BundleVerifier { webpki, bundle }))
        }
        (None, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider })),
    };
    let config = match (&flags.cert, &flags.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "--tls-cert")?;
            let private_key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("--tls-key {}: {}", key.display(), pem_error(&e)))?;
            builder
                .with_client_auth_cert(chain, private_key)
                .map_err(|e| {
                    format!(
                        "--tls-cert {} with --tls-key {}: {e}",
                        cert.display(),
                        key.display()
                    )
                })?
        }
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    Ok(Arc::new(config))
}

/// The name a target's certificate is checked against (and sent as SNI): `--tls-server-name`,
/// else the host of `address` (`HOST:PORT`), else `localhost` when that host is an IP address.
pub fn server_name(address: &str, flag: Option<&str>) -> Result<ServerName<'static>, String> {
    if let Some(name) = flag {
        return ServerName::try_from(name.to_string())
            .map_err(|e| format!("--tls-server-name {name:?}: {e}"));
    }
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<IpAddr>().is_ok() {
        return Ok(ServerName::try_from("localhost").expect("a valid DNS name"));
    }
    ServerName::try_from(host.to_string()).map_err(|e| {
        format!("target {address:?}: {host:?} is not a valid TLS server name ({e}); pass --tls-server-name")
    })
}

/// Advice to go with a TLS failure, or "".
pub fn hint(error: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription, Error};
    match error {
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => " (pass --tls-server-name with a name it was issued for, or --tls-insecure)",
        Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => " (give --tls-ca the CA that signed the server's certificate, or pass --tls-insecure)",
        Error::InvalidCertificate(_) => " (or pass --tls-insecure)",
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. } => " (is that port speaking TLS?)",
        Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown,
        ) => " (does the server want a client certificate? --tls-cert and --tls-key)",
        _ => "",
    }
}

fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{flag} {}: {}", path.display(), pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no PEM certificate in it",
            path.display()
        ));
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

/// `--tls-ca`: the server's certificate must chain to one in the bundle (webpki: dates, name,
/// key usage). One more case passes: a server certificate that is itself in the bundle and
/// that webpki refuses only for being a CA certificate. `openssl req -x509` marks the
/// self-signed certificates it makes as CAs, and giving such a certificate as `--tls-ca`
/// says to trust exactly it; its name is still checked (its dates are not).
#[derive(Debug)]
struct BundleVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    bundle: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for BundleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match verdict {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(other)))
                if format!("{other:?}").contains("CaUsedAsEndEntity")
                    && self
                        .bundle
                        .iter()
                        .any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                let cert = ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&cert, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            verdict => verdict,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `--tls-insecure`: any certificate for any name is accepted. The handshake signatures are
/// still checked (they prove the server holds the key of the certificate it sent), so the
/// cryptographic work per handshake is the same as with verification.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        let name = |address: &str, flag: Option<&str>| server_name(address, flag).unwrap();
        assert_eq!(
            name("127.0.0.1:6380", None),
            ServerName::try_from("localhost").unwrap()
        );
        assert_eq!(
            name("[::1]:6380", None),
            ServerName::try_from("localhost").unwrap()
        );
        assert_eq!(
            name("cache.example.com:6380", None),
            ServerName::try_from("cache.example.com").unwrap()
        );
        assert_eq!(
            name("127.0.0.1:6380", Some("ringport.internal")),
            ServerName::try_from("ringport.internal").unwrap()
        );
        // An IP address given as the name is checked against the certificate's IP entries.
        assert!(matches!(
            name("localhost:6380", Some("127.0.0.1")),
            ServerName::IpAddress(_)
        ));
        assert!(server_name("h:1", Some("not a name")).is_err());
    }

    #[test]
    fn verification_is_chosen_explicitly() {
        let none = TlsFlags::default();
        assert!(client_config(&none).unwrap_err().contains("--tls-insecure"));
        let both = TlsFlags {
            ca: Some("ca.pem".into()),
            insecure: true,
            ..TlsFlags::default()
        };
        assert!(client_config(&both).is_err());
        let insecure = TlsFlags {
            insecure: true,
            ..TlsFlags::default()
        };
        assert!(client_config(&insecure).is_ok());
        let half = TlsFlags {
            insecure: true,
            cert: Some("cert.pem".into()),
            ..TlsFlags::default()
        };
        assert!(client_config(&half).unwrap_err().contains("go together"));
        let missing = TlsFlags {
            ca: Some("/nonexistent/ca.pem".into()),
            ..TlsFlags::default()
        };
        assert!(client_config(&missing)
            .unwrap_err()
            .contains("--tls-ca /nonexistent/ca.pem"));
    }
}
