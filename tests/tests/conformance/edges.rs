//! The control plane's edge cases as a Spark user meets them (issue 10): timeouts of any
//! length, balanced network events, cancellation when the caller is gone, asks around a
//! connection's death.

use std::time::Duration;

use super::util::*;
use rpc::{RpcEnv, RpcError};

// ---- timeouts of any length ----

/// Every way a user can pass `Duration::MAX` (ask, the env's default ask timeout, the lookup
/// timeout), locally, to another server env and from a client-mode env: no panic, the ask is
/// answered, and the endpoint sees no deadline.
#[test]
fn the_longest_timeouts_mean_no_deadline_everywhere() {
    block_on(async {
        let forever = Duration::MAX;
        let server = RpcEnv::create(
            rt(),
            server_config("server")
                .to_builder()
                .with_ask_timeout(forever)
                .with_lookup_timeout(forever)
                .build()
                .unwrap(),
        )
        .unwrap();
        let other = RpcEnv::create(
            rt(),
            server_config("other")
                .to_builder()
                .with_ask_timeout(forever)
                .with_lookup_timeout(forever)
                .build()
                .unwrap(),
        )
        .unwrap();
        let client = RpcEnv::create(
            rt(),
            client_config("client")
                .to_builder()
                .with_ask_timeout(forever)
                .with_lookup_timeout(forever)
                .build()
                .unwrap(),
        )
        .unwrap();
        let local = server
            .setup_endpoint("probe", Probe::new(&Recorder::default()))
            .unwrap();
        let from_other = lookup(&other, &server, "probe").await;
        let from_client = lookup(&client, &server, "probe").await;
        for (what, probe) in [
            ("local", &local),
            ("other server", &from_other),
            ("client", &from_client),
        ] {
            let default = within(what, probe.ask(Cmd::Deadline)).await;
            assert_eq!(default.unwrap(), "deadline=none", "{what}, default timeout");
            let explicit = within(what, probe.ask_with_timeout(Cmd::Deadline, forever)).await;
            assert_eq!(explicit.unwrap(), "deadline=none", "{what}, Duration::MAX");
            // A long timeout that the clock can still represent travels as it is.
            let year = Duration::from_secs(365 * 24 * 3600);
            let long = within(what, probe.ask_with_timeout(Cmd::Deadline, year)).await;
            let left: u64 = long.unwrap()["deadline=".len()..].parse().unwrap();
            assert!(left > year.as_secs() - 60, "{what}: {left} s left");
        }
        shutdown(&[&server, &other, &client]).await;
    })
}

/// An ask queued while its outbox connects, with a timeout past the clock's range.
#[test]
fn an_ask_queued_for_a_connection_takes_the_longest_timeout() {
    block_on(async {
        let server = server_env("server");
        server
            .setup_endpoint("probe", Probe::new(&Recorder::default()))
            .unwrap();
        let other = server_env("other");
        // No lookup: the first ask is queued while the outbox connects.
        let probe = other.endpoint_ref::<Cmd, String>(rpc::RpcEndpointAddress::new(
            addr(&server),
            "probe",
        ));
        let reply = within(
            "the reply",
            probe.ask_with_timeout(Cmd::Deadline, Duration::MAX),
        )
        .await;
        assert_eq!(reply.unwrap(), "deadline=none");
        shutdown(&[&server, &other]).await;
    })
}

// ---- network events: balanced per address ----

/// For every address in `entries`: connects and disconnects alternate, starting with a
/// connect. Returns the addresses still connected at the end.
fn assert_balanced(entries: &[String]) -> Vec<String> {
    let mut up: Vec<String> = Vec::new();
    for entry in entries {
        if let Some(a) = entry.strip_prefix("connected:") {
            assert!(!up.iter().any(|u| u == a), "{a} connected twice: {entries:?}");
            up.push(a.to_owned());
        } else if let Some(a) = entry.strip_prefix("disconnected:") {
            let at = up.iter().position(|u| u == a);
            let at = at.unwrap_or_else(|| panic!("{a} disconnected while not connected: {entries:?}"));
            up.remove(at);
        }
    }
    up
}

/// Two server envs, each asking the other: two connections stand for the peer env's
/// address. Its endpoints see it connected once and, when it goes, disconnected once.
#[test]
fn network_events_alternate_per_address_with_a_connection_each_way() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        let local = a.setup_endpoint("events", Probe::new(&rec)).unwrap();
        b.setup_endpoint("probe", Probe::default()).unwrap();
        let a_from_b = lookup(&b, &a, "events").await;
        let b_from_a = lookup(&a, &b, "probe").await;
        for probe in [&a_from_b, &b_from_a] {
            let reply = within("the reply", probe.ask(Cmd::Quiet("hi".into()))).await;
            assert_eq!(reply.unwrap(), "hi");
        }
        flush(&local).await; // every event posted so far is handled
        let still_up = assert_balanced(&rec.entries());
        assert!(
            still_up.contains(&addr(&b).to_string()),
            "{:?}",
            rec.entries()
        );
        assert_eq!(still_up.len(), 2, "b's address and the socket address of b's connection");

        shutdown(&[&b]).await;
        eventually("every address disconnected", || {
            assert_balanced(&rec.entries()).is_empty()
        })
        .await;
        let entries = rec.entries();
        assert_eq!(
            count(&entries, &format!("disconnected:{}", addr(&b))),
            1,
            "{entries:?}"
        );
        shutdown(&[&a]).await;
    })
}

