//! The real peers' settings as `tests/peers/start-*.sh` export them, and what a test does
//! when a peer is not running: skip with a note, or fail where `RACKVAULT_REQUIRE_PEERS=1`
//! (as `tests/run.sh` sets).

/// The S3 peer (`tests/peers/start-s3.sh`: SeaweedFS on loopback).
#[derive(Debug, Clone)]
pub struct S3Env {
    pub endpoint: String,
    pub region: String,
    /// The admin identity.
    pub access: String,
    pub secret: String,
    /// The read-only identity.
    pub ro_access: String,
    pub ro_secret: String,
}

/// The S3 peer's settings; `None` (after a note on stderr) when it is not running and peers
/// are not required.
pub fn s3() -> Option<S3Env> {
    let get = |k: &str| std::env::var(k).ok();
    let e = (|| {
        Some(S3Env {
            endpoint: get("RV_S3_ENDPOINT")?,
            region: get("RV_S3_REGION")?,
            access: get("RV_S3_ACCESS_KEY")?,
            secret: get("RV_S3_SECRET_KEY")?,
            ro_access: get("RV_S3_RO_ACCESS_KEY")?,
            ro_secret: get("RV_S3_RO_SECRET_KEY")?,
        })
    })();
    if e.is_none() {
        missing("s3", "RV_S3_ENDPOINT");
    }
    e
}

/// Panics when peers are required, otherwise says the test is skipped.
pub fn missing(peer: &str, variable: &str) {
    if std::env::var("RACKVAULT_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!(
            "peer {peer} is not running ({variable} missing) but RACKVAULT_REQUIRE_PEERS=1; start it with \
             tests/peers/start-{peer}.sh and source its env file"
        );
    }
    eprintln!("skipped: peer {peer} is not running (tests/peers/start-{peer}.sh)");
}

/// A bucket name no other test or run uses (S3 names: lower case, digits, '-', 3-63).
pub fn unique_bucket(test: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mut name = format!("rv-{test}-{}-{nanos}", std::process::id()).to_ascii_lowercase().replace('_', "-");
    name.truncate(63);
    name
}
