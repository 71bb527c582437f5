//! TLS termination: per-site certificates chosen by SNI, with a default for clients that send
//! no (or an unknown) server name.
//!
//! Certificates are loaded and checked while the config is validated, so `--check` reports a
//! missing file, a file without a certificate or key, or a key that does not belong to the
//! certificate, naming the file and the site.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate chain with its private key, ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    /// The chain and key for rustls.
    pub key: Arc<CertifiedKey>,
    /// End of validity of the leaf certificate.
    pub not_after: SystemTime,
}

impl LoadedCertificate {
    /// Loads a PEM chain (leaf first) and its PEM private key, checking that they match.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<LoadedCertificate, String> {
        let chain = read_chain(cert_file)?;
        let key = read_key(key_file)?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            format!(
                "{} and {} do not form a key pair: {e}",
                cert_file.display(),
                key_file.display()
            )
        })?;
        let not_after = leaf_not_after(&certified).map_err(|e| format!("{}: {e}", cert_file.display()))?;
        Ok(LoadedCertificate {
            key: Arc::new(certified),
            not_after,
        })
    }

    /// Whether the certificate expires within `window` from now.
    pub fn expires_within(&self, window: Duration) -> bool {
        self.not_after <= SystemTime::now() + window
    }
}

/// Checks that `path` is a PEM file with at least one certificate (a CA bundle).
pub fn check_ca_file(path: &Path) -> Result<(), String> {
    read_chain(path).map(|_| ())
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let chain = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate found (expected PEM \"BEGIN CERTIFICATE\")",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| format!("{}: not a PEM key file: {e}", path.display()))?
        .ok_or_else(|| {
            format!(
                "{}: no private key found (expected PEM \"BEGIN PRIVATE KEY\")",
                path.display()
            )
        })
}

fn leaf_not_after(key: &CertifiedKey) -> Result<SystemTime, String> {
    let leaf = key.end_entity_cert().map_err(|e| e.to_string())?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("unreadable certificate: {e}"))?;
    let seconds = parsed.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}

/// Certificates expiring sooner than this are warned about at startup and on reload.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// One site's certificate and the hosts it serves.
#[derive(Debug, Clone, Copy)]
pub struct SiteCertificate<'a> {
    /// The site's host names (a `*.` prefix matches one label).
    pub hosts: &'a [String],
    /// The default site: its certificate answers unknown server names.
    pub default: bool,
    /// The loaded certificate and key.
    pub certificate: &'a LoadedCertificate,
}

/// The certificates of one config: by host, plus the default.
#[derive(Debug, Default)]
struct CertificateTable {
    by_host: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertificateTable {
    /// Every site with a certificate contributes its hosts; the default site's certificate (or
    /// the first one) answers clients without a known server name.
    fn of<'a>(sites: impl IntoIterator<Item = SiteCertificate<'a>>) -> CertificateTable {
        let tls_sites: Vec<_> = sites.into_iter().collect();
        let default = tls_sites.iter().find(|site| site.default).or(tls_sites.first());
        let mut table = CertificateTable {
            default: default.map(|site| site.certificate.key.clone()),
            ..Default::default()
        };
        for site in &tls_sites {
            let certificate = site.certificate;
            if certificate.expires_within(EXPIRY_WARNING) {
                tracing::warn!(hosts = ?site.hosts, not_after = %httpdate::fmt_http_date(certificate.not_after),
                    "TLS certificate expires within 14 days");
            }
            for host in site.hosts {
                table
                    .by_host
                    .entry(host.clone())
                    .or_insert_with(|| certificate.key.clone());
            }
        }
        table
    }
}

/// Chooses the certificate for a TLS handshake by SNI: exact host, then a `*.` wildcard host of
/// a site, then the default certificate. The table can be replaced while serving (config reload).
#[derive(Debug, Default)]
pub struct SniResolver {
    table: RwLock<Arc<CertificateTable>>,
}

impl SniResolver {
    /// A resolver over the certificates of `sites`.
    pub fn new<'a>(sites: impl IntoIterator<Item = SiteCertificate<'a>>) -> SniResolver {
        SniResolver {
            table: RwLock::new(Arc::new(CertificateTable::of(sites))),
        }
    }

    /// Serves the certificates of `sites` from the next handshake on.
    pub fn replace<'a>(&self, sites: impl IntoIterator<Item = SiteCertificate<'a>>) {
        let table = Arc::new(CertificateTable::of(sites));
        *self
            .table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = table;
    }

    /// The certificate for a server name.
    pub fn certificate_for(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let table = self
            .table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let by_name = server_name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            table.by_host.get(&name).cloned().or_else(|| {
                let (_, parent) = name.split_once('.')?;
                table.by_host.get(&format!("*.{parent}")).cloned()
            })
        });
        by_name.or_else(|| table.default.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certificate_for(client_hello.server_name())
    }
}
