//! The few fields we read from S3's XML answers ourselves (error `Code`/`Message`, a
//! retention's `Mode`/`RetainUntilDate`, a multipart `UploadId`); object_store parses the rest.
//!
//! Self-contained (std and jiff only): the cargo-fuzz target in `firmware/s3/fuzz/` compiles
//! this file on its own, so fuzzing does not build the HTTP stack.
//!
//! S3 answers are flat for these documents, so a field is the text between the first
//! `<Name>` and the following `</Name>`, with the five XML entities decoded. Bytes from the
//! server are untrusted: nothing here panics or allocates beyond the input's size, and the
//! mutation test below feeds it garbage.

/// The text of the first `<name>...</name>` element, entity-decoded; `None` when absent.
pub(crate) fn field(doc: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = doc.find(&open)? + open.len();
    let len = doc.get(start..)?.find(&close)?;
    Some(unescape(doc.get(start..start + len)?))
}

/// A retention document's mode (as written) and retain-until time; `Ok(None)` when either
/// field is missing, `Err` when the date is not an RFC 3339 time after 1970.
pub(crate) fn retention(doc: &str) -> Result<Option<(String, std::time::SystemTime)>, String> {
    let (Some(mode), Some(until)) = (field(doc, "Mode"), field(doc, "RetainUntilDate")) else {
        return Ok(None);
    };
    let ts: jiff::Timestamp = until.parse().map_err(|e| format!("retain-until date {until:?}: {e}"))?;
    let secs = u64::try_from(ts.as_second()).map_err(|_| format!("retain-until date {until:?} is before 1970"))?;
    let nanos = std::time::Duration::from_nanos(ts.subsec_nanosecond().unsigned_abs().into());
    Ok(Some((mode, std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs) + nanos)))
}

fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.trim().to_string();
    }
    s.trim()
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// `s` with the five XML special characters escaped (for the bodies we send).
pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_code_and_message_of_an_s3_error() {
        let doc = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SignatureDoesNotMatch</Code>\
                   <Message>The request signature we calculated does not match &amp; so on</Message>\
                   <Resource>/b/k</Resource></Error>";
        assert_eq!(field(doc, "Code").as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(
            field(doc, "Message").as_deref(),
            Some("The request signature we calculated does not match & so on")
        );
        assert_eq!(field(doc, "RequestId"), None);
    }

    #[test]
    fn escape_and_field_round_trip() {
        let s = "a<b>&\"c'";
        assert_eq!(field(&format!("<X>{}</X>", escape(s)), "X").as_deref(), Some(s));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = testkit::Rng::new(0x53_33);
        let base = "<Error><Code>SlowDown</Code><Message>Please &amp; reduce</Message></Error>".as_bytes();
        for _ in 0..20_000 {
            let mut b = base.to_vec();
            for _ in 0..1 + rng.below(6) {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = rng.next_u64() as u8;
            }
            let cut = rng.below(b.len() as u64 + 1) as usize;
            let s = String::from_utf8_lossy(&b[..cut]);
            let _ = field(&s, "Code");
            let _ = field(&s, "Message");
        }
    }
}
