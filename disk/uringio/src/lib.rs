//! `uringio`: batched positional reads and writes on files, through io_uring when the kernel
//! allows it and through plain `pread`/`pwrite` otherwise.
//!
//! Reads come in *batches*: a slice of `(offset, buffer)` pairs completed as a whole
//! ([`Ring::read_exact_many`]); writes are sequential whole buffers with a few in flight
//! ([`WriteBehind`]). With io_uring, up to the ring's depth of requests are in flight at once; short
//! transfers are resubmitted for their remainder, so a batch either completes fully or fails
//! with the offset of the first request that failed ([`IoFailure`]).
//!
//! ## Choosing the path
//! [`backend()`] probes once per process whether an io_uring can be created (container seccomp
//! profiles and `kernel.io_uring_disabled` forbid it) and caches the answer. Setting the
//! environment variable `RACKVAULT_IO=pread` forces the fallback, which the tests use to cover
//! both paths. Callers report the chosen [`Backend`] to the operator.
//!
//! ## Threads
//! A [`Ring`] belongs to one thread (it is `Send` but not `Sync`). [`with_thread_ring`] keeps one
//! lazily created ring per thread, so that a `Sync` reader can be shared by worker threads
//! without a lock around the ring.
//!
//! ## Direct I/O
//! [`open_direct`] opens with `O_DIRECT` where the filesystem accepts it (tmpfs does not) and
//! says whether it did. Direct I/O needs buffers, offsets and lengths aligned to
//! [`DIRECT_ALIGN`]; [`AlignedBuf`] provides such buffers.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::OnceLock;

/// Alignment for direct I/O buffers, offsets and lengths.
pub const DIRECT_ALIGN: usize = 4096;

/// Default number of requests in flight per ring.
pub const DEFAULT_DEPTH: u32 = 64;

/// The I/O path in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    IoUring,
    Pread,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::IoUring => "io_uring",
            Backend::Pread => "pread/pwrite",
        })
    }
}

/// The process-wide I/O path: io_uring if a ring can be created and `RACKVAULT_IO` is not
/// `pread`, else the pread/pwrite fallback.
pub fn backend() -> Backend {
    static CHOSEN: OnceLock<Backend> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        if std::env::var("RACKVAULT_IO").is_ok_and(|v| v == "pread") {
            return Backend::Pread;
        }
        match io_uring::IoUring::new(2) {
            Ok(_) => Backend::IoUring,
            Err(_) => Backend::Pread,
        }
    })
}

/// A failed batch: the offset of the request that failed and why.
#[derive(Debug)]
pub struct IoFailure {
    pub offset: u64,
    pub error: io::Error,
}

impl fmt::Display for IoFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte offset {}: {}", self.offset, self.error)
    }
}

impl std::error::Error for IoFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// A per-thread I/O queue.
pub struct Ring {
    uring: Option<io_uring::IoUring>,
    depth: u32,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring").field("backend", &self.backend()).field("depth", &self.depth).finish()
    }
}

/// One request as the completion loop tracks it: where the next transfer starts and how
/// much is left.
struct Pending {
    ptr: *mut u8,
    file_offset: u64,
    remaining: usize,
    /// Offset of the whole request, for error reports.
    request_offset: u64,
}

impl Ring {
    /// A ring of `depth` entries on the process-wide [`backend()`].
    pub fn new(depth: u32) -> Ring {
        let depth = depth.clamp(1, 4096);
        let uring = match backend() {
            Backend::IoUring => io_uring::IoUring::new(depth.next_power_of_two()).ok(),
            Backend::Pread => None,
        };
        Ring { uring, depth }
    }

    pub fn backend(&self) -> Backend {
        if self.uring.is_some() {
            Backend::IoUring
        } else {
            Backend::Pread
        }
    }

