//! `bundle`: the appliance's signed update bundles.
//!
//! An update bundle carries a new root filesystem (the erofs image of a root slot), the kernel
//! and the initrd that boot it, under a manifest signed with ed25519. The public key is built
//! into the image (`/usr/lib/rackvault/update.pub`); the private key never is, and never is in
//! the repository (see `image/README.md`, "Signing").
//!
//! ## Format, version 1
//! ```text
//! magic        8 bytes   "RVBUNDL1"
//! manifest_len u32 LE    at most MAX_MANIFEST
//! manifest     JSON      Manifest: format 1, version, created, components (name, size, blake3)
//! signature    64 bytes  ed25519 over SIGNING_CONTEXT ‖ manifest bytes
//! payload      the components' bytes, in the manifest's order, back to back; nothing after
//! ```
//!
//! ## What a reader guarantees
//! [`Bundle::open`] reads only the head (magic, manifest, signature) and checks the signature
//! before it parses the manifest, so no unsigned byte is interpreted beyond its length. Then
//! [`Bundle::unpack`] copies each component to the sink the caller gives, hashing it on the
//! way, and fails on the first component whose bytes do not match the signed digest, on a
//! bundle that ends early (a truncated upload), and on bytes after the last component. The
//! caller writes components to *staging* files and installs them only after `unpack` returned
//! `Ok`: so a bad, truncated or tampered bundle changes nothing that boots.
//! [`check_upgrade`] refuses a version that is not newer than the running one unless forced.

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

/// The bundle's first 8 bytes.
pub const MAGIC: &[u8; 8] = b"RVBUNDL1";
/// The manifest format this code writes and reads.
pub const FORMAT: u32 = 1;
/// The largest manifest accepted (a manifest names three components: a few hundred bytes).
pub const MAX_MANIFEST: u32 = 64 * 1024;
/// What the signature covers before the manifest: a bundle signature cannot be confused with
/// an ed25519 signature the same key made for anything else.
pub const SIGNING_CONTEXT: &[u8] = b"rackvault update bundle v1\0";
/// The components a bundle for the appliance image holds, in this order.
pub const COMPONENTS: [&str; 3] = ["root", "kernel", "initrd"];
const SIGNATURE_LEN: usize = 64;

/// Why a bundle was refused. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a rackvault update bundle (it does not start with {MAGIC:?}): upload the .rvu file the build made")]
    NotABundle,
    #[error("the bundle's manifest is {0} bytes, more than {MAX_MANIFEST}: the file is damaged or not a bundle")]
    ManifestTooLarge(u32),
    #[error(
        "the bundle's signature does not verify with this appliance's update key: it was not made by \
         the holder of the signing key, or it was changed after signing; nothing was installed"
    )]
    BadSignature,
    #[error("the bundle's manifest is format {0}; this appliance reads format {FORMAT}: update in steps")]
    UnknownFormat(u32),
    #[error("the bundle's manifest is not valid: {0}")]
    BadManifest(String),
    #[error(
        "the bundle ends {missing} bytes early, in its {component} component: the upload was cut; \
         upload it again (nothing was installed)"
    )]
    Truncated { component: String, missing: u64 },
    #[error("the bundle's {0} component does not match its signed digest: the file is damaged; nothing was installed")]
    DigestMismatch(String),
    #[error("the bundle has bytes after its last component: the file is damaged or was appended to")]
    TrailingData,
    #[error(
        "the bundle holds version {offered}, which is not newer than the running {running}: a \
         downgrade needs an administrator's explicit force"
    )]
    Downgrade { running: String, offered: String },
    #[error("the signing key is not an ed25519 key in PKCS#8 form: {0}")]
    BadKey(String),
    #[error("reading or writing the bundle: {0}")]
    Io(#[from] std::io::Error),
}

/// One component of a bundle, as the signed manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// One of [`COMPONENTS`].
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
    /// blake3 of its bytes, lower-case hex.
    pub blake3: String,
}

/// The signed manifest (format 1). This is the on-disk record; API answers have their own
/// types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// The firmware release it installs (dotted numbers, as in Cargo.toml).
    pub version: String,
    /// When the bundle was made (seconds since the Unix epoch).
    pub created_unix: u64,
    pub components: Vec<Component>,
}

