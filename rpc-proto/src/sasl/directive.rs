//! RFC 2831 directive lists (`key=value, key="quoted value", ...`): a strict parser for
//! hostile input and the writer of our own tokens.

use super::SaslError;

/// Linear white space as the JDK's parser sees it (CR, LF, SP, HT).
fn is_lws(b: u8) -> bool {
    matches!(b, b'\r' | b'\n' | b' ' | b'\t')
}

/// A byte that may appear in a directive name (RFC 2616 `token`).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_graphic()
        && !matches!(
            b,
            b'(' | b')'
                | b'<'
                | b'>'
                | b'@'
                | b','
                | b';'
                | b':'
                | b'\\'
                | b'"'
                | b'/'
                | b'['
                | b']'
                | b'?'
                | b'='
                | b'{'
                | b'}'
        )
}

/// The values of the directives named in `keys` (matched ASCII case-insensitively), by index;
/// other directives are checked for syntax and ignored. A known directive given twice is an
/// error, as is any syntax error. The caller bounds `input`'s length.
pub(super) fn parse<const N: usize>(
    input: &[u8],
    keys: &[&'static str; N],
) -> Result<[Option<Vec<u8>>; N], SaslError> {
    let mut values: [Option<Vec<u8>>; N] = std::array::from_fn(|_| None);
    let mut p = Parser { input, pos: 0 };
    p.skip_lws();
    while p.pos < input.len() {
        if p.peek() == Some(b',') {
            // Empty list elements are allowed by RFC 2616's `#rule`.
            p.pos += 1;
            p.skip_lws();
            continue;
        }
        let start = p.pos;
        while p.peek().is_some_and(is_token_byte) {
            p.pos += 1;
        }
        let key = &input[start..p.pos];
        if key.is_empty() {
            return Err(p.syntax("a directive name"));
        }
        p.skip_lws();
        if p.peek() != Some(b'=') {
            return Err(p.syntax("'=' after a directive name"));
        }
        p.pos += 1;
        p.skip_lws();
        let value = if p.peek() == Some(b'"') {
            p.pos += 1;
            p.quoted()?
        } else {
            let start = p.pos;
            while p
                .peek()
                .is_some_and(|b| b != b',' && !is_lws(b) && b != b'"')
            {
                p.pos += 1;
            }
            input[start..p.pos].to_vec()
        };
        p.skip_lws();
        match p.peek() {
            None => {}
            Some(b',') => {
                p.pos += 1;
                p.skip_lws();
            }
            Some(_) => return Err(p.syntax("',' between directives")),
        }
        if let Some(i) = keys
            .iter()
            .position(|k| k.as_bytes().eq_ignore_ascii_case(key))
        {
            if values[i].is_some() {
                return Err(SaslError::DuplicateDirective(keys[i]));
            }
            values[i] = Some(value);
        }
    }
    Ok(values)
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_lws(&mut self) {
        while self.peek().is_some_and(is_lws) {
            self.pos += 1;
        }
    }

    fn syntax(&self, expected: &'static str) -> SaslError {
        SaslError::Syntax {
            offset: self.pos,
            expected,
        }
    }

    /// The rest of a quoted string whose opening quote was consumed, unescaped.
    fn quoted(&mut self) -> Result<Vec<u8>, SaslError> {
        let mut value = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.syntax("a closing '\"'")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(value);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = self.peek().ok_or_else(|| self.syntax("an escaped byte"))?;
                    value.push(escaped);
                    self.pos += 1;
                }
                Some(b) => {
                    value.push(b);
                    self.pos += 1;
                }
            }
        }
    }
}

/// A byte the JDK escapes inside a quoted string.
fn needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\' || b == 127 || (b <= 31 && b != b'\r' && b != b'\t' && b != b'\n')
}

/// Builds a directive list the way the JDK writes it.
#[derive(Default)]
pub(super) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn separate(&mut self) {
        if !self.out.is_empty() {
            self.out.push(b',');
        }
    }

    /// `key="value"`, escaping as the JDK does.
    pub(super) fn quoted(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.separate();
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"=\"");
        for &b in value {
            if needs_escape(b) {
                self.out.push(b'\\');
            }
            self.out.push(b);
        }
        self.out.push(b'"');
        self
    }

    /// `key=value`, unquoted (the caller passes a token).
    pub(super) fn token(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.separate();
        self.out.extend_from_slice(key.as_bytes());
        self.out.push(b'=');
        self.out.extend_from_slice(value);
        self
    }

    pub(super) fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

/// The tokens of a comma (or white space) separated list such as `qop="auth-conf,auth"`.
pub(super) fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',' || b == b' ' || b == b'\t' || b == b'\n')
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [&str; 3] = ["realm", "nonce", "qop"];

    #[test]
    fn parses_quoted_escaped_and_unknown_directives() {
        let v = parse(
            b"  realm=\"a\\\"b,c\" , ,Nonce = xyz,other=\"x\\\\\",qop=\"auth-conf,auth\"",
            &KEYS,
        )
        .unwrap();
        assert_eq!(v[0].as_deref(), Some(&b"a\"b,c"[..]));
        assert_eq!(v[1].as_deref(), Some(&b"xyz"[..]));
        assert_eq!(v[2].as_deref(), Some(&b"auth-conf,auth"[..]));
    }

    #[test]
    fn refuses_duplicates_and_bad_syntax() {
        assert_eq!(
            parse(b"realm=a,REALM=b", &KEYS),
            Err(SaslError::DuplicateDirective("realm"))
        );
        for bad in [
            &b"realm"[..],
            b"realm=\"abc",
            b"realm=\"a\\",
            b"=x",
            b"realm=\"a\"b",
            b"realm=a b",
            b"re alm=a",
            b"realm=a\"",
        ] {
            assert!(
                matches!(parse(bad, &KEYS), Err(SaslError::Syntax { .. })),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn writer_escapes_like_the_jdk() {
        let out = Writer::default()
            .quoted("a", b"x\"y\\z\x01")
            .token("b", b"1")
            .finish();
        assert_eq!(out, b"a=\"x\\\"y\\\\z\\\x01\",b=1");
        let v = parse(&out, &["a", "b"]).unwrap();
        assert_eq!(v[0].as_deref(), Some(&b"x\"y\\z\x01"[..]));
    }
}
