//! The suite's helpers, runtime-neutral: timers and tasks through the adapter's
//! [`Runtime`](rpc::Runtime), bounded waits, envs on real sockets, and a scriptable endpoint
//! that records what happens to it.
#![allow(dead_code)]

use std::any::Any;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use serde::{Deserialize, Serialize};

// `ADAPTER` serves `peer_process.rs`, which the TLS modules leave out.
#[allow(unused_imports)]
pub(super) use super::{block_on, rpc, security, ADAPTER};
use rpc::{
    BoxError, EndpointContext, EndpointFailure, RpcAddress, RpcCallContext, RpcEndpoint,
    RpcEndpointRef, RpcEnv, RpcEnvConfig, RpcMessage, TransportConfig,
};

/// How long any single wait may take before the test is declared hung. Generous: the three
/// adapters' tests share two cores.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// An ask timeout far beyond [`WAIT`]: an ask that resolves within `WAIT` did not time out.
pub(crate) const LONG: Duration = Duration::from_secs(60);

// ---- time and tasks ----

/// The adapter's runtime, as envs and transports take it.
pub(crate) fn rt() -> Arc<dyn rpc::Runtime> {
    rpc::runtime()
}

/// Sleeps on the adapter's timers.
pub(crate) async fn sleep(duration: Duration) {
    let rt = rt();
    rpc::sleep_until(&*rt, rt.now() + duration).await
}

/// Lets other tasks run.
pub(crate) async fn yield_now() {
    futures_lite::future::yield_now().await
}

/// Awaits `f`, or gives up after `limit` (`None`).
pub(crate) async fn give_up_after<F: Future>(limit: Duration, f: F) -> Option<F::Output> {
    futures_lite::future::or(async { Some(f.await) }, async {
        sleep(limit).await;
        None
    })
    .await
}

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
pub(crate) async fn within<F: Future>(what: &str, f: F) -> F::Output {
    give_up_after(WAIT, f)
        .await
        .unwrap_or_else(|| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// Polls `f` until it holds, failing the test after [`WAIT`].
pub(crate) async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(5)).await;
    }
}

/// What a [`Task`] hands back: the output, or the panic that ended it.
type Outcome<T> = Result<T, Box<dyn Any + Send>>;

struct Slot<T> {
    outcome: Option<Outcome<T>>,
    /// The task ended (or was dropped by its executor) without an outcome.
    abandoned: bool,
    waker: Option<Waker>,
}

/// A spawned task's result: await it for the output; a panic in the task resumes here.
/// Dropping it detaches the task.
pub(crate) struct Task<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

/// Fills a [`Task`]'s slot once, or marks it abandoned when dropped unfilled.
struct Filler<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

impl<T> Filler<T> {
    fn fill(self, outcome: Outcome<T>) {
        self.slot.lock().unwrap().outcome = Some(outcome);
        // `drop` wakes the task's owner.
    }
}

impl<T> Drop for Filler<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = self.slot.lock().unwrap();
            if slot.outcome.is_none() {
                slot.abandoned = true;
            }
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

fn task_pair<T>() -> (Filler<T>, Task<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        outcome: None,
        abandoned: false,
        waker: None,
    }));
    (Filler { slot: slot.clone() }, Task { slot })
}

impl<T> Future for Task<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = self.slot.lock().unwrap();
        match slot.outcome.take() {
            Some(Ok(value)) => Poll::Ready(value),
            Some(Err(panic)) => {
                drop(slot);
                panic::resume_unwind(panic)
            }
            None if slot.abandoned => panic!("the task was dropped before it finished"),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Spawns `future` on the adapter's runtime.
pub(crate) fn spawn<F>(future: F) -> Task<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (filler, task) = task_pair();
    rt().spawn(Box::pin(async move {
        let outcome = AssertUnwindSafe(future).catch_unwind().await;
        filler.fill(outcome);
    }));
    task
}

/// Runs blocking `f` (raw sockets, child processes) on a thread of its own.
pub(crate) fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Task<T> {
    let (filler, task) = task_pair();
    std::thread::spawn(move || {
        let outcome = panic::catch_unwind(AssertUnwindSafe(f));
        filler.fill(outcome);
    });
    task
}

/// Handlers waiting here go on once `parties` of them have arrived (polling the adapter's
/// timers, so it works on any runtime).
pub(crate) struct Rendezvous {
    parties: usize,
    arrived: AtomicUsize,
}

impl Rendezvous {
    pub(crate) fn new(parties: usize) -> Self {
        Self {
            parties,
            arrived: AtomicUsize::new(0),
        }
    }

    pub(crate) async fn wait(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        eventually("every party to arrive", || {
            self.arrived.load(Ordering::SeqCst) >= self.parties
        })
        .await
    }
}

// ---- security ----

/// The transport config every transport of the suite starts from: the defaults, with the
/// module's [`security`].
pub(crate) fn transport_config() -> TransportConfig {
    TransportConfig::builder()
        .with_security(security())
        .build()
        .unwrap()
}

