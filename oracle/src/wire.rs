//! The wire rules' oracle: every decoder of the envelope's contract, on the same bytes.

use bytes::Bytes;
use rpc_proto::shuffle::{BlockTransferMessage, OpenBlocks};
use rpc_proto::wire::{IdentityError, TypeIdentity, ENDPOINT_ARROW};
use rpc_proto::{
    decode_payload, encode_payload, Envelope, EnvelopeError, EnvelopePrefix, LookupReply,
    PayloadError, RemoteFailure, TooManyStreams, ENVELOPE_VERSION,
};

/// The prefixes that tag a failure text with a kind (see `rpc_proto::wire`'s module docs).
const FAILURE_PREFIXES: [&str; 5] = [
    "[rpc:endpoint-not-found] ",
    "[rpc:type-mismatch] ",
    "[rpc:endpoint-stopped] ",
    "[rpc:endpoint-busy] ",
    "[rpc:bad-message] ",
];

/// Feeds `data` to every decoder of the wire format and checks what each makes of it.
///
/// As bytes: [`Envelope::decode_view`] and [`Envelope::decode`] agree (same header, same
/// payload, same error), the view borrows its strings and the payload from the body, and a
/// decoded envelope re-encodes (also through [`EnvelopePrefix`]) to no more bytes than it was
/// read from, which decode to the same envelope and payload. [`LookupReply::decode`] and
/// [`decode_payload`] (for a few payload types) round-trip what they accept, re-encode it to
/// no more bytes (postcard also reads overlong varints), hold no more heap than a small
/// multiple of the input, and report trailing bytes exactly. (Memory is checked on what
/// decodes; a failed decode's preallocation is bounded by serde's cautious size hint, 1 MiB
/// per sequence, and not checked here.) [`BlockTransferMessage::decode`] (Spark's block
/// messages) round-trips what it accepts, keeps the type byte, re-encodes it to no more bytes
/// (bitmaps aside: their containers may be re-chosen) and holds no more heap for block ids
/// than a small multiple of the input.
///
/// As text (UTF-8, or read lossily): [`TypeIdentity::parse`] and
/// [`TypeIdentity::parse_endpoint`] accept exactly what writes back to the same string, with
/// valid names, within [`TypeIdentity::MAX_DEPTH`], and agree with each other on the `" -> "`
/// split; [`RemoteFailure::parse`] keeps a text's kind through `to_string` and `parse`, and
/// writes back the text it read; [`TooManyStreams::matches`] is its prefix test, and matches
/// what [`TooManyStreams`] writes.
///
/// # Panics
///
/// When an invariant does not hold.
pub fn wire(data: &[u8]) {
    envelope(data);
    lookup_reply(data);
    block_message(data);
    payloads(data);

    let text = String::from_utf8_lossy(data);
    identity(&text);
    endpoint_identity(&text);
    failure(&text);
    too_many_streams(&text, data);
}

/// The envelope: view and owned decode agree, and what decodes re-encodes.
fn envelope(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    let viewed = Envelope::decode_view(&body);
    let owned = Envelope::decode(body.clone());
    let (view, payload) = match viewed {
        Err(err) => {
            assert_eq!(owned, Err(err.clone()), "view and owned decode disagree");
            match (data.first(), err) {
                (None, EnvelopeError::Empty) => {}
                (Some(&v), EnvelopeError::UnsupportedVersion { version, supported }) => {
                    assert_eq!(version, v);
                    assert_eq!(supported, ENVELOPE_VERSION);
                    assert_ne!(v, ENVELOPE_VERSION);
                }
                (Some(&ENVELOPE_VERSION), EnvelopeError::MalformedHeader(_)) => {}
                (first, err) => panic!("error {err:?} for a body starting {first:?}"),
            }
            return;
        }
        Ok(decoded) => decoded,
    };
    let (envelope, owned_payload) = owned.expect("the view decoded, the owned decode did not");
    assert_eq!(
        envelope,
        view.to_envelope(),
        "view and owned decode disagree"
    );
    assert_eq!(payload, owned_payload, "view and owned payload disagree");
    assert_eq!(envelope.sender, view.sender());
    assert_eq!(envelope.deadline(), view.deadline());
    assert_eq!(data[0], ENVELOPE_VERSION);

    // No copies: the view's strings and the payload are slices of the body.
    let inside = |part: &[u8]| {
        (part.as_ptr() as usize)
            .checked_sub(body.as_ptr() as usize)
            .is_some_and(|start| start + part.len() <= body.len())
    };
    assert!(inside(view.receiver.as_bytes()), "receiver copied");
    assert!(inside(view.message_type.as_bytes()), "message type copied");
    if let Some((host, _)) = view.sender {
        assert!(inside(host.as_bytes()), "sender host copied");
    }
    assert_eq!(
        &data[data.len() - payload.len()..],
        &payload[..],
        "the payload is not the body's tail"
    );
    assert!(
        payload.is_empty() || payload.as_ptr() == body[body.len() - payload.len()..].as_ptr(),
        "payload copied"
    );
    assert!(
        owned_bytes_of_envelope(&envelope) <= data.len(),
        "owned more than the input"
    );

    // Round trip: the canonical encoding is no longer than any the decoder accepts, and is a
    // fixed point.
    let encoded = envelope.encode(&payload);
    assert!(
        encoded.len() <= data.len(),
        "re-encoded {} bytes from {}",
        encoded.len(),
        data.len()
    );
    let (again, again_payload) = Envelope::decode(encoded.clone()).expect("re-encoded envelope");
    assert_eq!(again, envelope, "envelope round trip");
    assert_eq!(again_payload, payload, "payload round trip");
    assert_eq!(
        again.encode(&again_payload),
        encoded,
        "encoding is not a fixed point"
    );

    // The prefix writes what the envelope writes.
    let prefix = EnvelopePrefix::new(
        envelope.sender.as_ref(),
        &envelope.receiver,
        &envelope.message_type,
    );
    let from_prefix = prefix.encode_raw(envelope.deadline_ms, envelope.kind, &payload);
    assert_eq!(from_prefix, encoded, "prefix and envelope encodings differ");
}

