//! The RFC 2831 computations, as the JDK's `DigestMD5Base` does them, and Spark's encodings of
//! the user name and password.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use md5::{Digest, Md5};
use zeroize::Zeroizing;

use super::Qop;

/// Netty's `Base64.encode(buf)` (what Spark's `SparkSaslServer.getBase64EncodedString` calls):
/// standard Base64 with padding, and a `\n` after every 76 output characters except at the very
/// end.
pub(super) fn netty_base64(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    let plain = Zeroizing::new(STANDARD.encode(bytes).into_bytes());
    let mut out = Zeroizing::new(Vec::with_capacity(plain.len() + plain.len() / 76));
    for (i, line) in plain.chunks(76).enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(line);
    }
    out
}

/// How many random bytes make one nonce (the JDK's `RAW_NONCE_SIZE`).
pub(super) const NONCE_RANDOM_LEN: usize = 30;

/// A nonce as the JDK makes it: the standard Base64 of 30 random bytes (40 characters).
pub(super) fn nonce(random: &[u8; NONCE_RANDOM_LEN]) -> Vec<u8> {
    STANDARD.encode(random).into_bytes()
}

/// Lowercase hex of a digest.
pub(super) fn hex(digest: &[u8; 16]) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; 32];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    out
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// What both sides feed into the digests.
pub(super) struct DigestInput<'a> {
    pub(super) user: &'a [u8],
    pub(super) realm: &'a [u8],
    pub(super) password: &'a [u8],
    pub(super) nonce: &'a [u8],
    pub(super) cnonce: &'a [u8],
    pub(super) authzid: Option<&'a [u8]>,
    pub(super) qop: Qop,
    pub(super) digest_uri: &'a [u8],
}

/// The nonce count every DIGEST-MD5 exchange here uses (no re-authentication).
pub(super) const NONCE_COUNT: &[u8] = b"00000001";

impl DigestInput<'_> {
    /// `H(A1)` (binary), the session key:
    /// `MD5(MD5(user ":" realm ":" password) ":" nonce ":" cnonce [":" authzid])`.
    pub(super) fn session_key(&self) -> Zeroizing<[u8; 16]> {
        let inner = Zeroizing::new(md5(&[self.user, b":", self.realm, b":", self.password]));
        let mut parts: Vec<&[u8]> = vec![inner.as_ref(), b":", self.nonce, b":", self.cnonce];
        if let Some(authzid) = self.authzid {
            parts.extend_from_slice(&[b":", authzid]);
        }
        Zeroizing::new(md5(&parts))
    }

    /// The response value, hex: `HEX(KD(HEX(H(A1)), nonce ":" nc ":" cnonce ":" qop ":"
    /// HEX(H(A2))))` with `A2 = method ":" digest-uri [":" 32 zeros]`. The client's `response`
    /// uses method `AUTHENTICATE`, the server's `rspauth` an empty method.
    pub(super) fn response(&self, session_key: &[u8; 16], client: bool) -> Zeroizing<[u8; 32]> {
        let method: &[u8] = if client { b"AUTHENTICATE" } else { b"" };
        let marker: &[u8] = match self.qop {
            Qop::Auth => b"",
            Qop::AuthConf => b":00000000000000000000000000000000",
        };
        let ha2 = hex(&md5(&[method, b":", self.digest_uri, marker]));
        let ha1 = Zeroizing::new(hex(session_key));
        Zeroizing::new(hex(&md5(&[
            ha1.as_ref(),
            b":",
            self.nonce,
            b":",
            NONCE_COUNT,
            b":",
            self.cnonce,
            b":",
            self.qop.as_str().as_bytes(),
            b":",
            &ha2,
        ])))
    }
}

/// `MD5(key ‖ magic)`: how RFC 2831 derives the integrity and confidentiality keys.
pub(super) fn derive(key: &[u8], magic: &str) -> Zeroizing<[u8; 16]> {
    Zeroizing::new(md5(&[key, magic.as_bytes()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netty_base64_breaks_lines_after_76_characters() {
        assert_eq!(&netty_base64(b"sparkSaslUser")[..], b"c3BhcmtTYXNsVXNlcg==");
        assert_eq!(&netty_base64(b"")[..], b"");
        // 57 bytes fill exactly one line: no trailing newline.
        let line = netty_base64(&[0; 57]);
        assert_eq!(line.len(), 76);
        assert!(!line.contains(&b'\n'));
        let two = netty_base64(&[0; 58]);
        assert_eq!(two.len(), 76 + 1 + 4);
        assert_eq!(two[76], b'\n');
        let three = netty_base64(&[0; 114]);
        assert_eq!(three.len(), 76 + 1 + 76);
    }

    #[test]
    fn the_default_generated_secret_gets_a_newline() {
        let password = netty_base64("0123456789abcdef".repeat(4).as_bytes());
        assert_eq!(
            std::str::from_utf8(&password).unwrap(),
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4\n\
             OWFiY2RlZg=="
        );
        assert_eq!(password.len(), 89);
    }

    #[test]
    fn nonce_is_forty_base64_characters() {
        let n = nonce(&[0xff; NONCE_RANDOM_LEN]);
        assert_eq!(n.len(), 40);
        assert!(n.iter().all(|&b| b == b'/'));
    }

    /// RFC 2831 §4's example (IMAP, qop=auth): response and rspauth.
    #[test]
    fn rfc_2831_example() {
        let input = DigestInput {
            user: b"chris",
            realm: b"elwood.innosoft.com",
            password: b"secret",
            nonce: b"OA6MG9tEQGm2hh",
            cnonce: b"OA6MHXh6VqTrRk",
            authzid: None,
            qop: Qop::Auth,
            digest_uri: b"imap/elwood.innosoft.com",
        };
        let key = input.session_key();
        assert_eq!(
            &input.response(&key, true)[..],
            b"d388dad90d4bbd760a152321f2143af7"
        );
        assert_eq!(
            &input.response(&key, false)[..],
            b"ea40f60335c427b5527b84dbabcdfffd"
        );
    }
}
