//! Model test: random sequences of calls, answers, deliveries, time, cancels and faults on a
//! client and a server `Connection` wired through `rpc_tests::Sim`, checked against what
//! every call must end in.
//!
//! Properties, per case:
//!
//! - every call that was not cancelled ends exactly once (one `ReplyReceived`,
//!   `ChunkReceived`, `MergedBlockMetaReceived`, `StreamFinished` or `CallFailed`), and a
//!   stream opens once, before its data;
//! - a success carries the payload the server derived from that very request, and only
//!   follows a success answer; a remote failure carries that call's failure message;
//! - a timeout names the call's own timeout and fires exactly at its deadline; a
//!   disconnection carries the connection's close reason and comes with it;
//! - a cancelled call reports nothing after the cancel, and `cancel` returns whether the call
//!   was still pending;
//! - `Closed` comes exactly once, last.
//!
//! The client's calls are kept in an [`rpc_oracle::CallLedger`], the bookkeeping the fuzz
//! oracle keeps its calls in too: it checks the ends, cancels and `Closed` as they happen,
//! and says which call each event belongs to; this test checks what each call ended with.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use rpc_oracle::{CallLedger, Observed};
use rpc_proto::{
    Call, CallError, Config, Event, InboundStreamId, RequestError, RequestId, StreamChunkId,
};
use rpc_tests::{chunk_body, reply_to, stream_body, Netem, Notice, Side, Sim};

#[derive(Debug, Clone)]
enum NoticeKind {
    Silent,
    Eof(u16),
    Error(u16),
}