/// Heap bytes an owned envelope holds.
fn owned_bytes_of_envelope(envelope: &Envelope) -> usize {
    envelope.receiver.capacity()
        + envelope.message_type.capacity()
        + envelope.sender.as_ref().map_or(0, |s| s.host.capacity())
}

fn lookup_reply(data: &[u8]) {
    let decoded = LookupReply::decode(data);
    assert_eq!(decoded, decode_payload::<LookupReply>(data));
    trailing_bytes_exact(data, &decoded, LookupReply::decode);
    let Ok(reply) = decoded else { return };
    if let LookupReply::TypeMismatch(identity) = &reply {
        assert!(
            identity.capacity() <= data.len(),
            "owned more than the input"
        );
    }
    let encoded = reply.encode();
    assert!(
        encoded.len() <= data.len(),
        "lookup reply re-encoded longer"
    );
    // postcard also reads overlong varints (`80 00` is tag 0): the tag's low bits still come
    // first.
    assert_eq!(
        data[0] & 0x7f,
        encoded[0],
        "tag {:#x} read as {reply:?}",
        data[0]
    );
    assert_eq!(
        LookupReply::decode(&encoded),
        Ok(reply),
        "lookup reply round trip"
    );
}

fn block_message(data: &[u8]) {
    let Ok(message) = BlockTransferMessage::decode(data) else {
        return;
    };
    if let BlockTransferMessage::OpenBlocks(OpenBlocks {
        app_id,
        exec_id,
        block_ids,
    }) = &message
    {
        let owned = app_id.capacity()
            + exec_id.capacity()
            + block_ids.capacity() * size_of::<String>()
            + block_ids.iter().map(String::capacity).sum::<usize>();
        // Each block id costs at least its 4-byte length on the wire.
        assert!(
            block_ids.len() * 4 <= data.len(),
            "more block ids than bytes"
        );
        assert!(
            owned <= data.len() * (1 + size_of::<String>()),
            "owned {owned} bytes for {} input bytes",
            data.len()
        );
    }
    let encoded = message.encode();
    assert_eq!(
        encoded[0], data[0],
        "type {:#x} read as {message:?}",
        data[0]
    );
    if !matches!(message, BlockTransferMessage::MergeStatuses(_)) {
        // Spark's decoders ignore bytes after the last field; nothing else is optional.
        assert!(
            encoded.len() <= data.len(),
            "block message re-encoded longer"
        );
    }
    assert_eq!(
        BlockTransferMessage::decode(&encoded),
        Ok(message),
        "block message round trip"
    );
}

/// `TrailingBytes { extra }` means the input without its last `extra` bytes decodes.
fn trailing_bytes_exact<T>(
    data: &[u8],
    decoded: &Result<T, PayloadError>,
    decode: impl Fn(&[u8]) -> Result<T, PayloadError>,
) {
    if let Err(PayloadError::TrailingBytes { extra }) = decoded {
        assert!(*extra > 0 && *extra <= data.len(), "{extra} trailing bytes");
        assert!(
            decode(&data[..data.len() - extra]).is_ok(),
            "the value before {extra} trailing bytes does not decode"
        );
    }
}

/// `decode_payload` for a few payload types: what decodes re-encodes, no longer, to the same.
fn payloads(data: &[u8]) {
    macro_rules! check {
        ($($ty:ty),* $(,)?) => {$({
            let decoded = decode_payload::<$ty>(data);
            trailing_bytes_exact(data, &decoded, decode_payload::<$ty>);
            if let Ok(value) = decoded {
                let encoded = encode_payload(&value).expect("a decoded payload encodes");
                assert!(
                    encoded.len() <= data.len(),
                    "{} re-encoded longer",
                    stringify!($ty)
                );
                assert_eq!(
                    decode_payload::<$ty>(&encoded),
                    Ok(value),
                    "{} round trip",
                    stringify!($ty)
                );
            }
        })*};
    }
    check!(
        (String, u32),
        Vec<String>,
        Option<u64>,
        (i64, bool, char),
        Vec<(u16, Option<String>)>,
        (),
    );
}

