//! The small URL grammar of our source arguments: `scheme://[userinfo@]host[:port]/path[?query]`.
//!
//! Userinfo follows libiscsi's convention `user%secret` (also `user:secret`). Secrets are
//! kept in [`Secret`], whose `Debug` never shows them; URLs are re-printed without them.

use std::fmt;

use crate::EngineError;

/// A credential that must never be printed or recorded.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself, for the one place that uses it (the login).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The parts of a source URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceUrl {
    pub user: Option<String>,
    pub secret: Option<Secret>,
    /// Host name or address; IPv6 without brackets.
    pub host: String,
    pub port: Option<u16>,
    /// Path after the authority, starting with '/', percent-decoded.
    pub path: String,
    /// `key=value` pairs in order, percent-decoded.
    pub query: Vec<(String, String)>,
}

impl SourceUrl {
    /// Parse `url`, whose scheme must be `scheme`. Errors never echo the userinfo.
    pub fn parse(url: &str, scheme: &str) -> Result<SourceUrl, EngineError> {
        let invalid = |what: &str| EngineError::Invalid(format!("{scheme}:// source URL: {what}"));
        let rest = url
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
            .ok_or_else(|| invalid("does not start with the scheme"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, secret) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (u, s) = match ui.find(['%', ':']) {
                    Some(i) => (&ui[..i], Some(&ui[i + 1..])),
                    None => (ui, None),
                };
                if u.is_empty() {
                    return Err(invalid("the user name before '@' is empty"));
                }
                (Some(u.to_string()), s.map(Secret::new))
            }
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, after) = h.split_once(']').ok_or_else(|| invalid("unterminated '[' in an IPv6 host"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| invalid("junk after the IPv6 host"))?),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(invalid("no host name"));
        }
        let port = port
            .map(|p| p.parse::<u16>().map_err(|_| invalid(&format!("port {p:?} is not a number from 1 to 65535"))))
            .transpose()?;
        let mut pairs = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            pairs.push((percent_decode(k).map_err(|e| invalid(&e))?, percent_decode(v).map_err(|e| invalid(&e))?));
        }
        Ok(SourceUrl { user, secret, host, port, path: percent_decode(path).map_err(|e| invalid(&e))?, query: pairs })
    }
}

/// Decode `%XX` escapes.
pub fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => return Err(format!("bad percent escape in {s:?}")),
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 after decoding"))
}

/// A query value that must be a number.
pub fn parse_num<T: std::str::FromStr>(scheme: &str, key: &str, v: &str) -> Result<T, EngineError> {
    v.parse().map_err(|_| EngineError::Invalid(format!("{scheme}:// source URL: {key}={v:?} is not a valid number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_userinfo_hosts_ports_and_queries() {
        let u = SourceUrl::parse("iscsi://bob%s3cr%et@[::1]:3261/iqn.x:y/1?target_user=t&x=%41", "iscsi").unwrap();
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.secret.as_ref().map(|s| s.expose()), Some("s3cr%et"));
        assert_eq!((u.host.as_str(), u.port), ("::1", Some(3261)));
        assert_eq!(u.path, "/iqn.x:y/1");
        assert_eq!(u.query, [("target_user".to_string(), "t".to_string()), ("x".to_string(), "A".to_string())]);
        assert!(!format!("{u:?}").contains("s3cr"));
        let n = SourceUrl::parse("nfs://10.0.0.1/export/a%20b/", "nfs").unwrap();
        assert_eq!((n.host.as_str(), n.port, n.path.as_str()), ("10.0.0.1", None, "/export/a b/"));
    }

    #[test]
    fn rejects_bad_urls_without_echoing_secrets() {
        for bad in ["iscsi://", "iscsi://u%topsecret@:99/x", "iscsi://h:99999/x", "iscsi://[::1/x", "iscsi://h/%zz"] {
            let e = SourceUrl::parse(bad, "iscsi").unwrap_err().to_string();
            assert!(!e.contains("topsecret"), "{e}");
        }
    }
}
