//! Uploads files to an S3 bucket with `s3::S3Client::upload` and prints the throughput, for
//! `tests/bench/s3-bench.sh` (which runs boto3 on the same files beside it).
//!
//!   s3_upload BUCKET FILE...      (endpoint and credentials from RV_S3_ENDPOINT, RV_S3_REGION,
//!                                  RV_S3_ACCESS_KEY, RV_S3_SECRET_KEY; PART_MIB (8),
//!                                  CONCURRENCY (4))
//!
//! Creates BUCKET, reads every file into memory first (so only the upload is timed), uploads
//! them one after the other, and prints one line: `s3 <bytes> <seconds> <MiB/s> <retries>`.
//! A benchmark tool, like a test: it builds its own runtime, which firmware code never does.
use std::time::Instant;

use s3::{S3Client, S3Config, Secret};

fn var(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set; source the env file of tests/peers/start-s3.sh"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (bucket, files) = args.split_first().expect("usage: s3_upload BUCKET FILE...");
    let num = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let mut cfg = S3Config::new(
        var("RV_S3_ENDPOINT"),
        var("RV_S3_REGION"),
        bucket,
        var("RV_S3_ACCESS_KEY"),
        Secret::new(var("RV_S3_SECRET_KEY")),
    );
    cfg.allow_http = cfg.endpoint.starts_with("http://127.0.0.1") || cfg.endpoint.starts_with("http://[::1]");
    cfg.part_size = num("PART_MIB", 8) << 20;
    cfg.multipart_threshold = cfg.part_size;
    cfg.upload_concurrency = num("CONCURRENCY", 4);
    let client = S3Client::new(cfg).unwrap_or_else(|e| panic!("{e}"));
    let data: Vec<(String, bytes::Bytes)> = files
        .iter()
        .map(|f| {
            let name =
                std::path::Path::new(f).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (name, bytes::Bytes::from(std::fs::read(f).unwrap_or_else(|e| panic!("{f}: {e}"))))
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let (bytes, secs) = rt.block_on(async {
        client.create_bucket(false).await.unwrap_or_else(|e| panic!("{e}"));
        let start = Instant::now();
        let mut bytes = 0usize;
        for (name, d) in &data {
            bytes += d.len();
            client.upload(&format!("packs/{name}"), d.clone()).await.unwrap_or_else(|e| panic!("{e}"));
        }
        (bytes, start.elapsed().as_secs_f64())
    });
    println!("s3 {bytes} {secs:.3} {:.1} {}", bytes as f64 / secs / (1 << 20) as f64, client.retries());
}
