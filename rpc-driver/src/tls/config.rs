//! [`TlsConfig`]: one configuration for both roles, and the certificate verifiers behind it.

use std::fmt;
use std::path::{Path, PathBuf};

// rustls takes std's `Arc`; its configs are built once and shared, never modelled.
use crate::sync::unmodeled::{Arc, OnceLock};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_name;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme, SupportedProtocolVersion,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsVersion {
    /// TLS 1.2 (RFC 5246).
    Tls12,
    /// TLS 1.3 (RFC 8446).
    Tls13,
}

impl TlsVersion {
    fn rustls(self) -> &'static SupportedProtocolVersion {
        match self {
            Self::Tls12 => &rustls::version::TLS12,
            Self::Tls13 => &rustls::version::TLS13,
        }
    }
}

/// Why a [`TlsConfig`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A file named in the configuration could not be read.
    #[error("could not read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file is malformed.
    #[error("malformed pem in the {what}: {reason}")]
    Pem {
        /// Which input: "certificate chain", "private key", "trust store", ...
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A PEM input that must hold certificates holds none.
    #[error("no certificate found in the {what} (expected pem `CERTIFICATE` sections)")]
    NoCertificates {
        /// Which input.
        what: &'static str,
    },
    /// The private key input holds no private key in a format this crate reads.
    #[error(
        "no private key found (expected an unencrypted pem `PRIVATE KEY` (pkcs#8), \
         `RSA PRIVATE KEY` (pkcs#1) or `EC PRIVATE KEY` (sec1) section)"
    )]
    NoPrivateKey,
    /// The private key is encrypted with a password; Spark's `privateKeyPassword` is not
    /// supported.
    #[error(
        "the private key is encrypted, which is not supported: decrypt it first \
         (e.g. `openssl pkey -in key.pem -out key-plain.pem`)"
    )]
    EncryptedPrivateKey,
    /// The certificate chain and private key do not fit together, or the key's type is not
    /// supported.
    #[error("invalid certificate chain or private key: {0}")]
    Identity(#[source] rustls::Error),
    /// A certificate of a trust store could not be used as a trust root.
    #[error("invalid certificate in the {what}: {reason}")]
    TrustRoot {
        /// Which input.
        what: &'static str,
        /// Why it was refused.
        #[source]
        reason: rustls::Error,
    },
    /// The server name is neither a valid DNS name nor an IP address.
    #[error("invalid server name {0:?}")]
    InvalidServerName(String),
    /// [`TlsConfig::with_protocol_versions`] was given no version.
    #[error("no tls protocol version enabled")]
    NoProtocolVersions,
    /// A server needs a certificate and private key.
    #[error(
        "a tls server needs a certificate chain and private key \
         (with_identity_pem or with_identity_files)"
    )]
    NoIdentity,
    /// A client needs to know which server certificates to trust.
    #[error(
        "a tls client needs a trust store (with_trust_pem or with_trust_file), \
         or trust_any_server_certificate to accept any server"
    )]
    NoTrust,
    /// rustls refused the configuration.
    #[error("invalid tls configuration: {0}")]
    Rustls(#[source] rustls::Error),
}

/// Which server certificates a client accepts.
#[derive(Clone)]
enum Trust {
    /// Nothing configured: a client cannot be built.
    Unset,
    /// Certificates that chain to these roots.
    Roots(TrustStore),
    /// Any certificate (Spark without a trust store).
    Any,
}

