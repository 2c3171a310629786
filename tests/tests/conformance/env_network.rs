//! The control plane on real sockets, continued: Spark's `RpcEnvSuite` and
//! `NettyRpcEnvSuite` on network events, shutdown, ports, lookups, advertised addresses,
//! client-mode refs, isolated endpoints and counters.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::util::*;
use rpc::{
    BoxError, EndpointContext, EndpointKind, OutboxConfig, RpcAddress, RpcCallContext, RpcEndpoint,
    RpcEndpointRef, RpcEnv, RpcEnvConfig, RpcError, RpcMessage, SetupError,
};
use serde::{Deserialize, Serialize};

// ---- network events ----

#[test]
fn network_events_reach_a_server_env_whose_peer_is_a_server_env() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        a.setup_endpoint("events", Probe::new(&rec)).unwrap();
        let events = lookup(&b, &a, "events").await;
        events.send(Cmd::Note("hello".into())).unwrap();
        rec.wait_for("note:hello").await;

        // The peer as Spark reports it: the socket address the connection came from, then
        // the peer env's own address, which its message named, before the message.
        let connected = rec.wait_for_prefix("connected:").await;
        let peer = connected.strip_prefix("connected:").unwrap().to_owned();
        assert!(peer.starts_with("127.0.0.1:"), "{peer}");
        assert_ne!(
            peer,
            addr(&b).to_string(),
            "not the peer's listening address"
        );
        assert_eq!(
            rec.entries()[1..],
            [
                format!("connected:{peer}"),
                format!("connected:{}", addr(&b)),
                "note:hello".to_owned()
            ]
        );

        shutdown(&[&b]).await;
        // Both addresses, each once.
        rec.wait_for(&format!("disconnected:{peer}")).await;
        rec.wait_for(&format!("disconnected:{}", addr(&b))).await;
        assert_eq!(count(&rec.entries(), "connected:"), 2);
        assert_eq!(count(&rec.entries(), "disconnected:"), 2);
        assert_eq!(count(&rec.entries(), "network-error:"), 0, "a clean close");
        shutdown(&[&a]).await;
    })
}

#[test]
fn network_events_reach_a_server_env_whose_peer_is_a_client_mode_env() {
    block_on(async {
        let (server, client) = (server_env("server"), client_env("client"));
        let rec = Recorder::default();
        let local = server.setup_endpoint("events", Probe::new(&rec)).unwrap();
        let events = lookup(&client, &server, "events").await;
        events.send(Cmd::Note("hello".into())).unwrap();
        rec.wait_for("note:hello").await;
        let connected = rec.wait_for_prefix("connected:").await;
        let peer = connected.strip_prefix("connected:").unwrap().to_owned();
        assert!(peer.starts_with("127.0.0.1:"), "{peer}");

        shutdown(&[&client]).await;
        rec.wait_for(&format!("disconnected:{peer}")).await;
        flush(&local).await;
        // A client-mode env has no address of its own to report.
        assert_eq!(
            rec.starting_with("disconnected:"),
            [format!("disconnected:{peer}")]
        );
        assert_eq!(count(&rec.entries(), "network-error:"), 0, "a clean close");
        shutdown(&[&server]).await;
    })
}

#[test]
fn network_events_reach_a_client_mode_env_whose_peer_is_a_server_env() {
    block_on(async {
        let (server, client) = (server_env("server"), client_env("client"));
        server.setup_endpoint("target", Probe::default()).unwrap();
        let rec = Recorder::default();
        client.setup_endpoint("events", Probe::new(&rec)).unwrap();
        let target = lookup(&client, &server, "target").await;
        let reply = within("the reply", target.ask(Cmd::Echo("hello".into()))).await;
        assert_eq!(reply.unwrap(), "hello");
        rec.wait_for(&format!("connected:{}", addr(&server))).await;

        shutdown(&[&server]).await;
        rec.wait_for(&format!("disconnected:{}", addr(&server)))
            .await;
        assert_eq!(count(&rec.entries(), "network-error:"), 0, "a clean close");
        shutdown(&[&client]).await;
    })
}

