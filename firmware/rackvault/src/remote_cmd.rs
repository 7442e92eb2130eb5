//! `rackvault remote list|add|delete --data-dir DIR`: an appliance's remotes from its console,
//! while its daemon is stopped (the data directory is locked while it runs: use the UI or the
//! API then). The same checks as the API: a fingerprint is pinned, secrets are sealed with
//! the appliance key and never printed; the audit log names the console.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use service::{Appliance, ApplianceOptions, Principal, RemoteInput, Role, S3RemoteInput};

use crate::print_json;

#[derive(Args, Debug)]
pub struct RemoteArgs {
    /// The appliance's data directory (its daemon stopped).
    #[arg(long)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: RemoteCommand,
}

#[derive(Subcommand, Debug)]
enum RemoteCommand {
    /// The remotes, never their tokens or secret keys.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a remote: an appliance (https://HOST:PORT with --fingerprint and --token-file) or an
    /// S3 bucket (--bucket, --access-key, --secret-file).
    Add(Box<AddArgs>),
    /// Forget a remote (what it holds stays there).
    Delete { name: String },
}

#[derive(Args, Debug)]
struct AddArgs {
    name: String,
    /// An appliance's https://HOST:PORT, or an S3 endpoint.
    #[arg(long)]
    url: String,
    /// An appliance's namespace there (its replication token's name), or this appliance's
    /// folder in a bucket.
    #[arg(long)]
    namespace: String,
    /// An appliance's certificate fingerprint, compared with what it shows (read it with
    /// `rackvault remote-fingerprint URL`).
    #[arg(long)]
    fingerprint: Option<String>,
    /// A file holding the appliance's token (role replication to push, pull to pull).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Pull from the appliance instead of pushing to it.
    #[arg(long)]
    pull: bool,
    /// A pull remote's schedule (as a job's).
    #[arg(long)]
    schedule: Option<String>,
    /// A daily transfer window, HH:MM-HH:MM in UTC.
    #[arg(long)]
    window: Option<String>,
    #[arg(long)]
    max_mbps: Option<u32>,
    /// An S3 bucket.
    #[arg(long)]
    bucket: Option<String>,
    #[arg(long)]
    region: Option<String>,
    #[arg(long)]
    access_key: Option<String>,
    /// A file holding the S3 secret key.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    #[arg(long)]
    prefix: Option<String>,
    /// Object lock mode: governance or compliance.
    #[arg(long)]
    lock: Option<String>,
    #[arg(long)]
    keep_last: Option<u32>,
}

fn read_secret(path: &Option<PathBuf>, what: &str) -> Result<Option<String>> {
    path.as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .with_context(|| format!("reading the {what} from {}", p.display()))
        })
        .transpose()
}

/// Opens the appliance in `data_dir` (its daemon stopped) for the console.
fn open_appliance(data_dir: &std::path::Path) -> Result<std::sync::Arc<Appliance>> {
    if !data_dir.join("appliance.key").exists() {
        anyhow::bail!(
            "{}: not an appliance data directory (no appliance.key); give the --data-dir of `rackvault serve`",
            data_dir.display()
        );
    }
    Appliance::open(data_dir, ApplianceOptions::default())
        .with_context(|| format!("opening the appliance data directory {}", data_dir.display()))
}

/// `rackvault replicate POINT --data-dir DIR --to REMOTE`: the appliance's replication task,
/// run from its console with the remote's settings and sealed secrets, its progress shown
/// until it ends.
pub fn replicate_to_remote(data_dir: &std::path::Path, point: &str, remote: &str, json: bool) -> Result<()> {
    let app = open_appliance(data_dir)?;
    let console = Principal::new("console", Role::Operator);
    let task = app.start_replication(&console, point, remote)?;
    let mut last = String::new();
    let info = loop {
        let t = app.task(&console, task.id)?;
        if t.state.is_finished() {
            break t;
        }
        let line = format!("{} {:.0}%", t.phase, t.percent);
        if !json && line != last && !t.phase.is_empty() {
            eprintln!("{line}");
            last = line;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    if json {
        print_json(&info)?;
    }
    match (info.state, &info.result) {
        (service::TaskState::Succeeded, Some(service::TaskResult::Replicate(r))) => {
            if !json {
                println!(
                    "replicated {} to {} as {}{}: {} sent in {:.1} s",
                    r.report.point,
                    r.remote,
                    r.report.delivered_as,
                    if r.report.already_there { " (it was there already)" } else { "" },
                    crate::human_bytes(r.report.bytes_sent),
                    r.report.seconds
                );
            }
            Ok(())
        }
        _ => anyhow::bail!(
            "the replication {}: {}",
            format!("{:?}", info.state).to_lowercase(),
            info.error.unwrap_or_else(|| "no result".into())
        ),
    }
}

pub fn run(args: RemoteArgs) -> Result<ExitCode> {
    let app = open_appliance(&args.data_dir)?;
    let console = Principal::new("console", Role::Admin);
    match args.command {
        RemoteCommand::List { json } => {
            let remotes = app.remotes(&console)?;
            if json {
                print_json(&remotes)?;
            } else if remotes.is_empty() {
                println!("(no remotes)");
            }
            if !json {
                for r in &remotes {
                    let what = match (&r.s3, r.pull) {
                        (Some(s), _) => format!("S3 bucket {}/{}/{}", s.bucket, s.prefix, r.namespace),
                        (None, true) => format!("pull from, certificate {}", r.fingerprint),
                        (None, false) => format!("push to, namespace {}, certificate {}", r.namespace, r.fingerprint),
                    };
                    println!("{:<16} {:<32} {what}", r.name, r.url);
                }
            }
        }
        RemoteCommand::Add(add) => {
            let AddArgs {
                name,
                url,
                namespace,
                fingerprint,
                token_file,
                pull,
                schedule,
                window,
                max_mbps,
                bucket,
                region,
                access_key,
                secret_file,
                prefix,
                lock,
                keep_last,
            } = *add;
            let s3 = match bucket {
                Some(bucket) => Some(S3RemoteInput {
                    bucket,
                    region,
                    access_key: access_key.context("an S3 remote needs --access-key")?,
                    secret_key: read_secret(&secret_file, "S3 secret key")?,
                    prefix,
                    lock,
                    keep_last,
                }),
                None => None,
            };
            let input = RemoteInput {
                name,
                url,
                fingerprint: fingerprint.unwrap_or_default(),
                token: read_secret(&token_file, "token")?,
                namespace,
                max_mbps,
                s3,
                pull,
                schedule,
                window,
            };
            let r = app.put_remote(&console, None, input)?;
            println!("added remote {} ({})", r.name, r.url);
        }
        RemoteCommand::Delete { name } => {
            app.delete_remote(&console, &name)?;
            println!("deleted remote {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
