//! Addresses of RPC environments and of the endpoints registered in them: Spark's `RpcAddress`
//! and `RpcEndpointAddress`.
//!
//! Forms, parsed with [`FromStr`] and printed with [`Display`](fmt::Display) both ways:
//!
//! | value                                         | text                   |
//! |-----------------------------------------------|------------------------|
//! | `RpcAddress` `1.2.3.4`, 1234                  | `1.2.3.4:1234`         |
//! | `RpcAddress` `::1`, 1234                      | `[::1]:1234`           |
//! | `RpcEndpointAddress` `ep` at `host:7077`      | `rpc://ep@host:7077`   |
//! | `RpcEndpointAddress` `ep` at `::1`, 4040      | `rpc://ep@[::1]:4040`  |
//! | `RpcEndpointAddress` `ep` in a client-mode env| `rpc-client://ep`      |
//!
//! Spark spells the schemes `spark://` and `spark-client://`. Our control plane speaks its own
//! envelope, not Spark's Java-serialized `RequestMessage`, so its addresses use their own
//! schemes too: a Spark URL is never mistaken for one of ours, or the other way round.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The scheme of an endpoint in a server-mode env: `rpc://name@host:port`.
pub const RPC_SCHEME: &str = "rpc";

/// The scheme of an endpoint in a client-mode env, which has no address: `rpc-client://name`.
pub const RPC_CLIENT_SCHEME: &str = "rpc-client";

/// Where an RPC environment listens: Spark's `RpcAddress`.
///
/// `host` is kept as given, without brackets (`::1`, not `[::1]`), so `(host, port)` can be
/// passed to a resolver as it is. [`Display`](fmt::Display) and
/// [`host_port`](RpcAddress::host_port) print Spark's `hostPort` form, which puts an IPv6 host
/// in brackets: `[::1]:7077`.
///
/// ```
/// use rpc_proto::RpcAddress;
///
/// let a: RpcAddress = "[::1]:7077".parse().unwrap();
/// assert_eq!(a, RpcAddress::new("::1", 7077));
/// assert_eq!(a.to_string(), "[::1]:7077");
/// assert_eq!(a.to_url(), "rpc://[::1]:7077");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RpcAddress {
    /// Host name or IP address, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl RpcAddress {
    /// An address from a host and a port. Brackets around an IPv6 host are removed, so
    /// `new("[::1]", 1)` and `new("::1", 1)` are the same address (Spark adds brackets only
    /// where they are missing, to the same effect).
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let mut host = host.into();
        if host.len() >= 2 && host.starts_with('[') && host.ends_with(']') {
            host = host[1..host.len() - 1].to_owned();
        }
        Self { host, port }
    }

    /// Spark's `hostPort`: `host:port`, with an IPv6 host in brackets.
    pub fn host_port(&self) -> String {
        self.to_string()
    }

    /// The address as a URL, `rpc://host:port` (Spark's `toSparkURL`).
    pub fn to_url(&self) -> String {
        format!("{RPC_SCHEME}://{self}")
    }

    /// Parses `rpc://host:port` (Spark's `fromSparkURL`). Anything but the scheme, the host and
    /// the port is rejected: user info, a path (even `/`), a query or a fragment.
    pub fn from_url(url: &str) -> Result<Self, AddressError> {
        let (scheme, rest) = split_scheme(url)?;
        if scheme != RPC_SCHEME {
            return Err(AddressError::BadScheme {
                scheme: scheme.to_owned(),
            });
        }
        rest.parse()
    }

    fn needs_brackets(&self) -> bool {
        self.host.contains(':') && !self.host.starts_with('[')
    }
}

impl fmt::Display for RpcAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.needs_brackets() {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses `host:port` (`[v6]:port` for an IPv6 host).
impl FromStr for RpcAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_host_port(s)
    }
}

