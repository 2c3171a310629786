//! The call ledger: every call a connection accepted resolves exactly once.

use std::collections::HashMap;
use std::fmt;

use rpc_proto::{Call, ConnectionError, Event, StreamCallId};

/// Where one call stands in a [`CallLedger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallState {
    /// Issued, not yet resolved or cancelled: the connection owes it exactly one end.
    Pending,
    /// Cancelled while pending: the connection must report nothing more about it.
    Cancelled,
    /// Ended by an event: a reply, a chunk, merged block meta, a finished stream or a failure.
    Resolved,
}

impl CallState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Cancelled => "cancelled",
            Self::Resolved => "resolved",
        }
    }
}

impl fmt::Display for CallState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an event meant to a [`CallLedger`], as [`CallLedger::observe`] returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The event ended this call: a reply, a chunk, merged block meta, a finished stream or
    /// a failure.
    Ended(Call),
    /// The event is progress of this pending stream call: it opened, or some of its data.
    Progressed(Call),
    /// The connection closed, with no call left pending.
    Closed,
    /// The event is not about a call this side made: a request from the peer, a one-way
    /// message, an upload arriving.
    Unrelated,
}

/// A broken promise about calls, found by a [`CallLedger`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// A call was issued while one with the same id was pending.
    #[error("{call} issued while one with the same id is pending")]
    IssuedWhilePending {
        /// The call.
        call: Call,
    },
    /// A call was issued after the connection reported `Closed`.
    #[error("{call} issued after the connection closed")]
    IssuedAfterClose {
        /// The call.
        call: Call,
    },
    /// `Connection::cancel` did not return whether the call was pending.
    #[error("cancel({call}) returned {returned}, but the call was {}", describe(*.state))]
    CancelDisagrees {
        /// The call.
        call: Call,
        /// What `cancel` returned.
        returned: bool,
        /// Where the call stood (`None`: never issued).
        state: Option<CallState>,
    },
    /// An event ended or advanced a call that was not pending: never issued, cancelled, or
    /// already resolved.
    #[error("{call} reported while {}, not pending: {event:?}", describe(*.state))]
    NotPending {
        /// The call the event names.
        call: Call,
        /// Where the call stood (`None`: never issued).
        state: Option<CallState>,
        /// The event.
        event: Box<Event>,
    },
    /// A reply (`ReplyReceived`) named a call that is neither an RPC nor an upload.
    #[error("a reply names {0}, which is neither an rpc nor an upload")]
    WrongReplyKind(Call),
    /// A stream call opened twice.
    #[error("{stream} opened twice")]
    OpenedTwice {
        /// The stream call.
        stream: StreamCallId,
    },
    /// A stream call's data or end came before it opened.
    #[error("{stream}: data or end before it opened")]
    NotOpened {
        /// The stream call.
        stream: StreamCallId,
    },
    /// A stream call reported an empty piece of data.
    #[error("{stream}: empty stream data")]
    EmptyData {
        /// The stream call.
        stream: StreamCallId,
    },
    /// A stream call delivered more bytes than it announced when it opened.
    #[error("{stream}: {received} bytes received, more than the {announced} announced")]
    Overrun {
        /// The stream call.
        stream: StreamCallId,
        /// Bytes announced by `StreamOpened`.
        announced: u64,
        /// Bytes delivered so far.
        received: u64,
    },
    /// A stream call finished before all its announced bytes arrived.
    #[error("{stream} finished early: {received} of {announced} bytes received")]
    FinishedEarly {
        /// The stream call.
        stream: StreamCallId,
        /// Bytes announced by `StreamOpened`.
        announced: u64,
        /// Bytes delivered.
        received: u64,
    },
    /// The connection closed with calls still pending.
    #[error("closed with calls unresolved: {pending:?}")]
    ClosedWithPending {
        /// The calls still pending, in the order they were issued.
        pending: Vec<Call>,
    },
    /// An event came after `Closed`.
    #[error("event after closed: {event:?}")]
    EventAfterClose {
        /// The event.
        event: Box<Event>,
    },
    /// An event this ledger does not know (a variant added to `rpc_proto::Event`): the
    /// ledger must learn whether it ends a call before it can vouch for the connection.
    #[error("an event the call ledger does not know: {event:?}")]
    UnknownEvent {
        /// The event.
        event: Box<Event>,
    },
}

fn describe(state: Option<CallState>) -> &'static str {
    state.map_or("never issued", CallState::as_str)
}

