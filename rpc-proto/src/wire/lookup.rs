//! Lookups: does an endpoint exist, and does it take the caller's types?

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::envelope::{decode_payload, encode_payload, EnvelopeKind, EnvelopePrefix, PayloadError};

/// The name of every env's built-in lookup endpoint (Spark's `RpcEndpointVerifier`).
pub const VERIFIER_NAME: &str = "endpoint-verifier";

/// The body of a lookup: an envelope of kind [`Verify`](EnvelopeKind::Verify) with the fixed
/// part `prefix` (whose receiver is the endpoint looked up and whose message type is the
/// caller's [endpoint identity](super::endpoint_identity)), no deadline and an empty payload.
///
/// ```
/// use rpc_proto::{Envelope, EnvelopeKind, EnvelopePrefix};
///
/// let prefix = EnvelopePrefix::new(None, "Master", "Hello -> String");
/// let (envelope, payload) = Envelope::decode(rpc_proto::wire::lookup_request(&prefix)).unwrap();
/// assert_eq!(envelope.kind, EnvelopeKind::Verify);
/// assert_eq!((envelope.receiver.as_str(), envelope.message_type.as_str()), ("Master", "Hello -> String"));
/// assert!(payload.is_empty());
/// ```
pub fn lookup_request(prefix: &EnvelopePrefix) -> Bytes {
    prefix.encode_raw(None, EnvelopeKind::Verify, &[])
}

/// The reply to a lookup, postcard-encoded: tag `0`, `1`, or `2` followed by a string.
///
/// Variants are only ever appended: their index is their wire encoding.
///
/// ```
/// use rpc_proto::LookupReply;
///
/// assert_eq!(&LookupReply::Found.encode()[..], &[0]);
/// assert_eq!(LookupReply::decode(&[1]).unwrap(), LookupReply::NotFound);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LookupReply {
    /// Tag 0: the endpoint exists and takes the caller's types.
    Found,
    /// Tag 1: no endpoint of that name.
    NotFound,
    /// Tag 2: the endpoint exists and takes other types. The string is the endpoint's own
    /// identity when the env tells it (only to itself, and older peers to anyone), else
    /// empty.
    TypeMismatch(String),
}

impl LookupReply {
    /// The reply's bytes, to send as the `RpcResponse` body.
    pub fn encode(&self) -> Bytes {
        // A tag and a string: postcard cannot fail on them.
        encode_payload(self)
            .expect("lookup replies always encode")
            .into()
    }

    /// Reads a reply written by [`encode`](Self::encode). Bytes after it are an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        decode_payload(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::RpcAddress;

    /// Golden bytes: peers of other versions read them. Do not edit them to make a test pass.
    #[test]
    fn golden_bytes_of_lookup_replies() {
        assert_eq!(&LookupReply::Found.encode()[..], &[0]);
        assert_eq!(&LookupReply::NotFound.encode()[..], &[1]);
        assert_eq!(
            &LookupReply::TypeMismatch(String::new()).encode()[..],
            &[2, 0]
        );
        assert_eq!(
            &LookupReply::TypeMismatch("A -> B".into()).encode()[..],
            &[2, 6, b'A', b' ', b'-', b'>', b' ', b'B']
        );
    }

    #[test]
    fn golden_bytes_of_a_lookup_request() {
        let sender = RpcAddress::new("h", 1);
        let prefix = EnvelopePrefix::new(Some(&sender), "ep", "T");
        assert_eq!(
            &lookup_request(&prefix)[..],
            &[
                1, // envelope version
                1, 1, b'h', 1, // sender: Some, host "h", port 1
                2, b'e', b'p', // receiver: the endpoint looked up
                1, b'T', // message type: the caller's endpoint identity
                0,    // no deadline
                3,    // kind: Verify
                      // no payload
            ][..]
        );
        assert_eq!(
            &lookup_request(&EnvelopePrefix::new(None, "", ""))[..],
            &[1, 0, 0, 0, 0, 3]
        );
    }

    #[test]
    fn the_verifier_is_named_as_in_spark() {
        assert_eq!(VERIFIER_NAME, "endpoint-verifier");
    }

    #[test]
    fn unknown_tags_truncated_and_longer_replies_are_refused() {
        assert!(matches!(
            LookupReply::decode(&[3]),
            Err(PayloadError::Decode(_))
        ));
        assert!(matches!(
            LookupReply::decode(&[]),
            Err(PayloadError::Decode(_))
        ));
        assert!(matches!(
            LookupReply::decode(&[2, 2, b'A']),
            Err(PayloadError::Decode(_))
        ));
        assert_eq!(
            LookupReply::decode(&[0, 0]),
            Err(PayloadError::TrailingBytes { extra: 1 })
        );
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn reply() -> impl Strategy<Value = LookupReply> {
        prop_oneof![
            Just(LookupReply::Found),
            Just(LookupReply::NotFound),
            "\\PC{0,40}".prop_map(LookupReply::TypeMismatch),
        ]
    }

    proptest! {
        #[test]
        fn replies_round_trip(reply in reply()) {
            prop_assert_eq!(LookupReply::decode(&reply.encode()), Ok(reply));
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(reply) = LookupReply::decode(&bytes) {
                // What decodes re-encodes to a reply that decodes the same, no longer (postcard
                // reads overlong varints but writes the shortest).
                let again = reply.encode();
                prop_assert!(again.len() <= bytes.len());
                prop_assert_eq!(LookupReply::decode(&again), Ok(reply));
            }
        }
    }
}
