//! The control plane on real sockets: Spark's `RpcEnvSuite` and `InboxSuite`, ported.
//!
//! Messaging, asks and their outcomes, call contexts, endpoint lifecycle and errors. Network
//! events, shutdown, ports, lookups and client-mode refs are in `env_network.rs`.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::util::*;
use rpc::{
    BoxError, ConcurrentRpcEndpoint, ConfigError, EndpointContext, RpcCallContext, RpcEndpoint,
    RpcEndpointRef, RpcEnv, RpcError, RpcMessage, SetupError,
};
use serde::{Deserialize, Serialize};

// ---- send and ask: local, server to server, client to server ----

#[test]
fn send_reaches_a_local_endpoint() {
    block_on(async {
        let env = server_env("local");
        let rec = Recorder::default();
        let probe = env.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        probe.send(Cmd::Note("hello".into())).unwrap();
        rec.wait_for("note:hello").await;
        shutdown(&[&env]).await;
    })
}

#[test]
fn send_reaches_an_endpoint_in_another_server_env() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let probe = lookup(&b, &a, "probe").await;
        probe.send(Cmd::Note("hello".into())).unwrap();
        rec.wait_for("note:hello").await;
        shutdown(&[&a, &b]).await;
    })
}

#[test]
fn send_reaches_a_server_endpoint_from_a_client_mode_env() {
    block_on(async {
        let (server, client) = (server_env("server"), client_env("client"));
        let rec = Recorder::default();
        server.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let probe = lookup(&client, &server, "probe").await;
        probe.send(Cmd::Note("hello".into())).unwrap();
        rec.wait_for("note:hello").await;
        shutdown(&[&server, &client]).await;
    })
}

#[test]
fn ask_is_answered_by_a_local_endpoint_and_sees_its_own_env_as_sender() {
    block_on(async {
        let env = server_env("local");
        let rec = Recorder::default();
        let probe = env.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let reply = within("the reply", probe.ask(Cmd::Echo("hi".into()))).await;
        assert_eq!(reply.unwrap(), "hi");
        assert_eq!(
            rec.starting_with("ask:"),
            [format!("ask:hi from {}", addr(&env))]
        );
        shutdown(&[&env]).await;
    })
}

#[test]
fn ask_is_answered_by_an_endpoint_in_another_server_env_that_sees_the_sender() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let probe = lookup(&b, &a, "probe").await;
        let reply = within("the reply", probe.ask(Cmd::Echo("hi".into()))).await;
        assert_eq!(reply.unwrap(), "hi");
        assert_eq!(
            rec.starting_with("ask:"),
            [format!("ask:hi from {}", addr(&b))]
        );
        shutdown(&[&a, &b]).await;
    })
}

#[test]
fn ask_is_answered_by_a_server_endpoint_from_a_client_mode_env_without_sender() {
    block_on(async {
        let (server, client) = (server_env("server"), client_env("client"));
        let rec = Recorder::default();
        server.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let probe = lookup(&client, &server, "probe").await;
        let reply = within("the reply", probe.ask(Cmd::Echo("hi".into()))).await;
        assert_eq!(reply.unwrap(), "hi");
        assert_eq!(rec.starting_with("ask:"), ["ask:hi from none"]);
        shutdown(&[&server, &client]).await;
    })
}

/// An endpoint that asks for an inbox of zero messages.
struct NoInbox;

impl RpcEndpoint for NoInbox {
    type Message = ();
    type Reply = ();

    fn inbox_capacity(&self) -> Option<usize> {
        Some(0)
    }
}

#[test]
fn an_endpoint_inbox_capacity_of_zero_fails_setup_naming_it() {
    block_on(async {
        let env = server_env("env");
        let err = env.setup_endpoint("none", NoInbox).unwrap_err();
        assert!(
            matches!(&err, SetupError::Config(ConfigError::ZeroLimit("inbox capacity"))),
            "{err}"
        );
        assert_eq!(err.to_string(), "inbox capacity must be greater than zero");
        // Nothing was registered: the name is free.
        env.setup_endpoint("none", Probe::default()).unwrap();
        shutdown(&[&env]).await;
    })
}

