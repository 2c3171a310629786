//! Simulation tests of `rpc_proto::Connection`: two (or more) connections on the in-memory
//! link of `rpc_tests::Sim`, on virtual time.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rpc_proto::{
    Call, Config, ConnectionError, Event, RequestError, RequestId, StreamCallId, StreamChunkId,
};
use rpc_tests::{
    chunk_body, echo_server, reply_to, stream_body, upload_reply, Netem, Notice, Side, Sim,
};

const IDLE: Duration = Duration::from_secs(30);
const MS: Duration = Duration::from_millis(1);

fn config() -> Config {
    Config::builder()
        .with_idle_timeout(Some(IDLE))
        .build()
        .unwrap()
}

fn lan() -> Netem {
    Netem::ideal().with_latency(10 * MS)
}

/// Whether `event` ends `call`.
fn ends(event: &Event, call: Call) -> bool {
    match (event, call) {
        (Event::ReplyReceived { call: c, .. }, _) => *c == call,
        (Event::MergedBlockMetaReceived { request, .. }, Call::MergedBlockMeta(id)) => {
            *request == id
        }
        (Event::ChunkReceived { chunk, .. }, Call::ChunkFetch(id)) => *chunk == id,
        (Event::StreamFinished { stream }, Call::Stream(id)) => *stream == id,
        (Event::CallFailed { call: c, .. }, _) => *c == call,
        _ => false,
    }
}

/// The terminal events of `call` on `side`, with their times.
fn outcomes(sim: &Sim, side: Side, call: Call) -> Vec<(Duration, Event)> {
    sim.history(side)
        .iter()
        .filter(|r| ends(&r.event, call))
        .map(|r| (r.at - sim.base(), r.event.clone()))
        .collect()
}

/// Asserts `Closed` is reported exactly once, as the last event.
fn assert_closed_once_and_last(sim: &Sim, side: Side) -> ConnectionError {
    let events = sim.events(side);
    let closed: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::Closed { .. }))
        .collect();
    assert_eq!(closed.len(), 1, "{side}: {events:#?}");
    match events.last() {
        Some(Event::Closed { error }) => error.clone(),
        other => panic!("{side}: last event is {other:?}"),
    }
}

/// The bytes of stream call `id`, from its `StreamData` events.
fn stream_data(sim: &Sim, side: Side, id: StreamCallId) -> Bytes {
    let mut out = BytesMut::new();
    for event in sim.events(side) {
        if let Event::StreamData { stream, data } = event {
            if stream == id {
                out.extend_from_slice(&data);
            }
        }
    }
    out.freeze()
}

fn body_of(rng: &mut SmallRng, tag: usize, len: usize) -> Bytes {
    let mut body = format!("body {tag}:").into_bytes();
    body.extend((0..len).map(|_| rng.random::<u8>()));
    Bytes::from(body)
}

#[test]
fn rpc_round_trip_survives_random_byte_splitting() {
    for seed in 0..300 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let max_piece = rng.random_range(1..=13);
        let netem = Netem::ideal()
            .with_latency(5 * MS)
            .with_jitter(3 * MS)
            .with_max_piece(max_piece);
        let (mut sim, client, server) = Sim::pair(seed, config(), config(), netem);
        sim.set_handler(server, echo_server());

        let mut sent = HashMap::new();
        for i in 0..8 {
            let len = match i {
                0 => 0,
                // Above the 16 KiB threshold where bodies are queued by reference.
                1 if seed % 10 == 0 => 17_000,
                _ => rng.random_range(0..300),
            };
            let body = body_of(&mut rng, i, len);
            let id = sim
                .command(client, |c, now| c.rpc(now, body.clone(), None))
                .unwrap();
            sent.insert(id, body);
            sim.run_for(Duration::from_millis(rng.random_range(0..4)));
        }
        sim.run_until_quiet();

        let mut replies = 0;
        for event in sim.events(client) {
            let Event::ReplyReceived {
                call: Call::Rpc(request),
                body,
            } = event
            else {
                panic!("seed {seed}: unexpected {event:?}");
            };
            assert_eq!(body, reply_to(&sent[&request]), "seed {seed}");
            replies += 1;
        }
        assert_eq!(replies, sent.len(), "seed {seed}");
        assert_eq!(
            sim.conn(server).stats().bytes_received,
            sim.conn(client).stats().bytes_sent
        );
        for side in [client, server] {
            let stats = sim.link_stats(side);
            assert_eq!(stats.sent, stats.delivered, "seed {seed}");
            assert!(stats.pieces >= stats.sent.div_ceil(max_piece as u64));
            assert_eq!(stats.dropped, 0);
            assert_eq!(sim.conn(side).stats().bytes_sent, stats.sent);
            assert_eq!(sim.conn(side).stats().unmatched_replies, 0);
        }
    }
}

#[test]
fn many_concurrent_rpcs_each_get_their_own_reply() {
    let mut rng = SmallRng::seed_from_u64(11);
    let netem = lan().with_jitter(5 * MS).with_max_piece(50);
    let (mut sim, client, server) = Sim::pair(11, config(), config(), netem);

    let mut sent = HashMap::new();
    for i in 0..200 {
        let len = rng.random_range(0..64);
        let body = body_of(&mut rng, i, len);
        let timeout = Some(Duration::from_secs(60));
        let id = sim
            .command(client, |c, now| c.rpc(now, body.clone(), timeout))
            .unwrap();
        sent.insert(id, body);
    }
    assert_eq!(sim.conn(client).outstanding_calls(), 200);

    let mut received = Vec::new();
    assert!(sim.run_until(|sim| {
        sim.history(server)
            .iter()
            .filter(|r| matches!(r.event, Event::RpcReceived { .. }))
            .count()
            == 200
    }));
    for event in sim.new_events(server) {
        if let Event::RpcReceived { request, body } = event {
            received.push((request, body));
        }
    }
    // The server answers in a random order, in bursts, with time passing between them.
    received.shuffle(&mut rng);
    for burst in received.chunks(17) {
        for (request, body) in burst {
            sim.command(server, |c, now| {
                c.respond_rpc(now, *request, reply_to(body))
            })
            .unwrap();
        }
        sim.run_for(3 * MS);
    }
    sim.run_until_quiet();

    let events = sim.events(client);
    assert_eq!(events.len(), 200);
    for event in events {
        let Event::ReplyReceived {
            call: Call::Rpc(request),
            body,
        } = event
        else {
            panic!("unexpected {event:?}");
        };
        assert_eq!(body, reply_to(&sent.remove(&request).unwrap()));
    }
    assert!(sent.is_empty());
    assert_eq!(sim.conn(client).outstanding_calls(), 0);
    assert_eq!(sim.conn(client).poll_timeout(), None);
}