/// Whether a test that talks the plaintext protocol on a raw socket (frames written and read
/// by hand, with no handshake or cipher) must be skipped: with security on, our side
/// refuses such a peer before anything else happens (the handshake's own tests cover that).
/// Says so on stderr when it does.
pub(crate) fn skip_raw_plaintext(test: &str) -> bool {
    skip_with_security(test, "a raw plaintext peer")
}

/// Whether a test must be skipped with security on, for the reason given, said on stderr.
pub(crate) fn skip_with_security(test: &str, why: &str) -> bool {
    let skip = security().is_enabled();
    if skip {
        eprintln!("{test}: skipped with security on ({why})");
    }
    skip
}

// ---- envs ----

/// A server-mode env on a free port of 127.0.0.1.
pub(crate) fn server_env(name: &str) -> RpcEnv {
    RpcEnv::create(rt(), server_config(name)).expect("server env")
}

/// The config of [`server_env`], to adjust.
pub(crate) fn server_config(name: &str) -> RpcEnvConfig {
    RpcEnvConfig::server(name, "127.0.0.1", 0)
        .with_ask_timeout(LONG)
        .with_security(security())
        .build()
        .unwrap()
}

/// A client-mode env.
pub(crate) fn client_env(name: &str) -> RpcEnv {
    RpcEnv::create(rt(), client_config(name)).expect("client env")
}

/// The config of [`client_env`], to adjust.
pub(crate) fn client_config(name: &str) -> RpcEnvConfig {
    RpcEnvConfig::client(name)
        .with_ask_timeout(LONG)
        .with_security(security())
        .build()
        .unwrap()
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

/// How many of `entries` start with `prefix`.
pub(crate) fn count(entries: &[String], prefix: &str) -> usize {
    entries.iter().filter(|e| e.starts_with(prefix)).count()
}

// ---- the probe endpoint ----

/// What a [`Probe`] is told to do.
#[derive(Debug, Clone, Serialize, Deserialize, RpcMessage)]
pub(crate) enum Cmd {
    /// `send`: logged as `note:<text>`.
    Note(String),
    /// `ask`: answered with the text, logged as `ask:<text> from <sender address or none>`.
    Echo(String),
    /// `ask`: answered with the text, not logged (for load tests).
    Quiet(String),
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
    /// `ask`: answered with `deadline=none`, or `deadline=<whole seconds left>`.
    Deadline,
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

    /// Waits for a call context kept by [`Cmd::Keep`] and takes it out.
    pub(crate) async fn next_kept(&self) -> RpcCallContext<String> {
        eventually("a kept call", || !self.kept.lock().unwrap().is_empty()).await;
        self.kept.lock().unwrap().remove(0)
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
    /// The errors `on_network_error` received, in order.
    pub(crate) network_errors: Arc<Mutex<Vec<rpc_proto::ConnectionError>>>,
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
            Start::Delay(d) => sleep(*d).await,
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
            Cmd::Quiet(s) => {
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
                drop(spawn(async move {
                    sleep(Duration::from_millis(ms)).await;
                    call.reply("later".to_owned());
                }));
            }
            Cmd::Sleep(ms) => {
                sleep(Duration::from_millis(ms)).await;
                call.reply("slept".to_owned());
            }
            Cmd::WatchCancel => {
                let rec = self.rec.clone();
                rec.push(format!("watching cancelled={}", call.is_cancelled()));
                drop(spawn(async move {
                    call.cancelled().await;
                    rec.push(format!("cancelled is_cancelled={}", call.is_cancelled()));
                }));
            }
            Cmd::Deadline => {
                call.reply(match call.deadline() {
                    None => "deadline=none".to_owned(),
                    Some(at) => format!(
                        "deadline={}",
                        at.saturating_duration_since(Instant::now()).as_secs()
                    ),
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
        error: rpc_proto::ConnectionError,
        remote: RpcAddress,
    ) {
        self.network_errors.lock().unwrap().push(error);
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

// ---- a TCP proxy that can cut its connections ----

/// Forwards connections from its own port to `target`, on threads; [`sever`](Self::sever)
/// cuts every connection open so far (both sides see it closed), as a network failure would,
/// while the target stays up and new connections go through.
pub(crate) struct Proxy {
    address: RpcAddress,
    open: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    pub(crate) fn to(target: &RpcAddress) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = RpcAddress::from(listener.local_addr().unwrap());
        let open: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let target = (target.host.clone(), target.port);
        let registry = open.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { return };
                let Ok(outbound) = std::net::TcpStream::connect((target.0.as_str(), target.1))
                else {
                    continue;
                };
                for stream in [&inbound, &outbound] {
                    stream.set_nodelay(true).unwrap();
                    registry.lock().unwrap().push(stream.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { address, open }
    }

    /// Where to connect to reach the target through the proxy.
    pub(crate) fn address(&self) -> &RpcAddress {
        &self.address
    }

    /// Cuts every connection open so far.
    pub(crate) fn sever(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}