#[test]
fn a_broken_connection_reaches_on_network_error_then_on_disconnected() {
    if skip_raw_plaintext("a_broken_connection_reaches_on_network_error_then_on_disconnected") {
        return;
    }
    block_on(async {
        let env = server_env("env");
        let rec = Recorder::default();
        let probe = Probe::new(&rec);
        let network_errors = probe.network_errors.clone();
        env.setup_endpoint("events", probe).unwrap();
        let a = addr(&env);
        let mut raw = std::net::TcpStream::connect((a.host.as_str(), a.port)).unwrap();
        let peer = raw.local_addr().unwrap();
        rec.wait_for(&format!("connected:{peer}")).await;
        // No valid frame starts like this: the connection fails with a decode error.
        raw.write_all(&[0xff; 16]).unwrap();
        rec.wait_for(&format!("disconnected:{peer}")).await;
        let entries = rec.entries();
        let error = entries
            .iter()
            .position(|e| *e == format!("network-error:{peer}"))
            .expect("a network error was reported");
        let closed = entries
            .iter()
            .position(|e| *e == format!("disconnected:{peer}"))
            .unwrap();
        assert!(error < closed, "the error comes first: {entries:?}");
        // The hook gets the transport's error itself, not its text.
        let errors = network_errors.lock().unwrap().clone();
        assert!(
            matches!(errors[..], [rpc_proto::ConnectionError::Decode(_)]),
            "{errors:?}"
        );
        shutdown(&[&env]).await;
    })
}

/// An env (server or client mode) whose connections fail when an ask waits on them for
/// 200ms without traffic (Spark's `spark.network.timeout` rule).
fn impatient_env(name: &str, server_mode: bool) -> RpcEnv {
    let connection = rpc_proto::Config::builder()
        .with_idle_timeout(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    let transport = transport_config()
        .to_builder()
        .with_connection(connection)
        .build()
        .unwrap();
    let config = if server_mode {
        server_config(name)
    } else {
        client_config(name)
    };
    RpcEnv::create(
        rpc::runtime(),
        config
            .to_builder()
            .with_transport(transport)
            .build()
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn a_failed_connection_reaches_on_network_error_in_server_and_client_mode_envs() {
    block_on(async {
        let server = server_env("server");
        server.setup_endpoint("probe", Probe::default()).unwrap();
        for server_mode in [true, false] {
            let env = impatient_env("impatient", server_mode);
            let rec = Recorder::default();
            env.setup_endpoint("events", Probe::new(&rec)).unwrap();
            let probe = lookup(&env, &server, "probe").await;
            // Unanswered, and nothing else travels: the connection times out under the ask.
            let err = within("the failed ask", probe.ask(Cmd::Keep))
                .await
                .unwrap_err();
            assert!(matches!(err, RpcError::Disconnected { .. }), "{err:?}");
            let peer = addr(&server);
            rec.wait_for(&format!("disconnected:{peer}")).await;
            let entries = rec.entries();
            let error = entries
                .iter()
                .position(|e| *e == format!("network-error:{peer}"))
                .unwrap_or_else(|| panic!("a network error was reported: {entries:?}"));
            let closed = entries
                .iter()
                .position(|e| *e == format!("disconnected:{peer}"))
                .unwrap();
            assert!(error < closed, "the error comes first: {entries:?}");
            shutdown(&[&env]).await;
        }
        shutdown(&[&server]).await;
    })
}

// ---- shutdown ----

#[test]
fn shutdown_stops_endpoints_without_disconnect_events_for_its_own_connections() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec_a = Recorder::default();
        a.setup_endpoint("probe", Probe::new(&rec_a)).unwrap();
        b.setup_endpoint("probe", Probe::default()).unwrap();
        // A connection each way: `a` has one it accepted and one it opened.
        let a_from_b = lookup(&b, &a, "probe").await;
        let b_from_a = lookup(&a, &b, "probe").await;
        for probe in [&a_from_b, &b_from_a] {
            let reply = within("the reply", probe.ask(Cmd::Echo("hi".into()))).await;
            assert_eq!(reply.unwrap(), "hi");
        }
        eventually("both connections seen by `a`", || {
            count(&rec_a.entries(), "connected:") == 2
        })
        .await;

        shutdown(&[&a]).await;
        let entries = rec_a.entries();
        assert_eq!(entries.last().unwrap(), "stop", "{entries:?}");
        assert_eq!(count(&entries, "disconnected:"), 0, "{entries:?}");
        assert_eq!(count(&entries, "network-error:"), 0, "{entries:?}");
        shutdown(&[&b]).await;
    })
}

