//! Integration tests against a real nfs-ganesha on loopback (tests/peers/start-nfs-ganesha.sh),
//! through a fault-injecting TCP proxy, and against small hostile fake servers.
//!
//! The ganesha tests read the peer's env file from the process environment (`RV_NFS_*`). When
//! it is missing they print "skipped: ..." and pass, unless `RACKVAULT_REQUIRE_PEERS=1`, then
//! they fail.

mod common;
mod faults;
mod ganesha;
mod hostile;
mod restart;