/// Bookkeeping for "every pending call resolves exactly once", for one side of a connection.
///
/// Feed it what the connection accepted and reported, in the order it happened:
/// [`issued`](Self::issued) for every call a command returned, [`cancelled`](Self::cancelled)
/// with what `Connection::cancel` returned, and [`observe`](Self::observe) for every event
/// drained. Each returns a [`LedgerError`] as soon as the connection broke a promise:
///
/// - a call ends at most once: one `ReplyReceived`, `ChunkReceived`,
///   `MergedBlockMetaReceived`, `StreamFinished` or `CallFailed`, and nothing about it after
///   that or after it was cancelled;
/// - every call ends by `Closed`: the connection closes with no call pending, and reports
///   nothing after;
/// - a stream call opens once, before its data; its data is not empty, never exceeds what it
///   announced, and it finishes only when all of it arrived;
/// - `cancel` returns whether the call was pending.
///
/// Both the fuzz oracle ([`connection`](crate::connection)) and the model test in
/// `tests/tests/model.rs` keep their calls in a ledger.
///
/// ```
/// use std::time::Instant;
/// use rpc_oracle::{CallLedger, Observed};
/// use rpc_proto::{Call, Config, Connection};
///
/// # #[allow(clippy::disallowed_methods)]
/// let now = Instant::now();
/// let mut client = Connection::new(Config::default(), now);
/// let mut ledger = CallLedger::new();
/// let request = client.rpc(now, "ping".into(), None).unwrap();
/// ledger.issued(Call::Rpc(request)).unwrap();
///
/// client.handle_closed(now);
/// let mut ended = Vec::new();
/// while let Some(event) = client.poll_event() {
///     match ledger.observe(&event).unwrap() {
///         Observed::Ended(call) => ended.push(call),
///         _ => {}
///     }
/// }
/// assert_eq!(ended, [Call::Rpc(request)]);
/// assert!(ledger.closed().is_some());
/// ```
#[derive(Debug, Default, Clone)]
pub struct CallLedger {
    calls: HashMap<Call, CallState>,
    /// Every call issued, in order (a call issued again after it ended appears twice).
    issued: Vec<Call>,
    /// Opened stream calls still pending: bytes announced and bytes received.
    streams: HashMap<StreamCallId, (u64, u64)>,
    closed: Option<ConnectionError>,
}

impl CallLedger {
    /// An empty ledger, for a connection that has issued nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a call the connection accepted.
    ///
    /// # Errors
    ///
    /// If one with the same id is pending, or the connection already reported `Closed`.
    pub fn issued(&mut self, call: Call) -> Result<(), LedgerError> {
        if self.closed.is_some() {
            return Err(LedgerError::IssuedAfterClose { call });
        }
        if self.is_pending(call) {
            return Err(LedgerError::IssuedWhilePending { call });
        }
        self.calls.insert(call, CallState::Pending);
        self.issued.push(call);
        Ok(())
    }

    /// Records that `Connection::cancel(call)` returned `returned`; a pending call is
    /// cancelled.
    ///
    /// # Errors
    ///
    /// If `returned` is not whether the call was pending.
    pub fn cancelled(&mut self, call: Call, returned: bool) -> Result<(), LedgerError> {
        let state = self.state(call);
        if returned != (state == Some(CallState::Pending)) {
            return Err(LedgerError::CancelDisagrees {
                call,
                returned,
                state,
            });
        }
        if returned {
            self.calls.insert(call, CallState::Cancelled);
            if let Call::Stream(stream) = call {
                self.streams.remove(&stream);
            }
        }
        Ok(())
    }