#[test]
fn registering_a_taken_name_fails() {
    block_on(async {
        let env = server_env("env");
        env.setup_endpoint("probe", Probe::default()).unwrap();
        let err = env.setup_endpoint("probe", Probe::default()).unwrap_err();
        assert!(
            matches!(&err, SetupError::DuplicateName(n) if n == "probe"),
            "{err}"
        );
        shutdown(&[&env]).await;
    })
}

// ---- timeouts ----

fn assert_timed_out(err: &RpcError, after: Duration, endpoint: &str) {
    match err {
        RpcError::TimedOut {
            after: a,
            endpoint: e,
        } => {
            assert_eq!(*a, after);
            assert_eq!(e, endpoint);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("{after:?}")),
        "names the duration: {text}"
    );
    assert!(text.contains(endpoint), "names the endpoint: {text}");
    assert!(
        text.contains("RpcEnvConfig::ask_timeout"),
        "says where the default is set: {text}"
    );
}

#[test]
fn ask_times_out_naming_the_duration_the_endpoint_and_the_setting() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        let local = a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let remote = lookup(&b, &a, "probe").await;
        let uri = format!("rpc://probe@{}", addr(&a));
        for probe in [&local, &remote] {
            let after = Duration::from_millis(100);
            let err = within("the timeout", probe.ask_with_timeout(Cmd::Keep, after))
                .await
                .unwrap_err();
            assert_timed_out(&err, after, &uri);
        }
        assert_eq!(rec.take_kept().len(), 2, "both asks reached the endpoint");
        shutdown(&[&a, &b]).await;
    })
}

#[test]
fn ask_uses_the_envs_default_timeout() {
    block_on(async {
        let after = Duration::from_millis(150);
        let a = RpcEnv::create(
            rpc::runtime(),
            server_config("a")
                .to_builder()
                .with_ask_timeout(after)
                .build()
                .unwrap(),
        )
        .unwrap();
        let b = RpcEnv::create(
            rpc::runtime(),
            server_config("b")
                .to_builder()
                .with_ask_timeout(after)
                .build()
                .unwrap(),
        )
        .unwrap();
        let rec = Recorder::default();
        let local = a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let remote = lookup(&b, &a, "probe").await;
        let uri = format!("rpc://probe@{}", addr(&a));
        for probe in [&local, &remote] {
            let err = within("the timeout", probe.ask(Cmd::Keep))
                .await
                .unwrap_err();
            assert_timed_out(&err, after, &uri);
        }
        shutdown(&[&a, &b]).await;
    })
}

// ---- cancellation: abort or drop of an ask ----

#[test]
fn aborting_a_local_ask_cancels_its_call_context() {
    block_on(async {
        let env = server_env("env");
        let rec = Recorder::default();
        let probe = env.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let ask = probe.ask(Cmd::WatchCancel);
        rec.wait_for("watching cancelled=false").await;
        ask.abort();
        rec.wait_for("cancelled is_cancelled=true").await;
        shutdown(&[&env]).await;
    })
}

#[test]
fn dropping_a_polled_local_ask_cancels_its_call_context() {
    block_on(async {
        let env = server_env("env");
        let rec = Recorder::default();
        let probe = env.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let gave_up = give_up_after(Duration::from_millis(100), probe.ask(Cmd::WatchCancel));
        assert!(gave_up.await.is_none(), "the endpoint never answers");
        rec.wait_for("watching cancelled=false").await;
        rec.wait_for("cancelled is_cancelled=true").await;
        shutdown(&[&env]).await;
    })
}

#[test]
fn aborting_a_remote_ask_that_was_never_polled_cancels_its_call_context() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let probe = lookup(&b, &a, "probe").await;
        let ask = probe.ask(Cmd::WatchCancel);
        rec.wait_for("watching cancelled=false").await;
        ask.abort();
        rec.wait_for("cancelled is_cancelled=true").await;
        shutdown(&[&a, &b]).await;
    })
}