/// Keeps every call it is asked, unanswered, in its own state.
struct Hoarder {
    rec: Recorder,
    kept: Vec<RpcCallContext<String>>,
}

impl RpcEndpoint for Hoarder {
    type Message = ();
    type Reply = String;

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<(), String>,
        _: (),
        call: RpcCallContext<String>,
    ) -> Result<(), BoxError> {
        self.kept.push(call);
        self.rec.push("kept");
        Ok(())
    }
}

#[test]
fn shutdown_fails_pending_asks_with_env_stopped() {
    block_on(async {
        let (a, b, c) = (server_env("a"), server_env("b"), client_env("c"));
        let rec = Recorder::default();
        a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let from_b = lookup(&b, &a, "probe").await;
        let from_c = lookup(&c, &a, "probe").await;
        let ask_b = spawn(from_b.ask(Cmd::Keep));
        let ask_c = spawn(from_c.ask(Cmd::Keep));
        eventually("both asks to arrive", || count(&rec.entries(), "kept") == 2).await;
        // And one to an endpoint of `b` itself, which keeps the call in its state.
        let hoarded = Recorder::default();
        let own = b
            .setup_endpoint(
                "hoarder",
                Hoarder {
                    rec: hoarded.clone(),
                    kept: Vec::new(),
                },
            )
            .unwrap();
        let ask_own = spawn(own.ask(()));
        hoarded.wait_for("kept").await;

        b.shutdown();
        c.shutdown();
        let outcome = within("the pending local ask", ask_own).await;
        assert_eq!(outcome.unwrap_err(), RpcError::EnvStopped);
        // The ask timeout is a minute: failing within WAIT is failing because of the shutdown.
        for ask in [ask_b, ask_c] {
            let outcome = within("the pending ask", ask).await;
            assert_eq!(outcome.unwrap_err(), RpcError::EnvStopped);
        }
        within("b's termination", b.await_termination()).await;
        within("c's termination", c.await_termination()).await;
        // Later asks fail at once too.
        let err = within("a late ask", from_b.ask(Cmd::Echo("late".into())))
            .await
            .unwrap_err();
        assert_eq!(err, RpcError::EnvStopped);
        shutdown(&[&a]).await;
    })
}

#[test]
fn shutdown_fails_asks_waiting_for_a_connection_with_env_stopped() {
    block_on(async {
        let target = server_env("target");
        target.setup_endpoint("probe", Probe::default()).unwrap();
        // Reconnects wait long, so the ask stays queued in the outbox.
        let outbox = OutboxConfig::builder()
            .with_initial_backoff(Duration::from_secs(30))
            .with_max_backoff(Duration::from_secs(30))
            .build()
            .unwrap();
        let env = RpcEnv::create(
            rpc::runtime(),
            server_config("env")
                .to_builder()
                .with_outbox(outbox)
                .build()
                .unwrap(),
        )
        .unwrap();
        let rec = Recorder::default();
        env.setup_endpoint("events", Probe::new(&rec)).unwrap();
        let probe = lookup(&env, &target, "probe").await;
        shutdown(&[&target]).await;
        rec.wait_for(&format!("disconnected:{}", addr(&target)))
            .await;

        let ask = spawn(probe.ask(Cmd::Echo("queued".into())));
        sleep(Duration::from_millis(50)).await;
        env.shutdown();
        let outcome = within("the queued ask", ask).await;
        assert_eq!(outcome.unwrap_err(), RpcError::EnvStopped);
        within("the termination", env.await_termination()).await;
    })
}

#[test]
fn shutdown_runs_every_on_stop_and_refuses_new_work() {
    block_on(async {
        let env = server_env("env");
        let recs: Vec<Recorder> = (0..3).map(|_| Recorder::default()).collect();
        let probes: Vec<_> = recs
            .iter()
            .enumerate()
            .map(|(i, rec)| {
                env.setup_endpoint(&format!("p{i}"), Probe::new(rec))
                    .unwrap()
            })
            .collect();
        for probe in &probes {
            flush(probe).await;
        }
        assert!(!env.is_stopped());
        env.shutdown();
        env.shutdown(); // idempotent
        assert!(env.is_stopped());
        within("the termination", env.await_termination()).await;
        for rec in &recs {
            assert_eq!(rec.entries().last().unwrap(), "stop");
        }
        assert!(matches!(
            env.setup_endpoint("late", Probe::default()),
            Err(SetupError::EnvStopped)
        ));
        let err = within("a late ask", probes[0].ask(Cmd::Echo("late".into())))
            .await
            .unwrap_err();
        assert_eq!(err, RpcError::EnvStopped);
        assert_eq!(
            probes[0].send(Cmd::Note("late".into())).unwrap_err(),
            RpcError::EnvStopped
        );
    })
}

