//! [`BrokerUrl`]: where the broker is and how to log in, parsed and checked once. Its password
//! never reaches a log: `Debug` and `Display` show `***` in its place.

use std::fmt;
use std::str::FromStr;

use percent_encoding::percent_decode_str;

use super::BrokerError;

/// The port of a URL that names none (Redis's default).
const DEFAULT_PORT: u16 = 6379;

/// A broker's address and credentials: `redis://[[user]:password@]host[:port][/db]`, or
/// `rediss://…` for TLS. The user name and the password are percent-decoded (a `@`, `:` or `/`
/// in a password is written `%40`, `%3A`, `%2F`); no user name means Redis's `default` user.
/// Query parameters and fragments are refused rather than ignored: the protocol and timeouts are
/// this crate's to choose.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    tls: bool,
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl BrokerUrl {
    /// Parses and checks `url`. The error says what is wrong without repeating the URL (which
    /// may hold a password).
    pub fn parse(url: &str) -> Result<Self, BrokerError> {
        let bad = |reason: &str| BrokerError::BadUrl(reason.to_owned());
        let parsed = url::Url::parse(url).map_err(|e| BrokerError::BadUrl(e.to_string()))?;
        let tls = match parsed.scheme() {
            "redis" => false,
            "rediss" => true,
            _ => return Err(bad("the scheme must be redis:// or rediss://")),
        };
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(bad("no host")),
        };
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("query parameters and fragments are not supported"));
        }
        let decode = |s: &str, what: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| BrokerError::BadUrl(format!("the {what} is not UTF-8 once decoded")))
        };
        let username = Some(decode(parsed.username(), "user name")?).filter(|u| !u.is_empty());
        let password = parsed.password().map(|p| decode(p, "password")).transpose()?;
        if username.is_some() && password.is_none() {
            return Err(bad("a user name needs a password (redis://user:password@host)"));
        }
        let db = match parsed.path().trim_start_matches('/') {
            "" => 0,
            n => n
                .parse::<u32>()
                .map_err(|_| bad("the path must be a database number (/0, /1, …)"))?
                .into(),
        };
        let port = parsed.port().unwrap_or(DEFAULT_PORT);
        Ok(Self { tls, host, port, username, password, db })
    }

    /// Whether the connection is TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host: a name, or an IP address (without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (6379 when the URL names none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The ACL user, if the URL names one (otherwise Redis's `default` user).
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The database number (`SELECT`ed on connecting).
    pub fn db(&self) -> i64 {
        self.db
    }

    /// `host:port`, for messages.
    pub(super) fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// What the crate needs for its handshake: `HELLO 3` (RESP3, which pushes need) with
    /// `AUTH`, then `SELECT`.
    pub(super) fn connection_info(&self) -> redis::RedisConnectionInfo {
        let mut info = redis::RedisConnectionInfo::default()
            .set_protocol(redis::ProtocolVersion::RESP3)
            .set_db(self.db);
        if let Some(user) = &self.username {
            info = info.set_username(user);
        }
        if let Some(password) = &self.password {
            info = info.set_password(password);
        }
        info
    }
}

impl FromStr for BrokerUrl {
    type Err = BrokerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The URL with `***` for the password: safe to log.
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", if self.tls { "rediss" } else { "redis" })?;
        if let Some(user) = &self.username {
            f.write_str(user)?;
        }
        if self.password.is_some() {
            f.write_str(":***@")?;
        }
        write!(f, "{}/{}", self.addr(), self.db)
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(url: &str) -> String {
        match BrokerUrl::parse(url) {
            Err(BrokerError::BadUrl(reason)) => reason,
            other => panic!("{url}: expected a bad URL, got {other:?}"),
        }
    }

    #[test]
    fn the_parts_of_a_url() {
        let u = BrokerUrl::parse("redis://127.0.0.1").unwrap();
        assert_eq!(
            (u.is_tls(), u.host(), u.port(), u.username(), u.db()),
            (false, "127.0.0.1", 6379, None, 0)
        );
        assert_eq!(u.password, None);
        let u = BrokerUrl::parse("rediss://relay:p%40ss%3Aw%2Frd@cache.example:6380/3").unwrap();
        assert_eq!(
            (u.is_tls(), u.host(), u.port(), u.username(), u.db()),
            (true, "cache.example", 6380, Some("relay"), 3)
        );
        assert_eq!(u.password.as_deref(), Some("p@ss:w/rd"));
        let u = BrokerUrl::parse("redis://:secret@[::1]:7000/").unwrap();
        assert_eq!((u.host(), u.port(), u.username()), ("::1", 7000, None));
        assert_eq!(u.password.as_deref(), Some("secret"));
        assert_eq!(u.to_string(), "redis://:***@[::1]:7000/0");
        let info = u.connection_info();
        assert_eq!(
            (info.password(), info.protocol()),
            (Some("secret"), redis::ProtocolVersion::RESP3)
        );
    }

    #[test]
    fn the_password_is_never_shown() {
        let u = BrokerUrl::parse("redis://relay:hunter2@localhost/1").unwrap();
        assert_eq!(u.to_string(), "redis://relay:***@localhost:6379/1");
        assert_eq!(format!("{u:?}"), "BrokerUrl(redis://relay:***@localhost:6379/1)");
        // Nor in the error of a URL that is refused for something else.
        let e = BrokerUrl::parse("redis://relay:hunter2@localhost/x").unwrap_err();
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
    }

    #[test]
    fn what_is_refused() {
        assert!(bad("http://localhost").contains("scheme"));
        assert!(bad("redis://").contains("host"), "{}", bad("redis://"));
        assert!(bad("redis://localhost/db").contains("database number"));
        assert!(bad("redis://localhost/-1").contains("database number"));
        assert!(bad("redis://relay@localhost").contains("needs a password"));
        assert!(bad("redis://localhost/?protocol=resp2").contains("query"));
        assert!(bad("redis://:%FF@localhost").contains("password is not UTF-8"));
        assert!(bad("not a url").contains("relative URL"), "{}", bad("not a url"));
        assert!(
            bad("redis://localhost:99999").contains("port"),
            "{}",
            bad("redis://localhost:99999")
        );
    }
}
