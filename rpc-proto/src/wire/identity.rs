//! Message identities: the strings envelopes name message and reply types by.
//!
//! The grammar is in the [module docs](crate::wire#message-identity). The writers here are the
//! only code that produces it; `rpc-driver`'s `RpcMessage` implementations call them.

use std::fmt;

/// What separates the message type's identity from the reply type's in an endpoint's
/// identity: `"Hello -> String"`.
pub const ENDPOINT_ARROW: &str = " -> ";

/// The characters a [name](is_valid_name) cannot contain (besides whitespace): they separate
/// the parts of an identity.
const RESERVED: [char; 8] = ['<', '>', ',', '(', ')', '[', ']', ';'];

/// Whether `name` can stand as a type's name in an identity: not empty, no whitespace and none
/// of `< > , ( ) [ ] ;`.
///
/// ```
/// assert!(rpc_proto::wire::is_valid_name("spark.RegisterExecutor"));
/// assert!(!rpc_proto::wire::is_valid_name("Vec<u8>"));
/// assert!(!rpc_proto::wire::is_valid_name(""));
/// ```
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || RESERVED.contains(&c))
}

/// `n` parts, each written by `part`, separated by `", "`.
fn write_list(out: &mut String, n: usize, mut part: impl FnMut(&mut String, usize)) {
    for i in 0..n {
        if i > 0 {
            out.push_str(", ");
        }
        part(out, i);
    }
}

fn write_generic_with(
    out: &mut String,
    name: &str,
    n: usize,
    part: impl FnMut(&mut String, usize),
) {
    out.push_str(name);
    if n > 0 {
        out.push('<');
        write_list(out, n, part);
        out.push('>');
    }
}

fn write_tuple_with(out: &mut String, n: usize, part: impl FnMut(&mut String, usize)) {
    out.push('(');
    write_list(out, n, part);
    if n == 1 {
        out.push(',');
    }
    out.push(')');
}

fn write_array_with(out: &mut String, element: impl FnOnce(&mut String), len: usize) {
    out.push('[');
    element(out);
    out.push_str("; ");
    out.push_str(&len.to_string());
    out.push(']');
}

/// Appends a generic type's identity, `name<P1, P2, ..>`, each parameter written by its
/// function; without parameters, just `name`.
///
/// ```
/// let mut out = String::new();
/// rpc_proto::wire::write_generic(&mut out, "HashMap", &[|o| o.push_str("String"), |o| o.push_str("u64")]);
/// assert_eq!(out, "HashMap<String, u64>");
/// ```
pub fn write_generic(out: &mut String, name: &str, parameters: &[fn(&mut String)]) {
    write_generic_with(out, name, parameters.len(), |out, i| parameters[i](out));
}

/// Appends a tuple's identity: `()`, `(A,)`, `(A, B)`.
///
/// ```
/// let mut out = String::new();
/// rpc_proto::wire::write_tuple(&mut out, &[|o| o.push_str("u32")]);
/// assert_eq!(out, "(u32,)");
/// ```
pub fn write_tuple(out: &mut String, elements: &[fn(&mut String)]) {
    write_tuple_with(out, elements.len(), |out, i| elements[i](out));
}

/// Appends an array's identity: `[T; len]`.
///
/// ```
/// let mut out = String::new();
/// rpc_proto::wire::write_array(&mut out, |o| o.push_str("u8"), 16);
/// assert_eq!(out, "[u8; 16]");
/// ```
pub fn write_array(out: &mut String, element: fn(&mut String), len: usize) {
    write_array_with(out, element, len);
}

/// The identity of an endpoint that takes the message type written by `message` and answers
/// the reply type written by `reply`: `"Hello -> String"`. It is the
/// [`message_type`](crate::Envelope::message_type) of every envelope to that endpoint.
///
/// ```
/// let identity = rpc_proto::wire::endpoint_identity(|o| o.push_str("Hello"), |o| o.push_str("String"));
/// assert_eq!(identity, "Hello -> String");
/// ```
pub fn endpoint_identity(message: fn(&mut String), reply: fn(&mut String)) -> String {
    let mut out = String::new();
    message(&mut out);
    out.push_str(ENDPOINT_ARROW);
    reply(&mut out);
    out
}

