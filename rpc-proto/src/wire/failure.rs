//! Failure kinds: the text of an `RpcFailure`, tagged by a prefix.

use std::fmt;

const NOT_FOUND: &str = "[rpc:endpoint-not-found] ";
const TYPE_MISMATCH: &str = "[rpc:type-mismatch] ";
const STOPPED: &str = "[rpc:endpoint-stopped] ";
const BAD_MESSAGE: &str = "[rpc:bad-message] ";
const BUSY: &str = "[rpc:endpoint-busy] ";

/// What the failure text of an `RpcFailure` says: a failure of the system (tagged by a
/// prefix, see the [module docs](crate::wire#failure-kinds)) or the endpoint's own text.
///
/// [`Display`](fmt::Display) writes the text that goes on the wire; [`parse`](Self::parse)
/// reads any text (a Spark peer's stack trace is [`Other`](Self::Other)).
///
/// ```
/// use rpc_proto::RemoteFailure;
///
/// let busy = RemoteFailure::EndpointBusy("its inbox is full (10 messages)".into());
/// assert_eq!(busy.to_string(), "[rpc:endpoint-busy] its inbox is full (10 messages)");
/// assert_eq!(RemoteFailure::parse(&busy.to_string()), busy);
/// assert_eq!(
///     RemoteFailure::parse("java.lang.IllegalStateException: boom"),
///     RemoteFailure::Other("java.lang.IllegalStateException: boom".into())
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemoteFailure {
    /// `[rpc:endpoint-not-found] <name>`: no endpoint of that name.
    EndpointNotFound(String),
    /// `[rpc:type-mismatch] <expected>`: the endpoint takes other types than the identity the
    /// caller used (`expected`). Peers before issue 11 also sent the endpoint's own identity
    /// (`found`), after `" | "`.
    TypeMismatch {
        /// The identity the caller used.
        expected: String,
        /// The endpoint's identity, when the peer told it (only older peers do).
        found: Option<String>,
    },
    /// `[rpc:endpoint-stopped] <name>`: the endpoint was stopped before it handled the message.
    EndpointStopped(String),
    /// `[rpc:endpoint-busy] <reason>`: refused, not handled, because a limit was reached;
    /// sending again later may succeed.
    EndpointBusy(String),
    /// `[rpc:bad-message] <reason>`: the message or its envelope could not be read.
    BadMessage(String),
    /// Any other text: the endpoint's own failure (or a Spark peer's stack trace).
    Other(String),
}

impl RemoteFailure {
    /// Reads a failure text. Never fails: text without a known prefix is
    /// [`Other`](Self::Other).
    pub fn parse(text: &str) -> Self {
        if let Some(name) = text.strip_prefix(NOT_FOUND) {
            Self::EndpointNotFound(name.to_owned())
        } else if let Some(rest) = text.strip_prefix(TYPE_MISMATCH) {
            let (expected, found) = rest.split_once(" | ").unwrap_or((rest, ""));
            Self::TypeMismatch {
                expected: expected.to_owned(),
                found: (!found.is_empty()).then(|| found.to_owned()),
            }
        } else if let Some(reason) = text.strip_prefix(BUSY) {
            Self::EndpointBusy(reason.to_owned())
        } else if let Some(name) = text.strip_prefix(STOPPED) {
            Self::EndpointStopped(name.to_owned())
        } else if let Some(reason) = text.strip_prefix(BAD_MESSAGE) {
            Self::BadMessage(reason.to_owned())
        } else {
            Self::Other(text.to_owned())
        }
    }
}

