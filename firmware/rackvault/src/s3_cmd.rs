//! Offsite copies in an S3 bucket from the command line: `replicate NAME --to s3://BUCKET`
//! pushes a point, `pull` lists the points a bucket holds and fetches one into a store (to
//! restore it, or to rebuild an appliance after a disaster with its recovery key).
//!
//! The secret key comes from a file (`--secret-file`) or the environment
//! (`RACKVAULT_S3_SECRET_KEY`), never from the command line, where `ps` would show it.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use clap::Args;
use engine::replicate::pull::{self, ReplicaSource};
use engine::replicate::s3::{BlockingS3, LockMode, S3Layout, S3Source, S3Target};
use engine::replicate::{self, ReplicateOptions};
use store::{RestorePoint, Store};

use crate::progress::Bar;
use crate::{human_bytes, print_json};

/// How to reach the bucket.
#[derive(Args, Debug, Clone)]
pub struct S3Args {
    /// The S3 endpoint: https://HOST[:PORT] (plain http:// only for a loopback address).
    #[arg(long, env = "RACKVAULT_S3_ENDPOINT")]
    pub endpoint: Option<String>,
    #[arg(long, env = "RACKVAULT_S3_REGION", default_value = "us-east-1")]
    pub region: String,
    #[arg(long, env = "RACKVAULT_S3_ACCESS_KEY")]
    pub access_key: Option<String>,
    /// A file holding the secret key (or set RACKVAULT_S3_SECRET_KEY).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
}

/// An open bucket, with the runtime its client runs on.
pub struct Bucket {
    // Dropped after the client.
    pub s3: BlockingS3,
    pub layout: S3Layout,
    _rt: tokio::runtime::Runtime,
}

/// `s3://BUCKET[/PREFIX]`; the prefix defaults to `rackvault`.
fn parse_url(url: &str) -> Result<(String, String)> {
    let rest = url.strip_prefix("s3://").with_context(|| format!("{url:?}: give s3://BUCKET[/PREFIX]"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, "rackvault"));
    if bucket.is_empty() {
        bail!("{url:?}: give s3://BUCKET[/PREFIX]");
    }
    let prefix = prefix.trim_matches('/');
    Ok((bucket.to_string(), if prefix.is_empty() { "rackvault".into() } else { prefix.into() }))
}

/// A bucket as the command line names it: `s3://BUCKET[/PREFIX]`, the namespace, how to
/// reach it.
pub struct Remote<'a> {
    pub url: &'a str,
    pub namespace: &'a str,
    pub args: &'a S3Args,
}

/// Opens `url` (s3://BUCKET[/PREFIX]) for `namespace`.
fn open(url: &str, namespace: &str, a: &S3Args) -> Result<Bucket> {
    let (bucket, prefix) = parse_url(url)?;
    let endpoint = a.endpoint.clone().context("give the S3 endpoint with --endpoint (or RACKVAULT_S3_ENDPOINT)")?;
    let access = a.access_key.clone().context("give the access key with --access-key (or RACKVAULT_S3_ACCESS_KEY)")?;
    let secret = match (&a.secret_file, std::env::var("RACKVAULT_S3_SECRET_KEY")) {
        (Some(f), _) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the secret key from {}", f.display()))?
            .trim()
            .to_string(),
        (None, Ok(s)) => s,
        (None, Err(_)) => bail!("give the secret key in a file with --secret-file (or set RACKVAULT_S3_SECRET_KEY)"),
    };
    let mut cfg = s3::S3Config::new(&endpoint, &a.region, &bucket, &access, s3::Secret::new(secret));
    cfg.allow_http = endpoint.starts_with("http://") && s3::is_loopback_endpoint(&endpoint);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let s3 = BlockingS3::new(s3::S3Client::new(cfg)?, rt.handle().clone());
    Ok(Bucket { s3, layout: S3Layout::new(&prefix, namespace)?, _rt: rt })
}

fn lock_mode(lock: Option<&str>) -> Option<LockMode> {
    match lock {
        Some("compliance") => Some(LockMode::Compliance),
        Some("governance") => Some(LockMode::Governance),
        _ => None,
    }
}

/// `replicate NAME --to s3://…`: the push; the caller prints its report.
pub fn replicate(
    store: &Store,
    p: &RestorePoint,
    to: &Remote<'_>,
    lock: Option<&str>,
    opts: &ReplicateOptions,
    bar: &Bar,
) -> Result<replicate::ReplicateReport> {
    let b = open(to.url, to.namespace, to.args)?;
    let mut target = S3Target::open(&b.s3, b.layout.clone(), store, p, lock_mode(lock), SystemTime::now())?;
    Ok(replicate::replicate(store, p, &mut target, opts, bar)?)
}

/// `pull [NAME[@ID]] --from s3://… --store DIR`: without a point, lists what the bucket holds.
pub fn pull(
    store: Option<&Store>,
    point: Option<&str>,
    from: &Remote<'_>,
    interactive: bool,
    json: bool,
) -> Result<()> {
    let b = open(from.url, from.namespace, from.args)?;
    let mut src = S3Source::open(&b.s3, b.layout.clone())?;
    let points = src.points()?;
    let (Some(store), Some(point)) = (store, point) else {
        if json {
            return print_json(&points);
        }
        for p in &points {
            println!(
                "{:<40} {:>10}  {} disk(s), from {}",
                p.spec(),
                human_bytes(p.point.disks.iter().map(|d| d.size).sum()),
                p.point.disks.len(),
                p.origin.namespace
            );
        }
        if points.is_empty() {
            println!("(no points under {}/)", b.layout.base());
        }
        return Ok(());
    };
    src.check_store(store)?;
    let rp = pull::find_remote(&points, point)?;
    let bar = Bar::new(interactive && !json);
    let r = pull::pull(&mut src, store, &rp, &bar)?;
    if json {
        print_json(&r)?;
    } else if r.already_there {
        println!("{} is here already as {}: nothing fetched", r.point, r.delivered_as);
    } else {
        println!(
            "pulled {} as {}: {} chunk(s) and {} index node(s), {} in {} request(s), {:.1} s; restore it with `rackvault restore {} --store {}`",
            r.point,
            r.delivered_as,
            r.chunks_fetched,
            r.nodes_fetched,
            human_bytes(r.bytes_fetched),
            r.requests,
            r.seconds,
            r.delivered_as,
            store.root().display()
        );
    }
    Ok(())
}

/// For `restore --from s3://…`: fetches `point` into `store` (unless it is there already) and
/// returns it as the store names it.
pub fn pull_for_restore(store: &Store, point: &str, from: &Remote<'_>, interactive: bool) -> Result<RestorePoint> {
    let b = open(from.url, from.namespace, from.args)?;
    let mut src = S3Source::open(&b.s3, b.layout.clone())?;
    src.check_store(store)?;
    let rp = pull::find_remote(&src.points()?, point)?;
    let r = pull::pull(&mut src, store, &rp, &Bar::new(interactive))?;
    eprintln!(
        "rackvault: {} from {} is here as {} ({} fetched)",
        r.point,
        from.url,
        r.delivered_as,
        human_bytes(r.bytes_fetched)
    );
    Ok(store.find(&r.delivered_as)?)
}
