//! Read-ahead for walks in index-tree order (a restore): the walker names the chunks it is
//! about to hand to the readers, in that order; stretches of the same pack that lie close
//! together are merged and given to the kernel as `POSIX_FADV_WILLNEED`, which starts reading
//! them into the page cache and returns, so the pack reads of chunks further on overlap the
//! decompression and writing of those before them. Without it an uncached restore costs a
//! cached one plus a plain read of the packs.
//!
//! Best effort throughout: a chunk that cannot be located or a pack that cannot be opened is
//! skipped here, and the read itself reports the error.

use std::fs::File;
use std::sync::Arc;

use crate::pack::RECORD_HEADER_LEN;
use crate::{Digest, Store};

/// Stretches of one pack this close together are read as one.
const MERGE_GAP: u64 = 256 << 10;
/// A stretch is handed to the kernel once it is this long.
const MAX_SPAN: u64 = 4 << 20;

/// See the module docs. Made by [`Store::readahead`].
pub struct Readahead<'a> {
    store: &'a Store,
    pending: Option<Span>,
    /// Bytes and stretches handed to the kernel so far.
    issued: u64,
    spans: u64,
}

struct Span {
    pack: u64,
    file: Arc<File>,
    start: u64,
    end: u64,
}

impl Store {
    /// A read-ahead for reads of this store in a known order.
    pub fn readahead(&self) -> Readahead<'_> {
        Readahead { store: self, pending: None, issued: 0, spans: 0 }
    }
}

impl std::fmt::Debug for Readahead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = self.pending.as_ref().map(|s| (s.pack, s.start, s.end));
        f.debug_struct("Readahead")
            .field("pending", &pending)
            .field("issued", &self.issued)
            .field("spans", &self.spans)
            .finish()
    }
}

impl Readahead<'_> {
    /// The chunk `digest` will be read soon, after those named before it.
    pub fn want(&mut self, digest: &Digest) {
        let Ok(Some(loc)) = self.store.locate(digest) else { return };
        let (start, end) = (loc.offset, loc.offset + RECORD_HEADER_LEN as u64 + u64::from(loc.stored_len));
        if let Some(span) = &mut self.pending {
            if span.pack == loc.pack && start >= span.start && start <= span.end + MERGE_GAP {
                span.end = span.end.max(end);
                if span.end - span.start >= MAX_SPAN {
                    self.issue();
                }
                return;
            }
        }
        self.issue();
        if let Ok(file) = self.store.pack_file(loc.pack) {
            self.pending = Some(Span { pack: loc.pack, file, start, end });
        }
    }

    /// Hands over what is pending; the bytes and the stretches handed to the kernel in all.
    pub fn finish(mut self) -> (u64, u64) {
        self.issue();
        (self.issued, self.spans)
    }

    fn issue(&mut self) {
        let Some(span) = self.pending.take() else { return };
        let (Ok(offset), Ok(len)) = (i64::try_from(span.start), i64::try_from(span.end - span.start)) else { return };
        let advice = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED;
        if nix::fcntl::posix_fadvise(&*span.file, offset, len, advice).is_ok() {
            self.issued += span.end - span.start;
            self.spans += 1;
        }
    }
}

impl Drop for Readahead<'_> {
    fn drop(&mut self) {
        self.issue();
    }
}
