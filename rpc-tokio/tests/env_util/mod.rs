//! Helpers shared by the env integration tests: envs on real sockets, a scriptable endpoint
//! that records what happens to it, and bounded waits.
#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rpc_tokio::{
    BoxError, EndpointContext, EndpointFailure, RpcAddress, RpcCallContext, RpcEndpoint,
    RpcEndpointRef, RpcEnv, RpcEnvConfig,
};
use serde::{Deserialize, Serialize};

/// How long any single wait may take before the test is declared hung.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// An ask timeout far beyond [`WAIT`]: an ask that resolves within `WAIT` did not time out.
pub(crate) const LONG: Duration = Duration::from_secs(60);

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
pub(crate) async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// Polls `f` until it holds, failing the test after [`WAIT`].
pub(crate) async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A server-mode env on a free port of 127.0.0.1.
pub(crate) fn server_env(name: &str) -> RpcEnv {
    RpcEnv::create(rpc_tokio::runtime(), server_config(name)).expect("server env")
}

/// The config of [`server_env`], to adjust.
pub(crate) fn server_config(name: &str) -> RpcEnvConfig {
    RpcEnvConfig::server(name, "127.0.0.1", 0).with_ask_timeout(LONG)
}

/// A client-mode env.
pub(crate) fn client_env(name: &str) -> RpcEnv {
    RpcEnv::create(
        rpc_tokio::runtime(),
        RpcEnvConfig::client(name).with_ask_timeout(LONG),
    )
    .expect("client env")
}

/// The address of a server-mode env.
pub(crate) fn addr(env: &RpcEnv) -> RpcAddress {
    env.address().expect("a server-mode env").clone()
}

/// Shuts envs down and waits for each to terminate.
pub(crate) async fn shutdown(envs: &[&RpcEnv]) {
    for env in envs {
        env.shutdown();
    }
    for env in envs {
        within("the env to terminate", env.await_termination()).await;
    }
}

/// A ref to `name` in `to`, looked up from `from`.
pub(crate) async fn lookup(from: &RpcEnv, to: &RpcEnv, name: &str) -> RpcEndpointRef<Cmd, String> {
    within(
        "a lookup",
        from.setup_endpoint_ref::<Cmd, String>(addr(to), name),
    )
    .await
    .expect("the endpoint is found")
}

/// What a [`Probe`] is told to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Cmd {
    /// `send`: logged as `note:<text>`.
    Note(String),
    /// `ask`: answered with the text, logged as `ask:<text> from <sender address or none>`.
    Echo(String),
    /// `ask`: failed with the text through `send_failure`.
    Fail(String),
    /// The handler returns the text as an error.
    Err(String),
    /// The handler panics with the text.
    Panic(String),
    /// `ask`: the call context is dropped without a reply.
    Drop,
    /// `ask`: the call context is kept unanswered (logged `kept`); see [`Recorder::take_kept`].
    Keep,
    /// `ask`: answered with `later` from another task after this many milliseconds.
    Later(u64),
    /// `ask`: answered with `slept` after sleeping (asynchronously) this many milliseconds.
    Sleep(u64),
    /// `ask`: a task watches the call for cancellation; logs `watching cancelled=<bool>`
    /// now and `cancelled is_cancelled=<bool>` when the caller gives up.
    WatchCancel,
}

/// What a [`Probe`] records, shared with the test.
#[derive(Clone, Default)]
pub(crate) struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
    kept: Arc<Mutex<Vec<RpcCallContext<String>>>>,
}

impl Recorder {
    pub(crate) fn push(&self, entry: impl Into<String>) {
        self.log.lock().unwrap().push(entry.into());
    }

    /// Forgets what was recorded.
    pub(crate) fn clear(&self) {
        self.log.lock().unwrap().clear();
    }

