//! A connection's two addresses: [`ConnectionAddrs`].

use std::net::SocketAddr;

/// Addresses of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionAddrs {
    /// This side's address.
    pub local: SocketAddr,
    /// The peer's address.
    pub peer: SocketAddr,
}