/// Peers that come and go, one after the other: each address is connected, then
/// disconnected, once.
#[test]
fn network_events_alternate_for_peers_that_come_and_go() {
    block_on(async {
        let server = server_env("server");
        let rec = Recorder::default();
        server
            .setup_endpoint("events", Probe::new(&rec))
            .unwrap();
        for round in 0..3 {
            let peer = server_env(&format!("peer-{round}"));
            let events = lookup(&peer, &server, "events").await;
            let reply = within("the reply", events.ask(Cmd::Quiet("hi".into()))).await;
            assert_eq!(reply.unwrap(), "hi");
            shutdown(&[&peer]).await;
        }
        eventually("every address disconnected", || {
            assert_balanced(&rec.entries()).is_empty()
        })
        .await;
        assert_eq!(count(&rec.entries(), "connected:"), 6, "{:?}", rec.entries());
        shutdown(&[&server]).await;
    })
}

// ---- cancellation when the caller is gone ----

/// The caller's env shuts down (so its connection closes) while its ask is being handled:
/// the handler's `cancelled()` fires, for a server-mode and a client-mode caller. The ask
/// future is kept alive throughout, so no cancel message is involved: only the close.
#[test]
fn a_call_context_is_cancelled_when_the_callers_connection_closes() {
    block_on(async {
        let server = server_env("server");
        let rec = Recorder::default();
        server.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        for caller in [server_env("caller"), client_env("caller")] {
            rec.clear();
            let probe = lookup(&caller, &server, "probe").await;
            let ask = probe.ask(Cmd::WatchCancel);
            rec.wait_for("watching cancelled=false").await;
            shutdown(&[&caller]).await;
            rec.wait_for("cancelled is_cancelled=true").await;
            drop(ask);
        }
        shutdown(&[&server]).await;
    })
}

// ---- asks around a connection's death ----

/// Asks issued while the connection under them dies, before or after the outbox hears of
/// it: each is answered, or fails with `Disconnected` (it was written before the end: at
/// most once), never refused with `NotSent`; and once the outbox knows, asks reconnect.
/// Many rounds, since the window between a connection's death and the outbox hearing of it
/// is short.
#[test]
fn asks_around_a_connection_death_reconnect_or_fail_as_disconnected() {
    block_on(async {
        let server = server_env("server");
        server
            .setup_endpoint("probe", Probe::new(&Recorder::default()))
            .unwrap();
        let proxy = Proxy::to(&addr(&server));
        for caller in [server_env("caller"), client_env("caller")] {
            let probe = within(
                "a lookup",
                caller.setup_endpoint_ref::<Cmd, String>(proxy.address().clone(), "probe"),
            )
            .await
            .unwrap();
            for round in 0..40 {
                // Answered: the outbox reconnected after the previous round's death.
                let reply = within("the reply", probe.ask(Cmd::Quiet("hi".into()))).await;
                assert_eq!(reply.unwrap(), "hi", "round {round}: connected first");
                proxy.sever();
                let asks: Vec<_> = (0..8)
                    .map(|_| probe.ask(Cmd::Quiet("hi".into())))
                    .collect();
                for ask in asks {
                    // How many of each depends on scheduling; that nothing else happens
                    // does not.
                    match within("an ask", ask).await {
                        Ok(reply) => assert_eq!(reply, "hi"),
                        Err(RpcError::Disconnected { .. }) => {}
                        Err(other) => panic!("round {round}: {other:?}"),
                    }
                }
            }
            shutdown(&[&caller]).await;
        }
        shutdown(&[&server]).await;
    })
}

// ---- request ids ----

/// Each connection starts its request ids somewhere of its own (Spark's are random longs),
/// so ids from different connections do not collide in logs and peers' tables.
#[test]
fn connections_start_their_request_ids_at_different_values() {
    block_on(async {
        let mut firsts = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..4 {
            let (server, _, factory, _) = super::transport::setup().await;
            let client = within("a connection", factory.create_client(server.local_addr()))
                .await
                .unwrap();
            let call = client.send_rpc("hello".into(), None);
            firsts.push(call.request_id().expect("an rpc has a request id"));
            assert_eq!(within("the reply", call).await.unwrap(), "hello");
            servers.push((server, factory));
        }
        let mut distinct = firsts.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), firsts.len(), "{firsts:?}");
    })
}