    /// Fill every buffer from `file` at its offset. Reading past the end of the file is an
    /// `UnexpectedEof` failure.
    pub fn read_exact_many(&mut self, file: &File, reqs: &mut [(u64, &mut [u8])]) -> Result<(), IoFailure> {
        if self.uring.is_none() {
            for (offset, buf) in reqs.iter_mut() {
                file.read_exact_at(buf, *offset).map_err(|error| IoFailure { offset: *offset, error })?;
            }
            return Ok(());
        }
        let pending: Vec<Pending> = reqs
            .iter_mut()
            .map(|(offset, buf)| Pending {
                ptr: buf.as_mut_ptr(),
                file_offset: *offset,
                remaining: buf.len(),
                request_offset: *offset,
            })
            .collect();
        self.run(file, pending)
    }

    /// The completion loop: keep up to `depth` transfers in flight, resubmit short ones.
    ///
    /// The buffers behind `pending` are borrowed by the caller for the whole call, and this
    /// function does not return until every submitted entry has completed (also on error), so
    /// the kernel never touches a buffer after its borrow ends.
    fn run(&mut self, file: &File, mut pending: Vec<Pending>) -> Result<(), IoFailure> {
        let ring = self.uring.as_mut().expect("run() is only called with a ring");
        let fd = io_uring::types::Fd(file.as_raw_fd());
        let depth = self.depth as usize;
        let mut next = 0usize; // next request never submitted
        let mut retry: Vec<usize> = Vec::new(); // requests with a remainder to resubmit
        let mut in_flight = 0usize;
        let mut failure: Option<IoFailure> = None;

        loop {
            // Submit as much as fits, unless a failure means we only drain.
            while failure.is_none() && in_flight < depth {
                let idx = match retry.pop() {
                    Some(i) => i,
                    None if next < pending.len() => {
                        next += 1;
                        next - 1
                    }
                    None => break,
                };
                let p = &pending[idx];
                if p.remaining == 0 {
                    continue;
                }
                // Linux caps one transfer at 0x7ffff000 bytes; larger requests continue as
                // short transfers.
                let len = p.remaining.min(0x7fff_f000) as u32;
                let entry =
                    io_uring::opcode::Read::new(fd, p.ptr, len).offset(p.file_offset).build().user_data(idx as u64);
                // SAFETY: `p.ptr .. p.ptr+len` lies inside a buffer the caller lent us for the
                // whole of `run`, and `run` waits for every submitted entry before returning,
                // so the buffer outlives the kernel's access to it.
                let pushed = unsafe { ring.submission().push(&entry) };
                if pushed.is_err() {
                    // Submission queue full: flush it and retry this request next round.
                    retry.push(idx);
                    break;
                }
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            if let Err(e) = ring.submit_and_wait(1) {
                if e.raw_os_error() == Some(libc::EINTR) || e.raw_os_error() == Some(libc::EBUSY) {
                    continue;
                }
                // The ring itself failed; entries may still be in flight, so wait for them
                // before we let the buffers go.
                failure.get_or_insert(IoFailure { offset: pending[0].request_offset, error: e });
                while in_flight > 0 {
                    if ring.submit_and_wait(1).is_err() {
                        std::thread::yield_now();
                    }
                    in_flight -= ring.completion().count();
                }
                break;
            }
            for cqe in ring.completion() {
                in_flight -= 1;
                let idx = cqe.user_data() as usize;
                let res = cqe.result();
                let p = &mut pending[idx];
                if res < 0 {
                    if -res == libc::EINTR || -res == libc::EAGAIN {
                        retry.push(idx);
                    } else if failure.is_none() {
                        failure =
                            Some(IoFailure { offset: p.request_offset, error: io::Error::from_raw_os_error(-res) });
                    }
                } else if res == 0 && p.remaining > 0 {
                    if failure.is_none() {
                        let error = io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the file");
                        failure = Some(IoFailure { offset: p.file_offset, error });
                    }
                } else {
                    let n = res as usize;
                    // SAFETY: n <= remaining (the kernel never transfers more than asked), so
                    // the advanced pointer stays within the same buffer.
                    p.ptr = unsafe { p.ptr.add(n) };
                    p.file_offset += n as u64;
                    p.remaining -= n;
                    if p.remaining > 0 {
                        retry.push(idx);
                    }
                }
            }
        }
        match failure {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}

/// Sequential writes of whole buffers with several in flight: the caller fills one buffer
/// while earlier ones are still being written, so a writer thread never waits for the device
/// unless `depth` buffers are already queued.
///
/// Buffers are moved into the writer while the kernel uses them and handed back by
/// [`take_buffer`](WriteBehind::take_buffer) only after their write completed, so no buffer
/// can be touched or freed while in flight. Dropping the writer waits for every write.
/// A failed write is reported by the next call (and by [`finish`](WriteBehind::finish)).
pub struct WriteBehind {
    /// Our own handle on the file (a dup), so the descriptor outlives every write in flight.
    file: File,
    uring: Option<io_uring::IoUring>,
    /// In submission order: the buffer, where it goes, and whether its write completed.
    inflight: std::collections::VecDeque<InflightWrite>,
    free: Vec<AlignedBuf>,
    buf_size: usize,
    depth: usize,
    next_tag: u64,
    failure: Option<IoFailure>,
}

struct InflightWrite {
    tag: u64,
    buf: AlignedBuf,
    offset: u64,
    done: bool,
}

impl fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehind")
            .field("in_flight", &self.inflight.len())
            .field("depth", &self.depth)
            .field("buf_size", &self.buf_size)
            .finish()
    }
}

impl WriteBehind {
    /// A writer to `file` of `buf_size`-byte buffers, up to `depth` in flight, on the
    /// process-wide [`backend()`] (with the pread/pwrite fallback every write is synchronous).
    pub fn new(file: &File, buf_size: usize, depth: usize) -> io::Result<WriteBehind> {
        let file = file.try_clone()?;
        let depth = depth.max(1);
        let uring = match backend() {
            Backend::IoUring => io_uring::IoUring::new((depth as u32).next_power_of_two()).ok(),
            Backend::Pread => None,
        };
        Ok(WriteBehind {
            file,
            uring,
            inflight: Default::default(),
            free: Vec::new(),
            buf_size,
            depth,
            next_tag: 0,
            failure: None,
        })
    }

