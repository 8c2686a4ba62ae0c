//! Tenant slugs: DNS labels that name a tenant in URLs. They never name a path on disk.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Code, Error};

/// Names refused as slugs because they collide with infrastructure subdomains.
pub const RESERVED: &[&str] = &[
    "www",
    "api",
    "admin",
    "app",
    "mail",
    "smtp",
    "imap",
    "pop",
    "ftp",
    "ns",
    "ns1",
    "ns2",
    "dns",
    "mx",
    "static",
    "assets",
    "cdn",
    "docs",
    "status",
    "support",
    "help",
    "blog",
    "dashboard",
    "console",
    "auth",
    "login",
    "sso",
    "billing",
    "root",
    "system",
    "internal",
    "localhost",
    "warren",
    "metrics",
    "health",
    "ready",
    "mcp",
    "webhooks",
];

/// A validated slug: lowercase `a-z0-9-`, 3–63 characters, no leading or trailing hyphen, not reserved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Slug(String);

impl Slug {
    pub fn parse(s: &str) -> Result<Slug, Error> {
        let ok_len = (3..=63).contains(&s.len());
        let ok_chars = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let ok_edges = !s.starts_with('-') && !s.ends_with('-');
        if !(ok_len && ok_chars && ok_edges) {
            return Err(Error::bad_request(
                Code::InvalidSlug,
                format!("invalid slug {:?}: use 3-63 characters of a-z, 0-9 and '-', not starting or ending with '-'", truncate(s, 80)),
            ));
        }
        if is_id_shaped(s) {
            return Err(Error::bad_request(
                Code::InvalidSlug,
                format!("invalid slug {s:?}: 26 characters of the ULID alphabet is the shape of a tenant id, which a slug may never be"),
            ));
        }
        if RESERVED.contains(&s) {
            return Err(Error::bad_request(Code::ReservedSlug, format!("the slug {s:?} is reserved")));
        }
        Ok(Slug(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `s` has the shape of a tenant id (a ULID: 26 characters of Crockford base32, any case).
/// Slugs of this shape are refused, so ids and slugs live in disjoint namespaces and a lookup always
/// knows which one it was given.
pub fn is_id_shaped(s: &str) -> bool {
    s.len() == 26 && s.parse::<ulid::Ulid>().is_ok() && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl TryFrom<String> for Slug {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Slug::parse(&s).map_err(|e| e.to_string())
    }
}

impl From<Slug> for String {
    fn from(s: Slug) -> String {
        s.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for s in ["acme", "a-b", "abc", "x1-2y", &"a".repeat(63)] {
            assert!(Slug::parse(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn refuses_bad_and_reserved() {
        for s in ["ab", "-abc", "abc-", "ABC", "a_b", "a.b", "../etc", "a/b", "", &"a".repeat(64), "caf\u{e9}", "www", "api"] {
            assert!(Slug::parse(s).is_err(), "{s}");
        }
        assert_eq!(Slug::parse("admin").unwrap_err().code(), Code::ReservedSlug);
        assert_eq!(Slug::parse("../x").unwrap_err().code(), Code::InvalidSlug);
        let id = ulid::Ulid::new().to_string();
        assert!(is_id_shaped(&id) && is_id_shaped(&id.to_ascii_lowercase()));
        assert_eq!(Slug::parse(&id.to_ascii_lowercase()).unwrap_err().code(), Code::InvalidSlug);
        assert!(Slug::parse("abcdefghjkmnpqrstvwxyz0123").is_err() || !is_id_shaped("abcdefghjkmnpqrstvwxyz0123"));
        assert!(Slug::parse("a-normal-slug-of-26-chars0").is_ok());
    }
}