// ---- ports ----

#[test]
fn binding_a_taken_port_fails_with_a_bind_error() {
    block_on(async {
        let a = server_env("a");
        let port = addr(&a).port;
        let err = RpcEnv::create(
            rpc::runtime(),
            RpcEnvConfig::server("b", "127.0.0.1", port)
                .with_security(security())
                .build()
                .unwrap(),
        )
        .unwrap_err();
        match &err {
            SetupError::Bind { addr, source } => {
                assert_eq!(*addr, format!("127.0.0.1:{port}"));
                assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
            }
            other => panic!("expected a bind error, got {other:?}"),
        }
        shutdown(&[&a]).await;
    })
}

#[test]
fn with_port_retries_the_env_takes_the_next_free_port() {
    block_on(async {
        let a = server_env("a");
        let port = addr(&a).port;
        let b = RpcEnv::create(
            rpc::runtime(),
            RpcEnvConfig::server("b", "127.0.0.1", port)
                .with_port_retries(16)
                .with_security(security())
                .build()
                .unwrap(),
        )
        .unwrap();
        let taken = addr(&b).port;
        assert!(taken > port && taken <= port + 16, "{port} -> {taken}");
        // And it is reachable there.
        b.setup_endpoint("probe", Probe::default()).unwrap();
        let probe = lookup(&a, &b, "probe").await;
        let reply = within("the reply", probe.ask(Cmd::Echo("here".into()))).await;
        assert_eq!(reply.unwrap(), "here");
        shutdown(&[&a, &b]).await;
    })
}

// ---- lookups ----

#[test]
fn looking_up_a_missing_endpoint_fails_naming_its_uri() {
    block_on(async {
        let (a, b, c) = (server_env("a"), server_env("b"), client_env("c"));
        let uri = format!("rpc://missing@{}", addr(&a));
        for from in [&a, &b, &c] {
            let err = within(
                "the lookup",
                from.setup_endpoint_ref::<Cmd, String>(addr(&a), "missing"),
            )
            .await
            .unwrap_err();
            assert!(
                matches!(&err, SetupError::Lookup(RpcError::EndpointNotFound(u)) if *u == uri),
                "{err:?}"
            );
            assert!(err.to_string().contains(&uri), "{err}");
        }
        let err = within(
            "the lookup by uri",
            b.setup_endpoint_ref_by_uri::<Cmd, String>(&uri),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains(&uri), "{err}");
        shutdown(&[&a, &b, &c]).await;
    })
}

#[test]
fn looking_up_an_endpoint_with_other_types_fails_with_a_type_mismatch() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        a.setup_endpoint("probe", Probe::default()).unwrap();
        for from in [&a, &b] {
            let err = within(
                "the lookup",
                from.setup_endpoint_ref::<String, String>(addr(&a), "probe"),
            )
            .await
            .unwrap_err();
            match &err {
                SetupError::Lookup(RpcError::TypeMismatch {
                    endpoint,
                    expected,
                    found,
                }) => {
                    assert_eq!(*endpoint, format!("rpc://probe@{}", addr(&a)));
                    // The names the types are known by (their `RpcMessage` identities).
                    assert_eq!(expected, "String -> String");
                    // Only a lookup in the endpoint's own env learns which types it takes.
                    if std::ptr::eq(from, &a) {
                        assert_eq!(found.as_deref(), Some("Cmd -> String"));
                    } else {
                        assert_eq!(*found, None);
                        assert!(!err.to_string().contains("Cmd"), "{err}");
                    }
                }
                other => panic!("expected a type mismatch, got {other:?}"),
            }
        }
        // The right types are found.
        let by_uri = within(
            "the lookup by uri",
            b.setup_endpoint_ref_by_uri::<Cmd, String>(&format!("rpc://probe@{}", addr(&a))),
        )
        .await;
        assert!(by_uri.is_ok(), "{by_uri:?}");
        shutdown(&[&a, &b]).await;
    })
}

