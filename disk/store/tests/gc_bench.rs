//! The GC benchmark's code path (`examples/gc_bench.rs`, included here) at 20,000 chunks, so
//! the benchmark keeps compiling and keeps measuring the right thing: the generator makes 30%
//! of the data chunks dead, and `Store::gc` condemns exactly what the naive full mark finds
//! dead, less the Bloom filter's false positives, without losing a live chunk.

#[allow(dead_code)]
#[path = "../examples/gc_bench.rs"]
mod gc_bench;

#[test]
fn the_gc_benchmark_workload_is_30_percent_garbage_and_gc_condemns_what_the_naive_mark_finds_dead() {
    let dir = tempfile::tempdir().unwrap();
    let built = gc_bench::build(dir.path(), 20_000).unwrap();
    assert_eq!(built.data_chunks, 20_000);
    let share = built.dead_data_chunks as f64 / built.data_chunks as f64;
    assert!((0.30..0.32).contains(&share), "{built:?}");
    assert!(built.points_kept >= 10, "the remaining points share their chunks: {built:?}");

    let before = gc_bench::naive(dir.path()).unwrap();
    assert_eq!(before.dead_data, built.dead_data_chunks, "the generator's bookkeeping: {before:?}");
    assert_eq!(before.dead_manifest, built.points_deleted, "{before:?}");
    let (dry, _) = gc_bench::gc(dir.path(), true).unwrap();
    let (gc, _) = gc_bench::gc(dir.path(), false).unwrap();
    assert_eq!(dry.chunks_condemned, gc.chunks_condemned, "{dry:?} {gc:?}");
    assert!(gc.bytes_freed >= gc.bytes_condemned, "{gc:?}");

    // What the naive mark still finds dead after the GC is what the Bloom filter kept.
    let after = gc_bench::naive(dir.path()).unwrap();
    assert_eq!(after.live, before.live, "no live chunk was collected: {before:?} {after:?}");
    assert_eq!(before.dead, gc.chunks_condemned + after.dead, "{before:?} {gc:?} {after:?}");
    assert_eq!(after.dead, after.dead_data, "tree nodes and manifests are marked exactly: {after:?}");
    assert!(after.dead * 100 <= before.dead * 3, "about 1% false positives: {after:?}");
}
