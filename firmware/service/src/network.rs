//! The appliance's own network address and time servers, set from the UI.
//!
//! ## Who does what
//! The daemon runs unprivileged and cannot configure interfaces. It only keeps the settings:
//! `<data>/network.json` ([`NetworkRecord`], versioned, written durably). Two root units of the
//! appliance image turn that file into system configuration with `rackvault network apply`:
//! - `rackvault-network.service`, at every boot before systemd-networkd and timesyncd start;
//! - `rackvault-network-reload.path`, whenever the file changes (`--reload`: networkd and
//!   timesyncd then re-read their configuration).
//!
//! The apply side trusts nothing in the file: it parses and validates it with the same types
//! ([`NetworkRecord::parse`]) before rendering ([`render`]), so a daemon that was subverted
//! cannot write arbitrary networkd configuration through it. An invalid file is not applied:
//! the appliance keeps asking DHCP and the reason is reported.
//!
//! What it renders lives in `/run` (memory): `/run/systemd/network/10-rackvault.network` for a
//! static address (it sorts before the image's DHCP default, `80-dhcp.network`, so it wins) and
//! `/run/systemd/timesyncd.conf.d/50-rackvault.conf` for the time servers. With DHCP and no
//! time servers nothing is rendered and the image's defaults apply. The outcome is written to
//! `/run/rackvault/network-applied.json` ([`AppliedNetwork`]), which the daemon compares with
//! its settings to tell the UI whether they are applied, still pending, or failed.

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::write_synced;
use crate::{Appliance, Principal, Role, ServiceError};

/// At most this many DNS servers or time servers.
pub const MAX_SERVERS: usize = 4;

/// How the appliance gets its address, as the API shows and takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressMode {
    #[default]
    Dhcp,
    Static,
}

/// The network and time settings (`GET`/`PUT /api/v1/system/network`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    #[serde(default)]
    pub mode: AddressMode,
    /// With `static`: the address and prefix length, `192.0.2.10/24` or `2001:db8::10/64`.
    #[serde(default)]
    pub address: Option<String>,
    /// With `static`: the default gateway (optional: a closed network may have none).
    #[serde(default)]
    pub gateway: Option<String>,
    /// With `static`: DNS servers (addresses).
    #[serde(default)]
    pub dns: Vec<String>,
    /// NTP servers (host names or addresses), in either mode. Empty: the DHCP server's, or
    /// the system's defaults.
    #[serde(default)]
    pub ntp: Vec<String>,
}

/// A static address: the interface address and its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticAddress {
    pub address: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
}

/// The settings as kept on the data partition (`<data>/network.json`): a versioned record of
/// its own, apart from the API's [`NetworkSettings`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Version of this record: 1.
    pub v: u32,
    /// `None`: DHCP.
    pub static_address: Option<StaticAddress>,
    pub dns: Vec<IpAddr>,
    pub ntp: Vec<String>,
}

/// What `rackvault network apply` did last (`/run/rackvault/network-applied.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedNetwork {
    /// Version of this record: 1.
    pub v: u32,
    /// The settings applied (`None`: there were none, or they were invalid).
    pub record: Option<NetworkRecord>,
    pub ok: bool,
    pub message: String,
    pub at_unix: u64,
}

impl AppliedNetwork {
    /// A report made now.
    pub fn now(record: Option<NetworkRecord>, ok: bool, message: String) -> AppliedNetwork {
        AppliedNetwork { v: 1, record, ok, message, at_unix: crate::now_unix() }
    }
}

/// Where the settings stand on this system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyState {
    /// The system runs with these settings.
    Applied,
    /// Saved; the system has not picked them up yet.
    Pending,
    /// The system could not apply them (see the message).
    Failed,
    /// Not the appliance image: the settings are kept but nothing applies them.
    NotApplicable,
}

/// `GET /api/v1/system/network`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkView {
    pub settings: NetworkSettings,
    pub state: ApplyState,
    pub message: String,
    /// The addresses the appliance has now (without loopback and link-local ones).
    pub addresses: Vec<String>,
}

fn invalid(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Invalid(e.to_string())
}

