//! `rackvault health`: is the daemon up and answering on its HTTPS port? The appliance image
//! runs it after every boot (`rackvault-health.service`, before `boot-complete.target`) with
//! `--bless`: once the daemon answers, the running slot's boot entry loses its boot counter,
//! so the boot loader keeps starting it; if the daemon does not answer in time, the unit fails
//! and reboots, and after its tries the boot loader goes back to the other slot (see
//! `service::update`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The appliance's data directory (its certificate is the one to expect).
    #[arg(long, default_value = "./rackvault-data")]
    data_dir: PathBuf,
    /// The daemon's HTTPS port on this machine.
    #[arg(long, default_value_t = 443)]
    port: u16,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    /// Once healthy, mark the running slot's boot entry good (drop its boot counter).
    #[arg(long)]
    bless: bool,
    /// The EFI system partition (with --bless).
    #[arg(long, default_value = "/efi")]
    esp: PathBuf,
}

pub fn run(args: HealthArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_s);
    let cert = args.data_dir.join("tls/cert.pem");
    let url = format!("https://127.0.0.1:{}", args.port);
    let last_error = loop {
        let attempt = (|| -> Result<u16> {
            let fp = webserver::certificate_fingerprint(&cert)?;
            let mut client = pinhttp::Client::new(&url, &fp, None)?;
            Ok(client.request("GET", "/api/v1/setup", "", &[])?.status)
        })();
        match attempt {
            Ok(200) => break None,
            Ok(status) => {
                if Instant::now() >= deadline {
                    break Some(format!("the daemon answered HTTP {status}"));
                }
            }
            Err(e) => {
                if Instant::now() >= deadline {
                    break Some(format!("{e:#}"));
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    if let Some(why) = last_error {
        eprintln!("rackvault health: the daemon did not answer on {url} within {} s: {why}", args.timeout_s);
        if args.bless && trial_entry(&args.esp).ok().flatten().is_none() {
            // A good slot is never rebooted from here: that would loop on a broken data
            // partition. The daemon's own errors say what is wrong.
            eprintln!("rackvault health: this slot is not on trial; nothing more to do");
            return Ok(ExitCode::SUCCESS);
        }
        return Ok(ExitCode::FAILURE);
    }
    println!("rackvault health: the daemon answers on {url} ({:.1} s)", started.elapsed().as_secs_f64());
    if args.bless {
        bless(&args.esp)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The running slot's boot entry while it is on trial (it has a boot counter), and its name
/// once blessed.
fn trial_entry(esp: &std::path::Path) -> Result<Option<(PathBuf, String)>> {
    let Some(slot) = service::update::SystemLayout::appliance().running_slot() else { return Ok(None) };
    let dir = esp.join("loader/entries");
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if service::update::entry_slot(name) != Some(slot) {
            continue;
        }
        if let Some(good) = service::update::blessed_name(name) {
            return Ok(Some((path, good)));
        }
    }
    Ok(None)
}

/// Drops the boot counter of the running slot's entry (what systemd-bless-boot does).
fn bless(esp: &std::path::Path) -> Result<()> {
    let Some((path, good)) = trial_entry(esp)? else {
        println!("rackvault health: this slot is good already");
        return Ok(());
    };
    let dir = esp.join("loader/entries");
    service::update::rename_synced(&path, &dir.join(&good))?;
    service::update::sync_filesystem(esp)?;
    println!("rackvault health: this slot is good now ({} -> {good})", path.display());
    Ok(())
}
