//! `rackvault update`: signed update bundles of the appliance image (see the `bundle` crate
//! for the format and what a reader guarantees).
//!
//! - `keygen --out KEY`: a new ed25519 signing key (PKCS#8, 0600) and `KEY.pub` (hex). Keep
//!   the key on the offline signing host; build the public key into the image
//!   (`image/build.sh --update-key KEY.pub`).
//! - `bundle --key KEY --version V --root R --kernel K --initrd I --out F`: sign a bundle.
//! - `verify F --public-key PUB [--running V] [--force]`: check a bundle as the appliance
//!   will before it installs one: the signature, every component's digest, the length, and
//!   that it is newer than the running version.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[command(subcommand)]
    cmd: UpdateCmd,
}

#[derive(Subcommand, Debug)]
enum UpdateCmd {
    /// Make a new signing key (PKCS#8) and its public key (KEY.pub, hex).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign an update bundle of a root filesystem image, a kernel and an initrd.
    Bundle {
        /// The signing key (PKCS#8) made by `keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The firmware release the bundle installs.
        #[arg(long)]
        version: String,
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initrd: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a bundle as the appliance does before installing it.
    Verify {
        bundle: PathBuf,
        /// The public key (hex) the appliance has built in.
        #[arg(long)]
        public_key: PathBuf,
        /// The running version: the bundle must be newer.
        #[arg(long)]
        running: Option<String>,
        /// Accept a bundle that is not newer.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(args: UpdateArgs) -> Result<ExitCode> {
    match args.cmd {
        UpdateCmd::Keygen { out } => {
            let (pkcs8, public) = bundle::generate_key()?;
            write_new(&out, &pkcs8, 0o600)?;
            let pub_path = pub_path(&out);
            write_new(&pub_path, format!("{}\n", public.to_hex()).as_bytes(), 0o644)?;
            println!(
                "signing key in {} (keep it offline, never in the repository); public key {} in {}",
                out.display(),
                public.to_hex(),
                pub_path.display()
            );
        }
        UpdateCmd::Bundle { key, version, root, kernel, initrd, out } => {
            let pkcs8 = std::fs::read(&key).with_context(|| format!("reading the signing key {}", key.display()))?;
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let tmp = out.with_extension("rvu.partial");
            let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
            let comps = [("root", root.as_path()), ("kernel", kernel.as_path()), ("initrd", initrd.as_path())];
            let m = bundle::write_bundle(&pkcs8, &version, now, &comps, &mut w)?;
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &out).with_context(|| format!("naming the bundle {}", out.display()))?;
            println!(
                "signed bundle {} for version {}: {} MiB (root {} MiB)",
                out.display(),
                m.version,
                (m.payload_len() >> 20),
                m.components[0].size >> 20
            );
        }
        UpdateCmd::Verify { bundle: path, public_key, running, force } => {
            let text = std::fs::read_to_string(&public_key)
                .with_context(|| format!("reading the public key {}", public_key.display()))?;
            let key = bundle::PublicKey::from_hex(&text)?;
            let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            let b = bundle::Bundle::open(std::io::BufReader::with_capacity(1 << 20, file), &key)?;
            if let Some(running) = &running {
                bundle::check_upgrade(running, &b.manifest.version, force)?;
            }
            let m = b.unpack(|_| Ok(std::io::sink()), |_| {})?;
            println!("{}: a good bundle of version {}, signed by {}", path.display(), m.version, key.to_hex());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn pub_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Writes a file that must not exist yet (a key is never overwritten).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {} (an existing key is never overwritten)", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
