//! `rackvault console`: what the appliance's console shows (the image runs it on tty1 and the
//! serial port once the daemon is up, and an operator at the console can run it again): the
//! addresses to open, the TLS certificate's fingerprint to compare with what the browser shows,
//! and, until the administrator exists, the one-time setup code.
//!
//! It only reads the data directory: it never creates a certificate or a setup code, so it
//! cannot race the daemon, and it says plainly what is missing instead.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct ConsoleArgs {
    /// The appliance's data directory.
    #[arg(long, default_value = "./rackvault-data")]
    data_dir: PathBuf,
    /// The HTTPS port the daemon listens on.
    #[arg(long, default_value_t = 443)]
    port: u16,
    /// Write the text to this terminal (repeat for several) instead of standard output; a
    /// terminal that cannot be opened is skipped with a note on standard error.
    #[arg(long = "tty", value_name = "PATH")]
    ttys: Vec<PathBuf>,
}

pub fn run(args: ConsoleArgs) -> Result<ExitCode> {
    let text = banner(&args)?;
    if args.ttys.is_empty() {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    // Terminals want CR LF.
    let crlf = text.replace('\n', "\r\n");
    let mut written = 0;
    for tty in &args.ttys {
        match std::fs::OpenOptions::new().write(true).open(tty).and_then(|mut f| f.write_all(crlf.as_bytes())) {
            Ok(()) => written += 1,
            Err(e) => eprintln!("rackvault console: cannot write to {}: {e}", tty.display()),
        }
    }
    Ok(if written > 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn banner(args: &ConsoleArgs) -> Result<String> {
    let mut out = String::new();
    let version = std::fs::read_to_string("/usr/lib/rackvault/version")
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| crate::VERSION.to_string());
    out.push_str(&format!("\nrackvault {version}: backup appliance\n\n"));
    // The same addresses the certificate names.
    let addrs = service::network::own_addresses();
    if addrs.is_empty() {
        out.push_str("  No network address yet: check the cable and the DHCP server.\n");
    } else {
        out.push_str("  Open in a browser:\n");
        for a in &addrs {
            let host = if a.is_ipv6() { format!("[{a}]") } else { a.to_string() };
            let port = if args.port == 443 { String::new() } else { format!(":{}", args.port) };
            out.push_str(&format!("    https://{host}{port}/\n"));
        }
    }
    let cert = args.data_dir.join("tls/cert.pem");
    match webserver::certificate_fingerprint(&cert) {
        Ok(fp) => out
            .push_str(&format!("\n  TLS certificate SHA-256 fingerprint (compare it with the browser's):\n    {fp}\n")),
        Err(_) if !cert.exists() => out.push_str("\n  No TLS certificate yet: the daemon makes one when it starts.\n"),
        Err(e) => out.push_str(&format!("\n  The TLS certificate cannot be read: {e}\n")),
    }
    match nix::sys::statvfs::statvfs(&args.data_dir) {
        // The statvfs field types differ between targets (u32 on some 32-bit libcs).
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => {
            let unit = st.fragment_size() as u64;
            out.push_str(&format!(
                "\n  Data partition: {} in all, {} free\n",
                crate::human_bytes(st.blocks() as u64 * unit),
                crate::human_bytes(st.blocks_available() as u64 * unit)
            ));
        }
        Err(e) => out.push_str(&format!("\n  The data directory {} cannot be read: {e}\n", args.data_dir.display())),
    }
    match std::fs::read_to_string(args.data_dir.join("setup-code")) {
        Ok(code) => out.push_str(&format!(
            "\n  Setup code: {}\n  (a new appliance: create the administrator with it; it works once)\n",
            code.trim()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.push_str("\n  Setup is done: sign in with an account made in the web UI.\n")
        }
        Err(e) => out.push_str(&format!("\n  The setup code cannot be read: {e}\n")),
    }
    out.push('\n');
    Ok(out)
}