/// A type's identity, read into its parts: what [`TypeIdentity::parse`] gives and
/// [`Display`](fmt::Display) writes back, character for character.
///
/// ```
/// use rpc_proto::wire::TypeIdentity;
///
/// let identity = TypeIdentity::parse("Batch<Option<u64>>").unwrap();
/// assert_eq!(
///     identity,
///     TypeIdentity::Named {
///         name: "Batch".into(),
///         parameters: vec![TypeIdentity::Named {
///             name: "Option".into(),
///             parameters: vec![TypeIdentity::Named { name: "u64".into(), parameters: vec![] }],
///         }],
///     }
/// );
/// assert_eq!(identity.to_string(), "Batch<Option<u64>>");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TypeIdentity {
    /// `name` or `name<P1, P2, ..>`.
    Named {
        /// The type's name (see [`is_valid_name`]).
        name: String,
        /// Its parameters' identities; empty for a type without parameters.
        parameters: Vec<Self>,
    },
    /// `()`, `(A,)` or `(A, B, ..)`: the unit type when empty.
    Tuple(Vec<Self>),
    /// `[T; len]`.
    Array {
        /// The element's identity.
        element: Box<Self>,
        /// The array's length.
        len: usize,
    },
}

/// A string that is not an identity of the [grammar](crate::wire#message-identity).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Something else was expected at this byte offset.
    #[error("malformed identity at byte {at}: expected {expected}")]
    Malformed {
        /// The byte offset in the identity.
        at: usize,
        /// What the grammar allows there.
        expected: &'static str,
    },
    /// Types and parameters are nested deeper than [`TypeIdentity::MAX_DEPTH`].
    #[error("identity nested deeper than {max} levels")]
    TooDeep {
        /// [`TypeIdentity::MAX_DEPTH`].
        max: usize,
    },
}

impl TypeIdentity {
    /// How deep a [`parse`](Self::parse) follows nested types before refusing, so that a
    /// peer's string cannot exhaust the stack.
    pub const MAX_DEPTH: usize = 64;

    /// Reads a type's identity. Accepts exactly the strings the writers produce: what parses
    /// writes back to the same string.
    pub fn parse(identity: &str) -> Result<Self, IdentityError> {
        let mut parser = Parser {
            text: identity,
            at: 0,
        };
        let parsed = parser.parse_type(0)?;
        parser.end()?;
        Ok(parsed)
    }

    /// Reads an endpoint's identity, `message -> reply`, into its two types.
    ///
    /// ```
    /// use rpc_proto::wire::TypeIdentity;
    ///
    /// let (message, reply) = TypeIdentity::parse_endpoint("Hello -> Result<(), String>").unwrap();
    /// assert_eq!(message.to_string(), "Hello");
    /// assert_eq!(reply.to_string(), "Result<(), String>");
    /// ```
    pub fn parse_endpoint(identity: &str) -> Result<(Self, Self), IdentityError> {
        let mut parser = Parser {
            text: identity,
            at: 0,
        };
        let message = parser.parse_type(0)?;
        parser.expect(ENDPOINT_ARROW, "\" -> \"")?;
        let reply = parser.parse_type(0)?;
        parser.end()?;
        Ok((message, reply))
    }

    fn write(&self, out: &mut String) {
        match self {
            Self::Named { name, parameters } => {
                write_generic_with(out, name, parameters.len(), |out, i| {
                    parameters[i].write(out)
                })
            }
            Self::Tuple(elements) => {
                write_tuple_with(out, elements.len(), |out, i| elements[i].write(out))
            }
            Self::Array { element, len } => write_array_with(out, |out| element.write(out), *len),
        }
    }
}