/// A host name as NTP servers are named: letters, digits, `-` and `.`, labels of 1-63, at
/// most 253 in all.
fn valid_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn parse_ip(what: &str, s: &str) -> Result<IpAddr, ServiceError> {
    s.trim().parse::<IpAddr>().map_err(|_| invalid(format!("{what} {s:?} is not an IP address")))
}

/// Whether `ip` lies in `net/prefix`.
fn in_subnet(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl NetworkSettings {
    /// Checks the settings and makes the record to keep; the error names the field and what
    /// is wrong with it.
    pub fn to_record(&self) -> Result<NetworkRecord, ServiceError> {
        let static_address = match self.mode {
            AddressMode::Dhcp => {
                if self.address.is_some() || self.gateway.is_some() || !self.dns.is_empty() {
                    return Err(invalid(
                        "an address, gateway or DNS servers are set with mode \"dhcp\": choose mode \"static\" to use \
                         them, or leave them empty",
                    ));
                }
                None
            }
            AddressMode::Static => {
                let text = self.address.as_deref().map(str::trim).unwrap_or_default();
                let (addr, prefix) = text.split_once('/').ok_or_else(|| {
                    invalid(format!("a static address needs its prefix length, like 192.0.2.10/24 (got {text:?})"))
                })?;
                let address = parse_ip("the address", addr)?;
                let max = if address.is_ipv4() { 32 } else { 128 };
                let prefix = prefix
                    .parse::<u8>()
                    .ok()
                    .filter(|p| (1..=max).contains(p))
                    .ok_or_else(|| invalid(format!("the prefix length {prefix:?} must be 1 to {max}")))?;
                if address.is_loopback() || address.is_multicast() || address.is_unspecified() {
                    return Err(invalid(format!("{address} cannot be the appliance's address")));
                }
                let gateway = match self.gateway.as_deref().map(str::trim).filter(|g| !g.is_empty()) {
                    None => None,
                    Some(g) => {
                        let gw = parse_ip("the gateway", g)?;
                        if !in_subnet(gw, address, prefix) || gw == address {
                            return Err(invalid(format!(
                                "the gateway {gw} is not another address in {address}/{prefix}: the appliance could \
                                 not reach it"
                            )));
                        }
                        Some(gw)
                    }
                };
                Some(StaticAddress { address, prefix, gateway })
            }
        };
        if self.dns.len() > MAX_SERVERS || self.ntp.len() > MAX_SERVERS {
            return Err(invalid(format!("at most {MAX_SERVERS} DNS servers and {MAX_SERVERS} time servers")));
        }
        let dns = self.dns.iter().map(|d| parse_ip("the DNS server", d)).collect::<Result<Vec<_>, _>>()?;
        let mut ntp = Vec::new();
        for n in &self.ntp {
            let n = n.trim();
            if n.parse::<IpAddr>().is_err() && !valid_host_name(n) {
                return Err(invalid(format!("the time server {n:?} is neither an IP address nor a host name")));
            }
            ntp.push(n.to_string());
        }
        Ok(NetworkRecord { v: 1, static_address, dns, ntp })
    }
}

impl NetworkRecord {
    /// Reads a record from its bytes, and checks it as the API checks what it takes: the apply
    /// side runs as root and trusts no more than that.
    pub fn parse(bytes: &[u8]) -> Result<NetworkRecord, ServiceError> {
        let r: NetworkRecord = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("the network settings file is not readable ({e})")))?;
        if r.v != 1 {
            return Err(invalid(format!(
                "the network settings file has version {} and this rackvault reads version 1",
                r.v
            )));
        }
        let again = r.settings().to_record()?;
        if again != r {
            return Err(invalid("the network settings file does not check out: set the network again in the UI"));
        }
        Ok(r)
    }

    /// The record as the API shows it.
    pub fn settings(&self) -> NetworkSettings {
        let (mode, address, gateway) = match &self.static_address {
            None => (AddressMode::Dhcp, None, None),
            Some(s) => {
                (AddressMode::Static, Some(format!("{}/{}", s.address, s.prefix)), s.gateway.map(|g| g.to_string()))
            }
        };
        NetworkSettings {
            mode,
            address,
            gateway,
            dns: self.dns.iter().map(ToString::to_string).collect(),
            ntp: self.ntp.clone(),
        }
    }
}