/// TLS settings for both roles, mirroring Spark's `spark.ssl.rpc.*`.
///
/// | Spark (`spark.ssl.rpc.`)          | here                                           |
/// |-----------------------------------|------------------------------------------------|
/// | `certChain` + `privateKey` (PEM)  | [`with_identity_pem`] / [`with_identity_files`] |
/// | `privateKeyPassword`              | not supported: decrypt the key first           |
/// | `keyStore` (JKS/PKCS12)           | not supported: convert to PEM                  |
/// | `trustStore`                      | [`with_trust_pem`] / [`with_trust_file`], PEM only (convert a JKS trust store with `keytool -exportcert -rfc`) |
/// | no `trustStore` (trust all)       | [`trust_any_server_certificate`] (explicit)    |
/// | `protocol`                        | [`with_protocol_versions`] (TLS 1.2 and 1.3 by default) |
/// | `enabledAlgorithms`               | rustls' safe defaults (AES-GCM and ChaCha20-Poly1305 with ECDHE; no DHE) |
/// | no SNI, no hostname verification  | the default; [`with_server_name`] turns both on |
/// | no client certificates            | the default; [`require_client_certificates`] for mutual TLS |
///
/// The same value configures a server ([`accept`](super::accept): needs an identity) and a
/// client ([`connect`](super::connect): needs a trust store or
/// [`trust_any_server_certificate`]); the identity doubles as the client certificate when a
/// server asks for one. The rustls configurations are built once, on first use, and shared by
/// every connection (and by clones of this value); [`check_server`](Self::check_server) and
/// [`check_client`](Self::check_client) build them ahead of time, to report a configuration
/// error at startup rather than on the first connection. There is no ALPN and no session
/// resumption (Spark's connections are long-lived).
///
/// `Debug` never shows key material.
///
/// ```
/// # fn main() -> Result<(), rpc_driver::tls::TlsConfigError> {
/// use rpc_driver::tls::{TlsConfig, TlsVersion};
/// # let (chain, key, ca) = (b"".as_slice(), b"".as_slice(), b"".as_slice());
/// # let demo = || -> Result<TlsConfig, rpc_driver::tls::TlsConfigError> {
/// // Spark's settings: PEM identity, PEM trust store, no hostname verification.
/// let config = TlsConfig::new()
///     .with_identity_files("/etc/spark/tls/cert-chain.pem", "/etc/spark/tls/key.pem")?
///     .with_trust_file("/etc/spark/tls/ca.pem")?;
/// // Stricter: check the server's name, TLS 1.3 only, client certificates required.
/// let strict = TlsConfig::new()
///     .with_identity_pem(chain, key)?
///     .with_trust_pem(ca)?
///     .with_server_name("worker-1.example.com")?
///     .with_protocol_versions(&[TlsVersion::Tls13])?
///     .require_client_certificates(ca)?;
/// # let _ = strict; Ok(config) };
/// // Spark without a trust store: accept any server certificate (insecure).
/// let anything = TlsConfig::new().trust_any_server_certificate();
/// assert!(anything.check_client().is_ok());
/// assert!(anything.check_server().is_err(), "a server needs an identity");
/// # Ok(())
/// # }
/// ```
///
/// [`with_identity_pem`]: Self::with_identity_pem
/// [`with_identity_files`]: Self::with_identity_files
/// [`with_trust_pem`]: Self::with_trust_pem
/// [`with_trust_file`]: Self::with_trust_file
/// [`trust_any_server_certificate`]: Self::trust_any_server_certificate
/// [`with_protocol_versions`]: Self::with_protocol_versions
/// [`with_server_name`]: Self::with_server_name
/// [`require_client_certificates`]: Self::require_client_certificates
#[derive(Clone)]
pub struct TlsConfig {
    identity: Option<Arc<CertifiedKey>>,
    trust: Trust,
    server_name: Option<ServerName<'static>>,
    client_roots: Option<TrustStore>,
    versions: Vec<TlsVersion>,
    built: Arc<Built>,
}

