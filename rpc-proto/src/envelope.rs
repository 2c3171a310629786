//! Our versioned envelope, carried as the body of `RpcRequest` and `OneWayMessage` frames.
//!
//! Spark wraps an RPC in a Java-serialized `RequestMessage` (sender address, receiver endpoint,
//! content). We carry the same facts in our own format, so that no JVM serialization is needed:
//!
//! ```text
//!   +---------+----------------------------+---------------------------------+
//!   | version | header (postcard)          | payload (the rest of the body)  |
//!   | 1 byte  | sender, receiver, type,    | raw bytes: usually a postcard   |
//!   |  = 1    | deadline, kind             | value, see encode_payload       |
//!   +---------+----------------------------+---------------------------------+
//! ```
//!
//! The payload is not length-prefixed: it is whatever follows the header, so decoding hands it
//! out as a slice of the frame body without copying.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::address::RpcAddress;
use crate::id::RequestId;

/// The envelope version this crate writes and reads: the first byte of every envelope.
pub const ENVELOPE_VERSION: u8 = 1;

/// The header of one control-plane message: who sends it, to which endpoint, of what type and
/// of what kind. The payload travels after it, see [`Envelope::encode`].
///
/// The header's encoding is postcard's encoding of this struct, fields in declaration order,
/// and is fixed for [`ENVELOPE_VERSION`] 1: a new field means a new version. (New
/// [`EnvelopeKind`]s are appended, so older readers fail on them with
/// [`EnvelopeError::MalformedHeader`] instead of misreading them.)
///
/// ```
/// use rpc_proto::{Envelope, EnvelopeKind, RpcAddress};
///
/// let envelope = Envelope {
///     sender: Some(RpcAddress::new("10.0.0.1", 7077)),
///     receiver: "Master".into(),
///     message_type: "RegisterWorker".into(),
///     deadline_ms: Some(120_000),
///     kind: EnvelopeKind::Ask,
/// };
/// let body = envelope.encode(b"payload");
/// let (decoded, payload) = Envelope::decode(body).unwrap();
/// assert_eq!(decoded, envelope);
/// assert_eq!(payload, "payload");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending env's address; `None` when it runs in client mode (it accepts no
    /// connections, so replies and messages to it go back over the connection this came on).
    pub sender: Option<RpcAddress>,
    /// The name of the endpoint the message is for.
    pub receiver: String,
    /// The identity of the message's type. The receiver checks it against the type its
    /// endpoint accepts before decoding the payload. `rpc-driver` writes the stable names of
    /// the endpoint's message and reply types here (`"Hello -> String"`, from its
    /// `RpcMessage` trait).
    pub message_type: String,
    /// For an ask: how many milliseconds the sender was still willing to wait when it sent the
    /// message, so the receiver can skip work whose answer nobody will read. `None`: no
    /// deadline.
    pub deadline_ms: Option<u64>,
    /// What the message is.
    pub kind: EnvelopeKind,
}

/// What an [`Envelope`] carries.
///
/// Variants are only ever appended: their index is their wire encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EnvelopeKind {
    /// A fire-and-forget message (Spark's `send`), sent as a `OneWayMessage`.
    Send,
    /// A message expecting a reply (Spark's `ask`), sent as an `RpcRequest`; the reply is the
    /// `RpcResponse` or `RpcFailure` to that request.
    Ask,
    /// The sender stopped waiting for an ask (it was dropped or aborted). Sent on the same
    /// connection as the ask, which the receiver identifies by its transport request id.
    Cancel {
        /// The transport request id the ask was sent with.
        #[serde(with = "request_id")]
        request: RequestId,
    },
    /// A lookup (Spark's `RpcEndpointVerifier`): does endpoint [`receiver`](Envelope::receiver)
    /// exist, and does it accept messages of type [`message_type`](Envelope::message_type)?
    /// Sent as an ask.
    Verify,
}