/// The system configuration files for a record: (`10-rackvault.network`, the timesyncd
/// drop-in), each `None` when the image's default applies.
pub fn render(r: &NetworkRecord) -> (Option<String>, Option<String>) {
    let network = r.static_address.map(|s| {
        let mut out = String::from(
            "# Written by rackvault from the settings in the UI (/var/lib/rackvault/data/network.json).\n[Match]\n\
             Name=en* eth*\n\n[Network]\nDHCP=no\nIPv6AcceptRA=no\n",
        );
        out.push_str(&format!("Address={}/{}\n", s.address, s.prefix));
        if let Some(g) = s.gateway {
            out.push_str(&format!("Gateway={g}\n"));
        }
        for d in &r.dns {
            out.push_str(&format!("DNS={d}\n"));
        }
        out
    });
    let time = (!r.ntp.is_empty()).then(|| {
        format!(
            "# Written by rackvault from the settings in the UI (/var/lib/rackvault/data/network.json).\n[Time]\n\
             NTP={}\n",
            r.ntp.join(" ")
        )
    });
    (network, time)
}

/// The appliance's own addresses that clients may use: every interface address except
/// loopback and IPv6 link-local (which needs a zone a URL cannot carry).
pub fn own_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return out };
    for ifa in addrs {
        let Some(a) = ifa.address else { continue };
        let ip: IpAddr = if let Some(v4) = a.as_sockaddr_in() {
            v4.ip().into()
        } else if let Some(v6) = a.as_sockaddr_in6() {
            v6.ip().into()
        } else {
            continue;
        };
        let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if !ip.is_loopback() && !ip.is_unspecified() && !link_local && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

fn read_record(path: &Path) -> Result<Option<NetworkRecord>, ServiceError> {
    match std::fs::read(path) {
        Ok(bytes) => NetworkRecord::parse(&bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ServiceError::io(path, e)),
    }
}

/// The settings file under a data directory.
pub fn record_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("network.json")
}

/// Reads the settings file under `data_dir` for the apply side: `None` when there is none.
pub fn read_settings_file(data_dir: &Path) -> Result<Option<NetworkRecord>, ServiceError> {
    read_record(&record_path(data_dir))
}

impl Appliance {
    /// The network and time settings, and whether the system runs with them.
    pub fn network(&self, actor: &Principal) -> Result<NetworkView, ServiceError> {
        actor.require(Role::Auditor)?;
        let record = read_record(&record_path(&self.data_dir))?;
        let settings = record.as_ref().map(NetworkRecord::settings).unwrap_or_default();
        let applied = std::fs::read(&self.system.network_applied)
            .ok()
            .and_then(|b| serde_json::from_slice::<AppliedNetwork>(&b).ok())
            .filter(|a| a.v == 1);
        let (state, message) = if self.system.running_slot().is_none() {
            (
                ApplyState::NotApplicable,
                "this is not the appliance image: the settings are kept, but the system's own network configuration \
                 applies"
                    .to_string(),
            )
        } else {
            match applied {
                Some(a) if a.record == record && a.ok => (ApplyState::Applied, a.message),
                Some(a) if a.record == record => (ApplyState::Failed, a.message),
                Some(a) if !a.ok && record.is_some() && a.record.is_none() => (ApplyState::Failed, a.message),
                _ => (ApplyState::Pending, "saved; the system has not applied them yet".to_string()),
            }
        };
        let addresses = own_addresses().iter().map(ToString::to_string).collect();
        Ok(NetworkView { settings, state, message, addresses })
    }