#[test]
fn call_timeout_fires_at_its_deadline_and_the_late_reply_is_dropped() {
    let (mut sim, client, server) = Sim::pair(3, config(), config(), lan());
    let rpc = sim
        .command(client, |c, now| {
            c.rpc(now, "slow".into(), Some(Duration::from_secs(2)))
        })
        .unwrap();
    let chunk = StreamChunkId::new(9, 1);
    sim.command(client, |c, now| {
        c.fetch_chunk(now, chunk, Some(Duration::from_millis(2500)))
    })
    .unwrap();
    assert_eq!(sim.conn(client).poll_timeout(), Some(sim.at(2 * 1000 * MS)));

    // The server holds both requests for three seconds.
    sim.run_to(sim.at(Duration::from_secs(3)));
    let mut rpc_request = None;
    for event in sim.new_events(server) {
        if let Event::RpcReceived { request, .. } = event {
            rpc_request = Some(request);
        }
    }
    assert_eq!(
        outcomes(&sim, client, Call::Rpc(rpc)),
        [(
            Duration::from_secs(2),
            Event::CallFailed {
                call: Call::Rpc(rpc),
                error: RequestError::TimedOut {
                    after: Duration::from_secs(2)
                },
            }
        )]
    );
    assert_eq!(
        outcomes(&sim, client, Call::ChunkFetch(chunk)),
        [(
            Duration::from_millis(2500),
            Event::CallFailed {
                call: Call::ChunkFetch(chunk),
                error: RequestError::TimedOut {
                    after: Duration::from_millis(2500)
                },
            }
        )]
    );

    sim.command(server, |c, now| {
        c.respond_rpc(now, rpc_request.unwrap(), "late".into())?;
        c.respond_chunk(now, chunk, chunk_body(chunk))
    })
    .unwrap();
    sim.run_until_quiet();

    assert_eq!(sim.events(client).len(), 2, "{:#?}", sim.events(client));
    assert_eq!(sim.conn(client).stats().unmatched_replies, 2);
    assert!(!sim.conn(client).is_closed());
    assert_eq!(sim.conn(client).outstanding_calls(), 0);
}

#[test]
fn idle_timeout_with_outstanding_calls_and_a_crashed_peer_closes_and_fails_every_call() {
    let (mut sim, client, server) = Sim::pair(4, config(), config(), lan());
    let rpc = sim
        .command(client, |c, now| c.rpc(now, "ping".into(), None))
        .unwrap();
    let chunk = StreamChunkId::new(1, 2);
    sim.command(client, |c, now| c.fetch_chunk(now, chunk, None))
        .unwrap();
    let stream = sim
        .command(client, |c, now| c.stream(now, "s", None))
        .unwrap();
    sim.crash(server, Notice::Silent);
    sim.run_until_quiet();

    let expected = ConnectionError::TimedOut {
        idle: IDLE,
        outstanding: 3,
    };
    assert_eq!(
        sim.closed_at(client),
        Some((sim.at(IDLE), expected.clone()))
    );
    for call in [
        Call::Rpc(rpc),
        Call::ChunkFetch(chunk),
        Call::Stream(stream),
    ] {
        assert_eq!(
            outcomes(&sim, client, call),
            [(
                IDLE,
                Event::CallFailed {
                    call,
                    error: RequestError::Disconnected(expected.clone()),
                }
            )]
        );
    }
    assert_eq!(assert_closed_once_and_last(&sim, client), expected);
    assert_eq!(sim.events(client).len(), 4);
    assert!(sim.events(server).is_empty());
}

#[test]
fn crashed_peer_that_sends_eof_fails_pending_calls_with_peer_closed() {
    let (mut sim, client, server) = Sim::pair(5, config(), config(), lan());
    let rpc = sim
        .command(client, |c, now| c.rpc(now, "ping".into(), None))
        .unwrap();
    sim.run_for(20 * MS);
    sim.crash(server, Notice::eof());
    sim.run_until_quiet();

    let (at, error) = sim.closed_at(client).unwrap();
    assert_eq!(
        at,
        sim.at(30 * MS),
        "eof arrives one latency after the crash"
    );
    assert_eq!(error, ConnectionError::PeerClosed);
    assert_eq!(
        outcomes(&sim, client, Call::Rpc(rpc)),
        [(
            30 * MS,
            Event::CallFailed {
                call: Call::Rpc(rpc),
                error: RequestError::Disconnected(ConnectionError::PeerClosed),
            }
        )]
    );
    assert_closed_once_and_last(&sim, client);
}

#[test]
fn idle_connection_with_nothing_outstanding_stays_open() {
    let (mut sim, client, server) = Sim::pair(6, config(), config(), lan());
    sim.set_handler(server, echo_server());
    sim.command(client, |c, now| c.rpc(now, "ping".into(), None))
        .unwrap();
    sim.run_for(Duration::from_secs(600));

    assert_eq!(sim.events(client).len(), 1);
    for side in [client, server] {
        assert!(!sim.conn(side).is_closed());
        assert_eq!(sim.conn(side).poll_timeout(), None);
    }
}