// ---- stable message names ----

/// `Cmd` renamed in Rust (and moved to another module), keeping the name peers know it by: its
/// first variants are `Cmd`'s, so its bytes are too.
mod renamed {
    use super::{rpc, Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize, rpc::RpcMessage)]
    #[rpc(name = "Cmd")]
    pub(super) enum Command {
        Note(String),
        Echo(String),
    }
}
use renamed::Command;

/// An endpoint taking the renamed type: echoes asks, records sends.
struct RenamedEcho(Recorder);

impl RpcEndpoint for RenamedEcho {
    type Message = Command;
    type Reply = String;

    async fn receive(
        &mut self,
        _: &EndpointContext<Command, String>,
        msg: Command,
    ) -> Result<(), BoxError> {
        self.0.push(format!("{msg:?}"));
        Ok(())
    }

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<Command, String>,
        msg: Command,
        call: RpcCallContext<String>,
    ) -> Result<(), BoxError> {
        match msg {
            Command::Echo(text) => call.reply(format!("renamed {text}")),
            other => call.send_failure(format!("unexpected {other:?}")),
        };
        Ok(())
    }
}

/// Regression: message identities were `std::any::type_name`, which differs between the two
/// types (`..::Cmd` and `..::renamed::Command`), so every lookup and message failed with
/// `TypeMismatch`.
#[test]
fn a_type_renamed_in_rust_keeping_its_rpc_name_still_talks_to_peers_using_the_old_one() {
    assert_ne!(
        std::any::type_name::<Cmd>(),
        std::any::type_name::<Command>()
    );
    block_on(async {
        let (a, b, c) = (server_env("a"), server_env("b"), client_env("c"));
        let rec = Recorder::default();
        a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let renamed_rec = Recorder::default();
        b.setup_endpoint("renamed", RenamedEcho(renamed_rec.clone()))
            .unwrap();

        // A ref typed with the new type reaches an endpoint typed with the old one, from a
        // server-mode env and from a client-mode one.
        for from in [&b, &c] {
            let probe = within(
                "the lookup with the renamed type",
                from.setup_endpoint_ref::<Command, String>(addr(&a), "probe"),
            )
            .await
            .expect("the renamed type is the same message");
            let reply = within("the ask", probe.ask(Command::Echo("hi".into()))).await;
            assert_eq!(reply.unwrap(), "hi");
            probe.send(Command::Note("sent".into())).unwrap();
        }
        eventually("both notes", || rec.starting_with("note:sent").len() == 2).await;

        // And the other way: a ref typed with the old type reaches the renamed endpoint.
        for from in [&a, &c] {
            let renamed = within(
                "the lookup with the old type",
                from.setup_endpoint_ref::<Cmd, String>(addr(&b), "renamed"),
            )
            .await
            .expect("the old type is the same message");
            let reply = within("the ask", renamed.ask(Cmd::Echo("hi".into()))).await;
            assert_eq!(reply.unwrap(), "renamed hi");
            renamed.send(Cmd::Note("old".into())).unwrap();
        }
        eventually("both notes", || {
            renamed_rec.starting_with("Note(\"old\")").len() == 2
        })
        .await;
        shutdown(&[&a, &b, &c]).await;
    })
}