#[test]
fn dropping_a_polled_ask_from_a_client_mode_env_cancels_its_call_context() {
    block_on(async {
        let (server, client) = (server_env("server"), client_env("client"));
        let rec = Recorder::default();
        server.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let probe = lookup(&client, &server, "probe").await;
        let gave_up = give_up_after(Duration::from_millis(100), probe.ask(Cmd::WatchCancel));
        assert!(gave_up.await.is_none(), "the endpoint never answers");
        rec.wait_for("cancelled is_cancelled=true").await;
        shutdown(&[&server, &client]).await;
    })
}

#[test]
fn a_remote_ask_that_times_out_cancels_its_call_context() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let probe = lookup(&b, &a, "probe").await;
        let err = within(
            "the timeout",
            probe.ask_with_timeout(Cmd::WatchCancel, Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RpcError::TimedOut { .. }), "{err}");
        rec.wait_for("cancelled is_cancelled=true").await;
        shutdown(&[&a, &b]).await;
    })
}

// ---- lifecycle ----

#[test]
fn on_start_runs_first_and_on_stop_last_with_messages_in_between() {
    block_on(async {
        let env = server_env("env");
        let rec = Recorder::default();
        let probe = env
            .setup_endpoint(
                "probe",
                Probe {
                    start: Start::Delay(Duration::from_millis(50)),
                    ..Probe::new(&rec)
                },
            )
            .unwrap();
        // Posted while on_start is still running: they wait for it.
        for i in 0..3 {
            probe.send(Cmd::Note(i.to_string())).unwrap();
        }
        let reply = within("the reply", probe.ask(Cmd::Echo("3".into()))).await;
        assert_eq!(reply.unwrap(), "3");
        env.stop(&probe);
        rec.wait_for("stop").await;
        let sender = addr(&env);
        assert_eq!(
            rec.entries(),
            [
                "start".to_owned(),
                "note:0".into(),
                "note:1".into(),
                "note:2".into(),
                format!("ask:3 from {sender}"),
                "stop".into(),
            ]
        );
        shutdown(&[&env]).await;
    })
}

#[test]
fn stop_lets_queued_messages_finish_then_refuses_later_ones() {
    block_on(async {
        let env = server_env("env");
        let rec = Recorder::default();
        let probe = env.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let first = probe.ask(Cmd::Sleep(50));
        let second = probe.ask(Cmd::Echo("queued".into()));
        env.stop(&probe);
        let late = within("the refusal", probe.ask(Cmd::Echo("late".into()))).await;
        assert!(
            matches!(
                late,
                Err(RpcError::EndpointNotFound(_) | RpcError::EndpointStopped(_))
            ),
            "{late:?}"
        );
        assert_eq!(within("the first", first).await.unwrap(), "slept");
        assert_eq!(within("the second", second).await.unwrap(), "queued");
        rec.wait_for("stop").await;
        assert_eq!(rec.entries().last().unwrap(), "stop");
        shutdown(&[&env]).await;
    })
}

#[test]
fn messages_to_a_stopped_endpoint_are_refused_at_once() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        let local = a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let remote = lookup(&b, &a, "probe").await;
        a.stop(&local);
        rec.wait_for("stop").await;

        let err = local.send(Cmd::Note("late".into())).unwrap_err();
        assert!(
            matches!(
                err,
                RpcError::EndpointNotFound(_) | RpcError::EndpointStopped(_)
            ),
            "{err}"
        );
        for probe in [&local, &remote] {
            // The ask timeout is a minute: failing within WAIT is failing fast.
            let err = within("the refusal", probe.ask(Cmd::Echo("late".into())))
                .await
                .unwrap_err();
            assert!(
                matches!(
                    &err,
                    RpcError::EndpointNotFound(e) | RpcError::EndpointStopped(e)
                        if e.contains("probe")
                ),
                "{err}"
            );
        }
        assert!(rec.starting_with("ask:").is_empty());
        shutdown(&[&a, &b]).await;
    })
}

#[test]
fn an_error_from_on_start_reaches_on_error_and_the_endpoint_still_runs() {
    block_on(async {
        let env = server_env("env");
        let rec = Recorder::default();
        let probe = env
            .setup_endpoint(
                "probe",
                Probe {
                    start: Start::Err("start went wrong".into()),
                    ..Probe::new(&rec)
                },
            )
            .unwrap();
        rec.wait_for("error:start went wrong").await;
        let reply = within("the reply", probe.ask(Cmd::Echo("after".into()))).await;
        assert_eq!(reply.unwrap(), "after");
        shutdown(&[&env]).await;
    })
}