#[test]
fn idle_connection_closes_with_idle_when_close_idle_connections_is_set() {
    let closing = Config::builder()
        .with_idle_timeout(Some(IDLE))
        .with_close_idle_connections(true)
        .build()
        .unwrap();
    let (mut sim, client, server) = Sim::pair(7, closing, config(), lan());
    sim.set_handler(server, echo_server());
    sim.command(client, |c, now| c.rpc(now, "ping".into(), None))
        .unwrap();
    sim.run_until_quiet();

    // The reply arrived at 20 ms; nothing moved after it.
    let last_traffic = 20 * MS;
    assert_eq!(
        sim.history(client)[0].at - sim.base(),
        last_traffic,
        "{:#?}",
        sim.history(client)
    );
    assert_eq!(
        sim.closed_at(client),
        Some((
            sim.at(last_traffic + IDLE),
            ConnectionError::Idle { idle: IDLE }
        ))
    );
    assert_eq!(sim.events(client).len(), 2);
    // The server, which keeps idle connections, reads end of file when the client goes.
    assert_eq!(
        sim.closed_at(server),
        Some((
            sim.at(last_traffic + IDLE + 10 * MS),
            ConnectionError::PeerClosed
        ))
    );
}

#[test]
fn traffic_keeps_the_idle_timer_from_firing() {
    let (mut sim, client, server) = Sim::pair(8, config(), config(), lan());
    let rpc = sim
        .command(client, |c, now| c.rpc(now, "never answered".into(), None))
        .unwrap();
    // The server never answers, but talks every 10 s for five minutes.
    for _ in 0..30 {
        sim.run_for(Duration::from_secs(10));
        sim.command(server, |c, now| c.send_one_way(now, "still here".into()))
            .unwrap();
    }
    let last_sent = sim.elapsed();
    sim.run_for(IDLE - MS);
    assert!(!sim.conn(client).is_closed());
    assert_eq!(
        sim.conn(client).poll_timeout(),
        Some(sim.at(last_sent + 10 * MS + IDLE))
    );

    sim.run_until_quiet();
    let expected = ConnectionError::TimedOut {
        idle: IDLE,
        outstanding: 1,
    };
    assert_eq!(
        sim.closed_at(client),
        Some((sim.at(last_sent + 10 * MS + IDLE), expected.clone()))
    );
    assert_eq!(
        outcomes(&sim, client, Call::Rpc(rpc)),
        [(
            last_sent + 10 * MS + IDLE,
            Event::CallFailed {
                call: Call::Rpc(rpc),
                error: RequestError::Disconnected(expected),
            }
        )]
    );
}

#[test]
fn own_writes_keep_the_idle_timer_from_firing() {
    let (mut sim, client, server) = Sim::pair(9, config(), config(), lan());
    sim.command(client, |c, now| c.rpc(now, "never answered".into(), None))
        .unwrap();
    for _ in 0..10 {
        sim.run_for(Duration::from_secs(20));
        sim.command(client, |c, now| c.send_one_way(now, "tick".into()))
            .unwrap();
    }
    assert!(!sim.conn(client).is_closed());
    let last_sent = sim.elapsed();
    sim.run_until_quiet();
    assert_eq!(sim.closed_at(client).unwrap().0, sim.at(last_sent + IDLE));
    assert_eq!(
        sim.events(server)
            .iter()
            .filter(|e| matches!(e, Event::OneWayReceived { .. }))
            .count(),
        10
    );
}

#[test]
fn cut_mid_call_fails_every_pending_call_exactly_once() {
    let netem = Netem::ideal().with_latency(50 * MS).with_max_piece(20);
    let (mut sim, client, server) = Sim::pair(10, config(), config(), netem);
    sim.set_handler(server, echo_server());

    let done = sim
        .command(client, |c, now| c.rpc(now, "early".into(), None))
        .unwrap();
    sim.run_to(sim.at(100 * MS));
    assert_eq!(outcomes(&sim, client, Call::Rpc(done)).len(), 1);

    let rpc = sim
        .command(client, |c, now| {
            c.rpc(now, "a".into(), Some(Duration::from_secs(10)))
        })
        .unwrap();
    let chunk = StreamChunkId::new(3, 4);
    sim.command(client, |c, now| c.fetch_chunk(now, chunk, None))
        .unwrap();
    let stream = sim
        .command(client, |c, now| c.stream(now, "s", None))
        .unwrap();
    let meta = sim
        .command(client, |c, now| {
            c.merged_block_meta(now, "app", 1, 2, 3, None)
        })
        .unwrap();
    let (upload, body) = sim
        .command(client, |c, now| c.upload_stream(now, "m".into(), 100, None))
        .unwrap();
    sim.command(client, |c, now| {
        c.send_body(now, body, Bytes::from(vec![7; 50]))
    })
    .unwrap();

    // Requests arrive at 150 ms and are answered; the answers are lost in the cut.
    sim.run_to(sim.at(170 * MS));
    let reset = Notice::Error {
        after: Duration::from_secs(1),
        reason: "connection reset".into(),
    };
    sim.cut(client, reset, Notice::eof());
    sim.run_until_quiet();

    let expected = ConnectionError::Transport("connection reset".into());
    let calls = [
        Call::Rpc(rpc),
        Call::ChunkFetch(chunk),
        Call::Stream(stream),
        Call::MergedBlockMeta(meta),
        Call::Upload(upload),
    ];
    for call in calls {
        assert_eq!(
            outcomes(&sim, client, call),
            [(
                1170 * MS,
                Event::CallFailed {
                    call,
                    error: RequestError::Disconnected(expected.clone()),
                }
            )]
        );
    }
    assert_eq!(outcomes(&sim, client, Call::Rpc(done)).len(), 1);
    assert_eq!(assert_closed_once_and_last(&sim, client), expected);
    assert_eq!(sim.events(client).len(), 1 + calls.len() + 1);

    // The server saw half the upload body, then end of file.
    let remaining = 50;
    assert_eq!(
        assert_closed_once_and_last(&sim, server),
        ConnectionError::PeerClosedMidBody { remaining }
    );
    assert!(sim.events(server).contains(&Event::UploadAborted {
        request: upload,
        error: ConnectionError::PeerClosedMidBody { remaining },
    }));
    assert!(sim.link_stats(server).dropped > 0);
}