/// The rustls configurations, built on first use.
#[derive(Default)]
struct Built {
    /// For connections without a server name.
    client: OnceLock<Arc<ClientConfig>>,
    /// For connections with one.
    named_client: OnceLock<Arc<ClientConfig>>,
    server: OnceLock<Arc<ServerConfig>>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsConfig {
    /// An empty configuration: no identity, no trust store, no server name, TLS 1.2 and 1.3.
    pub fn new() -> Self {
        Self {
            identity: None,
            trust: Trust::Unset,
            server_name: None,
            client_roots: None,
            versions: vec![TlsVersion::Tls13, TlsVersion::Tls12],
            built: Arc::default(),
        }
    }

    /// Sets this side's certificate chain (leaf first, as in Spark's `certChain`) and private
    /// key (Spark's `privateKey`), both PEM. The key may be PKCS#8 (`PRIVATE KEY`), PKCS#1
    /// (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`); RSA, ECDSA (P-256, P-384) and Ed25519
    /// keys work. Encrypted keys are refused ([`TlsConfigError::EncryptedPrivateKey`]).
    ///
    /// A server presents it; a client presents it when the server asks for a certificate.
    pub fn with_identity_pem(
        mut self,
        cert_chain_pem: &[u8],
        private_key_pem: &[u8],
    ) -> Result<Self, TlsConfigError> {
        let chain = parse_certificates(cert_chain_pem, "certificate chain")?;
        let key = parse_private_key(private_key_pem)?;
        let identity =
            CertifiedKey::from_der(chain, key, &provider()).map_err(TlsConfigError::Identity)?;
        self.identity = Some(Arc::new(identity));
        Ok(self.rebuilt())
    }

    /// [`with_identity_pem`](Self::with_identity_pem) with the PEM read from these files.
    pub fn with_identity_files(
        self,
        cert_chain: impl AsRef<Path>,
        private_key: impl AsRef<Path>,
    ) -> Result<Self, TlsConfigError> {
        let chain = read_file(cert_chain.as_ref())?;
        let key = read_file(private_key.as_ref())?;
        self.with_identity_pem(&chain, &key)
    }

    /// Trusts server certificates that chain to these PEM certificates (Spark's `trustStore`,
    /// as PEM: JKS trust stores are not read; export one with
    /// `keytool -exportcert -rfc -keystore truststore.jks -alias ...`). A self-signed
    /// server certificate can be its own trust root. Replaces an earlier trust setting.
    ///
    /// As in a Java trust store, a certificate found as it is in the trust store is trusted
    /// without further checks, even one rustls would not take as a server certificate (a
    /// self-signed certificate marked as a CA, as `openssl req -x509` makes them, or an
    /// expired one); the server must still prove it holds its key.
    pub fn with_trust_pem(mut self, trust_pem: &[u8]) -> Result<Self, TlsConfigError> {
        self.trust = Trust::Roots(TrustStore::from_pem(trust_pem, "trust store")?);
        Ok(self.rebuilt())
    }

    /// [`with_trust_pem`](Self::with_trust_pem) with the PEM read from this file.
    pub fn with_trust_file(self, path: impl AsRef<Path>) -> Result<Self, TlsConfigError> {
        let pem = read_file(path.as_ref())?;
        self.with_trust_pem(&pem)
    }

    /// Accepts any server certificate, as Spark does when no trust store is configured.
    ///
    /// **Insecure**: the connection is encrypted, but anyone in the middle can present a
    /// certificate of their own. The handshake signatures are still verified (the server
    /// proves it holds the key of the certificate it presented), just not who that is.
    /// Replaces an earlier trust setting, and a [server name](Self::with_server_name) is then
    /// sent as SNI but not checked.
    pub fn trust_any_server_certificate(mut self) -> Self {
        self.trust = Trust::Any;
        self.rebuilt()
    }

    /// Checks the server's certificate against this DNS name or IP address, and sends a DNS
    /// name as SNI. Spark does neither: without a name a client checks only that the
    /// server's chain leads to a trust root, whatever names the certificate carries.
    pub fn with_server_name(mut self, name: &str) -> Result<Self, TlsConfigError> {
        let parsed = ServerName::try_from(name.to_owned())
            .map_err(|_| TlsConfigError::InvalidServerName(name.to_owned()))?;
        self.server_name = Some(parsed);
        Ok(self.rebuilt())
    }

    /// Requires every client to present a certificate that chains to these PEM certificates
    /// (mutual TLS; Spark has none), or that is one of them as it is (as for
    /// [`with_trust_pem`](Self::with_trust_pem)). Clients configure theirs with
    /// [`with_identity_pem`](Self::with_identity_pem).
    pub fn require_client_certificates(mut self, trust_pem: &[u8]) -> Result<Self, TlsConfigError> {
        self.client_roots = Some(TrustStore::from_pem(trust_pem, "client trust store")?);
        Ok(self.rebuilt())
    }

    /// [`require_client_certificates`](Self::require_client_certificates) with the PEM read
    /// from this file.
    pub fn require_client_certificates_file(
        self,
        path: impl AsRef<Path>,
    ) -> Result<Self, TlsConfigError> {
        let pem = read_file(path.as_ref())?;
        self.require_client_certificates(&pem)
    }

    /// The protocol versions to allow (Spark's `protocol`); TLS 1.3 and 1.2 by default.
    pub fn with_protocol_versions(
        mut self,
        versions: &[TlsVersion],
    ) -> Result<Self, TlsConfigError> {
        if versions.is_empty() {
            return Err(TlsConfigError::NoProtocolVersions);
        }
        self.versions = versions.to_vec();
        self.versions.dedup();
        Ok(self.rebuilt())
    }

    /// Builds (once) what [`accept`](super::accept) uses, reporting what is missing or wrong.
    pub fn check_server(&self) -> Result<(), TlsConfigError> {
        self.server_config().map(drop)
    }

    /// Builds (once) what [`connect`](super::connect) uses, reporting what is missing or
    /// wrong.
    pub fn check_client(&self) -> Result<(), TlsConfigError> {
        self.client_config(self.server_name.is_some()).map(drop)
    }

    /// The server name set with [`with_server_name`](Self::with_server_name).
    pub(super) fn configured_server_name(&self) -> Option<&ServerName<'static>> {
        self.server_name.as_ref()
    }