impl Envelope {
    /// [`deadline_ms`](Envelope::deadline_ms) as a duration.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline_ms.map(Duration::from_millis)
    }

    /// Encodes the envelope followed by `payload`, in one allocation sized for the whole
    /// body.
    pub fn encode(&self, payload: &[u8]) -> Bytes {
        // Neither can fail: the header has only strings, integers, options and enums, whose
        // size postcard always knows.
        let header = postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default())
            .expect("an envelope header always serializes");
        let mut out = Vec::with_capacity(1 + header + payload.len());
        out.push(ENVELOPE_VERSION);
        let mut out = postcard::to_extend(self, out).expect("an envelope header always serializes");
        out.extend_from_slice(payload);
        Bytes::from(out)
    }

    /// Decodes a body written by [`encode`](Envelope::encode): the envelope, and the payload
    /// as a slice of `body` (no copy).
    pub fn decode(body: Bytes) -> Result<(Self, Bytes), EnvelopeError> {
        let (view, payload) = Self::decode_view(&body)?;
        Ok((view.to_envelope(), payload))
    }

    /// Like [`decode`](Envelope::decode), with the header's strings borrowed from `body`.
    pub fn decode_view(body: &Bytes) -> Result<(EnvelopeView<'_>, Bytes), EnvelopeError> {
        let Some(&version) = body.first() else {
            return Err(EnvelopeError::Empty);
        };
        if version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion {
                version,
                supported: ENVELOPE_VERSION,
            });
        }
        let (envelope, rest) = postcard::take_from_bytes::<EnvelopeView<'_>>(&body[1..])
            .map_err(|err| EnvelopeError::MalformedHeader(Arc::from(err.to_string())))?;
        let payload = body.slice(body.len() - rest.len()..);
        Ok((envelope, payload))
    }
}

/// The part of an envelope header that stays the same for every message from one sender to
/// one endpoint (version, sender, receiver, message type), encoded once so that each message
/// only adds its deadline, kind and payload.
///
/// What [`encode`](EnvelopePrefix::encode) writes is byte for byte what [`Envelope::encode`]
/// writes for the same fields.
///
/// ```
/// use rpc_proto::{Envelope, EnvelopeKind, EnvelopePrefix, RpcAddress};
///
/// let sender = RpcAddress::new("10.0.0.1", 7077);
/// let prefix = EnvelopePrefix::new(Some(&sender), "Master", "RegisterWorker");
/// let body = prefix.encode(Some(120_000), EnvelopeKind::Ask, &("worker-1", 8u32)).unwrap();
/// let (envelope, payload) = Envelope::decode(body).unwrap();
/// assert_eq!(envelope.receiver, "Master");
/// assert_eq!(envelope.deadline_ms, Some(120_000));
/// assert_eq!(rpc_proto::decode_payload::<(String, u32)>(&payload).unwrap(), ("worker-1".into(), 8));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnvelopePrefix {
    bytes: Bytes,
}

/// The most a deadline and a kind add to a prefix: an option tag and a u64 varint, then a
/// kind tag and a u64 varint.
const TAIL_MAX: usize = 1 + 10 + 1 + 10;

impl EnvelopePrefix {
    /// Encodes the fixed part of the header of messages from `sender` to `receiver` whose
    /// type is `message_type`.
    pub fn new(sender: Option<&RpcAddress>, receiver: &str, message_type: &str) -> Self {
        let mut out = vec![ENVELOPE_VERSION];
        // Postcard writes a tuple (like a struct) as its fields one after the other, so this
        // is the start of an `Envelope`'s encoding. It cannot fail: strings and integers.
        out = postcard::to_extend(&(sender, receiver, message_type), out)
            .expect("an envelope prefix always serializes");
        Self {
            bytes: Bytes::from(out),
        }
    }

    /// Encodes a whole body: this prefix, `deadline_ms`, `kind`, then `payload` encoded with
    /// postcard (as [`encode_payload`] does), into one allocation of the exact size.
    pub fn encode<T: Serialize + ?Sized>(
        &self,
        deadline_ms: Option<u64>,
        kind: EnvelopeKind,
        payload: &T,
    ) -> Result<Bytes, PayloadError> {
        let out = self.header(deadline_ms, kind, payload_size(payload)?);
        let out = postcard::to_extend(payload, out)
            .map_err(|err| PayloadError::Encode(Arc::from(err.to_string())))?;
        Ok(Bytes::from(out))
    }

    /// Like [`encode`](EnvelopePrefix::encode), with a payload already in bytes.
    pub fn encode_raw(
        &self,
        deadline_ms: Option<u64>,
        kind: EnvelopeKind,
        payload: &[u8],
    ) -> Bytes {
        let mut out = self.header(deadline_ms, kind, payload.len());
        out.extend_from_slice(payload);
        Bytes::from(out)
    }