#[test]
fn peer_closing_mid_frame_is_reported_as_peer_closed_mid_frame() {
    let netem = lan().with_max_piece(8);
    let (mut sim, client, server) = Sim::pair(12, config(), config(), netem);
    let rpc = sim
        .command(client, |c, now| c.rpc(now, "ping".into(), None))
        .unwrap();
    assert!(sim.run_until(|sim| !sim.history(server).is_empty()));
    let Event::RpcReceived { request, .. } = sim.new_events(server)[0] else {
        panic!()
    };

    // The reply frame is 121 bytes; only 30 of them get out before the server vanishes.
    sim.close_after(server, 30);
    sim.command(server, |c, now| {
        c.respond_rpc(now, request, Bytes::from(vec![1; 100]))
    })
    .unwrap();
    sim.run_until_quiet();

    let expected = ConnectionError::PeerClosedMidFrame { buffered: 30 };
    assert_eq!(
        sim.events(client),
        [
            Event::CallFailed {
                call: Call::Rpc(rpc),
                error: RequestError::Disconnected(expected.clone()),
            },
            Event::Closed { error: expected },
        ]
    );
}

#[test]
fn peer_closing_mid_stream_body_fails_the_stream_with_peer_closed_mid_body() {
    let netem = lan().with_max_piece(16);
    let (mut sim, client, server) = Sim::pair(13, config(), config(), netem);
    let first = sim
        .command(client, |c, now| c.stream(now, "first", None))
        .unwrap();
    let second = sim
        .command(client, |c, now| c.stream(now, "second", None))
        .unwrap();
    assert!(sim.run_until(|sim| sim.history(server).len() == 2));
    let Event::StreamRequested { request, .. } = sim.new_events(server)[0] else {
        panic!()
    };
    let body = sim
        .command(server, |c, now| {
            c.respond_stream(now, request, "first", 100)
        })
        .unwrap();
    sim.command(server, |c, now| {
        c.send_body(now, body, Bytes::from(vec![5; 40]))
    })
    .unwrap();
    sim.run_for(100 * MS);
    sim.close(server);
    sim.run_until_quiet();

    let expected = ConnectionError::PeerClosedMidBody { remaining: 60 };
    let events = sim.events(client);
    assert_eq!(
        events[0],
        Event::StreamOpened {
            stream: first,
            byte_count: 100
        }
    );
    assert_eq!(stream_data(&sim, client, first), vec![5; 40]);
    let tail: Vec<_> = events
        .into_iter()
        .filter(|e| !matches!(e, Event::StreamOpened { .. } | Event::StreamData { .. }))
        .collect();
    assert_eq!(
        tail,
        [
            Event::CallFailed {
                call: Call::Stream(first),
                error: RequestError::Disconnected(expected.clone()),
            },
            Event::CallFailed {
                call: Call::Stream(second),
                error: RequestError::Disconnected(expected.clone()),
            },
            Event::Closed { error: expected },
        ]
    );
    assert_eq!(
        assert_closed_once_and_last(&sim, server),
        ConnectionError::LocallyClosed
    );
}

#[test]
fn stream_replies_answered_out_of_order_arrive_in_request_order() {
    for seed in 0..20 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let netem = lan()
            .with_jitter(4 * MS)
            .with_max_piece(rng.random_range(1..40));
        let (mut sim, client, server) = Sim::pair(seed, config(), config(), netem);
        let names: Vec<String> = (0..6).map(|i| format!("stream-{seed}-{i}")).collect();
        let calls: Vec<StreamCallId> = names
            .iter()
            .map(|name| {
                sim.command(client, |c, now| c.stream(now, name, None))
                    .unwrap()
            })
            .collect();
        assert!(sim.run_until(|sim| sim.history(server).len() == names.len()));
        let mut requests: Vec<_> = sim
            .new_events(server)
            .into_iter()
            .map(|e| match e {
                Event::StreamRequested { request, stream_id } => (request, stream_id),
                other => panic!("{other:?}"),
            })
            .collect();
        let failing = &names[3];

        // Answer in a random order; feed the bodies in interleaved random pieces.
        requests.shuffle(&mut rng);
        let mut feeding = Vec::new();
        for (request, name) in requests {
            if &name == failing {
                sim.command(server, |c, now| {
                    c.respond_stream_failure(now, request, &name, "no such stream")
                })
                .unwrap();
            } else {
                let body = stream_body(&name);
                let id = sim
                    .command(server, |c, now| {
                        c.respond_stream(now, request, &name, body.len() as u64)
                    })
                    .unwrap();
                feeding.push((id, body));
            }
            sim.run_for(Duration::from_millis(rng.random_range(0..5)));
        }
        while !feeding.is_empty() {
            let i = rng.random_range(0..feeding.len());
            let (id, body) = &mut feeding[i];
            let piece = body.split_to(rng.random_range(1..=body.len()));
            let id = *id;
            sim.command(server, |c, now| c.send_body(now, id, piece))
                .unwrap();
            if body.is_empty() {
                feeding.swap_remove(i);
            }
            sim.run_for(Duration::from_millis(rng.random_range(0..3)));
        }
        sim.run_until_quiet();

        // Each call's events are contiguous and in request order.
        let mut events = sim.events(client).into_iter().peekable();
        for (call, name) in calls.iter().zip(&names) {
            if name == failing {
                assert_eq!(
                    events.next(),
                    Some(Event::CallFailed {
                        call: Call::Stream(*call),
                        error: RequestError::Remote("no such stream".into()),
                    }),
                    "seed {seed}"
                );
                continue;
            }
            let expected = stream_body(name);
            assert_eq!(
                events.next(),
                Some(Event::StreamOpened {
                    stream: *call,
                    byte_count: expected.len() as u64
                }),
                "seed {seed}"
            );
            let mut got = BytesMut::new();
            while let Some(Event::StreamData { stream, data }) = events.peek() {
                assert_eq!(stream, call, "seed {seed}");
                got.extend_from_slice(data);
                events.next();
            }
            assert_eq!(got, expected, "seed {seed}");
            assert_eq!(
                events.next(),
                Some(Event::StreamFinished { stream: *call }),
                "seed {seed}"
            );
        }
        assert_eq!(events.next(), None, "seed {seed}");
    }
}