impl From<SocketAddr> for RpcAddress {
    fn from(addr: SocketAddr) -> Self {
        Self {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

/// The address of one endpoint: Spark's `RpcEndpointAddress`, an env address and an endpoint
/// name.
///
/// An env in client mode (Spark's `clientMode`, a driver or executor that accepts no
/// connections) has no address; its endpoints are reachable only over connections the env
/// opened itself, and `address` is `None`.
///
/// Text form: `rpc://name@host:port` (IPv6 hosts in brackets, `rpc://ep@[::1]:4040`) and
/// `rpc-client://name` for client-mode endpoints, where Spark writes `spark://` and
/// `spark-client://`. Spark cannot parse its own `spark-client://` form; we parse
/// `rpc-client://`, so every value prints and parses back to itself.
///
/// Names are not empty and hold no whitespace, control characters, or any of `@ / ? # [ ] %`;
/// [`is_valid_name`](RpcEndpointAddress::is_valid_name) tells. A value built with another name
/// still prints, but its text does not parse.
///
/// ```
/// use rpc_proto::{RpcAddress, RpcEndpointAddress};
///
/// let ep: RpcEndpointAddress = "rpc://Master@[::1]:7077".parse().unwrap();
/// assert_eq!(ep, RpcEndpointAddress::new(RpcAddress::new("::1", 7077), "Master"));
/// assert_eq!(ep.to_string(), "rpc://Master@[::1]:7077");
///
/// let client = RpcEndpointAddress::client("Executor");
/// assert_eq!(client.to_string(), "rpc-client://Executor");
/// assert_eq!(client.to_string().parse::<RpcEndpointAddress>().unwrap(), client);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RpcEndpointAddress {
    /// The env's address; `None` for an env in client mode.
    pub address: Option<RpcAddress>,
    /// The endpoint's name, unique within its env.
    pub name: String,
}

impl RpcEndpointAddress {
    /// An endpoint of an env that listens at `address`.
    pub fn new(address: RpcAddress, name: impl Into<String>) -> Self {
        Self {
            address: Some(address),
            name: name.into(),
        }
    }

    /// An endpoint of an env in client mode.
    pub fn client(name: impl Into<String>) -> Self {
        Self {
            address: None,
            name: name.into(),
        }
    }

    /// Whether the endpoint lives in a client-mode env (it has no address).
    pub fn is_client(&self) -> bool {
        self.address.is_none()
    }

    /// Whether `name` can be an endpoint name whose text form parses back: not empty, and no
    /// whitespace, control characters, or any of `@ / ? # [ ] %`.
    pub fn is_valid_name(name: &str) -> bool {
        !name.is_empty()
            && !name.chars().any(|c| {
                c.is_whitespace()
                    || c.is_control()
                    || matches!(c, '@' | '/' | '?' | '#' | '[' | ']' | '%')
            })
    }
}

impl fmt::Display for RpcEndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            Some(address) => write!(f, "{RPC_SCHEME}://{}@{address}", self.name),
            None => write!(f, "{RPC_CLIENT_SCHEME}://{}", self.name),
        }
    }
}

/// Parses `rpc://name@host:port` and `rpc-client://name`.
impl FromStr for RpcEndpointAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = split_scheme(s)?;
        match scheme {
            RPC_SCHEME => {
                let Some((name, host_port)) = rest.split_once('@') else {
                    return Err(AddressError::MissingName);
                };
                let name = parse_name(name)?;
                let address = parse_host_port(host_port)?;
                Ok(Self::new(address, name))
            }
            RPC_CLIENT_SCHEME => {
                let name = match rest.find(['/', '?', '#']) {
                    Some(at) => {
                        return Err(AddressError::Trailing {
                            junk: rest[at..].to_owned(),
                        })
                    }
                    None => parse_name(rest)?,
                };
                Ok(Self::client(name))
            }
            other => Err(AddressError::BadScheme {
                scheme: other.to_owned(),
            }),
        }
    }
}

/// Text that is not an [`RpcAddress`] or [`RpcEndpointAddress`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// There is no `scheme://` prefix.
    #[error("missing scheme: expected \"rpc://\" or \"rpc-client://\"")]
    MissingScheme,
    /// The scheme is neither `rpc` nor `rpc-client` (`rpc` only, for an [`RpcAddress`] URL).
    #[error("unsupported scheme {scheme:?}")]
    BadScheme {
        /// The scheme found.
        scheme: String,
    },
    /// There is no endpoint name, or it is empty.
    #[error("missing endpoint name")]
    MissingName,
    /// The endpoint name holds a character that names cannot hold.
    #[error("invalid endpoint name {name:?}")]
    InvalidName {
        /// The name found.
        name: String,
    },
    /// The host is empty.
    #[error("empty host")]
    EmptyHost,
    /// The host is not a host name (letters, digits, `-`, `.`, `_`, `~`) or a bracketed IPv6
    /// address.
    #[error("invalid host {host:?}")]
    InvalidHost {
        /// The host found.
        host: String,
    },
    /// There is no `:port` after the host.
    #[error("missing port")]
    MissingPort,
    /// The port is not a number from 0 to 65535.
    #[error("invalid port {port:?}")]
    InvalidPort {
        /// The port found.
        port: String,
    },
    /// A path, query or fragment follows the address.
    #[error("unexpected {junk:?} after the address")]
    Trailing {
        /// What followed.
        junk: String,
    },
}