    /// The whole header, in a buffer with room for exactly `payload` more bytes.
    ///
    /// The capacity is exact so that the finished body converts to [`Bytes`] without a
    /// second allocation (`Bytes::from(Vec)` allocates a shared header for a vector with
    /// spare capacity).
    fn header(&self, deadline_ms: Option<u64>, kind: EnvelopeKind, payload: usize) -> Vec<u8> {
        let mut tail = [0u8; TAIL_MAX];
        let tail = postcard::to_slice(&(deadline_ms, kind), &mut tail)
            .expect("a deadline and a kind always fit in TAIL_MAX bytes");
        let mut out = Vec::with_capacity(self.bytes.len() + tail.len() + payload);
        out.extend_from_slice(&self.bytes);
        out.extend_from_slice(tail);
        out
    }
}

/// A decoded envelope header whose strings borrow from the body: what
/// [`Envelope::decode_view`] returns, without allocating for the receiver and type names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EnvelopeView<'a> {
    /// See [`Envelope::sender`]: its host and port (see [`EnvelopeView::sender`]).
    pub sender: Option<(&'a str, u16)>,
    /// See [`Envelope::receiver`].
    pub receiver: &'a str,
    /// See [`Envelope::message_type`].
    pub message_type: &'a str,
    /// See [`Envelope::deadline_ms`].
    pub deadline_ms: Option<u64>,
    /// See [`Envelope::kind`].
    pub kind: EnvelopeKind,
}

impl EnvelopeView<'_> {
    /// [`deadline_ms`](EnvelopeView::deadline_ms) as a duration.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline_ms.map(Duration::from_millis)
    }

    /// The sender's address, owned.
    pub fn sender(&self) -> Option<RpcAddress> {
        self.sender.map(|(host, port)| RpcAddress {
            host: host.to_owned(),
            port,
        })
    }

    /// An owned copy.
    pub fn to_envelope(&self) -> Envelope {
        Envelope {
            sender: self.sender(),
            receiver: self.receiver.to_owned(),
            message_type: self.message_type.to_owned(),
            deadline_ms: self.deadline_ms,
            kind: self.kind,
        }
    }
}

/// Decodes envelopes like [`Envelope::decode_view`], remembering the last header prefix
/// (version, sender, receiver, message type) it decoded: a body that starts with the same
/// bytes, as every message from one sender to one endpoint does, only has its deadline and
/// kind decoded, and its strings are not validated again.
///
/// The result is exactly [`Envelope::decode_view`]'s for every body (the strings it returns
/// are equal, borrowed from the cache rather than from the body); keep one per thread or per
/// connection.
///
/// ```
/// use rpc_proto::{Envelope, EnvelopeCache, EnvelopeKind, EnvelopePrefix};
///
/// let prefix = EnvelopePrefix::new(None, "Master", "Heartbeat");
/// let mut cache = EnvelopeCache::default();
/// for deadline in [Some(5), None] {
///     let body = prefix.encode(deadline, EnvelopeKind::Ask, &7u32).unwrap();
///     let (view, payload) = cache.decode_view(&body).unwrap();
///     assert_eq!((view.receiver, view.deadline_ms), ("Master", deadline));
///     assert_eq!(Envelope::decode_view(&body).unwrap(), (view, payload));
/// }
/// ```
#[derive(Debug, Default, Clone)]
pub struct EnvelopeCache {
    /// Whether `last` holds a decoded prefix.
    valid: bool,
    /// The last prefix decoded; its buffers are reused by the next miss, so a cache that
    /// sees prefixes alternate (one thread serving many connections) does not allocate.
    last: CachedPrefix,
}

/// A decoded header prefix, the bytes it was decoded from, and its fields.
#[derive(Debug, Default, Clone)]
struct CachedPrefix {
    bytes: Vec<u8>,
    sender_host: String,
    /// The sender's port, when the envelope has a sender (its host is `sender_host`).
    sender_port: Option<u16>,
    receiver: String,
    message_type: String,
}

/// The longest prefix kept: a longer one is decoded every time.
const CACHED_PREFIX_MAX: usize = 512;

