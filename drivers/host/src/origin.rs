//! Which web pages may open a WebSocket link: the `Origin` allowlist (spec §23.3).
//!
//! Browsers send `Origin` on every WebSocket upgrade and let any page open one, token in the
//! query (`?token=`) included; other clients send none. An upgrade that carries an `Origin` is
//! accepted only if the allowlist names it, or holds `"*"`; one without is not a browser's and
//! is judged by its token alone. The default allowlist is empty: no page may open a link until
//! its origin is configured.

/// The `Origin` allowlist of a node's WebSocket endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// Lowercase `scheme://host[:port]` origins, without a trailing `/`.
    allowed: Vec<String>,
    /// `"*"` was listed: every origin.
    any: bool,
}

/// An origin as compared: ASCII lowercase, no trailing `/`.
fn normal(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

impl OriginPolicy {
    /// A policy allowing `origins` (`"https://app.example"`, `"http://localhost:3000"`, or
    /// `"*"` for every origin).
    pub fn new<S: AsRef<str>>(origins: &[S]) -> Self {
        let any = origins.iter().any(|o| o.as_ref().trim() == "*");
        let allowed = origins.iter().map(|o| normal(o.as_ref())).filter(|o| o != "*").collect();
        Self { allowed, any }
    }

    /// Whether an upgrade with these `Origin` headers (none: not a browser) may proceed. An
    /// `Origin` that is not text, or is repeated, is refused unless every origin is allowed.
    pub fn allows(&self, origins: &[&[u8]]) -> bool {
        let origin = match origins {
            [] => return true,
            _ if self.any => return true,
            [one] => *one,
            _ => return false,
        };
        let Ok(origin) = std::str::from_utf8(origin) else { return false };
        let origin = normal(origin);
        self.allowed.contains(&origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_without_an_origin_pass_and_pages_need_to_be_listed() {
        let none = OriginPolicy::default();
        assert!(none.allows(&[]), "not a browser: the token decides");
        assert!(!none.allows(&[b"https://app.example"]), "no page by default");

        let listed = OriginPolicy::new(&["https://App.Example/", "http://localhost:3000"]);
        assert!(listed.allows(&[b"https://app.example"]));
        assert!(listed.allows(&[b"HTTPS://APP.EXAMPLE"]), "case does not matter");
        assert!(listed.allows(&[b"http://localhost:3000"]));
        assert!(!listed.allows(&[b"http://localhost:3001"]), "the port is part of it");
        assert!(!listed.allows(&[b"http://app.example"]), "so is the scheme");
        assert!(!listed.allows(&[b"https://app.example.evil"]));
        assert!(!listed.allows(&[b"null"]), "an opaque origin is no listed one");
        assert!(!listed.allows(&[&[0xff, 0xfe]]), "not text");

        let twice: [&[u8]; 2] = [b"https://app.example", b"https://app.example"];
        assert!(!listed.allows(&twice), "a repeated Origin");

        let any = OriginPolicy::new(&["*"]);
        assert!(any.allows(&[b"https://anywhere.example"]));
        assert!(any.allows(&twice));
    }
}