impl fmt::Display for TypeIdentity {
    /// The identity string, as the writers write it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        self.write(&mut out);
        f.write_str(&out)
    }
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn error<T>(&self, expected: &'static str) -> Result<T, IdentityError> {
        Err(IdentityError::Malformed {
            at: self.at,
            expected,
        })
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str, expected: &'static str) -> Result<(), IdentityError> {
        if self.eat(token) {
            Ok(())
        } else {
            self.error(expected)
        }
    }

    fn end(&self) -> Result<(), IdentityError> {
        if self.rest().is_empty() {
            Ok(())
        } else {
            self.error("the end")
        }
    }

    fn parse_type(&mut self, depth: usize) -> Result<TypeIdentity, IdentityError> {
        if depth >= TypeIdentity::MAX_DEPTH {
            return Err(IdentityError::TooDeep {
                max: TypeIdentity::MAX_DEPTH,
            });
        }
        if self.eat("(") {
            let mut elements = Vec::new();
            if self.eat(")") {
                return Ok(TypeIdentity::Tuple(elements));
            }
            elements.push(self.parse_type(depth + 1)?);
            if self.eat(",)") {
                return Ok(TypeIdentity::Tuple(elements));
            }
            while !self.eat(")") {
                self.expect(", ", "\", \" or \")\"")?;
                elements.push(self.parse_type(depth + 1)?);
            }
            if elements.len() == 1 {
                // A 1-tuple is written `(A,)`; `(A)` is not an identity.
                return self.error("\",)\"");
            }
            return Ok(TypeIdentity::Tuple(elements));
        }
        if self.eat("[") {
            let element = Box::new(self.parse_type(depth + 1)?);
            self.expect("; ", "\"; \"")?;
            let digits = self.rest().len()
                - self
                    .rest()
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .len();
            let text = &self.rest()[..digits];
            let len = match text.parse::<usize>() {
                Ok(len) if !(text.len() > 1 && text.starts_with('0')) => len,
                _ => return self.error("an array length"),
            };
            self.at += digits;
            self.expect("]", "\"]\"")?;
            return Ok(TypeIdentity::Array { element, len });
        }
        let len = self
            .rest()
            .find(|c: char| c.is_whitespace() || RESERVED.contains(&c))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return self.error("a name, \"(\" or \"[\"");
        }
        let name = self.rest()[..len].to_owned();
        self.at += len;
        let mut parameters = Vec::new();
        if self.eat("<") {
            parameters.push(self.parse_type(depth + 1)?);
            while !self.eat(">") {
                self.expect(", ", "\", \" or \">\"")?;
                parameters.push(self.parse_type(depth + 1)?);
            }
        }
        Ok(TypeIdentity::Named { name, parameters })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> TypeIdentity {
        TypeIdentity::Named {
            name: name.into(),
            parameters: Vec::new(),
        }
    }

    /// Golden identities: the strings are on the wire. Do not edit them to make a test pass.
    #[test]
    fn writers_write_the_golden_strings() {
        let mut out = String::new();
        write_generic(&mut out, "Vec", &[|o| o.push_str("u8")]);
        assert_eq!(out, "Vec<u8>");
        out.clear();
        write_generic(
            &mut out,
            "Result",
            &[
                |o| write_generic(o, "Vec", &[|o| o.push_str("String")]),
                |o| o.push_str("String"),
            ],
        );
        assert_eq!(out, "Result<Vec<String>, String>");
        out.clear();
        write_generic(&mut out, "Plain", &[]);
        assert_eq!(out, "Plain");
        out.clear();
        write_tuple(&mut out, &[]);
        assert_eq!(out, "()");
        out.clear();
        write_tuple(&mut out, &[|o| o.push_str("u32")]);
        assert_eq!(out, "(u32,)");
        out.clear();
        write_tuple(
            &mut out,
            &[
                |o| o.push_str("u32"),
                |o| o.push_str("bool"),
                |o| o.push_str("Hello"),
            ],
        );
        assert_eq!(out, "(u32, bool, Hello)");
        out.clear();
        write_array(&mut out, |o| o.push_str("u8"), 16);
        assert_eq!(out, "[u8; 16]");
        assert_eq!(
            endpoint_identity(
                |o| write_generic(o, "Batch", &[|o| o.push_str("spark.RegisterExecutor")]),
                |o| write_generic(
                    o,
                    "Result",
                    &[|o| write_tuple(o, &[]), |o| { o.push_str("String") }]
                ),
            ),
            "Batch<spark.RegisterExecutor> -> Result<(), String>"
        );
    }

    #[test]
    fn golden_strings_parse_into_their_parts() {
        assert_eq!(
            TypeIdentity::parse("()").unwrap(),
            TypeIdentity::Tuple(vec![])
        );
        assert_eq!(
            TypeIdentity::parse("(u32,)").unwrap(),
            TypeIdentity::Tuple(vec![named("u32")])
        );
        assert_eq!(
            TypeIdentity::parse("[u8; 16]").unwrap(),
            TypeIdentity::Array {
                element: Box::new(named("u8")),
                len: 16
            }
        );
        assert_eq!(
            TypeIdentity::parse("Pair<String, Batch<Hello>, 4>").unwrap(),
            TypeIdentity::Named {
                name: "Pair".into(),
                parameters: vec![
                    named("String"),
                    TypeIdentity::Named {
                        name: "Batch".into(),
                        parameters: vec![named("Hello")]
                    },
                    named("4"),
                ]
            }
        );
        assert_eq!(
            TypeIdentity::parse_endpoint("() -> ()").unwrap(),
            (TypeIdentity::Tuple(vec![]), TypeIdentity::Tuple(vec![]))
        );
    }

    #[test]
    fn strings_the_writers_never_write_are_refused() {
        for bad in [
            "",
            "Vec<>",
            "Vec<u8",
            "Vec<u8,u16>",
            "Vec <u8>",
            "(u32)",
            "(u32, )",
            "(u32,bool)",
            "[u8;16]",
            "[u8; 016]",
            "[u8; ]",
            "[u8; 99999999999999999999999]",
            "u8 ",
            "Hello ->String",
            ";",
        ] {
            assert!(TypeIdentity::parse(bad).is_err(), "{bad:?}");
        }
        assert!(TypeIdentity::parse_endpoint("Hello").is_err());
        assert!(TypeIdentity::parse_endpoint("Hello -> ").is_err());
        assert_eq!(
            TypeIdentity::parse("Vec<u8"),
            Err(IdentityError::Malformed {
                at: 6,
                expected: "\", \" or \">\""
            })
        );
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = format!("{}u8{}", "Vec<".repeat(100_000), ">".repeat(100_000));
        assert_eq!(
            TypeIdentity::parse(&deep),
            Err(IdentityError::TooDeep {
                max: TypeIdentity::MAX_DEPTH
            })
        );
        let ok = format!("{}u8{}", "(".repeat(63), ",)".repeat(63));
        assert_eq!(TypeIdentity::parse(&ok).unwrap().to_string(), ok);
    }

    #[test]
    fn names_exclude_whitespace_and_separators() {
        assert!(is_valid_name("r#Match") && is_valid_name("4") && is_valid_name("a.b-c"));
        for bad in ["", "a b", "a\tb", "a<", "a>", "a,", "(", ")", "[", "]", ";"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn identity() -> impl Strategy<Value = TypeIdentity> {
        let leaf = "[A-Za-z0-9_.:#-]{1,12}".prop_map(|name| TypeIdentity::Named {
            name,
            parameters: Vec::new(),
        });
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                (
                    "[A-Za-z0-9_.]{1,12}",
                    prop::collection::vec(inner.clone(), 0..4)
                )
                    .prop_map(|(name, parameters)| TypeIdentity::Named { name, parameters }),
                prop::collection::vec(inner.clone(), 0..4).prop_map(TypeIdentity::Tuple),
                (inner, any::<usize>()).prop_map(|(element, len)| TypeIdentity::Array {
                    element: Box::new(element),
                    len
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn identities_round_trip(identity in identity()) {
            let text = identity.to_string();
            prop_assert_eq!(TypeIdentity::parse(&text), Ok(identity));
        }

        #[test]
        fn endpoint_identities_round_trip(message in identity(), reply in identity()) {
            let text = format!("{message}{ENDPOINT_ARROW}{reply}");
            prop_assert_eq!(TypeIdentity::parse_endpoint(&text), Ok((message, reply)));
        }

        #[test]
        fn what_parses_writes_back_the_same(text in "[A-Za-z0-9(),;<> \\[\\]]{0,40}") {
            if let Ok(identity) = TypeIdentity::parse(&text) {
                prop_assert_eq!(identity.to_string(), text);
            }
        }

        #[test]
        fn any_text_parses_or_fails_without_panicking(text in "\\PC{0,60}") {
            if let Ok((message, reply)) = TypeIdentity::parse_endpoint(&text) {
                prop_assert_eq!(format!("{message}{ENDPOINT_ARROW}{reply}"), text);
            }
        }
    }
}