    /// A copy that no longer shares built configurations with the value it came from.
    fn rebuilt(mut self) -> Self {
        self.built = Arc::default();
        self
    }

    fn versions(&self) -> Vec<&'static SupportedProtocolVersion> {
        self.versions.iter().map(|v| v.rustls()).collect()
    }

    /// The rustls client configuration, built on first use and shared afterwards: with
    /// `named`, one that checks the server's name and sends it as SNI, else one that does
    /// neither.
    pub(super) fn client_config(&self, named: bool) -> Result<Arc<ClientConfig>, TlsConfigError> {
        let cell = if named {
            &self.built.named_client
        } else {
            &self.built.client
        };
        if let Some(config) = cell.get() {
            return Ok(config.clone());
        }
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = match &self.trust {
            Trust::Unset => return Err(TlsConfigError::NoTrust),
            Trust::Any => Arc::new(AnyServerCertificate {
                algorithms: provider.signature_verification_algorithms,
            }),
            Trust::Roots(store) => Arc::new(TrustedServer {
                webpki: WebPkiServerVerifier::builder_with_provider(
                    store.roots.clone(),
                    provider.clone(),
                )
                .build()
                .map_err(|e| TlsConfigError::Rustls(rustls::Error::General(e.to_string())))?,
                pinned: store.certificates.clone(),
                check_name: named,
            }),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&self.versions())
            .map_err(TlsConfigError::Rustls)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.identity {
            Some(identity) => builder
                .with_client_cert_resolver(Arc::new(SingleCertAndKey::from((**identity).clone()))),
            None => builder.with_no_client_auth(),
        };
        // SNI only for a name the user gave (Spark sends none); rustls never sends an IP.
        config.enable_sni = named;
        config.resumption = Resumption::disabled();
        Ok(cell.get_or_init(|| Arc::new(config)).clone())
    }

    /// The rustls server configuration, built on first use and shared afterwards.
    pub(super) fn server_config(&self) -> Result<Arc<ServerConfig>, TlsConfigError> {
        if let Some(config) = self.built.server.get() {
            return Ok(config.clone());
        }
        let identity = self.identity.as_ref().ok_or(TlsConfigError::NoIdentity)?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.versions())
            .map_err(TlsConfigError::Rustls)?;
        let builder = match &self.client_roots {
            Some(store) => builder.with_client_cert_verifier(Arc::new(TrustedClient {
                webpki: WebPkiClientVerifier::builder_with_provider(store.roots.clone(), provider)
                    .build()
                    .map_err(|e| TlsConfigError::Rustls(rustls::Error::General(e.to_string())))?,
                pinned: store.certificates.clone(),
            })),
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_cert_resolver(Arc::new(SingleCertAndKey::from((**identity).clone())));
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(self.built.server.get_or_init(|| Arc::new(config)).clone())
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let identity = self
            .identity
            .as_ref()
            .map(|id| format!("{} certificate(s) and a private key", id.cert.len()));
        let trust = match &self.trust {
            Trust::Unset => "none".to_owned(),
            Trust::Roots(store) => format!("{} root(s)", store.certificates.len()),
            Trust::Any => "any server certificate (insecure)".to_owned(),
        };
        let client_certificates = match &self.client_roots {
            Some(store) => format!("required, {} root(s)", store.certificates.len()),
            None => "not requested".to_owned(),
        };
        f.debug_struct("TlsConfig")
            .field("identity", &identity)
            .field("trust", &trust)
            .field(
                "server_name",
                &self.server_name.as_ref().map(|n| n.to_str()),
            )
            .field("client_certificates", &client_certificates)
            .field("versions", &self.versions)
            .finish()
    }
}