fn split_scheme(s: &str) -> Result<(&str, &str), AddressError> {
    s.split_once("://").ok_or(AddressError::MissingScheme)
}

fn parse_name(name: &str) -> Result<&str, AddressError> {
    if name.is_empty() {
        Err(AddressError::MissingName)
    } else if RpcEndpointAddress::is_valid_name(name) {
        Ok(name)
    } else {
        Err(AddressError::InvalidName {
            name: name.to_owned(),
        })
    }
}

fn parse_host_port(s: &str) -> Result<RpcAddress, AddressError> {
    let s = match s.find(['/', '?', '#']) {
        Some(at) => {
            return Err(AddressError::Trailing {
                junk: s[at..].to_owned(),
            })
        }
        None => s,
    };
    let (host, port) = if let Some(bracketed) = s.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(AddressError::InvalidHost { host: s.to_owned() });
        };
        if !is_ipv6_host(host) {
            return Err(AddressError::InvalidHost {
                host: format!("[{host}]"),
            });
        }
        match after.strip_prefix(':') {
            Some(port) => (host, port),
            None if after.is_empty() => return Err(AddressError::MissingPort),
            None => {
                return Err(AddressError::InvalidHost {
                    host: format!("[{host}]{after}"),
                })
            }
        }
    } else {
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(if s.is_empty() {
                AddressError::EmptyHost
            } else if is_reg_name(s) {
                AddressError::MissingPort
            } else {
                AddressError::InvalidHost { host: s.to_owned() }
            });
        };
        if host.is_empty() {
            return Err(AddressError::EmptyHost);
        }
        // An IPv6 address without brackets is ambiguous (`::1:80`) and rejected, as URIs do.
        if !is_reg_name(host) {
            return Err(AddressError::InvalidHost {
                host: host.to_owned(),
            });
        }
        (host, port)
    };
    if port.is_empty() {
        return Err(AddressError::MissingPort);
    }
    let port = port
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| port.parse::<u16>().ok())
        .flatten()
        .ok_or_else(|| AddressError::InvalidPort {
            port: port.to_owned(),
        })?;
    Ok(RpcAddress {
        host: host.to_owned(),
        port,
    })
}