impl EnvelopeCache {
    /// Decodes `body` as [`Envelope::decode_view`] does, with the same result.
    pub fn decode_view<'a>(
        &'a mut self,
        body: &'a Bytes,
    ) -> Result<(EnvelopeView<'a>, Bytes), EnvelopeError> {
        if !(self.valid && body.starts_with(&self.last.bytes)) {
            self.valid = self.last.refill(body);
            if !self.valid {
                return Envelope::decode_view(body);
            }
        }
        let last = &self.last;
        match postcard::take_from_bytes::<(Option<u64>, EnvelopeKind)>(&body[last.bytes.len()..]) {
            Ok(((deadline_ms, kind), rest)) => {
                let view = EnvelopeView {
                    sender: last
                        .sender_port
                        .map(|port| (last.sender_host.as_str(), port)),
                    receiver: &last.receiver,
                    message_type: &last.message_type,
                    deadline_ms,
                    kind,
                };
                Ok((view, body.slice(body.len() - rest.len()..)))
            }
            // Malformed: the full decode says how, in its own words.
            Err(_) => Envelope::decode_view(body),
        }
    }
}

impl CachedPrefix {
    /// Decodes the prefix `body` starts with into `self`, reusing its buffers; false if
    /// `body` has no well-formed prefix short enough to keep.
    fn refill(&mut self, body: &[u8]) -> bool {
        if body.first() != Some(&ENVELOPE_VERSION) {
            return false;
        }
        type Prefix<'a> = (Option<(&'a str, u16)>, &'a str, &'a str);
        let Ok(((sender, receiver, message_type), rest)) =
            postcard::take_from_bytes::<Prefix<'_>>(&body[1..])
        else {
            return false;
        };
        let len = body.len() - rest.len();
        if len > CACHED_PREFIX_MAX {
            return false;
        }
        let refill = |into: &mut String, from: &str| {
            into.clear();
            into.push_str(from);
        };
        self.bytes.clear();
        self.bytes.extend_from_slice(&body[..len]);
        refill(&mut self.sender_host, sender.map_or("", |(host, _)| host));
        self.sender_port = sender.map(|(_, port)| port);
        refill(&mut self.receiver, receiver);
        refill(&mut self.message_type, message_type);
        true
    }
}

/// How many bytes postcard writes for `value`.
fn payload_size<T: Serialize + ?Sized>(value: &T) -> Result<usize, PayloadError> {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
        .map_err(|err| encode_error(value, err))
}

mod request_id {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::id::RequestId;

    pub(super) fn serialize<S: Serializer>(id: &RequestId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(id.0)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RequestId, D::Error> {
        u64::deserialize(d).map(RequestId)
    }
}

/// A body that is not an envelope this crate can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The body has no bytes, not even a version.
    #[error("empty envelope")]
    Empty,
    /// The version byte is not one this crate reads.
    #[error("unsupported envelope version {version} (this side supports version {supported})")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
        /// The version this crate reads, [`ENVELOPE_VERSION`].
        supported: u8,
    },
    /// The header after the version byte does not decode; postcard's message says why.
    #[error("malformed envelope header: {0}")]
    MalformedHeader(Arc<str>),
}

/// A payload value that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The value cannot be written by postcard (for example a sequence of unknown length).
    #[error("cannot encode payload: {0}")]
    Encode(Arc<str>),
    /// The bytes are not a value of the expected type.
    #[error("malformed payload: {0}")]
    Decode(Arc<str>),
    /// The bytes hold a value of the expected type and then more.
    #[error("payload has {extra} unexpected bytes after its value")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
}

/// Encodes a payload value with postcard.
pub fn encode_payload<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, PayloadError> {
    // Sized first, so the bytes are written into one allocation instead of a growing one.
    let out = Vec::with_capacity(payload_size(value)?);
    postcard::to_extend(value, out).map_err(|err| encode_error(value, err))
}

/// Why `value` cannot be encoded: the `Serialize` impl's own message, the type, and the path
/// to the field that failed. postcard keeps none of that (a custom error reads "Serde
/// Serialization Error"), so on failure only the value is serialized once more into a
/// [`Probe`](crate::serde_probe::Probe) that keeps messages, with the path tracked. A failure
/// of postcard's own (a sequence of unknown length) keeps postcard's reason.
#[cold]
fn encode_error<T: Serialize + ?Sized>(value: &T, err: postcard::Error) -> PayloadError {
    let detail = serde_path_to_error::serialize(value, crate::serde_probe::Probe)
        .err()
        .map(|e| (e.path().to_string(), e.into_inner().to_string()));
    PayloadError::Encode(describe(err, std::any::type_name::<T>(), detail))
}

