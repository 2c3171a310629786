//! Many callers, and callers that give up: a thousand asks on one connection, asks dropped or
//! aborted while their replies are in flight, close and shutdown racing calls in flight.

use std::time::Duration;

use bytes::Bytes;
use rpc::{ConnectionError, RequestError as CallOutcome};
use rpc::{
    BoxError, ConcurrentRpcEndpoint, EndpointContext, RpcCallContext, RpcEndpointRef, RpcError,
};

use super::transport::setup;
use super::util::*;

/// Answers `n` with `re:<n>` after a few milliseconds that depend on `n`, so replies come
/// back in another order than the asks went out.
struct Jittery;

impl ConcurrentRpcEndpoint for Jittery {
    type Message = u32;
    type Reply = String;

    async fn receive_and_reply(
        &self,
        _: &EndpointContext<u32, String>,
        n: u32,
        call: RpcCallContext<String>,
    ) -> Result<(), BoxError> {
        sleep(Duration::from_millis(u64::from(n % 5))).await;
        call.reply(format!("re:{n}"));
        Ok(())
    }
}

#[test]
fn a_thousand_concurrent_asks_on_one_connection_each_get_their_own_reply() {
    block_on(async {
        let (server, client) = (server_env("server"), client_env("client"));
        let rec = Recorder::default();
        server.setup_endpoint("events", Probe::new(&rec)).unwrap();
        server.setup_concurrent_endpoint("jittery", Jittery).unwrap();
        let jittery = within(
            "a lookup",
            client.setup_endpoint_ref::<u32, String>(addr(&server), "jittery"),
        )
        .await
        .unwrap();
        let asks: Vec<_> = (0..1000u32)
            .map(|n| {
                let jittery = jittery.clone();
                spawn(async move {
                    let reply = within("a reply", jittery.ask(n)).await;
                    assert_eq!(reply.unwrap(), format!("re:{n}"));
                })
            })
            .collect();
        for ask in asks {
            within("every ask", ask).await;
        }
        assert_eq!(
            count(&rec.entries(), "connected:"),
            1,
            "all asks shared one connection"
        );
        assert_eq!(client.stats().in_flight, 0, "{:?}", client.stats());
        shutdown(&[&server, &client]).await;
    })
}

/// Rounds of give-and-take: how long a round waits before giving up, from nothing to about
/// a round trip, so some replies are still in flight when their asks are dropped.
fn patience(round: u32) -> Duration {
    Duration::from_micros(u64::from(round % 40) * 25)
}

#[test]
fn dropping_asks_while_their_replies_are_in_flight_leaves_nothing_behind() {
    block_on(async {
        let (a, b, c) = (server_env("a"), server_env("b"), client_env("c"));
        let local = a.setup_endpoint("probe", Probe::default()).unwrap();
        let refs = [
            ("local", &a, local),
            ("server", &b, lookup(&b, &a, "probe").await),
            ("client", &c, lookup(&c, &a, "probe").await),
        ];
        for (route, env, probe) in &refs {
            let mut answered = 0;
            for round in 0..200u32 {
                let text = format!("{route} {round}");
                let ask = probe.ask(Cmd::Quiet(text.clone()));
                if let Some(reply) = give_up_after(patience(round), ask).await {
                    assert_eq!(reply.unwrap(), text);
                    answered += 1;
                }
            }
            eventually(&format!("no {route} ask left in flight"), || {
                env.stats().in_flight == 0
            })
            .await;
            // Later asks on the same ref are answered, each with its own reply.
            for i in 0..10 {
                let reply = within("a later reply", probe.ask(Cmd::Quiet(format!("after {i}"))));
                assert_eq!(reply.await.unwrap(), format!("after {i}"));
            }
            assert!(answered <= 200);
        }
        shutdown(&[&a, &b, &c]).await;
    })
}

#[test]
fn dropping_rpc_calls_while_their_replies_are_in_flight_leaves_the_connection_working() {
    block_on(async {
        let (server, _, factory, _) = setup().await;
        let client = within("a connection", factory.create_client(server.local_addr()))
            .await
            .unwrap();
        let mut dropped = 0;
        for round in 0..300u32 {
            let body = Bytes::from(format!("call {round}"));
            match give_up_after(patience(round), client.send_rpc(body.clone(), None)).await {
                Some(reply) => assert_eq!(reply.unwrap(), body),
                None => dropped += 1,
            }
        }
        for i in 0..10 {
            let body = Bytes::from(format!("after {i}"));
            let reply = within("a later reply", client.send_rpc(body.clone(), None)).await;
            assert_eq!(reply.unwrap(), body);
        }
        // Late replies to dropped calls are discarded, never matched to another call.
        assert!(client.stats().unmatched_replies <= dropped, "{:?}", client.stats());
        assert!(client.is_active());
    })
}

#[test]
fn aborting_asks_racing_their_replies_neither_panics_nor_hangs() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        let local = a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let remote = lookup(&b, &a, "probe").await;
        for (env, probe) in [(&a, &local), (&b, &remote)] {
            for round in 0..100u32 {
                let ask = probe.ask(Cmd::Keep);
                let call = rec.next_kept().await;
                // The reply, from another thread, races the abort.
                let replier = on_thread(move || call.reply("raced".into()));
                for _ in 0..round % 3 {
                    yield_now().await;
                }
                ask.abort();
                within("the replying thread", replier).await;
            }
            eventually("no ask left in flight", || env.stats().in_flight == 0).await;
            let reply = within("a later reply", probe.ask(Cmd::Quiet("later".into()))).await;
            assert_eq!(reply.unwrap(), "later");
        }
        shutdown(&[&a, &b]).await;
    })
}