    /// Saves new network and time settings (admins); the appliance image applies them at once
    /// and at every boot.
    pub fn put_network(&self, actor: &Principal, settings: NetworkSettings) -> Result<NetworkView, ServiceError> {
        actor.require(Role::Admin)?;
        let record = settings.to_record()?;
        let json = serde_json::to_vec_pretty(&record).map_err(|e| ServiceError::Internal(e.to_string()))?;
        write_synced(&record_path(&self.data_dir), &json)?;
        let what = match &record.static_address {
            None => "DHCP".to_string(),
            Some(s) => format!("static {}/{}", s.address, s.prefix),
        };
        let ntp = if record.ntp.is_empty() { "default".to_string() } else { record.ntp.join(", ") };
        self.audit(actor, "set network", &format!("address: {what}; time servers: {ntp}"));
        self.network(actor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn static_settings(address: &str, gateway: Option<&str>) -> NetworkSettings {
        NetworkSettings {
            mode: AddressMode::Static,
            address: Some(address.into()),
            gateway: gateway.map(Into::into),
            dns: vec!["192.0.2.53".into()],
            ntp: vec!["ntp.example.net".into(), "192.0.2.123".into()],
        }
    }

    #[test]
    fn a_static_address_renders_a_networkd_file_that_turns_dhcp_off() {
        let r = static_settings("192.0.2.10/24", Some("192.0.2.1")).to_record().expect("valid");
        let (network, time) = render(&r);
        let network = network.expect("a network file");
        for line in ["DHCP=no", "Address=192.0.2.10/24", "Gateway=192.0.2.1", "DNS=192.0.2.53", "Name=en* eth*"] {
            assert!(network.lines().any(|l| l == line), "{line} in:\n{network}");
        }
        assert!(time.expect("a timesyncd drop-in").lines().any(|l| l == "NTP=ntp.example.net 192.0.2.123"));
        assert_eq!(r.settings(), static_settings("192.0.2.10/24", Some("192.0.2.1")), "the record reads back");
    }

    #[test]
    fn dhcp_without_time_servers_renders_nothing() {
        let r = NetworkSettings::default().to_record().expect("valid");
        assert_eq!(render(&r), (None, None));
    }

    #[test]
    fn invalid_settings_are_refused_naming_what_is_wrong() {
        let cases = [
            (static_settings("192.0.2.10", None), "prefix length"),
            (static_settings("192.0.2.10/33", None), "prefix length"),
            (static_settings("192.0.2.300/24", None), "not an IP address"),
            (static_settings("127.0.0.2/8", None), "cannot be"),
            (static_settings("192.0.2.10/24", Some("198.51.100.1")), "not another address"),
            (static_settings("2001:db8::10/64", Some("192.0.2.1")), "not another address"),
            (NetworkSettings { address: Some("192.0.2.10/24".into()), ..Default::default() }, "mode \"static\""),
            (
                NetworkSettings { ntp: vec!["pool.ntp.org\nDNS=1.2.3.4".into()], ..Default::default() },
                "neither an IP address nor a host name",
            ),
            (NetworkSettings { ntp: vec!["a b".into()], ..Default::default() }, "neither"),
            (NetworkSettings { ntp: vec!["x".into(); MAX_SERVERS + 1], ..Default::default() }, "at most"),
        ];
        for (s, want) in cases {
            let e = s.to_record().expect_err(&format!("{s:?} is refused")).to_string();
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }

    #[test]
    fn a_settings_file_is_checked_again_before_it_is_applied() {
        let good = static_settings("2001:db8::10/64", Some("2001:db8::1")).to_record().expect("valid");
        let bytes = serde_json::to_vec(&good).expect("json");
        assert_eq!(NetworkRecord::parse(&bytes).expect("parses"), good);
        // A file written by something other than the API: a time server that would inject a
        // line into timesyncd's configuration, a gateway outside the subnet, a newer version.
        let mut hostile = good.clone();
        hostile.ntp = vec!["x\n[Time]\nNTP=evil".into()];
        let e = NetworkRecord::parse(&serde_json::to_vec(&hostile).expect("json")).expect_err("refused");
        assert!(e.to_string().contains("time server"), "{e}");
        let mut outside = good.clone();
        if let Some(s) = outside.static_address.as_mut() {
            s.gateway = Some("2001:db9::1".parse().expect("ip"));
        }
        assert!(NetworkRecord::parse(&serde_json::to_vec(&outside).expect("json")).is_err());
        let mut newer = good;
        newer.v = 2;
        let e = NetworkRecord::parse(&serde_json::to_vec(&newer).expect("json")).expect_err("refused");
        assert!(e.to_string().contains("version 2"), "{e}");
        assert!(NetworkRecord::parse(b"{").is_err());
    }
}