impl NoticeKind {
    fn notice(&self) -> Notice {
        match self {
            Self::Silent => Notice::Silent,
            Self::Eof(ms) => Notice::Eof {
                after: Duration::from_millis(u64::from(*ms)),
            },
            Self::Error(ms) => Notice::Error {
                after: Duration::from_millis(u64::from(*ms)),
                reason: "connection reset".into(),
            },
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Rpc {
        timeout: Option<u16>,
        len: u8,
    },
    Fetch {
        timeout: Option<u16>,
    },
    Stream {
        timeout: Option<u16>,
    },
    MergedBlockMeta {
        timeout: Option<u16>,
    },
    Upload {
        timeout: Option<u16>,
        len: u8,
    },
    /// The server answers one request it owes (picked by index), with success or failure.
    Answer {
        pick: usize,
        success: bool,
    },
    /// Steps the simulation: delivers the next piece(s) or fires the next deadline.
    Step {
        n: u8,
    },
    Advance {
        ms: u16,
    },
    Cancel {
        pick: usize,
    },
    Cut {
        client: NoticeKind,
        server: NoticeKind,
    },
    CrashServer {
        notice: NoticeKind,
    },
    CloseClient,
    CloseServer,
}

#[derive(Debug, Clone)]
struct Setup {
    seed: u64,
    latency_ms: u64,
    jitter_ms: u64,
    max_piece: Option<usize>,
    bandwidth: Option<u64>,
    client_idle: Option<u64>,
    client_close_idle: bool,
    server_idle: Option<u64>,
    server_close_idle: bool,
    answer_at_end: bool,
    /// Whether cuts, crashes and closes happen before the end (half the cases run clean).
    faults: bool,
}

fn notice_kind() -> impl Strategy<Value = NoticeKind> {
    prop_oneof![
        Just(NoticeKind::Silent),
        (0u16..2000).prop_map(NoticeKind::Eof),
        (0u16..2000).prop_map(NoticeKind::Error),
    ]
}

fn timeout() -> impl Strategy<Value = Option<u16>> {
    prop_oneof![1 => Just(None), 2 => (1u16..10_000).prop_map(Some)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (timeout(), any::<u8>()).prop_map(|(timeout, len)| Op::Rpc { timeout, len }),
        6 => timeout().prop_map(|timeout| Op::Fetch { timeout }),
        6 => timeout().prop_map(|timeout| Op::Stream { timeout }),
        2 => timeout().prop_map(|timeout| Op::MergedBlockMeta { timeout }),
        2 => (timeout(), any::<u8>()).prop_map(|(timeout, len)| Op::Upload { timeout, len }),
        20 => (any::<usize>(), prop::bool::weighted(0.8))
            .prop_map(|(pick, success)| Op::Answer { pick, success }),
        12 => (1u8..8).prop_map(|n| Op::Step { n }),
        6 => (0u16..3000).prop_map(|ms| Op::Advance { ms }),
        3 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => (notice_kind(), notice_kind()).prop_map(|(client, server)| Op::Cut { client, server }),
        1 => notice_kind().prop_map(|notice| Op::CrashServer { notice }),
        1 => Just(Op::CloseClient),
        1 => Just(Op::CloseServer),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        any::<u64>(),
        0u64..40,
        0u64..10,
        prop::option::of(1usize..64),
        prop::option::of(1_000u64..50_000),
        prop::option::of(1u64..60),
        any::<bool>(),
        prop::option::of(1u64..60),
        any::<bool>(),
        prop::bool::weighted(0.8),
        any::<bool>(),
    )
        .prop_map(
            |(
                seed,
                latency_ms,
                jitter_ms,
                max_piece,
                bandwidth,
                client_idle,
                client_close_idle,
                server_idle,
                server_close_idle,
                answer_at_end,
                faults,
            )| Setup {
                seed,
                latency_ms,
                jitter_ms,
                max_piece,
                bandwidth,
                client_idle,
                client_close_idle,
                server_idle,
                server_close_idle,
                answer_at_end,
                faults,
            },
        )
}

/// One call the client made.
#[derive(Debug)]
struct CallModel {
    call: Call,
    issued: Instant,
    timeout: Option<Duration>,
    /// The body of the success answer for this call.
    expected: Bytes,
    /// How the server answered, if it did: `true` for success.
    answered: Option<bool>,
    /// Whether `cancel` took the call back.
    cancelled: bool,
    /// The event that ended the call, and when it was drained.
    end: Option<(Instant, Event)>,
    /// The bytes a stream call announced when it opened.
    opened: Option<u64>,
    /// The data a stream call delivered.
    data: BytesMut,
}

/// A request the server owes an answer to.
#[derive(Debug, Clone, Copy)]
enum Owed {
    Rpc(RequestId),
    Chunk(StreamChunkId),
    Stream(InboundStreamId),
    Meta(RequestId),
}

struct Model {
    sim: Sim,
    client: Side,
    server: Side,
    calls: Vec<CallModel>,
    by_call: HashMap<Call, usize>,
    /// The client's calls: each ends exactly once, nothing follows a cancel or `Closed`.
    ledger: CallLedger,
    /// How many of the client's events the ledger has seen.
    client_seen: usize,
    /// What the server owes, with the index of the client call it answers.
    owed: Vec<(Owed, usize)>,
}

fn failure_message(index: usize) -> String {
    format!("no luck for call {index}")
}

fn tag(index: usize) -> String {
    format!("call-{index}")
}

fn index_of(text: &[u8]) -> usize {
    let text = std::str::from_utf8(text).unwrap();
    let rest = text.strip_prefix("call-").unwrap();
    rest.split(':').next().unwrap().parse().unwrap()
}

fn ms(value: Option<u16>) -> Option<Duration> {
    value.map(|v| Duration::from_millis(u64::from(v)))
}

impl Model {
    fn new(setup: &Setup) -> Self {
        let config = |idle: Option<u64>, close: bool| {
            Config::builder()
                .with_idle_timeout(idle.map(Duration::from_secs))
                .with_close_idle_connections(close)
                .with_seed(setup.seed)
                .build()
                .unwrap()
        };
        let mut netem = Netem::ideal()
            .with_latency(Duration::from_millis(setup.latency_ms))
            .with_jitter(Duration::from_millis(setup.jitter_ms));
        if let Some(max) = setup.max_piece {
            netem = netem.with_max_piece(max);
        }
        if let Some(bandwidth) = setup.bandwidth {
            netem = netem.with_bandwidth(bandwidth);
        }
        let (sim, client, server) = Sim::pair(
            setup.seed,
            config(setup.client_idle, setup.client_close_idle),
            config(setup.server_idle, setup.server_close_idle),
            netem,
        );
        Self {
            sim,
            client,
            server,
            calls: Vec::new(),
            by_call: HashMap::new(),
            ledger: CallLedger::new(),
            client_seen: 0,
            owed: Vec::new(),
        }
    }

    fn client_open(&self) -> bool {
        !self.sim.conn(self.client).is_closed()
    }

    fn server_open(&self) -> bool {
        self.sim.is_alive(self.server) && !self.sim.conn(self.server).is_closed()
    }

    /// Records a call the client just issued, or checks it was refused because the client is
    /// closed.
    fn issued(
        &mut self,
        result: Result<Call, CallError>,
        timeout: Option<Duration>,
        expected: Bytes,
    ) -> Result<(), TestCaseError> {
        match result {
            Ok(call) => {
                let index = self.calls.len();
                prop_assert!(self.by_call.insert(call, index).is_none());
                self.ledger
                    .issued(call)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                self.calls.push(CallModel {
                    call,
                    issued: self.sim.now(),
                    timeout,
                    expected,
                    answered: None,
                    cancelled: false,
                    end: None,
                    opened: None,
                    data: BytesMut::new(),
                });
            }
            Err(err) => {
                prop_assert_eq!(err, CallError::Closed);
                prop_assert!(!self.client_open());
            }
        }
        Ok(())
    }

    /// Hands the client's new events to the ledger, and notes what each call ended with.
    fn absorb_client_events(&mut self) -> Result<(), TestCaseError> {
        let history = self.sim.history(self.client);
        for recorded in &history[self.client_seen..] {
            let event = &recorded.event;
            let observed = self
                .ledger
                .observe(event)
                .map_err(|e| TestCaseError::fail(format!("client: {e}")))?;
            let call = match observed {
                Observed::Ended(call) | Observed::Progressed(call) => call,
                Observed::Closed => continue,
                Observed::Unrelated => {
                    return Err(TestCaseError::fail(format!("unexpected {event:?}")))
                }
            };
            let index = *self
                .by_call
                .get(&call)
                .ok_or_else(|| TestCaseError::fail(format!("{event:?} for an unknown call")))?;
            let model = &mut self.calls[index];
            match event {
                Event::StreamOpened { byte_count, .. } => model.opened = Some(*byte_count),
                Event::StreamData { data, .. } => model.data.extend_from_slice(data),
                _ => model.end = Some((recorded.at, event.clone())),
            }
        }
        self.client_seen = history.len();
        Ok(())
    }

    /// Takes note of the requests the server received.
    fn absorb_server_events(&mut self) {
        for event in self.sim.new_events(self.server) {
            match event {
                Event::RpcReceived { request, body } => {
                    self.owed.push((Owed::Rpc(request), index_of(&body)));
                }
                Event::UploadReceived { request, meta, .. } => {
                    self.owed.push((Owed::Rpc(request), index_of(&meta)));
                }
                Event::ChunkFetchReceived { chunk } => {
                    self.owed
                        .push((Owed::Chunk(chunk), chunk.stream_id as usize));
                }
                Event::StreamRequested { request, stream_id } => {
                    self.owed
                        .push((Owed::Stream(request), index_of(stream_id.as_bytes())));
                }
                Event::MergedBlockMetaRequested {
                    request, app_id, ..
                } => {
                    self.owed
                        .push((Owed::Meta(request), index_of(app_id.as_bytes())));
                }
                Event::Closed { .. } => self.owed.clear(),
                _ => {}
            }
        }
    }

    fn answer(&mut self, pick: usize, success: bool) -> Result<(), TestCaseError> {
        self.absorb_server_events();
        if self.owed.is_empty() || !self.server_open() {
            return Ok(());
        }
        let (owed, index) = self.owed.remove(pick % self.owed.len());
        let message = failure_message(index);
        let expected = self.calls[index].expected.clone();
        let name = tag(index);
        let result = self
            .sim
            .command(self.server, |c, now| match (owed, success) {
                (Owed::Rpc(request), true) => c.respond_rpc(now, request, expected),
                (Owed::Rpc(request) | Owed::Meta(request), false) => {
                    c.respond_rpc_failure(now, request, &message)
                }
                (Owed::Meta(request), true) => {
                    c.respond_merged_block_meta(now, request, index as i32, expected)
                }
                (Owed::Chunk(chunk), true) => c.respond_chunk(now, chunk, expected),
                (Owed::Chunk(chunk), false) => c.respond_chunk_failure(now, chunk, &message),
                (Owed::Stream(request), true) => {
                    let id = c.respond_stream(now, request, &name, expected.len() as u64)?;
                    let mut body = expected;
                    let half = body.split_to(body.len() / 2);
                    c.send_body(now, id, half)?;
                    c.send_body(now, id, body)
                }
                (Owed::Stream(request), false) => {
                    c.respond_stream_failure(now, request, &name, &message)
                }
            });
        prop_assert_eq!(result, Ok(()));
        self.calls[index].answered = Some(success);
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        // The ledger is up to date before a call is issued or cancelled.
        self.absorb_client_events()?;
        let (client, server) = (self.client, self.server);
        let index = self.calls.len();
        match op {
            Op::Rpc { timeout, len } => {
                let mut body = format!("{}:", tag(index)).into_bytes();
                body.resize(body.len() + usize::from(*len), b'x');
                let expected = reply_to(&body);
                let timeout = ms(*timeout);
                let result = self.sim.command(client, |c, now| {
                    c.rpc(now, body.into(), timeout).map(Call::Rpc)
                });
                self.issued(result, timeout, expected)?;
            }
            Op::Fetch { timeout } => {
                let chunk = StreamChunkId::new(index as u64, index as u32);
                let timeout = ms(*timeout);
                let result = self.sim.command(client, |c, now| {
                    c.fetch_chunk(now, chunk, timeout)
                        .map(|()| Call::ChunkFetch(chunk))
                });
                self.issued(result, timeout, chunk_body(chunk))?;
            }
            Op::Stream { timeout } => {
                let name = tag(index);
                let timeout = ms(*timeout);
                let result = self.sim.command(client, |c, now| {
                    c.stream(now, &name, timeout).map(Call::Stream)
                });
                self.issued(result, timeout, stream_body(&name))?;
            }
            Op::MergedBlockMeta { timeout } => {
                let name = tag(index);
                let timeout = ms(*timeout);
                let result = self.sim.command(client, |c, now| {
                    c.merged_block_meta(now, &name, 1, 2, 3, timeout)
                        .map(Call::MergedBlockMeta)
                });
                self.issued(result, timeout, Bytes::from(name))?;
            }
            Op::Upload { timeout, len } => {
                let meta = Bytes::from(tag(index));
                let timeout = ms(*timeout);
                let expected = reply_to(&meta);
                let len = u64::from(*len);
                let result = self.sim.command(client, |c, now| {
                    let (request, body) = c.upload_stream(now, meta, len, timeout)?;
                    if len > 0 {
                        c.send_body(now, body, Bytes::from(vec![b'u'; len as usize]))?;
                    }
                    Ok(Call::Upload(request))
                });
                self.issued(result, timeout, expected)?;
            }
            Op::Answer { pick, success } => self.answer(*pick, *success)?,
            Op::Step { n } => {
                for _ in 0..*n {
                    if !self.sim.step() {
                        break;
                    }
                }
            }
            Op::Advance { ms } => self.sim.run_for(Duration::from_millis(u64::from(*ms))),
            Op::Cancel { pick } => {
                if self.calls.is_empty() {
                    return Ok(());
                }
                let index = pick % self.calls.len();
                let call = self.calls[index].call;
                let cancelled = self.sim.command(client, |c, _| c.cancel(call));
                // `cancel` returns whether the call was pending.
                self.ledger
                    .cancelled(call, cancelled)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                if cancelled {
                    self.calls[index].cancelled = true;
                }
            }
            Op::Cut {
                client: c,
                server: s,
            } => {
                self.sim.cut(client, c.notice(), s.notice());
            }
            Op::CrashServer { notice } => {
                if self.sim.is_alive(server) {
                    self.sim.crash(server, notice.notice());
                }
            }
            Op::CloseClient => self.sim.close(client),
            Op::CloseServer => {
                if self.sim.is_alive(server) {
                    self.sim.close(server);
                }
            }
        }
        self.absorb_server_events();
        self.absorb_client_events()
    }

    /// Lets every call end: answers what is owed (or not), runs out every timer, closes.
    fn finish(&mut self, answer: bool) {
        for _ in 0..4 {
            self.absorb_server_events();
            if answer {
                while !self.owed.is_empty() && self.server_open() {
                    let _ = self.answer(0, true);
                }
            }
            self.sim.run_for(Duration::from_secs(10));
        }
        self.sim.run_for(Duration::from_secs(3600));
        self.sim.close(self.client);
        if self.sim.is_alive(self.server) {
            self.sim.close(self.server);
        }
        self.sim.run_until_quiet();
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        // The ledger sees every event: each call ended at most once, nothing after a cancel,
        // `Closed` only with no call pending, and nothing after it.
        self.absorb_client_events()?;
        let Some((closed_at, close_reason)) = self.sim.closed_at(self.client) else {
            return Err(TestCaseError::fail("the client never closed"));
        };
        prop_assert_eq!(self.ledger.closed(), Some(&close_reason));

        for (index, model) in self.calls.iter().enumerate() {
            let ctx = format!("call {index}: {model:?}");
            if model.cancelled {
                prop_assert!(model.end.is_none(), "cancelled call ended: {}", ctx);
                continue;
            }
            // Closed came with no call pending: every call that was not cancelled ended.
            let Some((at, event)) = &model.end else {
                return Err(TestCaseError::fail(format!("never ended: {ctx}")));
            };
            let at = *at;
            match event {
                Event::ReplyReceived { body, .. }
                | Event::ChunkReceived { body, .. }
                | Event::MergedBlockMetaReceived { body, .. } => {
                    prop_assert_eq!(model.answered, Some(true), "{}", ctx);
                    prop_assert_eq!(body, &model.expected, "{}", ctx);
                    if let Event::MergedBlockMetaReceived { chunk_count, .. } = event {
                        prop_assert_eq!(*chunk_count, index as i32);
                    }
                }
                Event::StreamFinished { .. } => {
                    prop_assert_eq!(model.answered, Some(true), "{}", ctx);
                    prop_assert_eq!(model.opened, Some(model.expected.len() as u64), "{}", ctx);
                    prop_assert_eq!(&model.data[..], &model.expected[..], "{}", ctx);
                }
                Event::CallFailed { error, .. } => match error {
                    RequestError::Remote(message) => {
                        prop_assert_eq!(model.answered, Some(false), "{}", ctx);
                        prop_assert_eq!(&**message, failure_message(index), "{}", ctx);
                    }
                    RequestError::TimedOut { after } => {
                        prop_assert_eq!(Some(*after), model.timeout, "{}", ctx);
                        prop_assert_eq!(at, model.issued + *after, "{}", ctx);
                    }
                    RequestError::Disconnected(reason) => {
                        prop_assert_eq!(reason, &close_reason, "{}", ctx);
                        prop_assert_eq!(at, closed_at, "{}", ctx);
                    }
                    other => prop_assert!(false, "unexpected failure {:?}: {}", other, ctx),
                },
                other => prop_assert!(false, "unexpected end {:?}: {}", other, ctx),
            }
            // A stream's data is a prefix of what the server sent, whatever the outcome.
            if let Call::Stream(_) = model.call {
                prop_assert!(model.expected.starts_with(&model.data), "{}", ctx);
            }
        }

        // The server: `Closed` at most once and last (exactly once unless it crashed first).
        let server = self.sim.events(self.server);
        let closes = server
            .iter()
            .filter(|e| matches!(e, Event::Closed { .. }))
            .count();
        if self.sim.is_alive(self.server) {
            prop_assert_eq!(closes, 1);
        } else {
            prop_assert!(closes <= 1);
        }
        if closes == 1 {
            let last_is_closed = matches!(server.last(), Some(Event::Closed { .. }));
            prop_assert!(last_is_closed, "server events: {:?}", server);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_call_ends_exactly_once_with_its_own_outcome(
        setup in setup(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut model = Model::new(&setup);
        for op in &ops {
            let fault = matches!(
                op,
                Op::Cut { .. } | Op::CrashServer { .. } | Op::CloseClient | Op::CloseServer
            );
            if fault && !setup.faults {
                continue;
            }
            model.apply(op)?;
        }
        model.finish(setup.answer_at_end);
        model.check()?;
    }
}