impl Manifest {
    fn check(&self) -> Result<(), BundleError> {
        if self.format != FORMAT {
            return Err(BundleError::UnknownFormat(self.format));
        }
        if parse_version(&self.version).is_none() {
            return Err(BundleError::BadManifest(format!("version {:?} is not dotted numbers", self.version)));
        }
        let names: Vec<&str> = self.components.iter().map(|c| c.name.as_str()).collect();
        if names != COMPONENTS {
            return Err(BundleError::BadManifest(format!("components {names:?}, expected {COMPONENTS:?}")));
        }
        for c in &self.components {
            if c.blake3.len() != 64 || !c.blake3.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(BundleError::BadManifest(format!(
                    "{}: blake3 {:?} is not 64 hex digits",
                    c.name, c.blake3
                )));
            }
        }
        Ok(())
    }

    /// The bytes of the payload after the head.
    pub fn payload_len(&self) -> u64 {
        self.components.iter().map(|c| c.size).sum()
    }
}

/// An ed25519 public key that verifies bundles.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl PublicKey {
    /// The key as 64 hex digits (the form of `update.pub`).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits (surrounding whitespace allowed).
    pub fn from_hex(s: &str) -> Result<PublicKey, BundleError> {
        let s = s.trim();
        let bad = || BundleError::BadKey(format!("a public key is 64 hex digits, got {} characters", s.len()));
        if s.len() != 64 {
            return Err(bad());
        }
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
        }
        Ok(PublicKey(k))
    }
}

/// A new signing key: its PKCS#8 document (keep it offline, never in the repository) and its
/// public key (build it into the image).
pub fn generate_key() -> Result<(Vec<u8>, PublicKey), BundleError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| BundleError::BadKey(e.to_string()))?;
    let public = public_key_of(pkcs8.as_ref())?;
    Ok((pkcs8.as_ref().to_vec(), public))
}

/// The public key of a PKCS#8 signing key.
pub fn public_key_of(pkcs8: &[u8]) -> Result<PublicKey, BundleError> {
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|e| BundleError::BadKey(e.to_string()))?;
    let mut k = [0u8; 32];
    k.copy_from_slice(pair.public_key().as_ref());
    Ok(PublicKey(k))
}

/// Writes a signed bundle of the files `components` (name and path, in [`COMPONENTS`]
/// order; each is read twice, once to hash and once to copy) to `out`.
pub fn write_bundle<W: Write>(
    pkcs8: &[u8],
    version: &str,
    created_unix: u64,
    components: &[(&str, &Path)],
    out: &mut W,
) -> Result<Manifest, BundleError> {
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|e| BundleError::BadKey(e.to_string()))?;
    let mut list = Vec::new();
    let open = |path: &Path| {
        std::fs::File::open(path).map_err(|e| std::io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))
    };
    for (name, path) in components {
        let mut h = blake3::Hasher::new();
        let size = std::io::copy(&mut open(path)?, &mut h)?;
        list.push(Component { name: (*name).to_string(), size, blake3: h.finalize().to_hex().to_string() });
    }
    let manifest = Manifest { format: FORMAT, version: version.to_string(), created_unix, components: list };
    manifest.check()?;
    let json = serde_json::to_vec(&manifest).map_err(|e| BundleError::BadManifest(e.to_string()))?;
    let len =
        u32::try_from(json.len()).ok().filter(|l| *l <= MAX_MANIFEST).ok_or(BundleError::ManifestTooLarge(u32::MAX))?;
    let mut signed = SIGNING_CONTEXT.to_vec();
    signed.extend_from_slice(&json);
    let sig = pair.sign(&signed);
    out.write_all(MAGIC)?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&json)?;
    out.write_all(sig.as_ref())?;
    for ((_, path), c) in components.iter().zip(&manifest.components) {
        let copied = std::io::copy(&mut open(path)?, out)?;
        if copied != c.size {
            return Err(BundleError::Io(std::io::Error::other(format!(
                "the {} component changed while the bundle was written ({} bytes, then {copied})",
                c.name, c.size
            ))));
        }
    }
    out.flush()?;
    Ok(manifest)
}

/// A bundle whose head was read and whose signature verified; its payload is still unread.
#[derive(Debug)]
pub struct Bundle<R> {
    pub manifest: Manifest,
    reader: R,
}