#[test]
fn a_panic_in_on_start_reaches_on_error() {
    block_on(async {
        let env = server_env("env");
        let rec = Recorder::default();
        env.setup_endpoint(
            "probe",
            Probe {
                start: Start::Panic("start blew up".into()),
                ..Probe::new(&rec)
            },
        )
        .unwrap();
        rec.wait_for("panic:start blew up").await;
        shutdown(&[&env]).await;
    })
}

#[test]
fn a_panic_in_on_stop_reaches_on_error() {
    block_on(async {
        let env = server_env("env");
        let rec = Recorder::default();
        let probe = env
            .setup_endpoint(
                "probe",
                Probe {
                    panic_in_stop: true,
                    ..Probe::new(&rec)
                },
            )
            .unwrap();
        env.stop(&probe);
        rec.wait_for("panic:on_stop went wrong").await;
        shutdown(&[&env]).await;
    })
}

#[test]
fn errors_returned_by_handlers_reach_on_error_and_fail_the_asker() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        let local = a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let remote = lookup(&b, &a, "probe").await;

        local.send(Cmd::Err("send went wrong".into())).unwrap();
        rec.wait_for("error:send went wrong").await;

        for (i, probe) in [&local, &remote].into_iter().enumerate() {
            let message = format!("ask {i} went wrong");
            let err = within("the failure", probe.ask(Cmd::Err(message.clone())))
                .await
                .unwrap_err();
            assert!(
                matches!(&err, RpcError::Remote(m) if m.contains(&message)),
                "{err:?}"
            );
            rec.wait_for(&format!("error:{message}")).await;
        }
        shutdown(&[&a, &b]).await;
    })
}

#[test]
fn a_panicking_handler_fails_its_asker_and_the_env_keeps_working() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        let local = a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let remote = lookup(&b, &a, "probe").await;

        for (i, probe) in [&local, &remote].into_iter().enumerate() {
            let message = format!("boom {i}");
            let err = within("the failure", probe.ask(Cmd::Panic(message.clone())))
                .await
                .unwrap_err();
            assert!(
                matches!(&err, RpcError::Remote(m) if m.contains(&message)),
                "{err:?}"
            );
            rec.wait_for(&format!("panic:{message}")).await;
            // The same endpoint, and the env, still answer.
            let reply = within("the next reply", probe.ask(Cmd::Echo("alive".into()))).await;
            assert_eq!(reply.unwrap(), "alive");
        }
        local.send(Cmd::Panic("boom in send".into())).unwrap();
        rec.wait_for("panic:boom in send").await;
        let reply = within("the reply", remote.ask(Cmd::Echo("still".into()))).await;
        assert_eq!(reply.unwrap(), "still");
        shutdown(&[&a, &b]).await;
    })
}

#[test]
fn send_failure_arrives_as_a_remote_error_with_its_message() {
    block_on(async {
        let (a, b, c) = (server_env("a"), server_env("b"), client_env("c"));
        let rec = Recorder::default();
        let local = a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let from_server = lookup(&b, &a, "probe").await;
        let from_client = lookup(&c, &a, "probe").await;
        for probe in [&local, &from_server, &from_client] {
            let err = within("the failure", probe.ask(Cmd::Fail("Oops".into())))
                .await
                .unwrap_err();
            assert_eq!(err, RpcError::Remote("Oops".into()));
            assert!(err.to_string().contains("Oops"));
        }
        assert!(
            rec.starting_with("error:").is_empty(),
            "send_failure is not an endpoint error"
        );
        shutdown(&[&a, &b, &c]).await;
    })
}

// ---- call contexts ----