/// A host name or IPv4 address: URI "unreserved" characters only.
fn is_reg_name(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An IPv6 address, optionally with a zone (`fe80::1%eth0`).
fn is_ipv6_host(host: &str) -> bool {
    let (addr, zone) = match host.split_once('%') {
        Some((addr, zone)) => (addr, Some(zone)),
        None => (host, None),
    };
    addr.parse::<Ipv6Addr>().is_ok() && zone.is_none_or(is_reg_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Spark's RpcAddressSuite, with `spark://` spelled `rpc://`.

    #[test]
    fn host_port() {
        let address = RpcAddress::new("1.2.3.4", 1234);
        assert_eq!(address.host, "1.2.3.4");
        assert_eq!(address.port, 1234);
        assert_eq!(address.host_port(), "1.2.3.4:1234");
        assert_eq!(address.to_string(), "1.2.3.4:1234");
    }

    #[test]
    fn from_url() {
        let address = RpcAddress::from_url("rpc://1.2.3.4:1234").unwrap();
        assert_eq!(address.host, "1.2.3.4");
        assert_eq!(address.port, 1234);
    }

    #[test]
    fn from_url_rejects_a_typo() {
        assert_eq!(
            RpcAddress::from_url("rpc://1.2. 3.4:1234"),
            Err(AddressError::InvalidHost {
                host: "1.2. 3.4".into()
            })
        );
    }

    #[test]
    fn from_url_rejects_an_invalid_scheme() {
        assert_eq!(
            RpcAddress::from_url("invalid://1.2.3.4:1234"),
            Err(AddressError::BadScheme {
                scheme: "invalid".into()
            })
        );
        assert_eq!(
            RpcAddress::from_url("rpc-client://1.2.3.4:1234"),
            Err(AddressError::BadScheme {
                scheme: "rpc-client".into()
            })
        );
    }

    #[test]
    fn from_url_rejects_user_info_path_query_and_fragment() {
        assert!(matches!(
            RpcAddress::from_url("rpc://ep@1.2.3.4:1234"),
            Err(AddressError::InvalidHost { .. })
        ));
        for (url, junk) in [
            ("rpc://1.2.3.4:1234/", "/"),
            ("rpc://1.2.3.4:1234/path", "/path"),
            ("rpc://1.2.3.4:1234?q=1", "?q=1"),
            ("rpc://1.2.3.4:1234#f", "#f"),
        ] {
            assert_eq!(
                RpcAddress::from_url(url),
                Err(AddressError::Trailing { junk: junk.into() }),
                "{url}"
            );
        }
    }

    #[test]
    fn to_url() {
        assert_eq!(
            RpcAddress::new("1.2.3.4", 1234).to_url(),
            "rpc://1.2.3.4:1234"
        );
    }

    #[test]
    fn ipv6_host_port() {
        let address = RpcAddress::new("::1", 1234);
        assert_eq!(address.host, "::1");
        assert_eq!(address.port, 1234);
        assert_eq!(address.host_port(), "[::1]:1234");
        assert_eq!(RpcAddress::new("[::1]", 1234), address);
    }

    #[test]
    fn ipv6_from_url() {
        let address = RpcAddress::from_url("rpc://[::1]:1234").unwrap();
        assert_eq!(address.host, "::1");
        assert_eq!(address.port, 1234);
        let zoned = RpcAddress::from_url("rpc://[fe80::1%eth0]:80").unwrap();
        assert_eq!(zoned.host, "fe80::1%eth0");
        assert_eq!(zoned.to_string(), "[fe80::1%eth0]:80");
    }

    #[test]
    fn ipv6_to_url() {
        assert_eq!(RpcAddress::new("::1", 1234).to_url(), "rpc://[::1]:1234");
    }

    #[test]
    fn host_port_parse_errors() {
        for (text, err) in [
            ("", AddressError::EmptyHost),
            (":1234", AddressError::EmptyHost),
            ("host", AddressError::MissingPort),
            ("host:", AddressError::MissingPort),
            ("[::1]", AddressError::MissingPort),
            ("[::1]:", AddressError::MissingPort),
            (
                "host:http",
                AddressError::InvalidPort {
                    port: "http".into(),
                },
            ),
            (
                "host:65536",
                AddressError::InvalidPort {
                    port: "65536".into(),
                },
            ),
            ("host:+80", AddressError::InvalidPort { port: "+80".into() }),
            ("host:-1", AddressError::InvalidPort { port: "-1".into() }),
            ("::1:80", AddressError::InvalidHost { host: "::1".into() }),
            (
                "[::1:80",
                AddressError::InvalidHost {
                    host: "[::1:80".into(),
                },
            ),
            (
                "[1.2.3.4]:80",
                AddressError::InvalidHost {
                    host: "[1.2.3.4]".into(),
                },
            ),
            (
                "[::1]x:80",
                AddressError::InvalidHost {
                    host: "[::1]x:80".into(),
                },
            ),
            (
                "h st:80",
                AddressError::InvalidHost {
                    host: "h st".into(),
                },
            ),
            (
                "h\u{e9}:80",
                AddressError::InvalidHost {
                    host: "h\u{e9}".into(),
                },
            ),
            ("a b", AddressError::InvalidHost { host: "a b".into() }),
        ] {
            assert_eq!(text.parse::<RpcAddress>(), Err(err), "{text:?}");
        }
        assert_eq!("host:0".parse(), Ok(RpcAddress::new("host", 0)));
        assert_eq!("host:65535".parse(), Ok(RpcAddress::new("host", 65535)));
    }

    #[test]
    fn from_socket_addr() {
        let v4: SocketAddr = "127.0.0.1:7077".parse().unwrap();
        assert_eq!(RpcAddress::from(v4).to_string(), "127.0.0.1:7077");
        let v6: SocketAddr = "[::1]:7077".parse().unwrap();
        assert_eq!(RpcAddress::from(v6), RpcAddress::new("::1", 7077));
    }

    // Spark's RpcEndpointAddress forms.

    #[test]
    fn endpoint_round_trips() {
        for (text, value) in [
            (
                "rpc://ep@1.2.3.4:1234",
                RpcEndpointAddress::new(RpcAddress::new("1.2.3.4", 1234), "ep"),
            ),
            (
                "rpc://ep@[::1]:4040",
                RpcEndpointAddress::new(RpcAddress::new("::1", 4040), "ep"),
            ),
            (
                "rpc://CoarseGrainedScheduler@driver-host.example.com:7078",
                RpcEndpointAddress::new(
                    RpcAddress::new("driver-host.example.com", 7078),
                    "CoarseGrainedScheduler",
                ),
            ),
            (
                "rpc-client://Executor",
                RpcEndpointAddress::client("Executor"),
            ),
        ] {
            assert_eq!(text.parse::<RpcEndpointAddress>().as_ref(), Ok(&value));
            assert_eq!(value.to_string(), text);
        }
        assert!(RpcEndpointAddress::client("x").is_client());
    }

    #[test]
    fn endpoint_parse_errors() {
        for (text, err) in [
            ("ep@host:1", AddressError::MissingScheme),
            (
                "spark://ep@host:1",
                AddressError::BadScheme {
                    scheme: "spark".into(),
                },
            ),
            (
                "spark-client://ep",
                AddressError::BadScheme {
                    scheme: "spark-client".into(),
                },
            ),
            ("rpc://host:1", AddressError::MissingName),
            ("rpc://@host:1", AddressError::MissingName),
            ("rpc-client://", AddressError::MissingName),
            (
                "rpc://e p@host:1",
                AddressError::InvalidName { name: "e p".into() },
            ),
            ("rpc://ep@", AddressError::EmptyHost),
            ("rpc://ep@:1", AddressError::EmptyHost),
            ("rpc://ep@host", AddressError::MissingPort),
            (
                "rpc://ep@host:x",
                AddressError::InvalidPort { port: "x".into() },
            ),
            (
                "rpc://ep@host:1/",
                AddressError::Trailing { junk: "/".into() },
            ),
            (
                "rpc://ep@host:1?a",
                AddressError::Trailing { junk: "?a".into() },
            ),
            (
                "rpc://ep@host:1#a",
                AddressError::Trailing { junk: "#a".into() },
            ),
            (
                "rpc-client://ep/x",
                AddressError::Trailing { junk: "/x".into() },
            ),
            (
                "rpc://a@b@host:1",
                AddressError::InvalidHost {
                    host: "b@host".into(),
                },
            ),
            (
                "rpc://ep@1.2. 3.4:1234",
                AddressError::InvalidHost {
                    host: "1.2. 3.4".into(),
                },
            ),
        ] {
            assert_eq!(text.parse::<RpcEndpointAddress>(), Err(err), "{text:?}");
        }
    }

    #[test]
    fn error_messages_are_lowercase() {
        let err = "rpc://ep@host:x".parse::<RpcEndpointAddress>().unwrap_err();
        assert_eq!(err.to_string(), "invalid port \"x\"");
        assert_eq!(
            AddressError::MissingScheme.to_string(),
            "missing scheme: expected \"rpc://\" or \"rpc-client://\""
        );
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9._~-]{1,30}",
            any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
            any::<[u16; 8]>().prop_map(|s| Ipv6Addr::from(s).to_string()),
            (any::<[u16; 8]>(), "[a-z0-9]{1,5}")
                .prop_map(|(s, zone)| format!("{}%{zone}", Ipv6Addr::from(s))),
        ]
    }

    fn address() -> impl Strategy<Value = RpcAddress> {
        (host(), any::<u16>()).prop_map(|(host, port)| RpcAddress { host, port })
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z0-9._~:!$&'()*+,;=-]{1,30}",
            "\\PC{1,12}".prop_filter("valid name", |n| RpcEndpointAddress::is_valid_name(n)),
        ]
    }

    fn endpoint() -> impl Strategy<Value = RpcEndpointAddress> {
        (prop::option::of(address()), name())
            .prop_map(|(address, name)| RpcEndpointAddress { address, name })
    }

    proptest! {
        #[test]
        fn address_text_round_trips(a in address()) {
            prop_assert_eq!(a.to_string().parse::<RpcAddress>(), Ok(a.clone()));
            prop_assert_eq!(RpcAddress::from_url(&a.to_url()), Ok(a));
        }

        #[test]
        fn endpoint_text_round_trips(e in endpoint()) {
            prop_assert_eq!(e.to_string().parse::<RpcEndpointAddress>(), Ok(e));
        }

        #[test]
        fn endpoint_postcard_round_trips(e in endpoint()) {
            let bytes = postcard::to_allocvec(&e).unwrap();
            prop_assert_eq!(postcard::from_bytes::<RpcEndpointAddress>(&bytes).unwrap(), e);
        }

        #[test]
        fn parsing_any_text_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<RpcAddress>();
            let _ = s.parse::<RpcEndpointAddress>();
            let _ = RpcAddress::from_url(&s);
        }

        #[test]
        fn parsing_near_misses_never_panics(
            scheme in prop_oneof![Just("rpc://"), Just("rpc-client://"), Just("")],
            rest in "[a-z@:\\[\\]/?#%0-9 ]{0,20}",
        ) {
            let text = format!("{scheme}{rest}");
            if let Ok(e) = text.parse::<RpcEndpointAddress>() {
                // Whatever parses prints back to itself.
                prop_assert_eq!(e.to_string().parse::<RpcEndpointAddress>(), Ok(e));
            }
        }
    }
}