    /// Everything recorded so far, in order.
    pub(crate) fn entries(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The entries that start with `prefix`.
    pub(crate) fn starting_with(&self, prefix: &str) -> Vec<String> {
        self.entries()
            .into_iter()
            .filter(|e| e.starts_with(prefix))
            .collect()
    }

    /// Waits until an entry equals `entry`.
    pub(crate) async fn wait_for(&self, entry: &str) {
        eventually(&format!("{entry:?} in the log"), || {
            self.log.lock().unwrap().iter().any(|e| e == entry)
        })
        .await
    }

    /// Waits until an entry starts with `prefix`, and returns the first such.
    pub(crate) async fn wait_for_prefix(&self, prefix: &str) -> String {
        eventually(&format!("an entry starting with {prefix:?}"), || {
            !self.starting_with(prefix).is_empty()
        })
        .await;
        self.starting_with(prefix).remove(0)
    }

    /// The call contexts kept by [`Cmd::Keep`], taken out.
    pub(crate) fn take_kept(&self) -> Vec<RpcCallContext<String>> {
        std::mem::take(&mut *self.kept.lock().unwrap())
    }
}

/// What a [`Probe`]'s `on_start` does.
#[derive(Debug, Clone, Default)]
pub(crate) enum Start {
    #[default]
    Ok,
    /// Sleeps (asynchronously) this long first.
    Delay(Duration),
    /// Returns this error.
    Err(String),
    /// Panics with this message.
    Panic(String),
}

/// A serial endpoint that does what [`Cmd`]s say and records its life in a [`Recorder`]:
/// `start`, `stop`, `connected:<addr>`, `disconnected:<addr>`, `network-error:<addr>`,
/// `error:<message>`, `panic:<message>`, and the entries [`Cmd`] documents.
#[derive(Default)]
pub(crate) struct Probe {
    pub(crate) rec: Recorder,
    pub(crate) start: Start,
    pub(crate) panic_in_stop: bool,
}

impl Probe {
    pub(crate) fn new(rec: &Recorder) -> Self {
        Self {
            rec: rec.clone(),
            ..Self::default()
        }
    }
}

impl RpcEndpoint for Probe {
    type Message = Cmd;
    type Reply = String;

    async fn on_start(&mut self, _: &EndpointContext<Cmd, String>) -> Result<(), BoxError> {
        match &self.start {
            Start::Ok => {}
            Start::Delay(d) => tokio::time::sleep(*d).await,
            Start::Err(e) => return Err(e.clone().into()),
            Start::Panic(m) => panic!("{m}"),
        }
        self.rec.push("start");
        Ok(())
    }

    async fn receive(
        &mut self,
        _: &EndpointContext<Cmd, String>,
        msg: Cmd,
    ) -> Result<(), BoxError> {
        match msg {
            Cmd::Note(s) => self.rec.push(format!("note:{s}")),
            Cmd::Err(e) => return Err(e.into()),
            Cmd::Panic(m) => panic!("{m}"),
            other => self.rec.push(format!("send:{other:?}")),
        }
        Ok(())
    }

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<Cmd, String>,
        msg: Cmd,
        call: RpcCallContext<String>,
    ) -> Result<(), BoxError> {
        match msg {
            Cmd::Echo(s) => {
                let sender = call
                    .sender_address()
                    .map_or_else(|| "none".to_owned(), |a| a.to_string());
                self.rec.push(format!("ask:{s} from {sender}"));
                call.reply(s);
            }
            Cmd::Fail(s) => {
                call.send_failure(s);
            }
            Cmd::Err(e) => return Err(e.into()),
            Cmd::Panic(m) => panic!("{m}"),
            Cmd::Drop => drop(call),
            Cmd::Keep => {
                self.rec.kept.lock().unwrap().push(call);
                self.rec.push("kept");
            }
            Cmd::Later(ms) => {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    call.reply("later".to_owned());
                });
            }
            Cmd::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                call.reply("slept".to_owned());
            }
            Cmd::WatchCancel => {
                let rec = self.rec.clone();
                rec.push(format!("watching cancelled={}", call.is_cancelled()));
                tokio::spawn(async move {
                    call.cancelled().await;
                    rec.push(format!("cancelled is_cancelled={}", call.is_cancelled()));
                });
            }
            Cmd::Note(s) => self.rec.push(format!("asked-note:{s}")),
        }
        Ok(())
    }

    async fn on_connected(&mut self, _: &EndpointContext<Cmd, String>, remote: RpcAddress) {
        self.rec.push(format!("connected:{remote}"));
    }

    async fn on_disconnected(&mut self, _: &EndpointContext<Cmd, String>, remote: RpcAddress) {
        self.rec.push(format!("disconnected:{remote}"));
    }

    async fn on_network_error(
        &mut self,
        _: &EndpointContext<Cmd, String>,
        _: String,
        remote: RpcAddress,
    ) {
        self.rec.push(format!("network-error:{remote}"));
    }

    async fn on_error(&mut self, _: &EndpointContext<Cmd, String>, error: EndpointFailure) {
        match error {
            EndpointFailure::Error(e) => self.rec.push(format!("error:{e}")),
            EndpointFailure::Panic(m) => self.rec.push(format!("panic:{m}")),
            other => self.rec.push(format!("failure:{other}")),
        }
    }

    async fn on_stop(&mut self, _: &EndpointContext<Cmd, String>) {
        if self.panic_in_stop {
            panic!("on_stop went wrong");
        }
        self.rec.push("stop");
    }
}

/// Asks `probe` an echo and waits for it: every event posted to it before is handled by then.
pub(crate) async fn flush(probe: &RpcEndpointRef<Cmd, String>) {
    within(
        "a flush",
        probe.ask_with_timeout(Cmd::Echo("flush".into()), LONG),
    )
    .await
    .expect("the flush is answered");
}