    /// An empty buffer to fill: a recycled one, a new one while fewer than `depth` exist, or
    /// the oldest in-flight one once its write completed.
    pub fn take_buffer(&mut self) -> Result<AlignedBuf, IoFailure> {
        self.check()?;
        if let Some(mut b) = self.free.pop() {
            b.clear();
            return Ok(b);
        }
        if self.inflight.len() < self.depth {
            return Ok(AlignedBuf::with_capacity(self.buf_size));
        }
        while !self.inflight.front().is_some_and(|w| w.done) {
            self.reap(true);
        }
        self.check()?;
        let mut b = self.inflight.pop_front().expect("front is done").buf;
        b.clear();
        Ok(b)
    }

    /// Write all of `buf` at `offset`, in the background where possible.
    pub fn submit(&mut self, offset: u64, buf: AlignedBuf) -> Result<(), IoFailure> {
        self.check()?;
        let file = &self.file;
        let Some(ring) = self.uring.as_mut() else {
            file.write_all_at(&buf, offset).map_err(|error| IoFailure { offset, error })?;
            self.free.push(buf);
            return Ok(());
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let len = u32::try_from(buf.len()).expect("write buffers are smaller than 4 GiB");
        let entry = io_uring::opcode::Write::new(io_uring::types::Fd(file.as_raw_fd()), buf.ptr, len)
            .offset(offset)
            .build()
            .user_data(tag);
        // SAFETY: the buffer's heap memory stays valid and untouched until this write
        // completes: the buffer is owned by `self.inflight` from here on and leaves it only
        // through `take_buffer` after its completion was reaped; `Drop` waits for all writes.
        let pushed = unsafe { ring.submission().push(&entry) };
        if pushed.is_err() {
            // The queue is sized to `depth`, so this only happens if the caller exceeded it.
            file.write_all_at(&buf, offset).map_err(|error| IoFailure { offset, error })?;
            self.free.push(buf);
            return Ok(());
        }
        self.inflight.push_back(InflightWrite { tag, buf, offset, done: false });
        if let Err(error) = ring.submit() {
            self.failure.get_or_insert(IoFailure { offset, error });
        }
        self.reap(false);
        self.check()
    }

    /// Wait for every write; the first failure, if any.
    pub fn finish(&mut self) -> Result<(), IoFailure> {
        while self.inflight.iter().any(|w| !w.done) {
            self.reap(true);
        }
        while let Some(w) = self.inflight.pop_front() {
            self.free.push(w.buf);
        }
        self.check()
    }

    fn check(&mut self) -> Result<(), IoFailure> {
        match self.failure.take() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// Collect completions, waiting for at least one if `wait`.
    fn reap(&mut self, wait: bool) {
        let Some(ring) = self.uring.as_mut() else { return };
        if wait {
            if let Err(e) = ring.submit_and_wait(1) {
                if e.raw_os_error() != Some(libc::EINTR) {
                    // The ring is unusable; nothing more can complete through it.
                    let offset = self.inflight.iter().find(|w| !w.done).map_or(0, |w| w.offset);
                    self.failure.get_or_insert(IoFailure { offset, error: e });
                    for w in self.inflight.iter_mut() {
                        w.done = true;
                    }
                    return;
                }
            }
        }
        let completions: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (tag, res) in completions {
            let Some(w) = self.inflight.iter_mut().find(|w| w.tag == tag) else { continue };
            w.done = true;
            if res < 0 {
                self.failure.get_or_insert(IoFailure { offset: w.offset, error: io::Error::from_raw_os_error(-res) });
            } else if (res as usize) < w.buf.len() {
                // A short write: finish the rest synchronously (rare; the buffer is ours again).
                let n = res as usize;
                if let Err(error) = self.file.write_all_at(&w.buf[n..], w.offset + n as u64) {
                    self.failure.get_or_insert(IoFailure { offset: w.offset + n as u64, error });
                }
            }
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        // The kernel may still be reading our buffers: wait before they are freed.
        while self.uring.is_some() && self.inflight.iter().any(|w| !w.done) {
            self.reap(true);
        }
    }
}

thread_local! {
    static THREAD_RING: RefCell<Option<Ring>> = const { RefCell::new(None) };
}

/// Run `f` with this thread's ring, creating it (with [`DEFAULT_DEPTH`]) on first use.
pub fn with_thread_ring<R>(f: impl FnOnce(&mut Ring) -> R) -> R {
    THREAD_RING.with(|cell| {
        let mut slot = cell.borrow_mut();
        let ring = slot.get_or_insert_with(|| Ring::new(DEFAULT_DEPTH));
        f(ring)
    })
}

/// Open `path` for writing with `O_DIRECT` if the filesystem supports it; the flag says
/// whether it did. `create_new` fails if the file exists.
pub fn open_direct(path: &Path, create_new: bool) -> io::Result<(File, bool)> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if create_new {
        opts.create_new(true);
    }
    match opts.clone().custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Ok((f, true)),
        // tmpfs and some FUSE filesystems refuse O_DIRECT with EINVAL.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            if create_new {
                // A failed O_DIRECT open may still have created the file.
                let _ = std::fs::remove_file(path);
            }
            Ok((opts.open(path)?, false))
        }
        Err(e) => Err(e),
    }
}