#[test]
fn looking_up_an_unreachable_address_fails_within_the_lookup_timeout() {
    block_on(async {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let lookup_timeout = Duration::from_secs(1);
        let env = RpcEnv::create(
            rpc::runtime(),
            RpcEnvConfig::client("c")
                .with_lookup_timeout(lookup_timeout)
                .with_security(security())
                .build()
                .unwrap(),
        )
        .unwrap();
        let started = Instant::now();
        let err = within(
            "the failed lookup",
            env.setup_endpoint_ref::<Cmd, String>(RpcAddress::new("127.0.0.1", port), "x"),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                &err,
                SetupError::Lookup(RpcError::TimedOut { .. } | RpcError::Unreachable { .. })
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        // Bounded by the lookup timeout (generously: this is a hang check, not a speed check).
        assert!(started.elapsed() < lookup_timeout + Duration::from_secs(3));
        shutdown(&[&env]).await;
    })
}

// ---- advertised address ----

#[test]
fn the_advertised_address_is_what_the_env_and_its_refs_report() {
    block_on(async {
        let advertised = RpcAddress::new("example.com", 4242);
        let a = RpcEnv::create(
            rpc::runtime(),
            server_config("a")
                .to_builder()
                .with_advertise(advertised.clone())
                .build()
                .unwrap(),
        )
        .unwrap();
        let b = server_env("b");
        assert_eq!(a.address(), Some(&advertised));
        let local = a.setup_endpoint("probe", Probe::default()).unwrap();
        assert_eq!(local.to_string(), "rpc://probe@example.com:4242");
        assert_eq!(local.address().address.as_ref(), Some(&advertised));
        let reply = within("the local reply", local.ask(Cmd::Echo("hi".into()))).await;
        assert_eq!(reply.unwrap(), "hi");
        let again = within(
            "a local lookup",
            a.setup_endpoint_ref::<Cmd, String>(advertised.clone(), "probe"),
        )
        .await
        .unwrap();
        assert_eq!(again, local);

        // Other envs are told the advertised address.
        let rec = Recorder::default();
        b.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let remote = lookup(&a, &b, "probe").await;
        within("the remote reply", remote.ask(Cmd::Echo("hi".into())))
            .await
            .unwrap();
        assert_eq!(rec.starting_with("ask:"), ["ask:hi from example.com:4242"]);
        shutdown(&[&a, &b]).await;
    })
}

// ---- refs to client-mode endpoints ----

#[derive(Serialize, Deserialize, RpcMessage)]
struct Register(RpcEndpointRef<Cmd, String>);

/// Keeps the refs it is sent and calls them back before answering.
struct Registry {
    rec: Recorder,
    refs: Arc<Mutex<Vec<RpcEndpointRef<Cmd, String>>>>,
}

impl RpcEndpoint for Registry {
    type Message = Register;
    type Reply = String;

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<Register, String>,
        Register(callback): Register,
        call: RpcCallContext<String>,
    ) -> Result<(), BoxError> {
        let reply = callback
            .ask_with_timeout(Cmd::Echo("called back".into()), LONG)
            .await?;
        self.refs.lock().unwrap().push(callback);
        call.reply(reply);
        Ok(())
    }

    async fn on_connected(&mut self, _: &EndpointContext<Register, String>, remote: RpcAddress) {
        self.rec.push(format!("connected:{remote}"));
    }

    async fn on_disconnected(&mut self, _: &EndpointContext<Register, String>, remote: RpcAddress) {
        self.rec.push(format!("disconnected:{remote}"));
    }
}

/// A server with a registry, a client-mode env with a `callback` probe registered there.
struct Registered {
    server: RpcEnv,
    client: RpcEnv,
    server_rec: Recorder,
    callback_rec: Recorder,
    /// The server's ref to the client's `callback`.
    callback: RpcEndpointRef<Cmd, String>,
    /// The client's socket address, as the server sees it.
    peer: String,
}

async fn register_a_client_mode_callback() -> Registered {
    let (server, client) = (server_env("server"), client_env("client"));
    let server_rec = Recorder::default();
    let refs = Arc::new(Mutex::new(Vec::new()));
    server
        .setup_endpoint(
            "registry",
            Registry {
                rec: server_rec.clone(),
                refs: refs.clone(),
            },
        )
        .unwrap();
    let callback_rec = Recorder::default();
    let callback = client
        .setup_endpoint("callback", Probe::new(&callback_rec))
        .unwrap();
    assert_eq!(callback.to_string(), "rpc-client://callback");
    let registry = within(
        "a lookup",
        client.setup_endpoint_ref::<Register, String>(addr(&server), "registry"),
    )
    .await
    .unwrap();
    let reply = within("the registration", registry.ask(Register(callback))).await;
    assert_eq!(reply.unwrap(), "called back");
    let connected = server_rec.wait_for_prefix("connected:").await;
    let peer = connected.strip_prefix("connected:").unwrap().to_owned();
    let callback = refs.lock().unwrap().pop().unwrap();
    Registered {
        server,
        client,
        server_rec,
        callback_rec,
        callback,
        peer,
    }
}