/// Why `bytes` are not a `T`: postcard's reason, the type, and the path to the element that
/// failed (postcard reads structs as sequences, so fields are numbered), found by decoding
/// once more with the path tracked, on failure only. postcard drops serde's own message.
#[cold]
fn decode_error<T: DeserializeOwned>(bytes: &[u8], err: postcard::Error) -> PayloadError {
    let mut deserializer = postcard::Deserializer::from_bytes(bytes);
    let path = serde_path_to_error::deserialize::<_, T>(&mut deserializer)
        .err()
        .map(|e| (e.path().to_string(), err.to_string()));
    PayloadError::Decode(describe(err, std::any::type_name::<T>(), path))
}

/// "reason, in a `Type` at `path`": serde's reason where the second pass found one, else
/// postcard's; no path when the value itself failed.
fn describe(err: postcard::Error, type_name: &str, detail: Option<(String, String)>) -> Arc<str> {
    match detail {
        Some((path, reason)) if path != "." => {
            format!("{reason}, in a `{type_name}` at `{path}`").into()
        }
        Some((_, reason)) => format!("{reason}, in a `{type_name}`").into(),
        None => format!("{err}, in a `{type_name}`").into(),
    }
}

/// Decodes a payload value written by [`encode_payload`]. Bytes after the value are an error:
/// a payload is exactly one value.
///
/// ```
/// use rpc_proto::{decode_payload, encode_payload, PayloadError};
///
/// let bytes = encode_payload(&("worker-1", 8u32)).unwrap();
/// assert_eq!(decode_payload::<(String, u32)>(&bytes).unwrap(), ("worker-1".into(), 8));
///
/// let mut longer = bytes.clone();
/// longer.push(0);
/// assert_eq!(
///     decode_payload::<(String, u32)>(&longer),
///     Err(PayloadError::TrailingBytes { extra: 1 })
/// );
/// ```
pub fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PayloadError> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|err| decode_error::<T>(bytes, err))?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(PayloadError::TrailingBytes { extra: rest.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask() -> Envelope {
        Envelope {
            sender: Some(RpcAddress::new("h", 1)),
            receiver: "ep".into(),
            message_type: "T".into(),
            deadline_ms: Some(300),
            kind: EnvelopeKind::Ask,
        }
    }

    #[test]
    fn golden_bytes_of_version_1() {
        let body = ask().encode(b"xy");
        assert_eq!(
            &body[..],
            &[
                1, // version
                1, 1, b'h', 1, // sender: Some, host "h", port 1 (varint)
                2, b'e', b'p', // receiver "ep"
                1, b'T', // message type "T"
                1, 0xac, 0x02, // deadline: Some, 300 (varint)
                1,    // kind: Ask
                b'x', b'y', // payload
            ][..]
        );
        let cancel = Envelope {
            sender: None,
            receiver: String::new(),
            message_type: String::new(),
            deadline_ms: None,
            kind: EnvelopeKind::Cancel {
                request: RequestId(0x81),
            },
        };
        assert_eq!(&cancel.encode(&[])[..], &[1, 0, 0, 0, 0, 2, 0x81, 0x01]);
        let verify = Envelope {
            kind: EnvelopeKind::Verify,
            ..cancel.clone()
        };
        assert_eq!(&verify.encode(&[])[..], &[1, 0, 0, 0, 0, 3]);
        let send = Envelope {
            kind: EnvelopeKind::Send,
            ..cancel
        };
        assert_eq!(&send.encode(&[])[..], &[1, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn payload_is_a_slice_of_the_body() {
        let body = ask().encode(b"payload");
        let start = body.as_ptr() as usize;
        let (envelope, payload) = Envelope::decode(body.clone()).unwrap();
        assert_eq!(envelope, ask());
        assert_eq!(payload, "payload");
        assert_eq!(payload.as_ptr() as usize, start + body.len() - 7);
    }

    #[test]
    fn empty_payload_decodes_to_empty() {
        let (_, payload) = Envelope::decode(ask().encode(&[])).unwrap();
        assert!(payload.is_empty());
    }

    #[test]
    fn empty_body_is_an_error() {
        assert_eq!(Envelope::decode(Bytes::new()), Err(EnvelopeError::Empty));
    }

    #[test]
    fn other_versions_are_rejected_by_name() {
        let mut body = ask().encode(b"").to_vec();
        body[0] = 2;
        let err = Envelope::decode(body.into()).unwrap_err();
        assert_eq!(
            err,
            EnvelopeError::UnsupportedVersion {
                version: 2,
                supported: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "unsupported envelope version 2 (this side supports version 1)"
        );
    }

    #[test]
    fn truncated_header_is_malformed() {
        let body = ask().encode(b"");
        for len in 1..body.len() {
            let err = Envelope::decode(body.slice(..len)).unwrap_err();
            assert!(
                matches!(err, EnvelopeError::MalformedHeader(_)),
                "{len}: {err}"
            );
        }
    }

    #[test]
    fn unknown_kind_is_malformed() {
        let mut body = Envelope {
            kind: EnvelopeKind::Send,
            ..ask()
        }
        .encode(b"")
        .to_vec();
        *body.last_mut().unwrap() = 9;
        let err = Envelope::decode(body.into()).unwrap_err();
        assert!(matches!(err, EnvelopeError::MalformedHeader(_)));
        assert!(err.to_string().starts_with("malformed envelope header: "));
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let body = Bytes::from_static(&[1, 0, 1, 0xff, 0, 0, 0]);
        assert!(matches!(
            Envelope::decode(body),
            Err(EnvelopeError::MalformedHeader(_))
        ));
    }

    #[test]
    fn deadline_as_duration() {
        assert_eq!(ask().deadline(), Some(Duration::from_millis(300)));
    }

    #[test]
    fn payload_helpers_round_trip_and_reject_trailing_bytes() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Register {
            id: String,
            cores: u32,
        }
        let value = Register {
            id: "w".into(),
            cores: 4,
        };
        let bytes = encode_payload(&value).unwrap();
        assert_eq!(decode_payload::<Register>(&bytes).unwrap(), value);
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0, 0]);
        assert_eq!(
            decode_payload::<Register>(&longer),
            Err(PayloadError::TrailingBytes { extra: 2 })
        );
        assert!(matches!(
            decode_payload::<Register>(&bytes[..bytes.len() - 1]),
            Err(PayloadError::Decode(_))
        ));
    }

    #[test]
    fn unencodable_payload_is_an_error() {
        struct UnknownLength;
        impl Serialize for UnknownLength {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(std::iter::from_fn(|| None::<u8>))
            }
        }
        assert!(matches!(
            encode_payload(&UnknownLength),
            Err(PayloadError::Encode(_))
        ));
    }

    #[derive(Debug, Serialize, Deserialize)]
    enum Part {
        Count(u32),
        Flag(bool),
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Order {
        name: String,
        parts: Vec<Part>,
    }

    #[test]
    fn a_payload_decode_error_names_the_type_and_the_field() {
        // A second part whose variant index (7) is out of range.
        let bytes = encode_payload(&("x", vec![(0u8, 5u8), (7, 1)])).unwrap();
        let err = decode_payload::<Order>(&bytes).unwrap_err().to_string();
        assert!(err.contains("Deserialization"), "postcard's reason: {err}");
        assert!(err.contains("Order`"), "the type: {err}");
        // postcard reads a struct as a sequence: field 1 (`parts`), then its element 1.
        assert!(err.contains("at `[1][1]`"), "the field: {err}");
    }

    #[test]
    fn a_payload_encode_error_names_the_type_and_the_field() {
        struct Unencodable;
        impl Serialize for Unencodable {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("a file handle cannot travel"))
            }
        }
        #[derive(Serialize)]
        struct Job {
            id: u32,
            handle: Unencodable,
        }
        let err = encode_payload(&Job {
            id: 1,
            handle: Unencodable,
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("a file handle cannot travel"),
            "serde's reason: {err}"
        );
        assert!(err.contains("Job`"), "the type: {err}");
        assert!(err.contains("at `handle`"), "the field: {err}");
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn string() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[A-Za-z0-9_.]{1,40}", "\\PC{0,20}"]
    }

    fn kind() -> impl Strategy<Value = EnvelopeKind> {
        prop_oneof![
            Just(EnvelopeKind::Send),
            Just(EnvelopeKind::Ask),
            any::<u64>().prop_map(|r| EnvelopeKind::Cancel {
                request: RequestId(r)
            }),
            Just(EnvelopeKind::Verify),
        ]
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        (
            prop::option::of(
                (string(), any::<u16>()).prop_map(|(host, port)| RpcAddress { host, port }),
            ),
            string(),
            string(),
            prop::option::of(any::<u64>()),
            kind(),
        )
            .prop_map(
                |(sender, receiver, message_type, deadline_ms, kind)| Envelope {
                    sender,
                    receiver,
                    message_type,
                    deadline_ms,
                    kind,
                },
            )
    }

    proptest! {
        #[test]
        fn envelopes_round_trip(envelope in envelope(), payload in prop::collection::vec(any::<u8>(), 0..200)) {
            let body = envelope.encode(&payload);
            let (decoded, rest) = Envelope::decode(body).unwrap();
            prop_assert_eq!(decoded, envelope);
            prop_assert_eq!(&rest[..], &payload[..]);
        }

        #[test]
        fn prefix_encoding_is_the_envelope_encoding(
            envelope in envelope(),
            payload in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let prefix = EnvelopePrefix::new(
                envelope.sender.as_ref(),
                &envelope.receiver,
                &envelope.message_type,
            );
            let expected = envelope.encode(&encode_payload(&payload).unwrap());
            let body = prefix.encode(envelope.deadline_ms, envelope.kind, &payload).unwrap();
            prop_assert_eq!(&body, &expected);
            prop_assert_eq!(body.len(), expected.len());
            let raw = prefix.encode_raw(envelope.deadline_ms, envelope.kind, &payload);
            prop_assert_eq!(raw, envelope.encode(&payload));
            let (view, rest) = Envelope::decode_view(&body).unwrap();
            prop_assert_eq!(view.to_envelope(), envelope);
            prop_assert_eq!(decode_payload::<Vec<u8>>(&rest).unwrap(), payload);
        }

        #[test]
        fn a_cache_decodes_every_body_as_decode_view_does(
            envelopes in prop::collection::vec(envelope(), 1..4),
            picks in prop::collection::vec((0usize..4, any::<Option<u64>>(), 0usize..64, any::<u8>(), 0usize..3), 1..24),
        ) {
            // Bodies from a few prefixes, some truncated or with a byte changed, in any order.
            let mut cache = EnvelopeCache::default();
            for (which, deadline_ms, at, byte, damage) in picks {
                let envelope = &envelopes[which % envelopes.len()];
                let envelope = Envelope { deadline_ms, ..envelope.clone() };
                let mut bytes = envelope.encode(b"payload").to_vec();
                match damage {
                    1 => bytes.truncate(at % (bytes.len() + 1)),
                    2 => {
                        let at = at % bytes.len();
                        bytes[at] = byte;
                    }
                    _ => {}
                }
                let body = Bytes::from(bytes);
                let expected = Envelope::decode_view(&body);
                let cached = cache.decode_view(&body);
                prop_assert_eq!(cached, expected);
            }
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let body = Bytes::from(bytes);
            match Envelope::decode(body.clone()) {
                Ok((envelope, payload)) => {
                    // The payload is the tail of the body, and what decodes re-encodes to an
                    // envelope that decodes the same.
                    prop_assert!(body.ends_with(&payload));
                    let again = Envelope::decode(envelope.encode(&payload)).unwrap();
                    prop_assert_eq!(again, (envelope, payload));
                }
                Err(EnvelopeError::Empty) => prop_assert!(body.is_empty()),
                Err(EnvelopeError::UnsupportedVersion { version, supported }) => {
                    prop_assert_eq!(version, body[0]);
                    prop_assert_eq!(supported, ENVELOPE_VERSION);
                }
                Err(EnvelopeError::MalformedHeader(_)) => prop_assert_eq!(body[0], ENVELOPE_VERSION),
            }
        }

        #[test]
        fn any_version_but_1_is_unsupported(
            version in any::<u8>().prop_filter("not 1", |v| *v != ENVELOPE_VERSION),
            envelope in envelope(),
        ) {
            let mut body = envelope.encode(b"x").to_vec();
            body[0] = version;
            prop_assert_eq!(
                Envelope::decode(body.into()),
                Err(EnvelopeError::UnsupportedVersion { version, supported: ENVELOPE_VERSION })
            );
        }

        #[test]
        fn payload_values_round_trip(value in (any::<u64>(), string(), prop::option::of(any::<i32>()))) {
            let bytes = encode_payload(&value).unwrap();
            prop_assert_eq!(decode_payload::<(u64, String, Option<i32>)>(&bytes), Ok(value));
        }

        #[test]
        fn any_bytes_decode_as_payload_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(value) = decode_payload::<(u64, String, Option<i32>)>(&bytes) {
                let again = encode_payload(&value).unwrap();
                prop_assert_eq!(decode_payload::<(u64, String, Option<i32>)>(&again), Ok(value));
            }
        }
    }
}
