//! The block protocol's RPC bodies: our own, versioned by their tag.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::envelope::{decode_payload, encode_payload, PayloadError};

/// A message of the block protocol: the body of an RPC or of its reply.
///
/// Encoded with postcard ([`encode_payload`](crate::encode_payload)): a varint tag (the
/// variant's index) and then the message's fields. The tag is the version: a message whose
/// fields change becomes a new variant with a new tag, appended at the end, and an existing tag
/// never changes meaning. A peer that does not know a tag fails the RPC with "malformed block
/// message" rather than misreading it.
///
/// ```
/// use rpc_proto::{BlockMessage, StreamHandle};
///
/// let handle = BlockMessage::StreamHandle(StreamHandle { stream_id: 7, num_chunks: 2 });
/// assert_eq!(&handle.encode()[..], &[1, 7, 2]);
/// assert_eq!(BlockMessage::decode(&handle.encode()).unwrap(), handle);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BlockMessage {
    /// Tag 0, client to server: open a stream of these blocks.
    OpenBlocks(OpenBlocks),
    /// Tag 1, the server's reply to [`OpenBlocks`](BlockMessage::OpenBlocks).
    StreamHandle(StreamHandle),
}

impl BlockMessage {
    /// The message's bytes, to send as an RPC body.
    pub fn encode(&self) -> Bytes {
        // Strings, integers and sequences of known length: postcard cannot fail on them.
        encode_payload(self)
            .expect("block messages always encode")
            .into()
    }

    /// Reads a message written by [`encode`](BlockMessage::encode).
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        decode_payload(bytes)
    }
}

/// Asks a block server for a stream of blocks: Spark's `OpenBlocks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenBlocks {
    /// The application the blocks belong to.
    pub app_id: String,
    /// The executor that wrote them.
    pub exec_id: String,
    /// The blocks, in the order of the stream's chunks.
    pub block_ids: Vec<String>,
}

/// A stream of chunks a block server registered: Spark's `StreamHandle`. Chunk `i` of stream
/// `stream_id` is the `i`th block asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHandle {
    /// The stream's id on the connection that opened it.
    pub stream_id: u64,
    /// How many chunks it has: one per block.
    pub num_chunks: u32,
}

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

    fn open() -> BlockMessage {
        BlockMessage::OpenBlocks(OpenBlocks {
            app_id: "app".into(),
            exec_id: "e1".into(),
            block_ids: vec!["b0".into(), "rdd_1".into()],
        })
    }

    #[test]
    fn golden_bytes_of_the_first_tags() {
        // Frozen: peers of other versions read these bytes.
        let expected: &[u8] = &[
            0, // tag: OpenBlocks
            3, b'a', b'p', b'p', // app_id
            2, b'e', b'1', // exec_id
            2,    // two block ids
            2, b'b', b'0', //
            5, b'r', b'd', b'd', b'_', b'1',
        ];
        assert_eq!(&open().encode()[..], expected);
        let handle = BlockMessage::StreamHandle(StreamHandle {
            stream_id: 300,
            num_chunks: 2,
        });
        // tag 1, stream id 300 as a varint, two chunks
        assert_eq!(&handle.encode()[..], &[1, 0xac, 0x02, 2]);
    }

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

    #[test]
    fn every_message_round_trips() {
        let handle = BlockMessage::StreamHandle(StreamHandle {
            stream_id: u64::MAX,
            num_chunks: u32::MAX,
        });
        let empty = BlockMessage::OpenBlocks(OpenBlocks {
            app_id: String::new(),
            exec_id: String::new(),
            block_ids: Vec::new(),
        });
        for message in [open(), handle, empty] {
            assert_eq!(BlockMessage::decode(&message.encode()).unwrap(), message);
        }
    }

    #[test]
    fn unknown_tags_truncated_and_longer_bodies_are_refused() {
        assert!(matches!(
            BlockMessage::decode(&[2, 0]),
            Err(PayloadError::Decode(_))
        ));
        let bytes = open().encode();
        assert!(BlockMessage::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(
            BlockMessage::decode(&longer),
            Err(PayloadError::TrailingBytes { extra: 1 })
        );
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn message() -> impl Strategy<Value = BlockMessage> {
        prop_oneof![
            (
                "\\PC{0,20}",
                "\\PC{0,20}",
                prop::collection::vec("\\PC{0,20}", 0..8)
            )
                .prop_map(|(app_id, exec_id, block_ids)| {
                    BlockMessage::OpenBlocks(OpenBlocks {
                        app_id,
                        exec_id,
                        block_ids,
                    })
                }),
            (any::<u64>(), any::<u32>()).prop_map(|(stream_id, num_chunks)| {
                BlockMessage::StreamHandle(StreamHandle {
                    stream_id,
                    num_chunks,
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip(message in message()) {
            prop_assert_eq!(BlockMessage::decode(&message.encode()), Ok(message));
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(message) = BlockMessage::decode(&bytes) {
                let again = BlockMessage::decode(&message.encode());
                prop_assert_eq!(again, Ok(message));
            }
        }

        #[test]
        fn too_many_streams_texts_match(open in any::<usize>(), limit in any::<usize>()) {
            let text = TooManyStreams { open, limit }.to_string();
            prop_assert!(TooManyStreams::matches(&text));
        }
    }
}