/// The crypto provider: *ring*, built once.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

pub(super) fn parse_certificates(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsConfigError::NoCertificates { what });
    }
    Ok(certificates)
}

fn parse_private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    // PKCS#8 `ENCRYPTED PRIVATE KEY`, or OpenSSL's legacy encrypted PKCS#1/SEC1 headers.
    if contains(pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || contains(pem, b"Proc-Type: 4,ENCRYPTED")
    {
        return Err(TlsConfigError::EncryptedPrivateKey);
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsConfigError::NoPrivateKey,
        // Deliberately not the error's own text: it could quote key bytes.
        _ => TlsConfigError::Pem {
            what: "private key",
            reason: "not valid pem".to_owned(),
        },
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A trust store: its certificates as trust roots, and as they are, for the exact matches
/// that are trusted whatever they are ([`TrustedServer`]).
#[derive(Clone)]
struct TrustStore {
    roots: Arc<RootCertStore>,
    certificates: Arc<[CertificateDer<'static>]>,
}

impl TrustStore {
    fn from_pem(pem: &[u8], what: &'static str) -> Result<Self, TlsConfigError> {
        let certificates = parse_certificates(pem, what)?;
        let mut roots = RootCertStore::empty();
        for certificate in &certificates {
            roots
                .add(certificate.clone())
                .map_err(|reason| TlsConfigError::TrustRoot { what, reason })?;
        }
        Ok(Self {
            roots: Arc::new(roots),
            certificates: certificates.into(),
        })
    }
}

/// How a client checks a server's certificate against a trust store, as Spark's (Java's)
/// does:
///
/// * A certificate found as it is in the trust store is trusted, even one webpki would not
///   take as an end-entity certificate (a self-signed certificate marked as a CA, as
///   `openssl req -x509` makes them, or one past its dates), like an entry of a Java trust
///   store.
/// * Otherwise its chain must lead to a trust root (rustls' own verifier: signatures,
///   validity dates, key usage).
/// * The name is checked only with `check_name`. Without it, only the name check is
///   forgiven: rustls checks the chain first and the name after it, so no other failure can
///   be mistaken for a name mismatch.
///
/// Either way the handshake signatures are verified, so the server proves it holds the
/// certificate's key.
#[derive(Debug)]
struct TrustedServer {
    webpki: Arc<WebPkiServerVerifier>,
    pinned: Arc<[CertificateDer<'static>]>,
    check_name: bool,
}

impl ServerCertVerifier for TrustedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pinned.iter().any(|pinned| pinned == end_entity) {
            if self.check_name {
                let parsed = ParsedCertificate::try_from(end_entity)?;
                verify_server_name(&parsed, server_name)?;
            }
            return Ok(ServerCertVerified::assertion());
        }
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
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

/// How a server checks a client's certificate (mutual TLS): as [`TrustedServer`] does,
/// without names.
#[derive(Debug)]
struct TrustedClient {
    webpki: Arc<dyn ClientCertVerifier>,
    pinned: Arc<[CertificateDer<'static>]>,
}

impl ClientCertVerifier for TrustedClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.pinned.iter().any(|pinned| pinned == end_entity) {
            return Ok(ClientCertVerified::assertion());
        }
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)
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

/// Spark's client without a trust store: any certificate is accepted, but the server must
/// still sign the handshake with the certificate's key.
#[derive(Debug)]
struct AnyServerCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServerCertificate {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
