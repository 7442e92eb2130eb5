//! Raw tape writer for benchmarks (tests/bench/tape-bench.sh): loads a cartridge into a drive
//! of an iSCSI tape library with the changer, writes BYTES as variable blocks of BLOCK bytes
//! (1 MiB by default; the last one shorter) with WRITE(6) through our iSCSI initiator and
//! `drive::TapeDrive`, one filemark, and moves the cartridge back to its slot. No format, no
//! store: the ceiling a destage job over the same path is compared with.
//!
//! ```text
//! raw_write <portal> <target iqn> <changer lun> <barcode> <bytes> [block bytes]
//! ```
//! Prints one JSON object: bytes, blocks, seconds and mb_per_s of the write phase (first
//! WRITE to the filemark written), and total_seconds from MOVE MEDIUM into the drive to the
//! filemark.

use std::sync::Arc;
use std::time::{Duration, Instant};

use changer::{ElementKind, MediaChanger};
use drive::{MediaState, TapeDrive};
use scsi::ScsiTransport;

fn main() {
    if let Err(e) = run() {
        eprintln!("raw_write: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        return Err("usage: raw_write <portal> <target iqn> <changer lun> <barcode> <bytes> [block bytes]".into());
    }
    let num = |i: usize, what: &str| args[i].parse::<u64>().map_err(|e| format!("{what} {:?}: {e}", args[i]));
    let (portal, iqn, barcode) = (&args[0], &args[1], &args[3]);
    let changer_lun = num(2, "changer lun")?;
    let bytes = num(4, "bytes")?;
    let block = if args.len() > 5 { num(5, "block bytes")? as usize } else { 1 << 20 };

    let session = iscsi::Session::login(iscsi::SessionConfig::new(portal.clone(), iqn.clone()))
        .map_err(|e| format!("login to {iqn} at {portal}: {e}"))?;
    let ch = MediaChanger::open(Arc::new(session.lun(changer_lun))).map_err(|e| e.to_string())?;
    let inv = ch.inventory().map_err(|e| e.to_string())?;
    let home =
        inv.find_barcode(barcode).cloned().ok_or_else(|| format!("cartridge {barcode} is not in the library"))?;
    if home.kind == ElementKind::Drive {
        return Err(format!("cartridge {barcode} is already in drive element {}; move it home first", home.address));
    }
    // The first drive LUN whose drive element is empty.
    let luns = session.report_luns().map_err(|e| format!("REPORT LUNS: {e}"))?;
    let mut chosen = None;
    for lun in luns.into_iter().filter(|l| *l != changer_lun) {
        let t: Arc<dyn ScsiTransport> = Arc::new(session.lun(lun));
        let Ok(d) = TapeDrive::open(t) else { continue };
        let i = d.info();
        if let Some(e) = inv.drive_for(&i.vendor, &i.product, &i.serial).or_else(|| inv.drive_by_serial(&i.serial)) {
            if !e.full {
                chosen = Some((d, e.address));
                break;
            }
        }
    }
    let (mut d, element) = chosen.ok_or("no empty tape drive found (matched to the changer by serial)")?;

    let started = Instant::now();
    ch.move_medium(home.address, element).map_err(|e| e.to_string())?;
    let result = write(&mut d, bytes, block);
    let total = started.elapsed();
    // Back home whatever happened.
    let _ = d.prevent_removal(false);
    let _ = d.unload();
    let back = ch.move_medium(element, home.address).map_err(|e| format!("moving {barcode} back home: {e}"));
    let (blocks, write_time) = result?;
    back?;
    let secs = write_time.as_secs_f64();
    println!(
        "{{\"bytes\": {bytes}, \"blocks\": {blocks}, \"block_size\": {block}, \"seconds\": {secs:.3}, \"mb_per_s\": {:.1}, \
         \"total_seconds\": {:.3}, \"drive\": \"{}\"}}",
        bytes as f64 / 1e6 / secs.max(1e-9),
        total.as_secs_f64(),
        d.name()
    );
    Ok(())
}

/// Waits for the drive, then writes; returns the blocks written and the write phase's time.
fn write(d: &mut TapeDrive, bytes: u64, block: usize) -> Result<(u64, Duration), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match d.test_unit_ready().map_err(|e| e.to_string())? {
            MediaState::BecomingReady | MediaState::NoMedium if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            MediaState::Ready => break,
            s => return Err(format!("drive {} is not ready to write: {s:?}", d.name())),
        }
    }
    d.set_variable_block_mode().map_err(|e| e.to_string())?;
    d.rewind().map_err(|e| e.to_string())?;
    // Incompressible-looking content, the same for every block (the drive does not care).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let buf: Vec<u8> = (0..block)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let t = Instant::now();
    let (mut left, mut blocks) = (bytes, 0u64);
    while left > 0 {
        let n = left.min(block as u64) as usize;
        d.write_block(&buf[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
        blocks += 1;
    }
    d.write_filemarks(1).map_err(|e| e.to_string())?;
    Ok((blocks, t.elapsed()))
}