#[test]
fn a_call_context_dropped_without_a_reply_fails_the_caller_at_once() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let local = a.setup_endpoint("probe", Probe::default()).unwrap();
        let remote = lookup(&b, &a, "probe").await;
        for probe in [&local, &remote] {
            // The ask timeout is a minute: failing within WAIT is failing fast.
            let err = within("the failure", probe.ask(Cmd::Drop))
                .await
                .unwrap_err();
            assert!(
                matches!(&err, RpcError::Remote(m) if m.contains("without replying")),
                "{err:?}"
            );
        }
        shutdown(&[&a, &b]).await;
    })
}

#[test]
fn a_call_context_kept_and_answered_later_from_another_task_works() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        let local = a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let remote = lookup(&b, &a, "probe").await;
        for probe in [&local, &remote] {
            // Answered by a task the handler spawned.
            let reply = within("the late reply", probe.ask(Cmd::Later(30))).await;
            assert_eq!(reply.unwrap(), "later");

            // Answered by the test, after the handler returned.
            let ask = spawn(probe.ask(Cmd::Keep));
            rec.wait_for("kept").await;
            let call = rec.take_kept().pop().unwrap();
            assert!(!call.is_answered());
            let answer = spawn(async move {
                assert!(call.reply("from the test".into()));
                assert!(!call.reply("twice".into()), "only the first answer counts");
            });
            let reply = within("the kept reply", ask).await;
            assert_eq!(reply.unwrap(), "from the test");
            within("the answering task", answer).await;
            rec.clear();
        }
        shutdown(&[&a, &b]).await;
    })
}

/// Replies with something that refuses to be serialized.
#[derive(Debug, RpcMessage)]
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this reply refuses to be serialized",
        ))
    }
}

impl<'de> Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| Self)
    }
}

struct UnserializableReplier;

impl RpcEndpoint for UnserializableReplier {
    type Message = ();
    type Reply = Unserializable;

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<(), Unserializable>,
        _: (),
        call: RpcCallContext<Unserializable>,
    ) -> Result<(), BoxError> {
        call.reply(Unserializable);
        Ok(())
    }
}

#[test]
fn a_reply_that_cannot_be_serialized_fails_the_remote_asker() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        a.setup_endpoint("bad", UnserializableReplier).unwrap();
        a.setup_endpoint("probe", Probe::default()).unwrap();
        let bad = within(
            "a lookup",
            b.setup_endpoint_ref::<(), Unserializable>(addr(&a), "bad"),
        )
        .await
        .unwrap();
        let err = within("the failure", bad.ask(())).await.unwrap_err();
        assert!(
            matches!(&err, RpcError::Remote(m) if m.contains("could not be serialized")),
            "{err:?}"
        );
        // serde's own message, and the type that could not be written.
        assert!(
            err.to_string()
                .contains("this reply refuses to be serialized, in a `"),
            "{err}"
        );
        assert!(err.to_string().contains("Unserializable`"), "{err}");
        let probe = lookup(&b, &a, "probe").await;
        let reply = within("the reply", probe.ask(Cmd::Echo("fine".into()))).await;
        assert_eq!(reply.unwrap(), "fine", "the connection still works");
        shutdown(&[&a, &b]).await;
    })
}

// ---- self references ----

/// Reaches itself through its self ref: from `on_start`, from a handler, from `on_stop`.
struct SelfCaller {
    rec: Recorder,
    own: Arc<Mutex<Option<RpcEndpointRef<Cmd, String>>>>,
}

impl RpcEndpoint for SelfCaller {
    type Message = Cmd;
    type Reply = String;

    async fn on_start(&mut self, ctx: &EndpointContext<Cmd, String>) -> Result<(), BoxError> {
        *self.own.lock().unwrap() = Some(ctx.self_ref().clone());
        ctx.self_ref().send(Cmd::Note("from on_start".into()))?;
        Ok(())
    }

    async fn receive(
        &mut self,
        ctx: &EndpointContext<Cmd, String>,
        msg: Cmd,
    ) -> Result<(), BoxError> {
        if let Cmd::Note(n) = msg {
            self.rec.push(format!("note:{n}"));
            if n == "ping" {
                ctx.self_ref().send(Cmd::Note("from receive".into()))?;
            }
        }
        Ok(())
    }

    async fn on_stop(&mut self, ctx: &EndpointContext<Cmd, String>) {
        let outcome = ctx.self_ref().send(Cmd::Note("from on_stop".into()));
        self.rec
            .push(format!("send in on_stop ok={}", outcome.is_ok()));
    }
}

