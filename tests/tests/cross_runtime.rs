//! A tokio env and an async-std env talking to each other over real sockets, both ways:
//! lookups, asks, sends, many asks at once, and refs passed across in messages. The wire and
//! the envelope do not depend on the runtime that drives them.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rpc_tokio::{
    BoxError, EndpointContext, RpcAddress, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcEnv,
    RpcEnvConfig, RpcMessage,
};
use serde::{Deserialize, Serialize};

/// How long any single wait may take before the test is declared hung.
const WAIT: Duration = Duration::from_secs(10);

/// What [`Named`] is asked.
#[derive(Debug, Clone, Serialize, Deserialize, RpcMessage)]
enum Msg {
    /// Answered with `<env name> got <text>`.
    Echo(String),
    /// Recorded; answered (when asked) with every note so far.
    Note(String),
    /// Answered by asking the ref an echo of the text and passing its reply on.
    Relay(RpcEndpointRef<Self, String>, String),
    /// Kept unanswered.
    Hold,
}

/// Answers with its env's name, records notes, relays through refs it is sent, holds calls.
struct Named {
    name: &'static str,
    notes: Arc<Mutex<Vec<String>>>,
    held: Vec<RpcCallContext<String>>,
}

impl RpcEndpoint for Named {
    type Message = Msg;
    type Reply = String;

    async fn receive(
        &mut self,
        _: &EndpointContext<Msg, String>,
        msg: Msg,
    ) -> Result<(), BoxError> {
        if let Msg::Note(text) = msg {
            self.notes.lock().unwrap().push(text);
        }
        Ok(())
    }

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<Msg, String>,
        msg: Msg,
        call: RpcCallContext<String>,
    ) -> Result<(), BoxError> {
        match msg {
            Msg::Echo(text) => {
                call.reply(format!("{} got {text}", self.name));
            }
            Msg::Note(text) => {
                let mut notes = self.notes.lock().unwrap();
                notes.push(text);
                call.reply(notes.join(","));
            }
            Msg::Relay(target, text) => {
                let reply = target.ask(Msg::Echo(text)).await?;
                call.reply(format!("{} relayed {reply}", self.name));
            }
            Msg::Hold => {
                self.held.push(call);
                self.notes.lock().unwrap().push("held".into());
            }
        }
        Ok(())
    }
}

