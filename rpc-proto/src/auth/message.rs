//! The handshake frame of Spark's AES protocol (`org.apache.spark.network.crypto.AuthMessage`).

/// The tag byte that opens every encoded [`AuthMessage`] (Java's `(byte) 0xFB`).
pub const AUTH_MESSAGE_TAG: u8 = 0xFB;

/// Longest app id accepted, in bytes of UTF-8. Spark's ids (`"sparkSaslUser"`, `app-…`,
/// `application_…`) are far shorter.
pub const MAX_APP_ID_LEN: usize = 1024;

/// Longest salt accepted, in bytes. Spark sends 16.
pub const MAX_SALT_LEN: usize = 256;

/// Longest ciphertext accepted, in bytes. Spark sends 60 (12-byte IV, 32-byte key, 16-byte tag).
pub const MAX_CIPHERTEXT_LEN: usize = 1024;

/// Longest encoding of an [`AuthMessage`] that [`AuthMessage::decode`] can accept.
pub const MAX_AUTH_MESSAGE_LEN: usize =
    1 + 4 + MAX_APP_ID_LEN + 4 + MAX_SALT_LEN + 4 + MAX_CIPHERTEXT_LEN;

/// One message of the AES handshake: the client's challenge or the server's response.
///
/// On the wire (all integers big-endian, as Java's `ByteBuf` writes them):
///
/// ```text
/// u8 0xFB | i32 len, appId (UTF-8) | i32 len, salt | i32 len, ciphertext
/// ```
///
/// It travels as the body of an `RpcRequest` (challenge) or `RpcResponse` (response).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuthMessage {
    /// Which application the peer authenticates as; the server looks the secret up by it.
    pub app_id: String,
    /// The HKDF salt of this message's key-encryption key.
    pub salt: Vec<u8>,
    /// The sender's public key, AES-GCM encrypted: `IV(12) ‖ ciphertext ‖ tag(16)`.
    pub ciphertext: Vec<u8>,
}

/// Bytes that are not a valid [`AuthMessage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthMessageError {
    /// The input is empty.
    #[error("auth message is empty")]
    Empty,
    /// The first byte is not [`AUTH_MESSAGE_TAG`]: not an AES handshake message (perhaps SASL,
    /// whose messages start with `0xEA`).
    #[error("auth message starts with tag {0:#04x}, expected 0xfb")]
    UnknownTag(u8),
    /// The input ends inside the named field.
    #[error("auth message is truncated in its {0} field")]
    Truncated(AuthField),
    /// A length prefix is negative.
    #[error("auth message {field} length {len} is negative")]
    NegativeLength {
        /// The field whose length is negative.
        field: AuthField,
        /// The length as sent.
        len: i32,
    },
    /// A length prefix exceeds this crate's limit for the field.
    #[error("auth message {field} length {len} exceeds the limit of {max} bytes")]
    FieldTooLong {
        /// The field that is too long.
        field: AuthField,
        /// The length as sent.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The app id is not valid UTF-8.
    #[error("auth message app id is not valid utf-8")]
    InvalidUtf8,
    /// Bytes follow the last field.
    #[error("auth message has {0} trailing bytes")]
    TrailingBytes(usize),
}

/// A field of an [`AuthMessage`], named in [`AuthMessageError`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthField {
    /// The app id.
    AppId,
    /// The salt.
    Salt,
    /// The ciphertext.
    Ciphertext,
}

impl AuthField {
    fn max(self) -> usize {
        match self {
            Self::AppId => MAX_APP_ID_LEN,
            Self::Salt => MAX_SALT_LEN,
            Self::Ciphertext => MAX_CIPHERTEXT_LEN,
        }
    }
}

impl std::fmt::Display for AuthField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::AppId => "app id",
            Self::Salt => "salt",
            Self::Ciphertext => "ciphertext",
        })
    }
}

impl AuthMessage {
    /// The length of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        1 + 4 + self.app_id.len() + 4 + self.salt.len() + 4 + self.ciphertext.len()
    }

    /// Encodes the message as Spark does.
    ///
    /// # Panics
    ///
    /// If a field is longer than `i32::MAX` bytes (Java could not have sent it either).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(AUTH_MESSAGE_TAG);
        for field in [self.app_id.as_bytes(), &self.salt, &self.ciphertext] {
            let len = i32::try_from(field.len()).expect("auth message field longer than i32::MAX");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }

    /// Decodes one message that fills `bytes` exactly.
    ///
    /// Every length is checked against the field's limit ([`MAX_APP_ID_LEN`], [`MAX_SALT_LEN`],
    /// [`MAX_CIPHERTEXT_LEN`]) and against the input before anything is allocated.
    pub fn decode(bytes: &[u8]) -> Result<Self, AuthMessageError> {
        let (&tag, mut rest) = bytes.split_first().ok_or(AuthMessageError::Empty)?;
        if tag != AUTH_MESSAGE_TAG {
            return Err(AuthMessageError::UnknownTag(tag));
        }
        let app_id = take_field(&mut rest, AuthField::AppId)?;
        let app_id = std::str::from_utf8(app_id)
            .map_err(|_| AuthMessageError::InvalidUtf8)?
            .to_owned();
        let salt = take_field(&mut rest, AuthField::Salt)?.to_vec();
        let ciphertext = take_field(&mut rest, AuthField::Ciphertext)?.to_vec();
        if !rest.is_empty() {
            return Err(AuthMessageError::TrailingBytes(rest.len()));
        }
        Ok(Self {
            app_id,
            salt,
            ciphertext,
        })
    }
}

/// Splits one `i32 len ‖ bytes` field off the front of `rest`.
fn take_field<'a>(rest: &mut &'a [u8], field: AuthField) -> Result<&'a [u8], AuthMessageError> {
    let (len, tail) = rest
        .split_first_chunk::<4>()
        .ok_or(AuthMessageError::Truncated(field))?;
    let len = i32::from_be_bytes(*len);
    let len = usize::try_from(len).map_err(|_| AuthMessageError::NegativeLength { field, len })?;
    if len > field.max() {
        return Err(AuthMessageError::FieldTooLong {
            field,
            len,
            max: field.max(),
        });
    }
    if tail.len() < len {
        return Err(AuthMessageError::Truncated(field));
    }
    let (value, tail) = tail.split_at(len);
    *rest = tail;
    Ok(value)
}
