//! Certificates for TLS tests, made fresh by each test (rcgen), and a rustls client.
//!
//! Include it with `#[path = "common/tls.rs"] mod tls;`.
//!
//! - [`Pki::new`]: a CA, a server certificate it signed for `localhost` and `127.0.0.1`, and a
//!   client certificate it signed; all written as PEM files into a temp dir, for `--tls-cert`,
//!   `--tls-key`, `--tls-ca` and for clients (`redis-cli --cacert`, redis-py `ssl_ca_certs`).
//! - [`connect`]: a rustls client stream over TCP that trusts one CA, optionally presenting a
//!   client certificate; the handshake runs on first use, so [`handshake`] forces it to see
//!   whether the server accepts.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A client stream over TLS.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A CA with a server and a client certificate, as PEM files in a temp dir.
pub struct Pki {
    dir: tempfile::TempDir,
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl Pki {
    /// A fresh CA named `name`, and the certificates it signed.
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("temp dir for certificates");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).unwrap();

        let server_key = KeyPair::generate().unwrap();
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(vec!["client".to_string()]).unwrap();
        client_params
            .distinguished_name
            .push(DnType::CommonName, "ringport test client");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();

        let pki = Pki {
            dir,
            ca_pem: ca.pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        };
        std::fs::write(pki.ca_path(), &pki.ca_pem).unwrap();
        std::fs::write(pki.cert_path(), server.pem()).unwrap();
        std::fs::write(pki.key_path(), server_key.serialize_pem()).unwrap();
        std::fs::write(pki.path("client.pem"), &pki.client_cert_pem).unwrap();
        std::fs::write(pki.path("client-key.pem"), &pki.client_key_pem).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.path("ca.pem")
    }

    pub fn cert_path(&self) -> PathBuf {
        self.path("server.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.path("server-key.pem")
    }

    pub fn client_cert_path(&self) -> PathBuf {
        self.path("client.pem")
    }

    pub fn client_key_path(&self) -> PathBuf {
        self.path("client-key.pem")
    }

    /// `--tls-cert` and `--tls-key` pointing at `server.pem` and `server-key.pem`.
    pub fn server_flags(&self) -> Vec<(String, String)> {
        vec![
            ("--tls-cert".into(), path_str(&self.cert_path())),
            ("--tls-key".into(), path_str(&self.key_path())),
        ]
    }

    /// Copies this CA's server certificate and key over `other`'s files (a certificate
    /// rotation, as an operator does before SIGHUP).
    pub fn install_server_files_into(&self, other: &Pki) {
        std::fs::copy(self.cert_path(), other.cert_path()).unwrap();
        std::fs::copy(self.key_path(), other.key_path()).unwrap();
    }

    /// The redis crate's TLS settings: trust this CA, optionally present the client
    /// certificate.
    pub fn redis_certificates(&self, with_client_cert: bool) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: with_client_cert.then(|| redis::ClientTlsConfig {
                client_cert: self.client_cert_pem.clone().into_bytes(),
                client_key: self.client_key_pem.clone().into_bytes(),
            }),
            root_cert: Some(self.ca_pem.clone().into_bytes()),
        }
    }

    /// A rustls client configuration that trusts this CA.
    pub fn client_config(&self, with_client_cert: bool) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = ClientConfig::builder().with_root_certificates(roots);
        let config = if with_client_cert {
            let chain = CertificateDer::pem_slice_iter(self.client_cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(self.client_key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }
}

pub fn path_str(path: &Path) -> String {
    path.to_str().expect("utf-8 temp path").to_string()
}

/// A TLS client stream to `addr`, trusting `config`'s roots, for server name `localhost`.
pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> TlsStream {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config, name).unwrap();
    StreamOwned::new(conn, tcp)
}

/// Completes the handshake (and, with TLS 1.3, the server's verdict on a client certificate,
/// which arrives with its first records); the error says why the server refused.
pub fn handshake(stream: &mut TlsStream) -> Result<(), std::io::Error> {
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    stream.flush()
}
