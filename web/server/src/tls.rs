//! TLS: the appliance certificate (self-signed on first start, replaced by an upload) and the
//! rustls server configuration built from it (TLS 1.3 and 1.2, ring provider, HTTP/1.1 ALPN).

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::WebError;

/// Where the certificate chain and its private key live (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, SEC1 or PKCS#1), mode 0600.
    pub key: PathBuf,
}

/// A parsed certificate chain and key, ready for rustls.
#[derive(Debug)]
pub(crate) struct Identity {
    pub(crate) certs: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

fn cert_err(path: &Path, reason: impl Into<String>) -> WebError {
    WebError::Certificate { path: path.to_path_buf(), reason: reason.into() }
}

/// Parses a PEM certificate chain and a PEM private key; the messages say what is wrong with
/// which input, for the upload form as well as for files.
pub(crate) fn parse_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<Identity, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("the certificate PEM holds no CERTIFICATE block".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the private key is not a PEM PRIVATE KEY (PKCS#8, EC or RSA): {e}"))?;
    let identity = Identity { certs, key };
    // Let rustls check that the key is usable and matches the leaf certificate.
    build_server_config(&identity)?;
    Ok(identity)
}

/// Builds the rustls server configuration: TLS 1.3 and 1.2, ring, no client certificates.
pub(crate) fn build_server_config(id: &Identity) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .map_err(|e| format!("the private key does not fit the certificate or is unsupported: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// SHA-256 over the leaf certificate's DER, as upper-case hex pairs joined by ':' (the form
/// browsers show in their certificate viewers).
pub fn fingerprint_sha256(cert_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The SHA-256 fingerprint of the leaf certificate in the PEM file `cert` (what the console
/// shows next to the addresses); reads only the certificate, never the key.
pub fn certificate_fingerprint(cert: &Path) -> Result<String, WebError> {
    let pem = std::fs::read(cert).map_err(|e| cert_err(cert, format!("cannot read: {e}")))?;
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| cert_err(cert, "the file holds no CERTIFICATE block"))?
        .map_err(|e| cert_err(cert, format!("the certificate is not valid PEM: {e}")))?;
    Ok(fingerprint_sha256(&leaf))
}

/// Loads the certificate and key from `paths`.
pub(crate) fn load(paths: &CertPaths) -> Result<Identity, WebError> {
    let cert = std::fs::read(&paths.cert).map_err(|e| cert_err(&paths.cert, format!("cannot read: {e}")))?;
    let key = std::fs::read(&paths.key).map_err(|e| cert_err(&paths.key, format!("cannot read: {e}")))?;
    parse_identity(&cert, &key).map_err(|reason| {
        cert_err(&paths.cert, format!("{reason}; replace the files or remove both to get a new self-signed pair"))
    })
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name != "localhost"
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    valid.then_some(name)
}

/// How long a generated certificate is valid: about two years from the day before it was made.
pub const CERT_VALID_DAYS: u64 = 2 * 365;

/// Generates a self-signed ECDSA P-256 server certificate for localhost, 127.0.0.1, ::1, the
/// host name and the appliance's own addresses, valid from yesterday for [`CERT_VALID_DAYS`],
/// with the key usage and extended key usage of a TLS server; returns (certificate PEM, key
/// PEM).
pub(crate) fn generate_self_signed() -> Result<(String, String), String> {
    generate_self_signed_at(std::time::SystemTime::now(), CERT_VALID_DAYS)
}

/// The organisation named in the certificates this module generates: how a self-signed
/// certificate of ours is told apart from one an operator uploaded.
const OUR_ORGANISATION: &str = "rackvault appliance (self-signed)";

/// A self-signed certificate is renewed once it has fewer days left than this; an uploaded
/// one is warned about.
pub const RENEW_BEFORE_DAYS: i64 = 30;

fn generate_self_signed_at(now: std::time::SystemTime, valid_days: u64) -> Result<(String, String), String> {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
    };
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    dn.push(DnType::OrganizationName, OUR_ORGANISATION);
    params.distinguished_name = dn;
    let yesterday = now - std::time::Duration::from_secs(86_400);
    params.not_before = yesterday.into();
    params.not_after = (yesterday + std::time::Duration::from_secs(valid_days * 86_400)).into();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let mut sans = vec![
        SanType::DnsName("localhost".try_into().map_err(|e| format!("SAN: {e}"))?),
        SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
    ];
    if let Some(host) = host_name() {
        if let Ok(name) = host.as_str().try_into() {
            sans.push(SanType::DnsName(name));
        }
    }
    sans.extend(service::network::own_addresses().into_iter().map(SanType::IpAddress));
    params.subject_alt_names = sans;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| format!("key generation: {e}"))?;
    let cert = params.self_signed(&key).map_err(|e| format!("certificate generation: {e}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What [`check_renewal`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// More than [`RENEW_BEFORE_DAYS`] left.
    Fine,
    /// Our self-signed certificate was running out and was replaced by a new one (new key,
    /// new fingerprint) in the same files.
    Renewed,
    /// An uploaded certificate runs out soon or has run out; it is left alone. The text says
    /// so and what to do.
    Warn(String),
}

/// Looks at the certificate in `paths`: our own self-signed one with fewer than
/// [`RENEW_BEFORE_DAYS`] left (or expired) is replaced by a fresh one; an uploaded one is
/// never replaced, only reported.
pub fn check_renewal(paths: &CertPaths, now: std::time::SystemTime) -> Result<Renewal, WebError> {
    use x509_parser::prelude::*;
    let pem = std::fs::read(&paths.cert).map_err(|e| cert_err(&paths.cert, format!("cannot read: {e}")))?;
    let der = CertificateDer::from_pem_slice(&pem)
        .map_err(|e| cert_err(&paths.cert, format!("not a PEM certificate ({e}); upload a valid one")))?;
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| cert_err(&paths.cert, format!("not a valid certificate ({e}); upload a valid one")))?;
    let now_s = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let days_left = (cert.validity().not_after.timestamp() - now_s).div_euclid(86_400);
    if days_left >= RENEW_BEFORE_DAYS {
        return Ok(Renewal::Fine);
    }
    let ours = cert.issuer() == cert.subject()
        && cert.subject().iter_organization().any(|o| o.as_str() == Ok(OUR_ORGANISATION));
    if !ours {
        let when = if days_left < 0 {
            format!("expired {} day(s) ago: browsers refuse it", -days_left)
        } else {
            format!("expires in {days_left} day(s)")
        };
        return Ok(Renewal::Warn(format!(
            "the uploaded TLS certificate {when}; upload a renewed one under Settings → Certificate"
        )));
    }
    let (cert_pem, key_pem) = generate_self_signed_at(now, CERT_VALID_DAYS).map_err(|e| cert_err(&paths.cert, e))?;
    write_file(&paths.key, key_pem.as_bytes(), 0o600)
        .map_err(|e| cert_err(&paths.key, format!("cannot write: {e}")))?;
    write_file(&paths.cert, cert_pem.as_bytes(), 0o644)
        .map_err(|e| cert_err(&paths.cert, format!("cannot write: {e}")))?;
    Ok(Renewal::Renewed)
}

/// Writes `bytes` to `path` through a temporary file and a rename, with `mode`.
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

/// Makes sure a certificate and key exist at `paths`: when neither exists, generates a
/// self-signed pair (key mode 0600, folder 0700); a self-signed pair of ours that is running
/// out is renewed (see [`check_renewal`]). Returns the SHA-256 fingerprint of the
/// certificate in use, so the caller can print it for the operator to compare in a browser.
pub fn ensure_certificate(paths: &CertPaths) -> Result<String, WebError> {
    let cert_exists = paths.cert.exists();
    let key_exists = paths.key.exists();
    if cert_exists != key_exists {
        let (have, missing) = if cert_exists { (&paths.cert, &paths.key) } else { (&paths.key, &paths.cert) };
        return Err(cert_err(
            missing,
            format!(
                "missing while {} exists; restore it, or remove both files to get a new self-signed pair",
                have.display()
            ),
        ));
    }
    if !cert_exists {
        for dir in [paths.cert.parent(), paths.key.parent()].into_iter().flatten() {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| cert_err(dir, format!("cannot create the folder: {e}")))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| cert_err(dir, format!("cannot restrict the folder: {e}")))?;
            }
        }
        let (cert_pem, key_pem) = generate_self_signed().map_err(|e| cert_err(&paths.cert, e))?;
        write_file(&paths.key, key_pem.as_bytes(), 0o600)
            .map_err(|e| cert_err(&paths.key, format!("cannot write: {e}")))?;
        write_file(&paths.cert, cert_pem.as_bytes(), 0o644)
            .map_err(|e| cert_err(&paths.cert, format!("cannot write: {e}")))?;
    }
    // An uploaded certificate's warning is the web server's to log; renewal happens here so
    // that the fingerprint returned is the one served.
    check_renewal(paths, std::time::SystemTime::now())?;
    let id = load(paths)?;
    Ok(fingerprint_sha256(&id.certs[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_loads_and_keeps_a_pair() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths { cert: dir.path().join("tls/cert.pem"), key: dir.path().join("tls/key.pem") };
        let fp = ensure_certificate(&paths).unwrap();
        assert_eq!(fp.len(), 32 * 3 - 1);
        let mode = std::fs::metadata(&paths.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ensure_certificate(&paths).unwrap(), fp, "an existing pair is kept");
        std::fs::remove_file(&paths.key).unwrap();
        let err = ensure_certificate(&paths).unwrap_err().to_string();
        assert!(err.contains("key.pem"), "{err}");
    }

    #[test]
    fn the_generated_certificate_is_a_two_year_server_certificate_for_our_addresses() {
        use x509_parser::prelude::*;
        let (pem, _) = generate_self_signed().unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let from = cert.validity().not_before.timestamp();
        let to = cert.validity().not_after.timestamp();
        assert!(from <= now && now - from <= 2 * 86_400, "valid from {from}, now {now}");
        let years = (to - from) as f64 / (365.25 * 86_400.0);
        assert!((1.0..=3.0).contains(&years), "valid for {years:.2} years");
        let ku = cert.key_usage().unwrap().expect("key usage").value;
        assert!(ku.digital_signature() && ku.flags.count_ones() == 1, "{ku:?}");
        let eku = cert.extended_key_usage().unwrap().expect("extended key usage").value;
        assert!(eku.server_auth && !eku.client_auth, "{eku:?}");
        let san = cert.subject_alternative_name().unwrap().expect("SAN").value;
        let ips: Vec<std::net::IpAddr> = san
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()))
                }
                GeneralName::IPAddress(b) if b.len() == 16 => {
                    Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()))
                }
                _ => None,
            })
            .collect();
        assert!(ips.contains(&std::net::Ipv4Addr::LOCALHOST.into()));
        for own in service::network::own_addresses() {
            assert!(ips.contains(&own), "{own} missing from the SAN {ips:?}");
        }
        assert!(san.general_names.iter().any(|g| matches!(g, GeneralName::DNSName("localhost"))));
    }

    fn days(n: u64) -> std::time::Duration {
        std::time::Duration::from_secs(n * 86_400)
    }

    #[test]
    fn a_self_signed_certificate_with_less_than_30_days_left_is_renewed_and_an_uploaded_one_only_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths { cert: dir.path().join("cert.pem"), key: dir.path().join("key.pem") };
        let now = std::time::SystemTime::now();
        // Ours, made 700 days ago for 730: 30 days left less the day before; renewed.
        let (cert, key) = generate_self_signed_at(now - days(701), CERT_VALID_DAYS).unwrap();
        write_file(&paths.cert, cert.as_bytes(), 0o644).unwrap();
        write_file(&paths.key, key.as_bytes(), 0o600).unwrap();
        let old = fingerprint_sha256(&load(&paths).unwrap().certs[0]);
        assert_eq!(check_renewal(&paths, now).unwrap(), Renewal::Renewed);
        let new = fingerprint_sha256(&load(&paths).unwrap().certs[0]);
        assert_ne!(old, new, "a new certificate is in the files");
        assert_eq!(check_renewal(&paths, now).unwrap(), Renewal::Fine, "and it has two years again");
        assert_eq!(check_renewal(&paths, now + days(690)).unwrap(), Renewal::Fine);
        assert_eq!(check_renewal(&paths, now + days(710)).unwrap(), Renewal::Renewed);
        // Already expired: renewed too, and ensure_certificate serves the renewed one.
        let (cert, key) = generate_self_signed_at(now - days(800), CERT_VALID_DAYS).unwrap();
        write_file(&paths.cert, cert.as_bytes(), 0o644).unwrap();
        write_file(&paths.key, key.as_bytes(), 0o600).unwrap();
        let expired = fingerprint_sha256(&load(&paths).unwrap().certs[0]);
        let served = ensure_certificate(&paths).unwrap();
        assert_ne!(served, expired);
        assert_eq!(served, fingerprint_sha256(&load(&paths).unwrap().certs[0]));

        // Uploaded (another organisation): never replaced, warned about before and after expiry.
        let mut params = rcgen::CertificateParams::new(vec!["backup.example".to_string()]).unwrap();
        params.not_before = (now - days(300)).into();
        params.not_after = (now + days(10) + std::time::Duration::from_secs(3600)).into();
        let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let c = params.self_signed(&k).unwrap();
        write_file(&paths.cert, c.pem().as_bytes(), 0o644).unwrap();
        write_file(&paths.key, k.serialize_pem().as_bytes(), 0o600).unwrap();
        match check_renewal(&paths, now).unwrap() {
            Renewal::Warn(m) => assert!(m.contains("expires in 10 day") && m.contains("upload a renewed one"), "{m}"),
            other => panic!("{other:?}"),
        }
        match check_renewal(&paths, now + days(15)).unwrap() {
            Renewal::Warn(m) => assert!(m.contains("expired") && m.contains("browsers refuse it"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(&paths.cert).unwrap(), c.pem().as_bytes(), "the uploaded file is untouched");
    }

    #[test]
    fn rejects_mismatched_key() {
        let (cert, _) = generate_self_signed().unwrap();
        let (_, other_key) = generate_self_signed().unwrap();
        let err = parse_identity(cert.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
        assert!(parse_identity(b"junk", b"junk").is_err());
    }
}
