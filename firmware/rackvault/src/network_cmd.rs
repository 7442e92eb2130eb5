//! `rackvault network apply`: turns the network and time settings the daemon keeps
//! (`<data>/network.json`) into systemd-networkd and timesyncd configuration under `/run`.
//! The appliance image runs it as root: at every boot before networkd starts
//! (`rackvault-network.service`), and with `--reload` whenever the settings change
//! (`rackvault-network-reload.path`). The file is checked again here, with the daemon's own
//! types, before anything is written (see `service::network`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use service::network::{self, AppliedNetwork, NetworkRecord};

#[derive(Args, Debug)]
pub struct NetworkArgs {
    #[command(subcommand)]
    command: NetworkCommand,
}

#[derive(Subcommand, Debug)]
enum NetworkCommand {
    /// Render the settings into /run for networkd and timesyncd (run as root).
    Apply {
        /// The appliance's data directory (where the daemon keeps network.json).
        #[arg(long, default_value = "./rackvault-data")]
        data_dir: PathBuf,
        /// Then make networkd and timesyncd pick the new configuration up.
        #[arg(long)]
        reload: bool,
        /// Write under this directory instead of / (for tests).
        #[arg(long, default_value = "/", hide = true)]
        root: PathBuf,
    },
}

const NETWORK_FILE: &str = "run/systemd/network/10-rackvault.network";
const TIME_FILE: &str = "run/systemd/timesyncd.conf.d/50-rackvault.conf";

pub fn run(args: NetworkArgs) -> Result<ExitCode> {
    match args.command {
        NetworkCommand::Apply { data_dir, reload, root } => apply(&data_dir, reload, &root),
    }
}

fn apply(data_dir: &Path, reload: bool, root: &Path) -> Result<ExitCode> {
    let status_path = root.join(service::update::NETWORK_APPLIED.trim_start_matches('/'));
    // Invalid settings are not applied: the image's defaults (DHCP) take their place, and the
    // UI shows why.
    let (record, refused) = match network::read_settings_file(data_dir) {
        Ok(r) => (r, None),
        Err(e) => (None, Some(format!("the settings were not applied: {e}; the appliance uses DHCP"))),
    };
    let (network_file, time_file) = record.as_ref().map(network::render).unwrap_or((None, None));
    for (rel, content) in [(NETWORK_FILE, network_file), (TIME_FILE, time_file)] {
        let path = root.join(rel);
        match content {
            Some(text) => write_replacing(&path, text.as_bytes())?,
            None => remove(&path)?,
        }
    }
    let mut outcome = match refused {
        Some(why) => Err(why),
        None => Ok(summary(record.as_ref())),
    };
    if reload {
        if let Err(why) = reload_services() {
            outcome = Err(format!("written, but {why}; they apply at the next boot"));
        }
    }
    let (ok, message, code) = match outcome {
        Ok(m) => (true, m, ExitCode::SUCCESS),
        Err(m) => (false, m, ExitCode::from(1)),
    };
    eprintln!("rackvault network apply: {message}");
    let report = AppliedNetwork::now(record, ok, message);
    write_replacing(&status_path, &serde_json::to_vec_pretty(&report)?)?;
    Ok(code)
}

/// Has networkd re-read its configuration (it reconfigures the links whose file changed) and
/// restarts timesyncd; the first step that fails, said.
fn reload_services() -> std::result::Result<(), String> {
    let steps: [&[&str]; 2] = [&["networkctl", "reload"], &["systemctl", "try-restart", "systemd-timesyncd.service"]];
    for step in steps {
        let failed = match Command::new(step[0]).args(&step[1..]).output() {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!("{} ({})", o.status, String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failed {
            return Err(format!("`{}` failed: {why}", step.join(" ")));
        }
    }
    Ok(())
}

/// One line for the operator: what the system now runs with.
fn summary(record: Option<&NetworkRecord>) -> String {
    let address = match record.and_then(|r| r.static_address) {
        None => "address from DHCP".to_string(),
        Some(s) => match s.gateway {
            Some(g) => format!("static address {}/{} via {g}", s.address, s.prefix),
            None => format!("static address {}/{} without a gateway", s.address, s.prefix),
        },
    };
    let time = match record.map(|r| r.ntp.as_slice()) {
        Some(ntp) if !ntp.is_empty() => format!("time servers {}", ntp.join(", ")),
        _ => "the default time servers".to_string(),
    };
    format!("{address}; {time}")
}

/// Replaces `path` with `bytes` (a new file renamed over it: readers see the old or the new
/// whole); under /run, in memory, so nothing to sync.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("a path with a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", path.display()))
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use service::network::{AddressMode, NetworkSettings};

    fn status(root: &Path) -> AppliedNetwork {
        let path = root.join(service::update::NETWORK_APPLIED.trim_start_matches('/'));
        serde_json::from_slice(&std::fs::read(path).expect("the status file")).expect("a status")
    }

    #[test]
    fn apply_renders_the_saved_settings_and_an_invalid_file_falls_back_to_dhcp_saying_why() {
        let (data, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // No settings yet: nothing rendered, and that is applied.
        assert_eq!(apply(data.path(), false, root.path()).unwrap(), ExitCode::SUCCESS);
        assert!(!root.path().join(NETWORK_FILE).exists() && !root.path().join(TIME_FILE).exists());
        assert!(status(root.path()).ok);

        let settings = NetworkSettings {
            mode: AddressMode::Static,
            address: Some("192.0.2.10/24".into()),
            gateway: Some("192.0.2.1".into()),
            dns: vec![],
            ntp: vec!["ntp.example.net".into()],
        };
        let record = settings.to_record().unwrap();
        std::fs::write(network::record_path(data.path()), serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(apply(data.path(), false, root.path()).unwrap(), ExitCode::SUCCESS);
        let net = std::fs::read_to_string(root.path().join(NETWORK_FILE)).unwrap();
        assert!(net.contains("Address=192.0.2.10/24") && net.contains("DHCP=no"), "{net}");
        assert!(std::fs::read_to_string(root.path().join(TIME_FILE)).unwrap().contains("NTP=ntp.example.net"));
        let s = status(root.path());
        assert!(s.ok && s.record == Some(record), "{s:?}");
        assert!(s.message.contains("static address 192.0.2.10/24 via 192.0.2.1"), "{}", s.message);

        // A file the API would not have written: not applied, DHCP again, the reason kept.
        std::fs::write(
            network::record_path(data.path()),
            b"{\"v\":1,\"static_address\":null,\"dns\":[],\"ntp\":[\"a b\"]}",
        )
        .unwrap();
        assert_eq!(apply(data.path(), false, root.path()).unwrap(), ExitCode::from(1));
        assert!(!root.path().join(NETWORK_FILE).exists() && !root.path().join(TIME_FILE).exists());
        let s = status(root.path());
        assert!(!s.ok && s.record.is_none() && s.message.contains("time server"), "{s:?}");
    }
}
