//! `rackvault serve`: the appliance daemon. Opens the appliance's data directory, makes sure
//! an HTTPS certificate exists (self-signed on first start, fingerprint printed), starts the
//! job scheduler, and serves the REST API and web UI until SIGINT or SIGTERM. This is the only
//! place that creates an async runtime and handles signals.
//!
//! ## Stopping
//! On the first SIGTERM or SIGINT:
//! 1. the appliance refuses new tasks (the API answers 409, the scheduler starts nothing) and
//!    cancels every queued and running one (`Appliance::begin_shutdown`), so they end
//!    `cancelled` with their partial output removed, as an operator's cancel would;
//! 2. the daemon waits for them, at most `--shutdown-timeout` seconds (60 by default, below
//!    systemd's 90 s stop timeout so the wait ends before a SIGKILL), while the web server
//!    still answers, so the UI shows them ending;
//! 3. the web server stops (open requests get up to 10 s) and the process exits 0.
//!
//! A task still running at the deadline (a step that does not look at the cancel flag) is
//! named in the log; after the next start it reads `interrupted`. A second signal during
//! step 2 skips the rest of the wait.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
    /// On SIGTERM or SIGINT, how long to wait for the cancelled tasks to end before exiting;
    /// tasks still running then show as interrupted after the next start. Keep it below the
    /// service manager's stop timeout (systemd: 90 s).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    shutdown_timeout: u64,
    /// Create the staging store encrypted if the data directory holds none yet; its key is
    /// sealed with the appliance key. Export the recovery key then: `rackvault key export
    /// --data-dir DIR --out FILE`.
    #[arg(long)]
    encrypt_store: bool,
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    // Everything the daemon writes (restores, task logs, keys) is for the service user only.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let source_roots =
        if args.source_roots.is_empty() { vec![PathBuf::from("/srv")] } else { args.source_roots.clone() };
    // The one runtime: the web server runs on it, and S3 remotes are reached through it.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let opts = service::ApplianceOptions {
        dev: args.dev,
        source_roots: Some(source_roots),
        encrypt_store: args.encrypt_store,
        runtime: Some(rt.handle().clone()),
        ..Default::default()
    };
    let app = service::Appliance::open(&args.data_dir, opts)
        .with_context(|| format!("opening the appliance data directory {}", args.data_dir.display()))?;
    if app.interrupted_at_open() > 0 {
        eprintln!(
            "rackvault: {} task(s) were running when the appliance last stopped; they are marked interrupted",
            app.interrupted_at_open()
        );
    }
    match (app.store_cipher(), args.encrypt_store) {
        (Some(cipher), _) => eprintln!(
            "rackvault: the staging store is encrypted ({cipher}); keep its recovery key offline: `rackvault key export \
             --data-dir {} --out FILE`",
            args.data_dir.display()
        ),
        (None, true) => eprintln!(
            "rackvault: warning: --encrypt-store has no effect: the data directory already holds an unencrypted \
             store (encryption is chosen when a store is created)"
        ),
        (None, false) => {}
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
    let grace = Duration::from_secs(args.shutdown_timeout);
    let served = rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let stopping = app.clone();
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => eprintln!("rackvault: SIGTERM received"),
                _ = int.recv() => eprintln!("rackvault: SIGINT received"),
            }
            stop_tasks(stopping, grace, &mut term, &mut int).await;
            eprintln!("rackvault: stopping the web server");
        };
        let server = webserver::Server::bind(app, cfg).await.context("starting the web server")?;
        // Under systemd (Type=notify) the service is up once the listeners are bound.
        if let Err(e) = notify_systemd("READY=1") {
            eprintln!("rackvault: cannot tell systemd the daemon is ready: {e}");
        }
        server.run(shutdown).await.context("serving the API")
    });
    // A task thread still running after the wait must not hold the exit up.
    rt.shutdown_background();
    served?;
    eprintln!("rackvault: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Steps 1 and 2 of stopping (see the module docs): cancel every task, wait for them up to
/// `grace` or until a second signal, and say how it went.
async fn stop_tasks(
    app: Arc<service::Appliance>,
    grace: Duration,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) {
    let starting = app.clone();
    let n = match tokio::task::spawn_blocking(move || starting.begin_shutdown()).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("rackvault: shutting down: cancelling the tasks failed ({e}); unfinished tasks will show as interrupted");
            return;
        }
    };
    if n == 0 {
        eprintln!("rackvault: shutting down: no task is running");
        return;
    }
    eprintln!(
        "rackvault: shutting down: cancelling {n} task(s), waiting up to {} s for them to end...",
        grace.as_secs()
    );
    let wait = tokio::task::spawn_blocking(move || app.wait_for_tasks(grace));
    tokio::select! {
        r = wait => match r {
            Ok(report) if report.unfinished.is_empty() => {
                eprintln!("rackvault: all tasks ended ({:.1} s)", report.waited.as_secs_f64());
            }
            Ok(report) => {
                let names: Vec<String> =
                    report.unfinished.iter().map(|t| format!("task {} ({} of {})", t.id, t.kind, t.subject)).collect();
                eprintln!(
                    "rackvault: {} task(s) did not end within {} s; they will show as interrupted: {}",
                    report.unfinished.len(),
                    grace.as_secs(),
                    names.join(", ")
                );
            }
            Err(e) => eprintln!(
                "rackvault: waiting for the tasks failed ({e}); tasks that did not end will show as interrupted"
            ),
        },
        _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
            eprintln!("rackvault: second signal: not waiting for the tasks; those that did not end will show as interrupted");
        }
    }
}

/// Send `state` to the service manager when it asked for notifications (`$NOTIFY_SOCKET`, set
/// by systemd for `Type=notify` units: a socket path, or `@name` in the abstract namespace);
/// without it, nothing happens.
fn notify_systemd(state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(()) };
    let sock = UnixDatagram::unbound()?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), &path)?;
        }
    }
    Ok(())
}