#[test]
fn timed_out_stream_reply_body_is_skipped_and_the_next_stream_gets_its_own_body() {
    let netem = lan().with_max_piece(7);
    let (mut sim, client, server) = Sim::pair(14, config(), config(), netem);
    let slow = sim
        .command(client, |c, now| {
            c.stream(now, "slow", Some(Duration::from_secs(1)))
        })
        .unwrap();
    let next = sim
        .command(client, |c, now| c.stream(now, "next", None))
        .unwrap();
    // The server answers both at 2 s, after the first call gave up.
    sim.run_to(sim.at(Duration::from_secs(2)));
    for event in sim.new_events(server) {
        if let Event::StreamRequested { request, stream_id } = event {
            let body = stream_body(&stream_id);
            sim.command(server, |c, now| {
                let id = c.respond_stream(now, request, &stream_id, body.len() as u64)?;
                c.send_body(now, id, body)
            })
            .unwrap();
        }
    }
    sim.run_until_quiet();

    assert_eq!(
        sim.history(client)[0].at,
        sim.at(Duration::from_secs(1)),
        "the timeout fires at its deadline"
    );
    let expected = stream_body("next");
    assert_eq!(
        sim.events(client)[0],
        Event::CallFailed {
            call: Call::Stream(slow),
            error: RequestError::TimedOut {
                after: Duration::from_secs(1)
            },
        }
    );
    assert_eq!(
        sim.events(client)[1],
        Event::StreamOpened {
            stream: next,
            byte_count: expected.len() as u64
        }
    );
    assert_eq!(stream_data(&sim, client, next), expected);
    assert_eq!(
        sim.events(client).last(),
        Some(&Event::StreamFinished { stream: next })
    );
    assert!(sim.events(client).iter().all(|e| !matches!(
        e,
        Event::StreamData { stream, .. } | Event::StreamOpened { stream, .. } if *stream == slow
    )));
    assert_eq!(sim.conn(client).stats().unmatched_replies, 1);
    assert_eq!(sim.conn(client).outstanding_calls(), 0);
}

#[test]
fn stream_timing_out_mid_body_skips_the_rest_and_the_next_stream_gets_its_own_body() {
    let netem = lan().with_max_piece(5);
    let (mut sim, client, server) = Sim::pair(15, config(), config(), netem);
    let slow = sim
        .command(client, |c, now| {
            c.stream(now, "slow", Some(Duration::from_secs(1)))
        })
        .unwrap();
    let next = sim
        .command(client, |c, now| {
            c.stream(now, "next", Some(Duration::from_secs(5)))
        })
        .unwrap();
    assert!(sim.run_until(|sim| sim.history(server).len() == 2));
    let requests: Vec<_> = sim
        .new_events(server)
        .into_iter()
        .map(|e| match e {
            Event::StreamRequested { request, .. } => request,
            other => panic!("{other:?}"),
        })
        .collect();
    let slow_body = sim
        .command(server, |c, now| {
            c.respond_stream(now, requests[0], "slow", 100)
        })
        .unwrap();
    sim.command(server, |c, now| {
        c.send_body(now, slow_body, Bytes::from(vec![1; 30]))
    })
    .unwrap();
    let expected = stream_body("next");
    let next_body = sim
        .command(server, |c, now| {
            c.respond_stream(now, requests[1], "next", expected.len() as u64)
        })
        .unwrap();
    sim.command(server, |c, now| {
        c.send_body(now, next_body, expected.clone())
    })
    .unwrap();

    // The slow call times out with 70 bytes of its body still to come.
    sim.run_to(sim.at(Duration::from_millis(1500)));
    assert_eq!(
        outcomes(&sim, client, Call::Stream(slow)),
        [(
            Duration::from_secs(1),
            Event::CallFailed {
                call: Call::Stream(slow),
                error: RequestError::TimedOut {
                    after: Duration::from_secs(1)
                },
            }
        )]
    );
    assert!(outcomes(&sim, client, Call::Stream(next)).is_empty());
    sim.command(server, |c, now| {
        c.send_body(now, slow_body, Bytes::from(vec![2; 70]))
    })
    .unwrap();
    sim.run_until_quiet();

    assert_eq!(stream_data(&sim, client, slow), vec![1; 30]);
    assert_eq!(stream_data(&sim, client, next), expected);
    assert_eq!(
        outcomes(&sim, client, Call::Stream(next)),
        [(1510 * MS, Event::StreamFinished { stream: next })]
    );
    assert_eq!(
        sim.events(client).last(),
        Some(&Event::StreamFinished { stream: next })
    );
    assert_eq!(sim.conn(client).poll_timeout(), None);
}

#[test]
fn upload_body_fed_in_pieces_arrives_in_order_and_the_reply_resolves_the_upload() {
    let mut rng = SmallRng::seed_from_u64(16);
    let netem = lan().with_jitter(2 * MS).with_max_piece(33);
    let (mut sim, client, server) = Sim::pair(16, config(), config(), netem);
    sim.set_handler(server, echo_server());

    let content: Bytes = (0..1000)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let (upload, body) = sim
        .command(client, |c, now| {
            c.upload_stream(now, "meta".into(), content.len() as u64, None)
        })
        .unwrap();
    let mut rest = content.clone();
    while !rest.is_empty() {
        let piece = rest.split_to(rng.random_range(1..=rest.len().min(120)));
        sim.command(client, |c, now| c.send_body(now, body, piece))
            .unwrap();
        sim.run_for(Duration::from_millis(rng.random_range(0..6)));
    }
    assert_eq!(sim.conn(client).body_remaining(body), None);
    sim.run_until_quiet();

    let events = sim.events(server);
    assert_eq!(
        events[0],
        Event::UploadReceived {
            request: upload,
            meta: "meta".into(),
            byte_count: 1000
        }
    );
    let mut got = BytesMut::new();
    for event in &events[1..events.len() - 1] {
        let Event::UploadData { request, data } = event else {
            panic!("unexpected {event:?}");
        };
        assert_eq!(*request, upload);
        got.extend_from_slice(data);
    }
    assert_eq!(got, content);
    assert_eq!(
        events.last(),
        Some(&Event::UploadFinished { request: upload })
    );
    assert_eq!(
        sim.events(client),
        [Event::ReplyReceived {
            call: Call::Upload(upload),
            body: upload_reply(b"meta", &content),
        }]
    );
}

