//! The block server's failure text for too many open streams. (The block protocol's RPC
//! bodies are Spark's `BlockTransferMessage`s, in [`shuffle`](crate::shuffle).)

use std::fmt;

/// The failure of an `OpenBlocks` refused because its connection has as many streams open as
/// the server allows: [`Display`](fmt::Display) writes the `RpcFailure` text,
/// `too many open streams on this connection: <open> (the limit is <limit>)`.
///
/// A reader recognises it by [`PREFIX`](Self::PREFIX) alone ([`matches`](Self::matches)); the
/// rest of the text is for people.
///
/// ```
/// use rpc_proto::TooManyStreams;
///
/// let text = TooManyStreams { open: 2, limit: 2 }.to_string();
/// assert_eq!(text, "too many open streams on this connection: 2 (the limit is 2)");
/// assert!(TooManyStreams::matches(&text));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TooManyStreams {
    /// How many streams the connection has open.
    pub open: usize,
    /// How many it may have open.
    pub limit: usize,
}

impl TooManyStreams {
    /// The start of the failure text.
    pub const PREFIX: &'static str = "too many open streams on this connection";

    /// Whether a failure text from a block server is this failure.
    pub fn matches(text: &str) -> bool {
        text.starts_with(Self::PREFIX)
    }
}

impl fmt::Display for TooManyStreams {
    /// The failure text, as sent in an `RpcFailure`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (the limit is {})",
            Self::PREFIX,
            self.open,
            self.limit
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_text_of_too_many_streams() {
        // Frozen: older fetchers match the prefix.
        assert_eq!(
            TooManyStreams {
                open: 256,
                limit: 256
            }
            .to_string(),
            "too many open streams on this connection: 256 (the limit is 256)"
        );
        assert!(TooManyStreams::matches(
            "too many open streams on this connection"
        ));
        assert!(!TooManyStreams::matches("too many blocks: 5"));
        assert!(!TooManyStreams::matches(""));
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn too_many_streams_texts_match(open in any::<usize>(), limit in any::<usize>()) {
            let text = TooManyStreams { open, limit }.to_string();
            prop_assert!(TooManyStreams::matches(&text));
        }
    }
}