fn server_config(name: &str) -> RpcEnvConfig {
    RpcEnvConfig::server(name, "127.0.0.1", 0)
        .with_ask_timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn addr(env: &RpcEnv) -> RpcAddress {
    env.address().unwrap().clone()
}

/// Awaits `f` on the async-io timers (they work under any executor), failing after [`WAIT`].
async fn within<F: Future>(what: &str, f: F) -> F::Output {
    futures_lite::future::or(async { Some(f.await) }, async {
        smol::Timer::after(WAIT).await;
        None
    })
    .await
    .unwrap_or_else(|| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// Both envs, each with a `named` endpoint, and the tokio runtime under one of them.
struct Pair {
    tokio: tokio::runtime::Runtime,
    on_tokio: RpcEnv,
    on_async_std: RpcEnv,
    tokio_notes: Arc<Mutex<Vec<String>>>,
    async_std_notes: Arc<Mutex<Vec<String>>>,
}

fn pair() -> Pair {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let on_tokio = {
        let _entered = tokio.enter();
        RpcEnv::create(rpc_tokio::runtime(), server_config("on-tokio")).unwrap()
    };
    let on_async_std =
        RpcEnv::create(rpc_async_std::runtime(), server_config("on-async-std")).unwrap();
    let (tokio_notes, async_std_notes) = (Arc::default(), Arc::default());
    on_tokio
        .setup_endpoint(
            "named",
            Named {
                name: "on-tokio",
                notes: Arc::clone(&tokio_notes),
                held: Vec::new(),
            },
        )
        .unwrap();
    on_async_std
        .setup_endpoint(
            "named",
            Named {
                name: "on-async-std",
                notes: Arc::clone(&async_std_notes),
                held: Vec::new(),
            },
        )
        .unwrap();
    Pair {
        tokio,
        on_tokio,
        on_async_std,
        tokio_notes,
        async_std_notes,
    }
}

impl Pair {
    fn shutdown(self) {
        self.on_tokio.shutdown();
        self.on_async_std.shutdown();
        self.tokio.block_on(within(
            "the tokio env to stop",
            self.on_tokio.await_termination(),
        ));
        async_std::task::block_on(within(
            "the async-std env to stop",
            self.on_async_std.await_termination(),
        ));
    }
}

/// Asks `from`'s ref to `to`'s `named` an echo, a hundred concurrent echoes, sends notes and
/// checks they arrived in order; `spawn` starts a task on `from`'s runtime.
async fn talk<J>(
    from: &RpcEnv,
    to: &RpcEnv,
    to_name: &str,
    notes: &Mutex<Vec<String>>,
    spawn: impl Fn(rpc_tokio::Ask<String>) -> J,
) where
    J: Future<Output = Result<String, rpc_tokio::RpcError>>,
{
    let named = within(
        "a lookup",
        from.setup_endpoint_ref::<Msg, String>(addr(to), "named"),
    )
    .await
    .unwrap();
    let reply = within("an echo", named.ask(Msg::Echo("hello".into()))).await;
    assert_eq!(reply.unwrap(), format!("{to_name} got hello"));

    let asks: Vec<_> = (0..100)
        .map(|i| spawn(named.ask(Msg::Echo(i.to_string()))))
        .collect();
    for (i, ask) in asks.into_iter().enumerate() {
        let reply = within("every echo", ask).await;
        assert_eq!(reply.unwrap(), format!("{to_name} got {i}"));
    }

    for i in 0..3 {
        named.send(Msg::Note(i.to_string())).unwrap();
    }
    // Messages from one env travel in order: the ask comes after the sends.
    let all = within("the notes", named.ask(Msg::Note("3".into()))).await;
    assert_eq!(all.unwrap(), "0,1,2,3");
    assert_eq!(*notes.lock().unwrap(), ["0", "1", "2", "3"]);
}

#[test]
fn a_tokio_env_asks_and_sends_to_an_async_std_env() {
    let pair = pair();
    pair.tokio.block_on(talk(
        &pair.on_tokio,
        &pair.on_async_std,
        "on-async-std",
        &pair.async_std_notes,
        |ask| {
            let task = tokio::spawn(ask);
            async { task.await.unwrap() }
        },
    ));
    pair.shutdown();
}

#[test]
fn an_async_std_env_asks_and_sends_to_a_tokio_env() {
    let pair = pair();
    async_std::task::block_on(talk(
        &pair.on_async_std,
        &pair.on_tokio,
        "on-tokio",
        &pair.tokio_notes,
        async_std::task::spawn,
    ));
    pair.shutdown();
}

#[test]
fn refs_passed_across_runtimes_call_back_both_ways() {
    let pair = pair();
    // The tokio env hands the async-std env a ref to its own endpoint, which the async-std
    // env's endpoint then asks: async-std -> tokio inside a tokio -> async-std call.
    pair.tokio.block_on(async {
        let own = within(
            "a local lookup",
            pair.on_tokio
                .setup_endpoint_ref::<Msg, String>(addr(&pair.on_tokio), "named"),
        )
        .await
        .unwrap();
        let there = within(
            "a lookup",
            pair.on_tokio
                .setup_endpoint_ref::<Msg, String>(addr(&pair.on_async_std), "named"),
        )
        .await
        .unwrap();
        let reply = within("the relayed reply", there.ask(Msg::Relay(own, "x".into()))).await;
        assert_eq!(reply.unwrap(), "on-async-std relayed on-tokio got x");
    });
    // And the other way round.
    async_std::task::block_on(async {
        let own = within(
            "a local lookup",
            pair.on_async_std
                .setup_endpoint_ref::<Msg, String>(addr(&pair.on_async_std), "named"),
        )
        .await
        .unwrap();
        let there = within(
            "a lookup",
            pair.on_async_std
                .setup_endpoint_ref::<Msg, String>(addr(&pair.on_tokio), "named"),
        )
        .await
        .unwrap();
        let reply = within("the relayed reply", there.ask(Msg::Relay(own, "y".into()))).await;
        assert_eq!(reply.unwrap(), "on-tokio relayed on-async-std got y");
    });
    pair.shutdown();
}

/// Waits (polling) until `notes` holds `held`.
async fn until_held(notes: &Mutex<Vec<String>>) {
    within("the call to be held", async {
        while !notes.lock().unwrap().iter().any(|n| n == "held") {
            smol::Timer::after(Duration::from_millis(5)).await;
        }
    })
    .await
}

#[test]
fn asks_held_on_the_other_runtime_fail_when_its_env_shuts_down() {
    // tokio asks, async-std holds and shuts down.
    let first = pair();
    first.tokio.block_on(async {
        let there = within(
            "a lookup",
            first
                .on_tokio
                .setup_endpoint_ref::<Msg, String>(addr(&first.on_async_std), "named"),
        )
        .await
        .unwrap();
        let pending = tokio::spawn(there.ask(Msg::Hold));
        until_held(&first.async_std_notes).await;
        first.on_async_std.shutdown();
        // The ask timeout is a minute: failing within WAIT is failing because of the shutdown.
        let outcome = within("the held ask", pending).await.unwrap();
        assert!(outcome.is_err(), "{outcome:?}");
    });
    first.shutdown();

    // async-std asks, tokio holds and shuts down.
    let second = pair();
    async_std::task::block_on(async {
        let there = within(
            "a lookup",
            second
                .on_async_std
                .setup_endpoint_ref::<Msg, String>(addr(&second.on_tokio), "named"),
        )
        .await
        .unwrap();
        let pending = async_std::task::spawn(there.ask(Msg::Hold));
        until_held(&second.tokio_notes).await;
        second.on_tokio.shutdown();
        let outcome = within("the held ask", pending).await;
        assert!(outcome.is_err(), "{outcome:?}");
    });
    second.shutdown();
}

#[test]
fn a_tokio_envs_ref_can_be_asked_from_an_async_std_task() {
    let pair = pair();
    let reply = async_std::task::block_on(async {
        let there = within(
            "a lookup",
            pair.on_tokio
                .setup_endpoint_ref::<Msg, String>(addr(&pair.on_async_std), "named"),
        )
        .await
        .unwrap();
        within("the reply", there.ask(Msg::Echo("from afar".into()))).await
    });
    assert_eq!(reply.unwrap(), "on-async-std got from afar");
    pair.shutdown();
}