#[test]
fn frames_queued_while_an_upload_body_is_incomplete_are_sent_after_it() {
    let (mut sim, client, server) = Sim::pair(17, config(), config(), lan());
    sim.set_handler(server, echo_server());
    let (upload, body) = sim
        .command(client, |c, now| c.upload_stream(now, "m".into(), 100, None))
        .unwrap();
    sim.command(client, |c, now| {
        c.send_body(now, body, Bytes::from(vec![1; 30]))
    })
    .unwrap();
    let rpc = sim
        .command(client, |c, now| c.rpc(now, "behind".into(), None))
        .unwrap();
    sim.command(client, |c, now| c.send_one_way(now, "also behind".into()))
        .unwrap();
    sim.run_for(Duration::from_secs(1));

    // Only the upload's header and the bytes fed so far are out.
    assert_eq!(
        sim.events(server),
        [
            Event::UploadReceived {
                request: upload,
                meta: "m".into(),
                byte_count: 100
            },
            Event::UploadData {
                request: upload,
                data: Bytes::from(vec![1; 30])
            },
        ]
    );
    // The frames behind the unfinished body cannot move yet, so none of it counts as ready.
    assert_eq!(sim.conn(client).queued_bytes(), 0);

    sim.command(client, |c, now| {
        c.send_body(now, body, Bytes::from(vec![2; 70]))
    })
    .unwrap();
    sim.run_until_quiet();
    let events = sim.events(server);
    assert_eq!(
        events[2..],
        [
            Event::UploadData {
                request: upload,
                data: Bytes::from(vec![2; 70])
            },
            Event::UploadFinished { request: upload },
            Event::RpcReceived {
                request: rpc,
                body: "behind".into()
            },
            Event::OneWayReceived {
                body: "also behind".into()
            },
        ]
    );
    let mut all = vec![1; 30];
    all.extend_from_slice(&[2; 70]);
    assert_eq!(
        sim.events(client),
        [
            Event::ReplyReceived {
                call: Call::Upload(upload),
                body: upload_reply(b"m", &all)
            },
            Event::ReplyReceived {
                call: Call::Rpc(rpc),
                body: reply_to(b"behind")
            },
        ]
    );
}

#[test]
fn garbage_from_the_peer_fails_pending_calls_with_a_decode_error() {
    let (mut sim, client, server) = Sim::pair(18, config(), config(), lan());
    let rpc = sim
        .command(client, |c, now| c.rpc(now, "ping".into(), None))
        .unwrap();
    // A frame length of 3 is below the 9-byte minimum.
    sim.inject(server, Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 3, 0]));
    sim.run_until_quiet();

    let error = assert_closed_once_and_last(&sim, client);
    assert!(matches!(error, ConnectionError::Decode(_)), "{error:?}");
    assert_eq!(
        outcomes(&sim, client, Call::Rpc(rpc)),
        [(
            10 * MS,
            Event::CallFailed {
                call: Call::Rpc(rpc),
                error: RequestError::Disconnected(error),
            }
        )]
    );
    // The client drops the socket; the server reads end of file.
    assert_eq!(
        assert_closed_once_and_last(&sim, server),
        ConnectionError::PeerClosed
    );
}

#[test]
fn both_ends_can_call_each_other_over_one_connection() {
    let netem = lan().with_max_piece(11).with_jitter(MS);
    let (mut sim, a, b) = Sim::pair(19, config(), config(), netem);
    sim.set_handler(a, echo_server());
    sim.set_handler(b, echo_server());
    let mut sent: HashMap<(Side, RequestId), Bytes> = HashMap::new();
    for i in 0..20 {
        for side in [a, b] {
            let body = Bytes::from(format!("{side} asks {i}"));
            let id = sim
                .command(side, |c, now| c.rpc(now, body.clone(), None))
                .unwrap();
            sent.insert((side, id), body);
        }
        sim.run_for(MS);
    }
    sim.run_until_quiet();
    for side in [a, b] {
        let replies: Vec<_> = sim
            .events(side)
            .into_iter()
            .filter_map(|e| match e {
                Event::ReplyReceived {
                    call: Call::Rpc(request),
                    body,
                } => Some((request, body)),
                _ => None,
            })
            .collect();
        assert_eq!(replies.len(), 20);
        for (request, body) in replies {
            assert_eq!(body, reply_to(&sent[&(side, request)]));
        }
    }
}

#[test]
fn a_crash_on_one_link_leaves_other_connections_untouched() {
    let mut sim = Sim::new(20);
    let client_1 = sim.add(config());
    let server_1 = sim.add(config());
    let client_2 = sim.add(config());
    let server_2 = sim.add(config());
    sim.connect(client_1, server_1, lan(), lan());
    sim.connect(client_2, server_2, lan().with_max_piece(3), lan());
    sim.set_handler(server_2, echo_server());
    assert_eq!(sim.peer_of(server_2), Some(client_2));

    let lost = sim
        .command(client_1, |c, now| c.rpc(now, "one".into(), None))
        .unwrap();
    let kept = sim
        .command(client_2, |c, now| c.rpc(now, "two".into(), None))
        .unwrap();
    sim.crash(server_1, Notice::error("host unreachable"));
    sim.run_until_quiet();

    let unreachable = ConnectionError::Transport("host unreachable".into());
    assert_eq!(
        sim.events(client_1),
        [
            Event::CallFailed {
                call: Call::Rpc(lost),
                error: RequestError::Disconnected(unreachable.clone()),
            },
            Event::Closed { error: unreachable },
        ]
    );
    assert_eq!(
        sim.events(client_2),
        [Event::ReplyReceived {
            call: Call::Rpc(kept),
            body: reply_to(b"two")
        }]
    );
    assert!(!sim.is_alive(server_1));
    assert!(!sim.conn(client_2).is_closed());
}