/// `lseek(2)`, for the whences std lacks (`SEEK_DATA`, `SEEK_HOLE`).
pub fn lseek(fd: std::os::fd::RawFd, offset: libc::off_t, whence: libc::c_int) -> io::Result<libc::off_t> {
    // SAFETY: lseek only reads its integer arguments; an invalid fd yields EBADF, not UB.
    let r = unsafe { libc::lseek(fd, offset, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Start writing back `file`'s dirty pages without waiting (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`). Called periodically during large writes so that the final
/// `fsync` finds little left to do and the device is busy while the CPU decompresses.
/// This is only a hint: it gives no durability, errors are ignored, and a filesystem that
/// does not support it simply does the work at `fsync` time.
pub fn start_writeback(file: &File) {
    // SAFETY: sync_file_range only reads its integer arguments; a bad fd yields EBADF.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Lower the calling thread (only it: Linux applies both to one thread id) to the lowest CPU
/// priority (nice 19) and the idle I/O class, for background work that must yield to
/// backups and restores: the store's recompression pass. An unprivileged process cannot
/// raise it again, so call this on a thread of its own that ends with the work.
pub fn lower_this_thread_to_background() -> io::Result<()> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority reads its three integer arguments only; an unknown id yields ESRCH.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) } < 0 {
        return Err(io::Error::last_os_error());
    }
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: ioprio_set takes three integers and touches no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            tid as libc::c_long,
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The inode flag that makes a file immutable (`chattr +i`): no write, rename, link or
/// unlink, even by root, until it is cleared (which needs `CAP_LINUX_IMMUTABLE`).
const FS_IMMUTABLE_FL: libc::c_int = 0x10;

/// Set or clear `file`'s immutable attribute (`FS_IOC_GETFLAGS`/`FS_IOC_SETFLAGS`). Fails
/// with `EPERM` without `CAP_LINUX_IMMUTABLE`, and `ENOTTY`/`EOPNOTSUPP` on filesystems
/// without inode flags (tmpfs, many FUSE filesystems).
pub fn set_immutable(file: &File, on: bool) -> io::Result<()> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int (the kernel's size for these flags despite the
    // ioctl number's `long`) into `flags`, which lives across the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags as *mut libc::c_int) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let want = if on { flags | FS_IMMUTABLE_FL } else { flags & !FS_IMMUTABLE_FL };
    if want == flags {
        return Ok(());
    }
    // SAFETY: FS_IOC_SETFLAGS reads one int from `want`, which lives across the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &want as *const libc::c_int) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `file` has the immutable attribute.
pub fn is_immutable(file: &File) -> io::Result<bool> {
    let mut flags: libc::c_int = 0;
    // SAFETY: as in `set_immutable`: one int written into `flags`.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags as *mut libc::c_int) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & FS_IMMUTABLE_FL != 0)
}

/// A heap buffer aligned to [`DIRECT_ALIGN`], zero-initialised, of a fixed capacity.
pub struct AlignedBuf {
    ptr: *mut u8,
    cap: usize,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8], like a Vec<u8>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `cap` bytes (rounded up to the alignment), with length 0.
    pub fn with_capacity(cap: usize) -> AlignedBuf {
        let cap = cap.max(1).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let layout = Layout::from_size_align(cap, DIRECT_ALIGN).expect("aligned layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, cap, len: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes still free at the end.
    pub fn spare(&self) -> usize {
        self.cap - self.len
    }

    /// Append as much of `data` as fits; returns how many bytes were taken.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.spare());
        // SAFETY: `len + n <= cap`, the regions cannot overlap (we own ours exclusively).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(self.len), n) };
        self.len += n;
        n
    }

    /// Set the length; bytes past the old length are whatever was last written there (zero
    /// for a fresh buffer).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "AlignedBuf::set_len past capacity");
        self.len = len;
    }

    /// Zero the bytes from the current length up to the next multiple of [`DIRECT_ALIGN`] and
    /// extend the length to it.
    pub fn pad_to_alignment(&mut self) {
        let padded = self.len.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        // SAFETY: padded <= cap because cap is a multiple of DIRECT_ALIGN and len <= cap.
        unsafe { std::ptr::write_bytes(self.ptr.add(self.len), 0, padded - self.len) };
        self.len = padded;
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, DIRECT_ALIGN).expect("aligned layout");
        // SAFETY: ptr came from alloc_zeroed with this same layout.
        unsafe { alloc::dealloc(self.ptr, layout) };
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialised (zeroed at allocation).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf").field("len", &self.len).field("cap", &self.cap).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn a_background_thread_runs_at_nice_19_in_the_idle_io_class_and_others_do_not() {
        fn priorities() -> (i32, i64) {
            // SAFETY: gettid, getpriority and ioprio_get read integer arguments only.
            unsafe {
                let tid = libc::gettid();
                *libc::__errno_location() = 0;
                let nice = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
                let ioprio = libc::syscall(libc::SYS_ioprio_get, 1 as libc::c_long, tid as libc::c_long);
                (nice, ioprio)
            }
        }
        let before = priorities();
        let inside = std::thread::spawn(|| {
            lower_this_thread_to_background().unwrap();
            priorities()
        })
        .join()
        .unwrap();
        assert_eq!(inside.0, 19);
        assert_eq!(inside.1 >> 13, 3, "the idle I/O class");
        assert_eq!(priorities(), before, "the calling thread is untouched");
    }

    #[test]
    fn read_many_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        let bufs: Vec<Vec<u8>> = (0..40).map(|i| pattern(64 * 1024 + i, i as u8)).collect();
        for (i, b) in bufs.iter().enumerate() {
            file.write_all_at(b, (i as u64) * 200_000).unwrap();
        }
        let mut back: Vec<Vec<u8>> = bufs.iter().map(|b| vec![0; b.len()]).collect();
        let mut reads: Vec<(u64, &mut [u8])> =
            back.iter_mut().enumerate().map(|(i, b)| ((i as u64) * 200_000, b.as_mut_slice())).collect();
        Ring::new(8).read_exact_many(&file, &mut reads).unwrap();
        assert_eq!(back, bufs);
    }

    #[test]
    fn read_past_end_fails_with_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        let file = File::open(&path).unwrap();
        let mut ring = Ring::new(4);
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        let err = ring.read_exact_many(&file, &mut [(0, &mut a[..]), (8192, &mut b[..])]).unwrap_err();
        assert_eq!(err.error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(err.offset, 8192 + 1808);
        assert!(a.iter().all(|&x| x == 7));
    }

    #[test]
    fn direct_write_with_aligned_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        let (file, _direct) = open_direct(&path, true).unwrap();
        let mut buf = AlignedBuf::with_capacity(3 * DIRECT_ALIGN);
        assert_eq!(buf.extend_from_slice(&pattern(5000, 3)), 5000);
        buf.pad_to_alignment();
        assert_eq!(buf.len(), 2 * DIRECT_ALIGN);
        let mut wb = WriteBehind::new(&file, DIRECT_ALIGN, 1).unwrap();
        wb.submit(0, buf).unwrap();
        wb.finish().unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(&data[..5000], &pattern(5000, 3)[..]);
        assert!(data[5000..].iter().all(|&x| x == 0));
    }

    #[test]
    fn write_behind_writes_every_buffer_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wb");
        let (file, _) = open_direct(&path, true).unwrap();
        let mut wb = WriteBehind::new(&file, 64 * 1024, 3).unwrap();
        drop(file); // the writer holds its own handle
        for i in 0..20u64 {
            let mut b = wb.take_buffer().unwrap();
            b.extend_from_slice(&pattern(64 * 1024, i as u8));
            wb.submit(i * 64 * 1024, b).unwrap();
        }
        wb.finish().unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 20 * 64 * 1024);
        for i in 0..20usize {
            assert_eq!(&data[i * 65536..(i + 1) * 65536], &pattern(65536, i as u8)[..], "buffer {i}");
        }
    }

    #[test]
    fn write_behind_reports_a_failed_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"x").unwrap();
        let file = File::open(&path).unwrap(); // read-only: writes fail with EBADF
        let mut wb = WriteBehind::new(&file, 4096, 2).unwrap();
        let mut b = wb.take_buffer().unwrap();
        b.extend_from_slice(&[1u8; 4096]);
        let first = wb.submit(0, b);
        let err = first.err().or_else(|| wb.finish().err()).expect("the write must fail");
        assert_eq!(err.offset, 0);
    }

    #[test]
    fn thread_ring_is_reused() {
        let a = with_thread_ring(|r| r as *const Ring as usize);
        let b = with_thread_ring(|r| r as *const Ring as usize);
        assert_eq!(a, b);
    }
}