impl<R: Read> Bundle<R> {
    /// Reads the head from `reader` and checks the signature with `key`, then the manifest.
    pub fn open(mut reader: R, key: &PublicKey) -> Result<Bundle<R>, BundleError> {
        let mut magic = [0u8; 8];
        read_head(&mut reader, &mut magic)?;
        if &magic != MAGIC {
            return Err(BundleError::NotABundle);
        }
        let mut len = [0u8; 4];
        read_head(&mut reader, &mut len)?;
        let len = u32::from_le_bytes(len);
        if len > MAX_MANIFEST {
            return Err(BundleError::ManifestTooLarge(len));
        }
        let mut signed = SIGNING_CONTEXT.to_vec();
        let start = signed.len();
        signed.resize(start + len as usize, 0);
        read_head(&mut reader, &mut signed[start..])?;
        let mut sig = [0u8; SIGNATURE_LEN];
        read_head(&mut reader, &mut sig)?;
        UnparsedPublicKey::new(&ED25519, &key.0).verify(&signed, &sig).map_err(|_| BundleError::BadSignature)?;
        let manifest: Manifest =
            serde_json::from_slice(&signed[start..]).map_err(|e| BundleError::BadManifest(e.to_string()))?;
        manifest.check()?;
        Ok(Bundle { manifest, reader })
    }

    /// Copies each component to the writer `sink(component)` returns, checking its size and
    /// digest, then checks that nothing follows. Only an `Ok` means every byte written is the
    /// signed one; on an error the caller discards what it wrote.
    pub fn unpack<W: Write>(
        mut self,
        mut sink: impl FnMut(&Component) -> std::io::Result<W>,
        mut progress: impl FnMut(u64),
    ) -> Result<Manifest, BundleError> {
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        for c in &self.manifest.components {
            let mut out = sink(c)?;
            let mut h = blake3::Hasher::new();
            let mut left = c.size;
            while left > 0 {
                let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                let n = match self.reader.read(&mut buf[..want]) {
                    Ok(0) => return Err(BundleError::Truncated { component: c.name.clone(), missing: left }),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                };
                h.update(&buf[..n]);
                out.write_all(&buf[..n])?;
                left -= n as u64;
                done += n as u64;
                progress(done);
            }
            out.flush()?;
            if h.finalize().to_hex().as_str() != c.blake3 {
                return Err(BundleError::DigestMismatch(c.name.clone()));
            }
        }
        let mut one = [0u8; 1];
        loop {
            match self.reader.read(&mut one) {
                Ok(0) => break,
                Ok(_) => return Err(BundleError::TrailingData),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.manifest)
    }
}

/// Reads exactly `buf` of the head; an early end is a truncated bundle.
fn read_head(r: &mut impl Read, buf: &mut [u8]) -> Result<(), BundleError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            BundleError::Truncated { component: "head".into(), missing: buf.len() as u64 }
        }
        _ => BundleError::Io(e),
    })
}

/// Dotted numbers, compared numerically ("0.10.0" > "0.9.3"); a pre-release or build suffix
/// after `-` or `+` is ignored.
pub fn parse_version(v: &str) -> Option<Vec<u64>> {
    let core = v.split(['-', '+']).next()?;
    core.split('.').map(|p| p.parse().ok()).collect::<Option<Vec<u64>>>().filter(|p| !p.is_empty() && p.len() <= 4)
}

