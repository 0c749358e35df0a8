use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// Where a message goes, in oslo.messaging's terms.
///
/// `exchange` defaults to the transport's `control_exchange`; `topic` names the
/// service (`compute`); `server` picks one host's queue (`compute.host1`);
/// `fanout` sends to every server listening on the topic.
///
/// ```
/// use novarpc_core::{Target, Version};
///
/// let target = Target::new("compute").server("host1").version(Version::new(1, 3));
/// assert_eq!(target.routing_key(), "compute.host1");
/// assert_eq!(target.exchange_or("nova"), "nova");
/// assert_eq!(target.to_string(), "compute.host1");
/// assert!(target.validate().is_ok());
/// assert!(Target::new("a#b").validate().is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Target {
    /// The exchange to publish on; `None` means the transport's
    /// `control_exchange`.
    pub exchange: Option<String>,
    /// The service the message is for (`compute`); names the shared queue.
    pub topic: String,
    /// One host of the topic (`host1`): requests go to its `topic.server`
    /// queue. RPC servers must name theirs.
    pub server: Option<String>,
    /// Whether a cast goes to every server listening on the topic rather
    /// than one of them. Calls cannot be fanouts.
    pub fanout: bool,
    /// The endpoint namespace requests are for; `None` is the default
    /// namespace. Servers dispatch on it.
    pub namespace: Option<String>,
    /// The API version requests claim; `None` means `1.0`.
    pub version: Option<Version>,
}

impl Target {
    /// A target for `topic` on the control exchange.
    pub fn new(topic: impl Into<String>) -> Self {
        Target {
            topic: topic.into(),
            ..Target::default()
        }
    }

    /// Publishes on `exchange` instead of the control exchange.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }

    /// Addresses one host of the topic (its `topic.server` queue).
    pub fn server(mut self, server: impl Into<String>) -> Self {
        self.server = Some(server.into());
        self
    }

    /// Makes casts reach every server of the topic (`true`) or one (`false`).
    pub fn fanout(mut self, fanout: bool) -> Self {
        self.fanout = fanout;
        self
    }

    /// Addresses the endpoints of `namespace` rather than the default one.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The API version requests claim: a [`Version`] (`Version::new(1, 3)`,
    /// or `"1.3".parse()?` for text), as everywhere else in novarpc.
    pub fn version(mut self, version: Version) -> Self {
        self.version = Some(version);
        self
    }

    /// The exchange to use, given the transport's control exchange.
    pub fn exchange_or<'a>(&'a self, control_exchange: &'a str) -> &'a str {
        self.exchange.as_deref().unwrap_or(control_exchange)
    }

    /// oslo's routing key of a request: `topic`, or `topic.server` (built
    /// only then: most requests go to the topic, once per message).
    pub fn routing_key(&self) -> std::borrow::Cow<'_, str> {
        match &self.server {
            Some(server) => format!("{}.{server}", self.topic).into(),
            None => self.topic.as_str().into(),
        }
    }

    /// oslo's fanout exchange of the topic: `<topic>_fanout`.
    pub fn fanout_exchange(&self) -> String {
        format!("{}_fanout", self.topic)
    }

    /// oslo's notification routing key (and queue): `<topic>.<priority>`.
    pub fn notification_key(&self, priority: crate::Priority) -> String {
        format!("{}.{}", self.topic, priority.routing_name())
    }

    /// Checks that the target can be routed by every backend.
    pub fn validate(&self) -> Result<(), Error> {
        fn check(what: &str, value: &str) -> Result<(), Error> {
            if value.is_empty() {
                return Err(Error::InvalidTarget(format!("{what} must not be empty")));
            }
            // Checked on every request: plain ASCII names need no look at
            // Unicode's whitespace.
            if value
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'#' | b'*' | b','))
            {
                return Ok(());
            }
            // '#' and '*' are AMQP topic wildcards; ',' and whitespace break queue names.
            if let Some(c) = value
                .chars()
                .find(|c| matches!(c, '#' | '*' | ',') || c.is_whitespace() || c.is_control())
            {
                return Err(Error::InvalidTarget(format!(
                    "{what} `{value}` contains the character {c:?}"
                )));
            }
            Ok(())
        }
        check("topic", &self.topic)?;
        if let Some(server) = &self.server {
            check("server", server)?;
        }
        if let Some(exchange) = &self.exchange {
            check("exchange", exchange)?;
        }
        Ok(())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.topic)?;
        if let Some(server) = &self.server {
            write!(f, ".{server}")?;
        }
        if self.fanout {
            write!(f, " (fanout)")?;
        }
        Ok(())
    }
}