#[test]
fn a_client_mode_ref_sent_to_a_server_calls_back_over_the_same_connection() {
    block_on(async {
        let r = register_a_client_mode_callback().await;
        // The callback came from the server env, over the connection the client opened.
        assert_eq!(
            r.callback_rec.starting_with("ask:"),
            [format!("ask:called back from {}", addr(&r.server))]
        );
        assert_eq!(count(&r.server_rec.entries(), "connected:"), 1);
        let reply = within(
            "a later call back",
            r.callback.ask(Cmd::Echo("again".into())),
        )
        .await;
        assert_eq!(reply.unwrap(), "again");
        r.callback.send(Cmd::Note("one way".into())).unwrap();
        r.callback_rec.wait_for("note:one way").await;
        assert_eq!(
            count(&r.server_rec.entries(), "connected:"),
            1,
            "no new connection"
        );
        shutdown(&[&r.server, &r.client]).await;
    })
}

#[test]
fn a_client_mode_ref_fails_clearly_once_its_connection_is_gone() {
    block_on(async {
        let r = register_a_client_mode_callback().await;
        shutdown(&[&r.client]).await;
        r.server_rec
            .wait_for(&format!("disconnected:{}", r.peer))
            .await;
        // The ask timeout is a minute: failing within WAIT is failing fast.
        let err = within(
            "the failed call back",
            r.callback.ask(Cmd::Echo("x".into())),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RpcError::Disconnected { .. }), "{err:?}");
        assert!(err.to_string().contains(&r.peer), "names the peer: {err}");
        let err = r.callback.send(Cmd::Note("x".into())).unwrap_err();
        assert!(err.to_string().contains(&r.peer), "names the peer: {err}");
        shutdown(&[&r.server]).await;
    })
}

#[test]
fn a_timed_out_ask_to_a_client_mode_endpoint_names_the_peer_address() {
    block_on(async {
        let r = register_a_client_mode_callback().await;
        let after = Duration::from_millis(200);
        let err = within("the timeout", r.callback.ask_with_timeout(Cmd::Keep, after))
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::TimedOut { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&r.peer), "names the peer address: {text}");
        assert!(text.contains("rpc-client://callback"), "{text}");
        assert!(text.contains("200ms"), "{text}");
        shutdown(&[&r.server, &r.client]).await;
    })
}

// ---- isolated endpoints ----

/// Blocks its thread (not just its task) until released.
struct Blocker {
    rec: Recorder,
    release: Arc<AtomicBool>,
}

impl RpcEndpoint for Blocker {
    type Message = ();
    type Reply = String;

    fn kind(&self) -> EndpointKind {
        EndpointKind::Isolated
    }

    async fn receive_and_reply(
        &mut self,
        ctx: &EndpointContext<(), String>,
        _: (),
        call: RpcCallContext<String>,
    ) -> Result<(), BoxError> {
        self.rec.push(format!("blocking:{}", ctx.name()));
        let give_up = Instant::now() + Duration::from_secs(20);
        while !self.release.load(Ordering::SeqCst) && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(10));
        }
        call.reply("released".into());
        Ok(())
    }
}

#[test]
fn isolated_endpoints_that_block_their_threads_do_not_stop_others_answering() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        let release = Arc::new(AtomicBool::new(false));
        // More blocked endpoints than the runtime has worker threads (tokio's and the
        // global executor's default to one per core).
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let blockers: Vec<_> = (0..cores + 1)
            .map(|i| {
                a.setup_endpoint(
                    &format!("blocker{i}"),
                    Blocker {
                        rec: rec.clone(),
                        release: release.clone(),
                    },
                )
                .unwrap()
            })
            .collect();
        let blocked: Vec<_> = blockers.iter().map(|b| spawn(b.ask(()))).collect();
        eventually("every blocker to block", || {
            count(&rec.entries(), "blocking:") == cores + 1
        })
        .await;

        let probe = a.setup_endpoint("probe", Probe::default()).unwrap();
        let reply = within("a local reply", probe.ask(Cmd::Echo("local".into()))).await;
        assert_eq!(reply.unwrap(), "local");
        let remote = lookup(&b, &a, "probe").await;
        let reply = within("a remote reply", remote.ask(Cmd::Echo("remote".into()))).await;
        assert_eq!(reply.unwrap(), "remote");

        release.store(true, Ordering::SeqCst);
        for ask in blocked {
            let reply = within("a released blocker", ask).await;
            assert_eq!(reply.unwrap(), "released");
        }
        shutdown(&[&a, &b]).await;
    })
}