#[test]
fn the_self_ref_works_in_on_start_and_handlers_and_no_longer_delivers_in_on_stop() {
    block_on(async {
        let env = server_env("env");
        let rec = Recorder::default();
        let own = Arc::new(Mutex::new(None));
        let returned = env
            .setup_endpoint(
                "self",
                SelfCaller {
                    rec: rec.clone(),
                    own: own.clone(),
                },
            )
            .unwrap();
        rec.wait_for("note:from on_start").await;
        assert_eq!(own.lock().unwrap().as_ref(), Some(&returned));
        returned.send(Cmd::Note("ping".into())).unwrap();
        rec.wait_for("note:from receive").await;
        env.stop(&returned);
        rec.wait_for("send in on_stop ok=false").await;
        shutdown(&[&env]).await;
    })
}

/// Answers by asking the endpoint whose ref came inside the message.
struct Relay;

#[derive(Serialize, Deserialize, RpcMessage)]
struct Forward(RpcEndpointRef<Cmd, String>, String);

impl RpcEndpoint for Relay {
    type Message = Forward;
    type Reply = String;

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<Forward, String>,
        Forward(target, text): Forward,
        call: RpcCallContext<String>,
    ) -> Result<(), BoxError> {
        let reply = target.ask(Cmd::Echo(text)).await?;
        call.reply(format!("relayed {reply}"));
        Ok(())
    }
}

#[test]
fn a_self_ref_sent_in_a_message_can_be_used_by_the_receiver() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        let probe = b.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        a.setup_endpoint("relay", Relay).unwrap();
        let relay = within(
            "a lookup",
            b.setup_endpoint_ref::<Forward, String>(addr(&a), "relay"),
        )
        .await
        .unwrap();
        let reply = within("the relayed reply", relay.ask(Forward(probe, "x".into()))).await;
        assert_eq!(reply.unwrap(), "relayed x");
        // The receiver reached `b` over the network: `b`'s probe saw `a` as the sender.
        assert_eq!(
            rec.starting_with("ask:"),
            [format!("ask:x from {}", addr(&a))]
        );
        shutdown(&[&a, &b]).await;
    })
}

/// Answers with a ref to its env's `probe`.
struct Referrer;

impl RpcEndpoint for Referrer {
    type Message = ();
    type Reply = RpcEndpointRef<Cmd, String>;

    async fn receive_and_reply(
        &mut self,
        ctx: &EndpointContext<(), RpcEndpointRef<Cmd, String>>,
        _: (),
        call: RpcCallContext<RpcEndpointRef<Cmd, String>>,
    ) -> Result<(), BoxError> {
        let probe = ctx
            .env()
            .setup_endpoint_ref(ctx.env().address().unwrap().clone(), "probe")
            .await?;
        call.reply(probe);
        Ok(())
    }
}

#[test]
fn a_ref_returned_in_a_reply_can_be_used_by_the_asker() {
    block_on(async {
        let (a, b, c) = (server_env("a"), server_env("b"), client_env("c"));
        let rec = Recorder::default();
        a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        a.setup_endpoint("referrer", Referrer).unwrap();
        for from in [&b, &c] {
            let referrer = within(
                "a lookup",
                from.setup_endpoint_ref::<(), RpcEndpointRef<Cmd, String>>(addr(&a), "referrer"),
            )
            .await
            .unwrap();
            let probe = within("the ref", referrer.ask(())).await.unwrap();
            assert_eq!(probe.to_string(), format!("rpc://probe@{}", addr(&a)));
            let reply = within("the reply", probe.ask(Cmd::Echo("via ref".into()))).await;
            assert_eq!(reply.unwrap(), "via ref");
        }
        assert_eq!(rec.starting_with("ask:").len(), 2);
        shutdown(&[&a, &b, &c]).await;
    })
}

// ---- serial and concurrent endpoints ----

#[derive(Debug, Serialize, Deserialize, RpcMessage)]
enum Count {
    Add,
    Get,
}

/// A plain counter, touched only through `&mut self`.
#[derive(Default)]
struct Counter {
    count: u64,
}