/// Starts RPCs of every kind on `client`: echoed, answered at once, and kept unanswered.
fn start_calls(client: &rpc::TransportClient) -> Vec<(Bytes, Task<Result<Bytes, CallOutcome>>)> {
    (0..300)
        .map(|i| {
            let body = Bytes::from(match i % 3 {
                0 => "keep".to_owned(),
                1 => format!("big:{i}"),
                _ => format!("call {i}"),
            });
            (body.clone(), spawn(client.send_rpc(body, None)))
        })
        .collect()
}

/// Awaits every call: each resolves, to its own reply or to a disconnect.
async fn every_call_resolves(calls: Vec<(Bytes, Task<Result<Bytes, CallOutcome>>)>) {
    for (body, call) in calls {
        match within("every call to resolve", call).await {
            Ok(reply) => {
                assert_ne!(body, "keep", "a kept call was answered");
                if body.starts_with(b"big:") {
                    let n = std::str::from_utf8(&body[4..]).unwrap().parse().unwrap();
                    assert_eq!(reply, super::transport::big_body(n));
                } else {
                    assert_eq!(reply, body);
                }
            }
            Err(CallOutcome::Disconnected(_)) => {}
            Err(other) => panic!("{body:?}: {other}"),
        }
    }
}

#[test]
fn closing_a_connection_under_calls_in_flight_resolves_every_call() {
    block_on(async {
        let (server, _, factory, _) = setup().await;
        for round in 0..5 {
            let client = within("a connection", factory.create_client(server.local_addr()))
                .await
                .unwrap();
            let calls = start_calls(&client);
            for _ in 0..round {
                yield_now().await;
            }
            client.close();
            every_call_resolves(calls).await;
            assert_eq!(client.close_reason(), Some(ConnectionError::LocallyClosed));
        }
    })
}

#[test]
fn closing_the_server_under_calls_in_flight_resolves_every_call() {
    block_on(async {
        let (server, _, factory, _) = setup().await;
        let client = within("a connection", factory.create_client(server.local_addr()))
            .await
            .unwrap();
        let calls = start_calls(&client);
        yield_now().await;
        server.close();
        every_call_resolves(calls).await;
        eventually("the client to see the close", || !client.is_active()).await;
    })
}

/// Starts asks of every kind: answered at once, answered a little later, kept unanswered.
fn start_asks(probe: &RpcEndpointRef<Cmd, String>) -> Vec<(Cmd, Task<Result<String, RpcError>>)> {
    (0..200u64)
        .map(|i| {
            let cmd = match i % 3 {
                0 => Cmd::Keep,
                1 => Cmd::Later(i % 7),
                _ => Cmd::Quiet(i.to_string()),
            };
            (cmd.clone(), spawn(probe.ask(cmd)))
        })
        .collect()
}

#[test]
fn shutting_down_the_asking_env_under_asks_in_flight_resolves_every_ask() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let probe = lookup(&b, &a, "probe").await;
        let asks = start_asks(&probe);
        sleep(Duration::from_millis(2)).await;
        b.shutdown();
        for (cmd, ask) in asks {
            match (&cmd, within("every ask to resolve", ask).await) {
                (Cmd::Keep, Ok(reply)) => panic!("a kept ask was answered: {reply}"),
                (Cmd::Later(_), Ok(reply)) => assert_eq!(reply, "later"),
                (Cmd::Quiet(text), Ok(reply)) => assert_eq!(reply, *text),
                (_, Err(RpcError::EnvStopped)) => {}
                (cmd, Err(other)) => panic!("{cmd:?}: {other}"),
                (cmd, Ok(reply)) => panic!("{cmd:?}: {reply}"),
            }
        }
        within("b's termination", b.await_termination()).await;
        shutdown(&[&a]).await;
    })
}

#[test]
fn shutting_down_the_answering_env_under_asks_in_flight_resolves_every_ask() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let probe = lookup(&b, &a, "probe").await;
        let asks = start_asks(&probe);
        sleep(Duration::from_millis(2)).await;
        a.shutdown();
        for (cmd, ask) in asks {
            // Answered, or failed for a reason the shutdown explains; never left to time out.
            match (&cmd, within("every ask to resolve", ask).await) {
                (Cmd::Keep, Ok(reply)) => panic!("a kept ask was answered: {reply}"),
                (Cmd::Later(_), Ok(reply)) => assert_eq!(reply, "later"),
                (Cmd::Quiet(text), Ok(reply)) => assert_eq!(reply, *text),
                (
                    _,
                    Err(
                        RpcError::Disconnected { .. }
                        | RpcError::EndpointStopped(_)
                        | RpcError::EndpointNotFound(_)
                        | RpcError::Remote(_),
                    ),
                ) => {}
                (cmd, Err(other)) => panic!("{cmd:?}: {other}"),
                (cmd, Ok(reply)) => panic!("{cmd:?}: {reply}"),
            }
        }
        within("a's termination", a.await_termination()).await;
        drop(rec.take_kept());
        shutdown(&[&b]).await;
    })
}