// ---- counters ----

#[test]
fn env_stats_count_sends_asks_failures_and_receptions() {
    block_on(async {
        let (server, client) = (server_env("server"), client_env("client"));
        let rec = Recorder::default();
        server.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let probe = lookup(&client, &server, "probe").await;
        let before = client.stats();
        assert_eq!(before.in_flight, 0);

        for i in 0..3 {
            probe.send(Cmd::Note(i.to_string())).unwrap();
        }
        for _ in 0..2 {
            within("a reply", probe.ask(Cmd::Echo("x".into())))
                .await
                .unwrap();
        }
        within("a failure", probe.ask(Cmd::Fail("no".into())))
            .await
            .unwrap_err();
        let pending = spawn(probe.ask(Cmd::Keep));
        rec.wait_for("kept").await;
        assert_eq!(client.stats().in_flight, 1, "{:?}", client.stats());
        rec.take_kept().pop().unwrap().reply("done".into());
        within("the kept reply", pending).await.unwrap();

        // An ask that fails before it is sent, dropped without being awaited.
        let local = client.setup_endpoint("local", Probe::default()).unwrap();
        client.stop(&local);
        local.ask(Cmd::Echo("never".into())).abort();

        let after = client.stats();
        assert_eq!(after.sent - before.sent, 3, "{after:?}");
        assert_eq!(after.asked - before.asked, 5, "{after:?}");
        assert_eq!(after.failed - before.failed, 2, "{after:?}");
        assert_eq!(after.in_flight, 0, "{after:?}");
        rec.wait_for("note:2").await;
        assert_eq!(server.stats().received, 3 + 4, "{:?}", server.stats());
        shutdown(&[&server, &client]).await;
    })
}

#[test]
fn messages_waiting_for_an_unreachable_env_count_as_queued_then_fail() {
    block_on(async {
        let outbox = OutboxConfig::builder()
            .with_initial_backoff(Duration::from_millis(50))
            .with_max_backoff(Duration::from_millis(50))
            .with_max_connect_attempts(3)
            .build()
            .unwrap();
        let client = RpcEnv::create(
            rpc::runtime(),
            RpcEnvConfig::client("client")
                .with_outbox(outbox)
                .with_security(security())
                .build()
                .unwrap(),
        )
        .unwrap();
        // A port nobody listens on: every connect is refused.
        let dead = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            RpcAddress::from(listener.local_addr().unwrap())
        };
        let nobody: RpcEndpointRef<Cmd, String> =
            client.endpoint_ref(rpc::RpcEndpointAddress::new(dead, "nobody"));
        let pending = nobody.ask(Cmd::Echo("hello?".into()));
        nobody.send(Cmd::Note("anyone?".into())).unwrap();
        assert_eq!(client.stats().queued, 2, "{:?}", client.stats());
        let err = within("the connect budget to run out", pending)
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Unreachable { .. }), "{err}");
        eventually("the queue to empty", || client.stats().queued == 0).await;
        assert!(client.stats().retried >= 3, "{:?}", client.stats());
        shutdown(&[&client]).await;
    })
}

#[test]
fn an_undecodable_envelope_fails_the_call_and_a_bad_one_way_is_counted() {
    block_on(async {
        let server = server_env("server");
        let factory = rpc::TransportClientFactory::new(
            rpc::runtime(),
            Arc::new(rpc::NoopRpcHandler),
            transport_config(),
        );
        let port = server.address().unwrap().port;
        let raw = factory
            .create_client(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        // Version 9 of our envelope does not exist.
        let err = within("the failure", raw.send_rpc(vec![9u8, 1, 2, 3].into(), None))
            .await
            .unwrap_err();
        let rpc_proto::RequestError::Remote(message) = err else {
            panic!("{err}")
        };
        assert!(message.contains("undecodable envelope"), "{message}");
        assert!(message.contains("version 9"), "{message}");

        let failed = server.stats().failed;
        raw.send(vec![].into()).unwrap();
        eventually("the bad one-way to be counted", || {
            server.stats().failed == failed + 1
        })
        .await;
        factory.close();
        shutdown(&[&server]).await;
    })
}