/// An RPC API version, `MAJOR.MINOR`. Endpoints declare one, clients may cap
/// theirs, and oslo's compatibility rule ([`Version::can_handle`]) decides
/// which endpoint serves a request.
///
/// ```
/// use novarpc_core::Version;
///
/// let endpoint = Version::new(1, 3);
/// assert!(endpoint.can_handle("1.1".parse()?));
/// assert!(!endpoint.can_handle("1.4".parse()?));
/// assert!(!endpoint.can_handle("2".parse()?));
/// assert_eq!(endpoint.to_string(), "1.3");
/// # Ok::<(), novarpc_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Changes when the API breaks compatibility.
    pub major: u32,
    /// Grows when the API gains methods or arguments compatibly.
    pub minor: u32,
}

impl Version {
    /// `major.minor`; usable in constants.
    pub const fn new(major: u32, minor: u32) -> Self {
        Version { major, minor }
    }

    /// oslo's rule: a message of version `requested` can be handled by an
    /// endpoint of version `self` when majors match and `requested.minor <= self.minor`.
    pub fn can_handle(&self, requested: Version) -> bool {
        self.major == requested.major && requested.minor <= self.minor
    }
}

/// A version written out without allocating, for the wire.
pub(crate) struct VersionText {
    // The longest is 21 bytes; with a one-byte length, 24 in all.
    buf: [u8; 23],
    len: u8,
}

impl VersionText {
    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits and a dot are ever written.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("1.0")
    }
}

impl Version {
    /// `MAJOR.MINOR` in a stack buffer (the longest is 21 bytes).
    pub(crate) fn text(&self) -> VersionText {
        use std::io::Write;
        let mut buf = [0u8; 23];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        let _ = write!(cursor, "{}.{}", self.major, self.minor);
        // At most 21 bytes are written.
        let len = cursor.position() as u8;
        VersionText { buf, len }
    }
}

impl Default for Version {
    fn default() -> Self {
        Version::new(1, 0)
    }
}

impl FromStr for Version {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidVersion(s.to_owned());
        let (major, minor) = match s.split_once('.') {
            Some((major, minor)) => (major, minor),
            None => (s, "0"),
        };
        let parse = |part: &str| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse::<u32>().map_err(|_| bad())
        };
        Ok(Version::new(parse(major)?, parse(minor)?))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!("1.3".parse::<Version>().unwrap(), Version::new(1, 3));
        assert_eq!("2".parse::<Version>().unwrap(), Version::new(2, 0));
        for bad in ["", "a", "1.", "1.x", "-1", "1.2.3"] {
            assert!(
                matches!(bad.parse::<Version>(), Err(Error::InvalidVersion(_))),
                "{bad}"
            );
        }
        let endpoint = Version::new(1, 3);
        assert!(endpoint.can_handle(Version::new(1, 0)));
        assert!(endpoint.can_handle(Version::new(1, 3)));
        assert!(!endpoint.can_handle(Version::new(1, 4)));
        assert!(!endpoint.can_handle(Version::new(2, 0)));
    }

    #[test]
    fn targets_reject_unroutable_names() {
        assert!(Target::new("compute").server("h1").validate().is_ok());
        assert!(matches!(
            Target::new("").validate(),
            Err(Error::InvalidTarget(_))
        ));
        assert!(matches!(
            Target::new("a#b").validate(),
            Err(Error::InvalidTarget(_))
        ));
    }

    #[test]
    fn version_text_is_display() {
        for v in [
            Version::new(1, 0),
            Version::new(12, 345),
            Version::new(u32::MAX, u32::MAX),
        ] {
            assert_eq!(v.text().as_str(), v.to_string());
        }
    }
}