/// Refuses a bundle that is not newer than the running firmware, unless `force`.
pub fn check_upgrade(running: &str, offered: &str, force: bool) -> Result<(), BundleError> {
    let newer = match (parse_version(running), parse_version(offered)) {
        (Some(r), Some(o)) => o > r,
        _ => false,
    };
    if newer || force {
        Ok(())
    } else {
        Err(BundleError::Downgrade { running: running.into(), offered: offered.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn parts() -> Vec<(&'static str, Vec<u8>)> {
        vec![("root", vec![7u8; 300_000]), ("kernel", b"kernel bytes".to_vec()), ("initrd", vec![1u8; 5000])]
    }

    fn make(pkcs8: &[u8], version: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<(&str, std::path::PathBuf)> = parts()
            .into_iter()
            .map(|(n, d)| {
                let p = dir.path().join(n);
                std::fs::write(&p, d).unwrap();
                (n, p)
            })
            .collect();
        let comps: Vec<(&str, &Path)> = files.iter().map(|(n, p)| (*n, p.as_path())).collect();
        let mut out = Vec::new();
        write_bundle(pkcs8, version, 1_700_000_000, &comps, &mut out).expect("a bundle");
        out
    }

    fn unpack_all(bytes: &[u8], key: &PublicKey) -> Result<Vec<Vec<u8>>, BundleError> {
        let b = Bundle::open(Cursor::new(bytes), key)?;
        let outs = std::cell::RefCell::new(Vec::new());
        let got = b.unpack(
            |_| {
                outs.borrow_mut().push(Vec::new());
                Ok(Sink(&outs))
            },
            |_| {},
        );
        got.map(|_| outs.into_inner())
    }

    struct Sink<'a>(&'a std::cell::RefCell<Vec<Vec<u8>>>);
    impl Write for Sink<'_> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().last_mut().expect("a component").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_signed_bundle_unpacks_to_exactly_its_components() {
        let (key, public) = generate_key().unwrap();
        let bytes = make(&key, "0.7.0");
        let got = unpack_all(&bytes, &public).expect("it verifies");
        let want: Vec<Vec<u8>> = parts().into_iter().map(|(_, d)| d).collect();
        assert_eq!(got, want);
        let b = Bundle::open(Cursor::new(&bytes), &public).unwrap();
        assert_eq!(b.manifest.version, "0.7.0");
        assert_eq!(b.manifest.payload_len(), 305_012);
    }

    #[test]
    fn a_bundle_signed_with_another_key_is_refused_before_any_payload_is_read() {
        let (key, _) = generate_key().unwrap();
        let (_, other) = generate_key().unwrap();
        let bytes = make(&key, "0.7.0");
        assert!(matches!(Bundle::open(Cursor::new(&bytes), &other), Err(BundleError::BadSignature)));
    }

    #[test]
    fn any_changed_byte_of_the_head_or_the_payload_is_refused() {
        let (key, public) = generate_key().unwrap();
        let bytes = make(&key, "0.7.0");
        let head = 8 + 4 + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize + SIGNATURE_LEN;
        for at in [0, 9, 20, head - 70, head - 1, head, head + 150_000, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            let err = unpack_all(&bad, &public).expect_err("a changed byte is noticed");
            match at {
                0 => assert!(matches!(err, BundleError::NotABundle)),
                9 => assert!(matches!(
                    err,
                    BundleError::ManifestTooLarge(_) | BundleError::Truncated { .. } | BundleError::BadSignature
                )),
                a if a < head => assert!(matches!(err, BundleError::BadSignature), "{at}: {err}"),
                a if a == bytes.len() - 1 => {
                    assert!(matches!(err, BundleError::DigestMismatch(ref n) if n == "initrd"))
                }
                _ => assert!(matches!(err, BundleError::DigestMismatch(ref n) if n == "root"), "{at}: {err}"),
            }
        }
    }

    #[test]
    fn a_truncated_upload_is_refused_and_names_where_it_ends() {
        let (key, public) = generate_key().unwrap();
        let bytes = make(&key, "0.7.0");
        for cut in [3, 40, 150_000, bytes.len() - 1] {
            let err = unpack_all(&bytes[..cut], &public).expect_err("a cut bundle");
            let BundleError::Truncated { component, missing } = err else { panic!("{cut}: {err}") };
            assert!(missing > 0, "{cut}");
            if cut == bytes.len() - 1 {
                assert_eq!((component.as_str(), missing), ("initrd", 1));
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(unpack_all(&longer, &public), Err(BundleError::TrailingData)));
    }

    #[test]
    fn only_a_newer_version_is_taken_unless_forced() {
        assert!(check_upgrade("0.6.0", "0.7.0", false).is_ok());
        assert!(check_upgrade("0.9.3", "0.10.0", false).is_ok());
        assert!(matches!(check_upgrade("0.7.0", "0.7.0", false), Err(BundleError::Downgrade { .. })));
        assert!(matches!(check_upgrade("0.7.0", "0.6.9", false), Err(BundleError::Downgrade { .. })));
        assert!(check_upgrade("0.7.0", "0.6.9", true).is_ok());
        assert!(check_upgrade("0.7.0", "garbage", false).is_err());
        assert_eq!(parse_version("1.2.3-rc1"), Some(vec![1, 2, 3]));
    }

    #[test]
    fn public_keys_round_trip_through_hex_and_bad_keys_say_so() {
        let (key, public) = generate_key().unwrap();
        assert_eq!(PublicKey::from_hex(&format!(" {}\n", public.to_hex())).unwrap(), public);
        assert_eq!(public_key_of(&key).unwrap(), public);
        assert!(matches!(PublicKey::from_hex("abc"), Err(BundleError::BadKey(_))));
        assert!(matches!(public_key_of(b"not a key"), Err(BundleError::BadKey(_))));
    }
}
