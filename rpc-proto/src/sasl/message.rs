//! The handshake frame of Spark's SASL protocol (`org.apache.spark.network.sasl.SaslMessage`).

/// The tag byte that opens every encoded [`SaslMessage`] (Java's `(byte) 0xEA`).
pub const SASL_MESSAGE_TAG: u8 = 0xEA;

/// Longest app id accepted, in bytes of UTF-8 (as [`crate::auth::MAX_APP_ID_LEN`]).
pub const MAX_SASL_APP_ID_LEN: usize = 1024;

/// Longest token accepted, in bytes. DIGEST-MD5 tokens are at most 4096 bytes (the JDK's
/// `MAX_RESPONSE_LENGTH`); this leaves room for other mechanisms without trusting the peer.
pub const MAX_SASL_TOKEN_LEN: usize = 64 * 1024;

/// One client step of Spark's SASL handshake: the app id and a mechanism token.
///
/// On the wire (integers big-endian):
///
/// ```text
/// u8 0xEA | i32 len, appId (UTF-8) | i32 tokenLen | token
/// ```
///
/// It travels as the body of an `RpcRequest`. The server's replies are raw tokens in
/// `RpcResponse` bodies, without this framing. Java ignores `tokenLen` on read and takes the
/// rest of the body; this decoder insists that it is exact (Spark always writes it so).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SaslMessage {
    /// Which application the client authenticates as; the server looks the secret up by it.
    pub app_id: String,
    /// The SASL mechanism's token (empty for DIGEST-MD5's first step).
    pub token: Vec<u8>,
}

/// Bytes that are not a valid [`SaslMessage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaslMessageError {
    /// The input is empty.
    #[error("sasl message is empty")]
    Empty,
    /// The first byte is not [`SASL_MESSAGE_TAG`] (perhaps an AES handshake message, `0xFB`).
    #[error("sasl message starts with tag {0:#04x}, expected 0xea")]
    UnknownTag(u8),
    /// The input ends inside the app id or the token.
    #[error("sasl message is truncated")]
    Truncated,
    /// A length prefix is negative.
    #[error("sasl message length {0} is negative")]
    NegativeLength(i32),
    /// The app id is longer than [`MAX_SASL_APP_ID_LEN`].
    #[error("sasl message app id of {0} bytes exceeds the limit of 1024")]
    AppIdTooLong(usize),
    /// The token is longer than [`MAX_SASL_TOKEN_LEN`].
    #[error("sasl message token of {0} bytes exceeds the limit of 65536")]
    TokenTooLong(usize),
    /// The app id is not valid UTF-8.
    #[error("sasl message app id is not valid utf-8")]
    InvalidUtf8,
    /// Bytes follow the token.
    #[error("sasl message has {0} trailing bytes")]
    TrailingBytes(usize),
}

impl SaslMessage {
    /// A message carrying `token` for `app_id`.
    pub fn new(app_id: impl Into<String>, token: impl Into<Vec<u8>>) -> Self {
        Self {
            app_id: app_id.into(),
            token: token.into(),
        }
    }

    /// The length of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        1 + 4 + self.app_id.len() + 4 + self.token.len()
    }

    /// Encodes the message as Spark does.
    ///
    /// # Panics
    ///
    /// If the app id or token is longer than `i32::MAX` bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(SASL_MESSAGE_TAG);
        for field in [self.app_id.as_bytes(), &self.token] {
            let len = i32::try_from(field.len()).expect("sasl message field longer than i32::MAX");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }

    /// Decodes one message that fills `bytes` exactly. Lengths are checked against the limits
    /// and the input before anything is allocated.
    pub fn decode(bytes: &[u8]) -> Result<Self, SaslMessageError> {
        let (&tag, mut rest) = bytes.split_first().ok_or(SaslMessageError::Empty)?;
        if tag != SASL_MESSAGE_TAG {
            return Err(SaslMessageError::UnknownTag(tag));
        }
        let app_id = take(
            &mut rest,
            MAX_SASL_APP_ID_LEN,
            SaslMessageError::AppIdTooLong,
        )?;
        let app_id = std::str::from_utf8(app_id)
            .map_err(|_| SaslMessageError::InvalidUtf8)?
            .to_owned();
        let token = take(
            &mut rest,
            MAX_SASL_TOKEN_LEN,
            SaslMessageError::TokenTooLong,
        )?;
        if !rest.is_empty() {
            return Err(SaslMessageError::TrailingBytes(rest.len()));
        }
        Ok(Self {
            app_id,
            token: token.to_vec(),
        })
    }
}

/// Splits one `i32 len ‖ bytes` field off the front of `rest`.
fn take<'a>(
    rest: &mut &'a [u8],
    max: usize,
    too_long: fn(usize) -> SaslMessageError,
) -> Result<&'a [u8], SaslMessageError> {
    let (len, tail) = rest
        .split_first_chunk::<4>()
        .ok_or(SaslMessageError::Truncated)?;
    let len = i32::from_be_bytes(*len);
    let len = usize::try_from(len).map_err(|_| SaslMessageError::NegativeLength(len))?;
    if len > max {
        return Err(too_long(len));
    }
    if tail.len() < len {
        return Err(SaslMessageError::Truncated);
    }
    let (value, tail) = tail.split_at(len);
    *rest = tail;
    Ok(value)
}