impl RpcEndpoint for Counter {
    type Message = Count;
    type Reply = u64;

    async fn receive(&mut self, _: &EndpointContext<Count, u64>, _: Count) -> Result<(), BoxError> {
        // A read, a suspension, a write: only safe if no other handler runs in between.
        let before = self.count;
        yield_now().await;
        self.count = before + 1;
        Ok(())
    }

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<Count, u64>,
        _: Count,
        call: RpcCallContext<u64>,
    ) -> Result<(), BoxError> {
        call.reply(self.count);
        Ok(())
    }
}

async fn ten_tasks_send_a_hundred_each(counter: &RpcEndpointRef<Count, u64>) {
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let counter = counter.clone();
            spawn(async move {
                for _ in 0..100 {
                    counter.send(Count::Add).unwrap();
                    yield_now().await;
                }
            })
        })
        .collect();
    for task in tasks {
        within("a sending task", task).await;
    }
}

#[test]
fn a_serial_endpoint_counts_a_thousand_sends_from_ten_tasks_exactly() {
    block_on(async {
        let env = server_env("env");
        let counter = env.setup_endpoint("counter", Counter::default()).unwrap();
        ten_tasks_send_a_hundred_each(&counter).await;
        let total = within("the count", counter.ask(Count::Get)).await;
        assert_eq!(total.unwrap(), 1000);
        shutdown(&[&env]).await;
    })
}

#[test]
fn a_serial_endpoint_counts_a_thousand_remote_sends_from_ten_tasks_exactly() {
    block_on(async {
        let (server, client) = (server_env("server"), client_env("client"));
        server
            .setup_endpoint("counter", Counter::default())
            .unwrap();
        let counter = within(
            "a lookup",
            client.setup_endpoint_ref::<Count, u64>(addr(&server), "counter"),
        )
        .await
        .unwrap();
        ten_tasks_send_a_hundred_each(&counter).await;
        // Messages from one env travel in order: the ask comes after every send.
        let total = within("the count", counter.ask(Count::Get)).await;
        assert_eq!(total.unwrap(), 1000);
        shutdown(&[&server, &client]).await;
    })
}

/// Waits in every handler until `parties` handlers are inside at once.
struct Overlapping {
    inside: AtomicUsize,
    most: AtomicUsize,
    barrier: Rendezvous,
}

impl ConcurrentRpcEndpoint for Overlapping {
    type Message = ();
    type Reply = usize;

    async fn receive_and_reply(
        &self,
        _: &EndpointContext<(), usize>,
        _: (),
        call: RpcCallContext<usize>,
    ) -> Result<(), BoxError> {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.barrier.wait().await;
        self.inside.fetch_sub(1, Ordering::SeqCst);
        call.reply(self.most.load(Ordering::SeqCst));
        Ok(())
    }
}

#[test]
fn a_concurrent_endpoint_runs_handlers_at_the_same_time() {
    block_on(async {
        let env = server_env("env");
        let parties = 4;
        let ep = env
            .setup_concurrent_endpoint(
                "overlapping",
                Overlapping {
                    inside: AtomicUsize::new(0),
                    most: AtomicUsize::new(0),
                    barrier: Rendezvous::new(parties),
                },
            )
            .unwrap();
        // Each handler waits for all the others: this only ends if they overlap.
        let asks: Vec<_> = (0..parties).map(|_| spawn(ep.ask(()))).collect();
        for ask in asks {
            let most = within("every handler to pass the barrier", ask).await;
            assert_eq!(most.unwrap(), parties);
        }
        shutdown(&[&env]).await;
    })
}

// ---- re-entrant stop ----

/// Stops itself, twice, from its own handler.
struct SelfStopper {
    rec: Recorder,
}

impl RpcEndpoint for SelfStopper {
    type Message = Cmd;
    type Reply = String;

    async fn receive(
        &mut self,
        ctx: &EndpointContext<Cmd, String>,
        _: Cmd,
    ) -> Result<(), BoxError> {
        ctx.env().stop(ctx.self_ref());
        ctx.env().stop(ctx.self_ref());
        self.rec.push("stopped myself");
        Ok(())
    }