/// A type's identity reads back as itself.
fn identity(text: &str) {
    match TypeIdentity::parse(text) {
        Ok(identity) => {
            assert_eq!(identity.to_string(), text, "identity did not write back");
            assert_eq!(TypeIdentity::parse(text), Ok(identity.clone()));
            check_parts(&identity, 0);
            assert!(
                !text.contains(ENDPOINT_ARROW),
                "a type identity holds the endpoint arrow"
            );
            assert!(
                TypeIdentity::parse_endpoint(text).is_err(),
                "a type identity is also an endpoint identity"
            );
        }
        Err(err) => identity_error(text, &err),
    }
}

/// An endpoint's identity: its two types, split at the one arrow it can hold.
fn endpoint_identity(text: &str) {
    let parsed = TypeIdentity::parse_endpoint(text);
    let halves = text
        .split_once(ENDPOINT_ARROW)
        .and_then(|(message, reply)| {
            Some((
                TypeIdentity::parse(message).ok()?,
                TypeIdentity::parse(reply).ok()?,
            ))
        });
    match parsed {
        Ok((message, reply)) => {
            assert_eq!(
                format!("{message}{ENDPOINT_ARROW}{reply}"),
                text,
                "endpoint identity did not write back"
            );
            check_parts(&message, 0);
            check_parts(&reply, 0);
            assert_eq!(
                halves,
                Some((message, reply)),
                "parse_endpoint and parse disagree"
            );
        }
        Err(err) => {
            identity_error(text, &err);
            assert_eq!(halves, None, "both halves parse, the endpoint does not");
        }
    }
}

fn identity_error(text: &str, err: &IdentityError) {
    match err {
        IdentityError::Malformed { at, .. } => {
            assert!(*at <= text.len(), "error offset {at} past the end");
            assert!(
                text.is_char_boundary(*at),
                "error offset {at} inside a char"
            );
        }
        IdentityError::TooDeep { max } => assert_eq!(*max, TypeIdentity::MAX_DEPTH),
        other => panic!("an identity error this oracle does not know: {other:?}"),
    }
}

/// Names are valid and nesting stays within `MAX_DEPTH`.
fn check_parts(identity: &TypeIdentity, depth: usize) {
    assert!(
        depth < TypeIdentity::MAX_DEPTH,
        "nested deeper than MAX_DEPTH"
    );
    match identity {
        TypeIdentity::Named { name, parameters } => {
            assert!(
                rpc_proto::wire::is_valid_name(name),
                "invalid name {name:?}"
            );
            parameters.iter().for_each(|p| check_parts(p, depth + 1));
        }
        TypeIdentity::Tuple(elements) => elements.iter().for_each(|e| check_parts(e, depth + 1)),
        TypeIdentity::Array { element, .. } => check_parts(element, depth + 1),
    }
}

/// A failure text's kind survives writing and reading, and writing gives back the text.
fn failure(text: &str) {
    let failure = RemoteFailure::parse(text);
    let written = failure.to_string();
    assert_eq!(
        RemoteFailure::parse(&written),
        failure,
        "kind lost in {text:?}"
    );
    let tagged = FAILURE_PREFIXES.iter().any(|p| text.starts_with(p));
    match &failure {
        RemoteFailure::Other(other) => {
            assert_eq!(other, text);
            assert!(!tagged, "a tagged text read as another failure");
        }
        // An empty `found` is read as none, so `" | "` at the end is not written back.
        RemoteFailure::TypeMismatch { found: None, .. } if written != text => {
            assert_eq!(
                format!("{written} | "),
                text,
                "type mismatch did not write back"
            );
        }
        _ => {
            assert!(tagged, "an untagged text read as a kind");
            assert_eq!(written, text, "failure did not write back");
        }
    }
}

/// `matches` is the prefix test, and recognises what `TooManyStreams` writes.
fn too_many_streams(text: &str, data: &[u8]) {
    assert_eq!(
        TooManyStreams::matches(text),
        text.starts_with(TooManyStreams::PREFIX)
    );
    let mut numbers = [0u8; 16];
    let n = data.len().min(16);
    numbers[..n].copy_from_slice(&data[..n]);
    let open = u64::from_le_bytes(numbers[..8].try_into().expect("8 bytes")) as usize;
    let limit = u64::from_le_bytes(numbers[8..].try_into().expect("8 bytes")) as usize;
    let written = TooManyStreams { open, limit }.to_string();
    assert!(TooManyStreams::matches(&written));
    // It is an endpoint's own failure text, of no system kind.
    assert_eq!(
        RemoteFailure::parse(&written),
        RemoteFailure::Other(written.clone())
    );
}