    /// Checks one event the connection reported, and says what it meant.
    ///
    /// A `ReplyReceived` ends the RPC or upload it names; naming any other kind of call is
    /// an error.
    ///
    /// # Errors
    ///
    /// When the event breaks one of the promises listed on [`CallLedger`].
    pub fn observe(&mut self, event: &Event) -> Result<Observed, LedgerError> {
        if self.closed.is_some() {
            return Err(LedgerError::EventAfterClose {
                event: Box::new(event.clone()),
            });
        }
        let observed = match event {
            Event::RpcReceived { .. }
            | Event::MergedBlockMetaRequested { .. }
            | Event::OneWayReceived { .. }
            | Event::ChunkFetchReceived { .. }
            | Event::StreamRequested { .. }
            | Event::UploadReceived { .. }
            | Event::UploadData { .. }
            | Event::UploadFinished { .. }
            | Event::UploadAborted { .. } => Observed::Unrelated,
            Event::ReplyReceived { call, .. } => match call {
                Call::Rpc(_) | Call::Upload(_) => self.resolve(*call, event)?,
                other => return Err(LedgerError::WrongReplyKind(*other)),
            },
            Event::ChunkReceived { chunk, .. } => self.resolve(Call::ChunkFetch(*chunk), event)?,
            Event::MergedBlockMetaReceived { request, .. } => {
                self.resolve(Call::MergedBlockMeta(*request), event)?
            }
            Event::StreamOpened { stream, byte_count } => {
                let call = self.expect_pending(Call::Stream(*stream), event)?;
                if self.streams.insert(*stream, (*byte_count, 0)).is_some() {
                    return Err(LedgerError::OpenedTwice { stream: *stream });
                }
                Observed::Progressed(call)
            }
            Event::StreamData { stream, data } => {
                let call = self.expect_pending(Call::Stream(*stream), event)?;
                let stream = *stream;
                let (announced, received) = self
                    .streams
                    .get_mut(&stream)
                    .ok_or(LedgerError::NotOpened { stream })?;
                if data.is_empty() {
                    return Err(LedgerError::EmptyData { stream });
                }
                *received += data.len() as u64;
                if *received > *announced {
                    return Err(LedgerError::Overrun {
                        stream,
                        announced: *announced,
                        received: *received,
                    });
                }
                Observed::Progressed(call)
            }
            Event::StreamFinished { stream } => {
                let call = self.expect_pending(Call::Stream(*stream), event)?;
                let stream = *stream;
                let (announced, received) = *self
                    .streams
                    .get(&stream)
                    .ok_or(LedgerError::NotOpened { stream })?;
                if received != announced {
                    return Err(LedgerError::FinishedEarly {
                        stream,
                        announced,
                        received,
                    });
                }
                self.resolve(call, event)?
            }
            Event::CallFailed { call, .. } => self.resolve(*call, event)?,
            Event::Closed { error } => {
                let pending = self.pending_calls();
                if !pending.is_empty() {
                    return Err(LedgerError::ClosedWithPending { pending });
                }
                self.closed = Some(error.clone());
                Observed::Closed
            }
            other => {
                return Err(LedgerError::UnknownEvent {
                    event: Box::new(other.clone()),
                })
            }
        };
        Ok(observed)
    }

    /// Where `call` stands; `None` if it was never issued.
    pub fn state(&self, call: Call) -> Option<CallState> {
        self.calls.get(&call).copied()
    }

    /// Whether `call` is pending.
    pub fn is_pending(&self, call: Call) -> bool {
        self.state(call) == Some(CallState::Pending)
    }

    /// How many calls are pending.
    pub fn pending(&self) -> usize {
        self.calls
            .values()
            .filter(|&&s| s == CallState::Pending)
            .count()
    }

    /// The calls still pending, in the order they were issued.
    pub fn pending_calls(&self) -> Vec<Call> {
        let mut seen = Vec::new();
        for &call in &self.issued {
            if self.is_pending(call) && !seen.contains(&call) {
                seen.push(call);
            }
        }
        seen
    }

    /// Every call issued, in order; a call issued again after it ended appears again.
    pub fn issued_calls(&self) -> &[Call] {
        &self.issued
    }

    /// Why the connection closed, once it reported `Closed`.
    pub fn closed(&self) -> Option<&ConnectionError> {
        self.closed.as_ref()
    }

    fn expect_pending(&self, call: Call, event: &Event) -> Result<Call, LedgerError> {
        match self.state(call) {
            Some(CallState::Pending) => Ok(call),
            state => Err(LedgerError::NotPending {
                call,
                state,
                event: Box::new(event.clone()),
            }),
        }
    }

