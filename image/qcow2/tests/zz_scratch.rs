mod common;
use common::*;
use blocksource::{BlockSource, ReadRequest};
#[test]
fn show() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("base.raw");
    let img = dir.path().join("base.qcow2");
    make_raw(&raw, 8 << 20, &scattered(8 << 20), 31);
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&img)]);
    let bytes = std::fs::read(&img).unwrap();
    eprintln!("len {} l1 {:#x}", bytes.len(), get_u64(&bytes, 40));
    for cut in [50, 100, 300, 65536 + 10, bytes.len() / 2] {
        let path = dir.path().join(format!("cut{cut}.qcow2"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        match open(&path) {
            Err(e) => eprintln!("open: {e}"),
            Ok(src) => { let mut b = vec![0u8; 8<<20]; eprintln!("read: {}", src.read_many(&mut [ReadRequest{offset:0, buf:&mut b}]).unwrap_err()); }
        }
    }
    let dir2 = tempfile::tempdir().unwrap();
    let a = dir2.path().join("a.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&a), "1M"]);
    qemu_img(&["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", s(&a)]);
    eprintln!("{}", open(&a).unwrap_err());
    qemu_img(&["rebase", "-u", "-b", "nope.qcow2", "-F", "qcow2", s(&a)]);
    eprintln!("{}", open(&a).unwrap_err());
    let src = open(&img).unwrap();
    eprintln!("{:?}", src.io_hints());
    eprintln!("{:?}", src);
}
