//! `rackvault serve`: the appliance daemon. Opens the appliance's data directory, makes sure
//! an HTTPS certificate exists (self-signed on first start, fingerprint printed), starts the
//! job scheduler, and serves the REST API and web UI until SIGINT or SIGTERM. This is the only
//! place that creates an async runtime and handles signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The appliance's data directory (configuration, state, store, task logs, certificate).
    #[arg(long, default_value = "./rackvault-data")]
    data_dir: PathBuf,
    /// The HTTPS address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Also listen for plain HTTP here, answering only with redirects to HTTPS.
    #[arg(long)]
    http_redirect: Option<SocketAddr>,
    /// Developer / first-look mode: adds a sample VM disk as a source and an emulated tape
    /// library, so backup, restore and tape can be tried with nothing else installed.
    #[arg(long)]
    dev: bool,
    /// A directory local sources (image files, VM folders) may be read from; repeat for
    /// several. Default: /srv. The data directory is never readable as a source.
    #[arg(long = "source-root", value_name = "DIR")]
    source_roots: Vec<PathBuf>,
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    // Everything the daemon writes (restores, task logs, keys) is for the service user only.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let source_roots =
        if args.source_roots.is_empty() { vec![PathBuf::from("/srv")] } else { args.source_roots.clone() };
    let opts = service::ApplianceOptions { dev: args.dev, source_roots: Some(source_roots), ..Default::default() };
    let app = service::Appliance::open(&args.data_dir, opts)
        .with_context(|| format!("opening the appliance data directory {}", args.data_dir.display()))?;
    if app.interrupted_at_open() > 0 {
        eprintln!(
            "rackvault: {} task(s) were running when the appliance last stopped; they are marked interrupted",
            app.interrupted_at_open()
        );
    }
    let (cert, key) = app.tls_paths();
    let fingerprint = webserver::ensure_certificate(&webserver::CertPaths { cert, key })?;
    eprintln!("rackvault: serving https://{}/ (TLS certificate SHA-256 fingerprint {fingerprint})", args.listen);
    if let Some(code) = app.setup_code() {
        eprintln!(
            "rackvault: first start: open the address above and create the administrator with the setup code {code} (also in {})",
            args.data_dir.join("setup-code").display()
        );
    }
    app.start_scheduler();
    let cfg = webserver::ServerConfig {
        https: args.listen,
        http_redirect: args.http_redirect,
        version: crate::VERSION.to_string(),
        log: Some(Arc::new(|line: &str| eprintln!("rackvault: {line}"))),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async move {
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("rackvault: shutting down");
        };
        webserver::serve(app, cfg, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}
