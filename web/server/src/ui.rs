//! The web UI: files of `web/ui/` embedded at build time (see `build.rs`), served with
//! `Cache-Control: no-cache`; any other path without a dot gets `index.html`, so the UI's own
//! routes survive a reload.

include!(concat!(env!("OUT_DIR"), "/ui_files.rs"));

/// A UI file: content type and bytes.
pub(crate) fn file(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = if path == "/" { "/index.html" } else { path };
    if let Some((_, ct, bytes)) = UI_FILES.iter().find(|(p, _, _)| *p == path) {
        return Some((ct, bytes));
    }
    let last = path.rsplit('/').next().unwrap_or("");
    if last.contains('.') {
        return None;
    }
    UI_FILES.iter().find(|(p, _, _)| *p == "/index.html").map(|(_, ct, bytes)| (*ct, *bytes))
}

/// The URL paths of the embedded files.
pub fn embedded_files() -> impl Iterator<Item = &'static str> {
    UI_FILES.iter().map(|(p, _, _)| *p)
}