    fn resolve(&mut self, call: Call, event: &Event) -> Result<Observed, LedgerError> {
        self.expect_pending(call, event)?;
        self.calls.insert(call, CallState::Resolved);
        if let Call::Stream(stream) = call {
            self.streams.remove(&stream);
        }
        Ok(Observed::Ended(call))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rpc_proto::{RequestError, RequestId, StreamChunkId};

    use super::*;

    const RPC: Call = Call::Rpc(RequestId(1));
    const UPLOAD: Call = Call::Upload(RequestId(2));
    const CHUNK: Call = Call::ChunkFetch(StreamChunkId::new(3, 0));
    const STREAM_ID: StreamCallId = StreamCallId(0);
    const STREAM: Call = Call::Stream(STREAM_ID);

    fn reply(id: u64) -> Event {
        Event::ReplyReceived {
            call: Call::Rpc(RequestId(id)),
            body: Bytes::from_static(b"ok"),
        }
    }

    fn failed(call: Call) -> Event {
        Event::CallFailed {
            call,
            error: RequestError::Remote("no".into()),
        }
    }

    fn closed() -> Event {
        Event::Closed {
            error: ConnectionError::LocallyClosed,
        }
    }

    fn opened(byte_count: u64) -> Event {
        Event::StreamOpened {
            stream: STREAM_ID,
            byte_count,
        }
    }

    fn data(n: usize) -> Event {
        Event::StreamData {
            stream: STREAM_ID,
            data: Bytes::from(vec![7; n]),
        }
    }

    fn finished() -> Event {
        Event::StreamFinished { stream: STREAM_ID }
    }

    fn ledger(calls: &[Call]) -> CallLedger {
        let mut ledger = CallLedger::new();
        for &call in calls {
            ledger.issued(call).unwrap();
        }
        ledger
    }

    #[test]
    fn every_kind_of_end_resolves_its_call_once() {
        let mut l = ledger(&[RPC, UPLOAD, CHUNK]);
        assert_eq!(l.pending(), 3);
        // An upload's reply names the upload (`ReplyReceived` names its call).
        let upload_reply = Event::ReplyReceived {
            call: UPLOAD,
            body: Bytes::from_static(b"ok"),
        };
        assert_eq!(l.observe(&upload_reply), Ok(Observed::Ended(UPLOAD)));
        assert_eq!(l.observe(&reply(1)), Ok(Observed::Ended(RPC)));
        assert_eq!(l.observe(&failed(CHUNK)), Ok(Observed::Ended(CHUNK)));
        assert_eq!(l.pending(), 0);
        assert_eq!(l.state(RPC), Some(CallState::Resolved));
        assert_eq!(l.observe(&closed()), Ok(Observed::Closed));
        assert_eq!(l.closed(), Some(&ConnectionError::LocallyClosed));
    }

    #[test]
    fn a_second_end_is_refused() {
        let mut l = ledger(&[RPC]);
        assert!(l.observe(&reply(1)).is_ok());
        let err = l.observe(&failed(RPC)).unwrap_err();
        assert!(
            matches!(
                err,
                LedgerError::NotPending {
                    call: RPC,
                    state: Some(CallState::Resolved),
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("while resolved"), "{err}");
    }

    #[test]
    fn an_end_for_a_call_never_issued_is_refused() {
        let mut l = ledger(&[]);
        let err = l.observe(&reply(9)).unwrap_err();
        assert!(
            matches!(err, LedgerError::NotPending { state: None, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("never issued"), "{err}");
    }

    #[test]
    fn a_cancelled_call_reports_nothing_more() {
        let mut l = ledger(&[RPC, STREAM]);
        assert_eq!(l.observe(&opened(4)), Ok(Observed::Progressed(STREAM)));
        l.cancelled(RPC, true).unwrap();
        l.cancelled(STREAM, true).unwrap();
        assert_eq!(l.state(RPC), Some(CallState::Cancelled));
        assert!(l.observe(&reply(1)).is_err());
        assert!(l.observe(&data(1)).is_err());
        assert!(l.observe(&finished()).is_err());
        // Nothing is pending: closing is fine.
        assert_eq!(l.observe(&closed()), Ok(Observed::Closed));
    }

    #[test]
    fn cancel_must_say_whether_the_call_was_pending() {
        let mut l = ledger(&[RPC]);
        let err = l.cancelled(RPC, false).unwrap_err();
        assert_eq!(
            err,
            LedgerError::CancelDisagrees {
                call: RPC,
                returned: false,
                state: Some(CallState::Pending)
            }
        );
        assert!(l.is_pending(RPC), "a refused check cancels nothing");
        l.cancelled(UPLOAD, false).unwrap();
        assert!(l.cancelled(UPLOAD, true).is_err(), "never issued");
        l.cancelled(RPC, true).unwrap();
        assert!(l.cancelled(RPC, true).is_err(), "cancelled twice");
        l.cancelled(RPC, false).unwrap();
    }

    #[test]
    fn closing_with_a_call_pending_is_refused() {
        let mut l = ledger(&[RPC, CHUNK]);
        assert!(l.observe(&reply(1)).is_ok());
        assert_eq!(
            l.observe(&closed()),
            Err(LedgerError::ClosedWithPending {
                pending: vec![CHUNK]
            })
        );
        assert_eq!(l.closed(), None);
    }

    #[test]
    fn nothing_comes_after_closed() {
        let mut l = ledger(&[]);
        assert_eq!(l.observe(&closed()), Ok(Observed::Closed));
        assert!(matches!(
            l.observe(&closed()),
            Err(LedgerError::EventAfterClose { .. })
        ));
        assert_eq!(
            l.issued(RPC),
            Err(LedgerError::IssuedAfterClose { call: RPC })
        );
    }

    #[test]
    fn a_call_is_not_issued_twice_while_pending() {
        let mut l = ledger(&[CHUNK]);
        assert_eq!(
            l.issued(CHUNK),
            Err(LedgerError::IssuedWhilePending { call: CHUNK })
        );
        assert!(l.observe(&failed(CHUNK)).is_ok());
        // Once it ended, the same chunk may be fetched again.
        l.issued(CHUNK).unwrap();
        assert_eq!(l.issued_calls(), [CHUNK, CHUNK]);
        assert_eq!(l.pending_calls(), [CHUNK]);
    }

    #[test]
    fn a_stream_opens_once_and_finishes_with_every_byte() {
        let mut l = ledger(&[STREAM]);
        assert_eq!(
            l.observe(&data(1)),
            Err(LedgerError::NotOpened { stream: STREAM_ID })
        );
        assert_eq!(l.observe(&opened(5)), Ok(Observed::Progressed(STREAM)));
        assert_eq!(
            l.observe(&opened(5)),
            Err(LedgerError::OpenedTwice { stream: STREAM_ID })
        );
        assert_eq!(
            l.observe(&data(0)),
            Err(LedgerError::EmptyData { stream: STREAM_ID })
        );
        assert_eq!(l.observe(&data(2)), Ok(Observed::Progressed(STREAM)));
        assert_eq!(
            l.observe(&finished()),
            Err(LedgerError::FinishedEarly {
                stream: STREAM_ID,
                announced: 5,
                received: 2
            })
        );
        assert_eq!(l.observe(&data(3)), Ok(Observed::Progressed(STREAM)));
        assert_eq!(l.observe(&finished()), Ok(Observed::Ended(STREAM)));
        assert!(l.observe(&finished()).is_err(), "finished twice");
    }

    #[test]
    fn a_stream_delivers_no_more_than_it_announced() {
        let mut l = ledger(&[STREAM]);
        assert!(l.observe(&opened(3)).is_ok());
        assert!(l.observe(&data(2)).is_ok());
        assert_eq!(
            l.observe(&data(2)),
            Err(LedgerError::Overrun {
                stream: STREAM_ID,
                announced: 3,
                received: 4
            })
        );
    }

    #[test]
    fn a_stream_may_fail_after_it_opened() {
        let mut l = ledger(&[STREAM]);
        assert!(l.observe(&opened(3)).is_ok());
        assert!(l.observe(&data(1)).is_ok());
        assert_eq!(l.observe(&failed(STREAM)), Ok(Observed::Ended(STREAM)));
        assert!(l.observe(&data(1)).is_err(), "data after the failure");
    }

    #[test]
    fn requests_from_the_peer_are_unrelated() {
        let mut l = ledger(&[RPC]);
        let request = Event::RpcReceived {
            request: RequestId(1),
            body: Bytes::new(),
        };
        assert_eq!(l.observe(&request), Ok(Observed::Unrelated));
        assert!(
            l.is_pending(RPC),
            "a request with our call's id answers nothing"
        );
    }

    #[test]
    fn a_real_connection_resolves_its_calls_on_close() {
        #[allow(clippy::disallowed_methods)]
        let now = std::time::Instant::now();
        let mut conn = rpc_proto::Connection::new(rpc_proto::Config::default(), now);
        let mut l = CallLedger::new();
        let request = conn.rpc(now, Bytes::from_static(b"x"), None).unwrap();
        l.issued(Call::Rpc(request)).unwrap();
        let stream = conn.stream(now, "s", None).unwrap();
        l.issued(Call::Stream(stream)).unwrap();
        l.cancelled(Call::Stream(stream), conn.cancel(Call::Stream(stream)))
            .unwrap();
        conn.close(now);
        let mut observed = Vec::new();
        while let Some(event) = conn.poll_event() {
            observed.push(l.observe(&event).unwrap());
        }
        assert_eq!(
            observed,
            [Observed::Ended(Call::Rpc(request)), Observed::Closed]
        );
    }
}