#[test]
fn bandwidth_limit_spreads_a_large_reply_over_time() {
    let slow = lan().with_bandwidth(100_000);
    let (mut sim, client, server) = Sim::pair(21, config(), config(), lan());
    *sim.netem_mut(server) = slow;
    sim.set_handler(server, echo_server());
    let body = Bytes::from(vec![9; 200_000]);
    sim.command(client, |c, now| c.rpc(now, body.clone(), None))
        .unwrap();
    sim.run_until_quiet();
    // 200 kB at 100 kB/s: about two seconds on the wire, plus both latencies.
    let at = sim.history(client)[0].at - sim.base();
    assert!(
        at >= Duration::from_secs(2) && at < Duration::from_millis(2100),
        "{at:?}"
    );
}

#[test]
fn simulation_is_deterministic_for_a_seed() {
    fn run(seed: u64) -> Vec<(Duration, Event)> {
        let netem = lan().with_jitter(7 * MS).with_max_piece(9);
        let (mut sim, client, server) = Sim::pair(seed, config(), config(), netem);
        sim.set_handler(server, echo_server());
        for i in 0..10 {
            sim.command(client, |c, now| c.stream(now, &format!("s{i}"), None))
                .unwrap();
            sim.run_for(MS);
        }
        sim.run_until_quiet();
        sim.history(client)
            .iter()
            .map(|r| (r.at - sim.base(), r.event.clone()))
            .collect()
    }
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn cancelled_stream_mid_body_is_skipped_and_the_next_stream_gets_its_own_body() {
    let netem = lan().with_max_piece(9);
    let (mut sim, client, server) = Sim::pair(22, config(), config(), netem);
    let dropped = sim
        .command(client, |c, now| c.stream(now, "dropped", None))
        .unwrap();
    let next = sim
        .command(client, |c, now| c.stream(now, "next", None))
        .unwrap();
    assert!(sim.run_until(|sim| sim.history(server).len() == 2));
    let requests: Vec<_> = sim
        .new_events(server)
        .into_iter()
        .map(|e| match e {
            Event::StreamRequested { request, .. } => request,
            other => panic!("{other:?}"),
        })
        .collect();
    let body = sim
        .command(server, |c, now| {
            c.respond_stream(now, requests[0], "dropped", 60)
        })
        .unwrap();
    sim.command(server, |c, now| {
        c.send_body(now, body, Bytes::from(vec![1; 25]))
    })
    .unwrap();
    sim.run_for(100 * MS);
    assert!(sim.command(client, |c, _| c.cancel(Call::Stream(dropped))));
    assert!(!sim.command(client, |c, _| c.cancel(Call::Stream(dropped))));
    let seen = sim.events(client).len();

    sim.command(server, |c, now| {
        c.send_body(now, body, Bytes::from(vec![2; 35]))
    })
    .unwrap();
    let expected = stream_body("next");
    sim.command(server, |c, now| {
        let id = c.respond_stream(now, requests[1], "next", expected.len() as u64)?;
        c.send_body(now, id, expected.clone())
    })
    .unwrap();
    sim.run_until_quiet();

    assert_eq!(stream_data(&sim, client, dropped), vec![1; 25]);
    let after: Vec<_> = sim.events(client)[seen..].to_vec();
    assert!(after.iter().all(|e| !matches!(
        e,
        Event::StreamData { stream, .. } | Event::StreamFinished { stream } if *stream == dropped
    )));
    assert_eq!(
        after[0],
        Event::StreamOpened {
            stream: next,
            byte_count: expected.len() as u64
        }
    );
    assert_eq!(stream_data(&sim, client, next), expected);
    assert_eq!(after.last(), Some(&Event::StreamFinished { stream: next }));
    assert_eq!(sim.conn(client).outstanding_calls(), 0);
}

#[test]
fn empty_stream_finishes_as_soon_as_it_opens() {
    let (mut sim, client, server) = Sim::pair(23, config(), config(), lan());
    let empty = sim
        .command(client, |c, now| c.stream(now, "empty", None))
        .unwrap();
    let full = sim
        .command(client, |c, now| c.stream(now, "full", None))
        .unwrap();
    sim.set_handler(server, |c, now, event| {
        if let Event::StreamRequested { request, stream_id } = event {
            let body = if stream_id == "empty" {
                Bytes::new()
            } else {
                stream_body(stream_id)
            };
            let id = c
                .respond_stream(now, *request, stream_id, body.len() as u64)
                .unwrap();
            if !body.is_empty() {
                c.send_body(now, id, body).unwrap();
            }
        }
    });
    sim.run_until_quiet();
    let expected = stream_body("full");
    assert_eq!(
        sim.events(client),
        [
            Event::StreamOpened {
                stream: empty,
                byte_count: 0
            },
            Event::StreamFinished { stream: empty },
            Event::StreamOpened {
                stream: full,
                byte_count: expected.len() as u64
            },
            Event::StreamData {
                stream: full,
                data: expected
            },
            Event::StreamFinished { stream: full },
        ]
    );
}

/// `queued_bytes` is documented as the bytes "ready for `poll_transmit`", for drivers to stop
/// feeding bodies while it is high. Bytes that cannot be written yet (frames behind an
/// unfinished upload body, a stream body fed before the earlier answers) must not count, or
/// a driver following that advice stops feeding the very body everything waits for.
#[test]
fn queued_bytes_counts_only_what_poll_transmit_can_hand_out() {
    let (mut sim, client, server) = Sim::pair(24, config(), config(), lan());

    // Frames queued behind an upload body that is not complete.
    let (_, body) = sim
        .command(client, |c, now| c.upload_stream(now, "m".into(), 100, None))
        .unwrap();
    sim.command(client, |c, now| {
        c.send_body(now, body, Bytes::from(vec![1; 30]))
    })
    .unwrap();
    sim.command(client, |c, now| {
        c.rpc(now, Bytes::from(vec![0; 1000]), None)
    })
    .unwrap();
    // The simulation drained the client: `poll_transmit` has returned `None`.
    let behind_body = sim.conn(client).queued_bytes();

    // A stream body fed for an answer that waits for an earlier one.
    for name in ["first", "second"] {
        sim.command(client, |c, now| c.stream(now, name, None))
            .unwrap();
    }
    sim.command(client, |c, now| {
        c.send_body(now, body, Bytes::from(vec![2; 70]))
    })
    .unwrap();
    assert!(sim.run_until(|sim| sim.history(server).len() >= 5));
    let second = sim
        .new_events(server)
        .into_iter()
        .filter_map(|e| match e {
            Event::StreamRequested { request, stream_id } if stream_id == "second" => Some(request),
            _ => None,
        })
        .next()
        .unwrap();
    sim.command(server, |c, now| {
        let id = c.respond_stream(now, second, "second", 500)?;
        c.send_body(now, id, Bytes::from(vec![3; 500]))
    })
    .unwrap();
    let waiting_body = sim.conn(server).queued_bytes();
    assert_eq!(
        (behind_body, waiting_body),
        (0, 0),
        "(frames behind an unfinished body, a body waiting for an earlier answer)"
    );
}

// ------------------------------------------------------------ hostile peers (issue 11)

const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

fn guarded() -> Config {
    Config::builder()
        .with_idle_timeout(Some(IDLE))
        .with_frame_timeout(Some(FRAME_TIMEOUT))
        .build()
        .unwrap()
        .accepted()
}

fn rpc_frame(len: usize) -> Vec<u8> {
    let mut wire = BytesMut::new();
    rpc_proto::Frame::RpcRequest {
        request: RequestId(1),
        body: Bytes::from(vec![0; len]),
    }
    .encode(&mut wire);
    wire.to_vec()
}

#[test]
fn a_peer_stalled_mid_frame_is_cut_at_the_frame_timeout() {
    // Before: the server kept the half frame, and the connection, forever.
    let (mut sim, client, server) = Sim::pair(40, config(), guarded(), lan());
    let frame = rpc_frame(1000);
    sim.inject(client, Bytes::copy_from_slice(&frame[..500]));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.conn(server).partial_frame_bytes(), 500);
    sim.run_until_quiet();
    assert_eq!(
        sim.closed_at(server),
        Some((
            sim.at(10 * MS + FRAME_TIMEOUT),
            ConnectionError::FrameTimedOut {
                after: FRAME_TIMEOUT,
                received: 500
            }
        ))
    );
    assert_eq!(sim.conn(server).partial_frame_bytes(), 0);
}