    async fn on_stop(&mut self, _: &EndpointContext<Cmd, String>) {
        self.rec.push("stop");
    }
}

#[test]
fn an_endpoint_can_stop_itself_from_its_own_handler() {
    block_on(async {
        let env = server_env("env");
        let rec = Recorder::default();
        let ep = env
            .setup_endpoint("stopper", SelfStopper { rec: rec.clone() })
            .unwrap();
        ep.send(Cmd::Note("stop yourself".into())).unwrap();
        rec.wait_for("stop").await;
        assert_eq!(
            rec.entries(),
            ["stopped myself", "stop"],
            "on_stop ran once"
        );
        assert!(ep.send(Cmd::Note("again".into())).is_err());
        // The name is free again.
        env.setup_endpoint("stopper", Probe::default()).unwrap();
        shutdown(&[&env]).await;
    })
}

// ---- ask_with_retry ----

/// Leaves the first ask unanswered, answers the next ones with the attempt count.
#[derive(Default)]
struct Flaky {
    attempts: Arc<AtomicU32>,
    kept: Vec<RpcCallContext<u32>>,
    fail: bool,
}

impl RpcEndpoint for Flaky {
    type Message = String;
    type Reply = u32;

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<String, u32>,
        _: String,
        call: RpcCallContext<u32>,
    ) -> Result<(), BoxError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail {
            call.send_failure("no, never");
        } else if attempt == 1 {
            self.kept.push(call);
        } else {
            call.reply(attempt);
        }
        Ok(())
    }
}

#[test]
fn ask_with_retry_retries_an_ask_that_timed_out_until_it_succeeds() {
    block_on(async {
        let a = server_env("a");
        let b = RpcEnv::create(
            rpc::runtime(),
            server_config("b")
                .to_builder()
                .with_ask_timeout(Duration::from_millis(200))
                .build()
                .unwrap(),
        )
        .unwrap();
        let attempts = Arc::new(AtomicU32::new(0));
        a.setup_endpoint(
            "flaky",
            Flaky {
                attempts: attempts.clone(),
                ..Flaky::default()
            },
        )
        .unwrap();
        let flaky = within(
            "a lookup",
            b.setup_endpoint_ref::<String, u32>(addr(&a), "flaky"),
        )
        .await
        .unwrap();
        let retried_before = b.stats().retried;
        let reply = within(
            "the retried ask",
            flaky.ask_with_retry("idempotent".into(), 3, Duration::from_millis(10)),
        )
        .await;
        assert_eq!(reply.unwrap(), 2, "the second attempt succeeded");
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert!(b.stats().retried > retried_before);
        shutdown(&[&a, &b]).await;
    })
}

#[test]
fn ask_with_retry_does_not_retry_remote_failures() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let attempts = Arc::new(AtomicU32::new(0));
        a.setup_endpoint(
            "flaky",
            Flaky {
                attempts: attempts.clone(),
                fail: true,
                ..Flaky::default()
            },
        )
        .unwrap();
        let flaky = within(
            "a lookup",
            b.setup_endpoint_ref::<String, u32>(addr(&a), "flaky"),
        )
        .await
        .unwrap();
        let err = within(
            "the failed ask",
            flaky.ask_with_retry("idempotent".into(), 3, Duration::from_millis(10)),
        )
        .await
        .unwrap_err();
        assert_eq!(err, RpcError::Remote("no, never".into()));
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        shutdown(&[&a, &b]).await;
    })
}

// ---- registration racing shutdown ----

#[test]
fn endpoints_registered_while_the_env_shuts_down_are_stopped_too() {
    block_on(async {
        for round in 0..200 {
            let env = server_env("env");
            let registering = std::thread::spawn({
                let env = env.clone();
                move || {
                    for i in 0.. {
                        if env
                            .setup_endpoint(&format!("p{i}"), Probe::default())
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            });
            sleep(Duration::from_micros(200)).await;
            env.shutdown();
            give_up_after(WAIT, env.await_termination())
                .await
                .unwrap_or_else(|| panic!("round {round}: the env never terminated"));
            registering.join().unwrap();
        }
    })
}