impl fmt::Display for RemoteFailure {
    /// The failure text, as sent in an `RpcFailure`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EndpointNotFound(name) => write!(f, "{NOT_FOUND}{name}"),
            Self::TypeMismatch { expected, found } => {
                write!(f, "{TYPE_MISMATCH}{expected}")?;
                match found {
                    Some(found) => write!(f, " | {found}"),
                    None => Ok(()),
                }
            }
            Self::EndpointStopped(name) => write!(f, "{STOPPED}{name}"),
            Self::EndpointBusy(reason) => write!(f, "{BUSY}{reason}"),
            Self::BadMessage(reason) => write!(f, "{BAD_MESSAGE}{reason}"),
            Self::Other(text) => f.write_str(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden texts: these are on the wire, and peers of other versions parse them. Do not
    /// edit them to make a test pass.
    #[test]
    fn golden_failure_texts() {
        let cases = [
            (
                RemoteFailure::EndpointNotFound("Master".into()),
                "[rpc:endpoint-not-found] Master",
            ),
            (
                RemoteFailure::TypeMismatch {
                    expected: "Hello -> String".into(),
                    found: None,
                },
                "[rpc:type-mismatch] Hello -> String",
            ),
            (
                RemoteFailure::TypeMismatch {
                    expected: "A -> B".into(),
                    found: Some("C -> D".into()),
                },
                "[rpc:type-mismatch] A -> B | C -> D",
            ),
            (
                RemoteFailure::EndpointStopped("Master".into()),
                "[rpc:endpoint-stopped] Master",
            ),
            (
                RemoteFailure::EndpointBusy("its inbox is full (10 messages)".into()),
                "[rpc:endpoint-busy] its inbox is full (10 messages)",
            ),
            (
                RemoteFailure::BadMessage("undecodable envelope: empty envelope".into()),
                "[rpc:bad-message] undecodable envelope: empty envelope",
            ),
            (RemoteFailure::Other("boom".into()), "boom"),
        ];
        for (failure, text) in cases {
            assert_eq!(failure.to_string(), text);
            assert_eq!(RemoteFailure::parse(text), failure, "{text}");
        }
    }

    #[test]
    fn a_kind_is_known_by_its_whole_prefix() {
        // Without the space, or with another case, it is the endpoint's own text.
        for text in [
            "[rpc:endpoint-not-found]x",
            "[RPC:endpoint-not-found] x",
            " [rpc:endpoint-busy] x",
            "[rpc:unknown-kind] x",
            "",
        ] {
            assert_eq!(
                RemoteFailure::parse(text),
                RemoteFailure::Other(text.into())
            );
        }
        assert_eq!(
            RemoteFailure::parse("[rpc:endpoint-stopped] "),
            RemoteFailure::EndpointStopped(String::new())
        );
    }

    #[test]
    fn a_java_stack_trace_is_another_failure() {
        let java = "java.lang.IllegalStateException: boom\n\tat Foo.bar(Foo.java:1)";
        assert_eq!(
            RemoteFailure::parse(java),
            RemoteFailure::Other(java.into())
        );
    }

    #[test]
    fn an_empty_found_type_is_none() {
        assert_eq!(
            RemoteFailure::parse("[rpc:type-mismatch] A -> B | "),
            RemoteFailure::TypeMismatch {
                expected: "A -> B".into(),
                found: None
            }
        );
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// Failures whose text reads back as themselves: a detail that would be read as another
    /// kind's (an `Other` text with a known prefix, a `" | "` in an expected identity) is not
    /// one a writer sends.
    fn failure() -> impl Strategy<Value = RemoteFailure> {
        let text = "\\PC{0,30}";
        let identity = "[A-Za-z0-9<>(), ;\\[\\]-]{0,30}"
            .prop_filter("no separator", |s: &String| !s.contains(" | "));
        prop_oneof![
            text.prop_map(RemoteFailure::EndpointNotFound),
            (identity.clone(), prop::option::of("\\PC{1,30}"))
                .prop_map(|(expected, found)| { RemoteFailure::TypeMismatch { expected, found } }),
            text.prop_map(RemoteFailure::EndpointStopped),
            text.prop_map(RemoteFailure::EndpointBusy),
            text.prop_map(RemoteFailure::BadMessage),
            text.prop_filter("no known prefix", |t: &String| {
                ![NOT_FOUND, TYPE_MISMATCH, STOPPED, BAD_MESSAGE, BUSY]
                    .iter()
                    .any(|p| t.starts_with(p))
            })
            .prop_map(RemoteFailure::Other),
        ]
    }

    proptest! {
        #[test]
        fn failures_round_trip(failure in failure()) {
            prop_assert_eq!(RemoteFailure::parse(&failure.to_string()), failure);
        }

        #[test]
        fn any_text_parses_to_a_kind_that_reads_back_the_same(
            prefix in prop::sample::select(vec!["", NOT_FOUND, TYPE_MISMATCH, STOPPED, BAD_MESSAGE, BUSY]),
            rest in "\\PC{0,40}",
        ) {
            let text = format!("{prefix}{rest}");
            let failure = RemoteFailure::parse(&text);
            // What a reader makes of a text is stable: writing it and reading it again gives
            // the same failure.
            prop_assert_eq!(RemoteFailure::parse(&failure.to_string()), failure.clone());
            if prefix.is_empty() && !text.starts_with("[rpc:") {
                prop_assert_eq!(failure, RemoteFailure::Other(text));
            }
        }
    }
}