#[test]
fn a_peer_trickling_one_byte_a_second_is_cut_at_the_frame_timeout() {
    let (mut sim, client, server) = Sim::pair(41, config(), guarded(), lan());
    let frame = rpc_frame(1000);
    for byte in &frame[..20] {
        sim.inject(client, Bytes::copy_from_slice(std::slice::from_ref(byte)));
        sim.run_for(Duration::from_secs(1));
    }
    // Traffic every second, so the idle policy never acts; the frame deadline does.
    let (at, error) = sim.closed_at(server).expect("cut");
    assert_eq!(at, sim.at(10 * MS + FRAME_TIMEOUT));
    assert!(matches!(
        error,
        ConnectionError::FrameTimedOut { received: 6, .. }
    ));
}

#[test]
fn a_server_closes_an_accepted_connection_idle_with_nothing_outstanding() {
    // Before: a server kept such connections forever (Spark's server default).
    let (mut sim, client, server) = Sim::pair(42, config(), guarded(), lan());
    sim.set_handler(server, echo_server());
    sim.command(client, |c, now| c.rpc(now, "ping".into(), None))
        .unwrap();
    sim.run_until_quiet();
    // The request arrived at 10 ms and was answered at once.
    assert_eq!(
        sim.closed_at(server),
        Some((sim.at(10 * MS + IDLE), ConnectionError::Idle { idle: IDLE }))
    );
    assert_eq!(
        sim.closed_at(client),
        Some((sim.at(20 * MS + IDLE), ConnectionError::PeerClosed))
    );
}

#[test]
fn a_server_owing_an_answer_does_not_close_the_connection_as_idle() {
    let patient = Config::builder().with_idle_timeout(None).build().unwrap();
    let (mut sim, client, server) = Sim::pair(43, patient, guarded(), lan());
    sim.command(client, |c, now| c.rpc(now, "slow".into(), None))
        .unwrap();
    sim.run_for(IDLE * 3);
    assert!(!sim.conn(server).is_closed());
    assert_eq!(sim.conn(server).pending_requests(), 1);
}

#[test]
fn an_upload_body_that_stops_arriving_is_cut_at_the_idle_timeout() {
    let (mut sim, client, server) = Sim::pair(44, config(), guarded(), lan());
    let (request, body) = sim
        .command(client, |c, now| {
            c.upload_stream(now, "meta".into(), 100, None)
        })
        .unwrap();
    sim.command(client, |c, now| {
        c.send_body(now, body, Bytes::from(vec![1; 40]))
    })
    .unwrap();
    sim.run_for(Duration::from_secs(1));
    // The server refuses the upload at once; the rest of the body never comes.
    let refused = sim
        .new_events(server)
        .iter()
        .any(|e| matches!(e, Event::UploadReceived { request: r, .. } if *r == request));
    assert!(refused);
    sim.command(server, |c, now| c.respond_rpc_failure(now, request, "no"))
        .unwrap();
    sim.run_until_quiet();
    let (at, error) = sim.closed_at(server).expect("cut");
    assert_eq!(
        error,
        ConnectionError::BodyStalled {
            idle: IDLE,
            remaining: 60
        }
    );
    assert_eq!(at, sim.at(Duration::from_secs(1) + IDLE));
}
