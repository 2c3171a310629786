//! Where a message to an endpoint goes: its own env's mailbox, the outbox to another env,
//! or back over the connection a ref to a client-mode endpoint came on.

use std::time::Duration;

use rpc_proto::{ConnectionError, RpcAddress, RpcEndpointAddress};

use super::error::RpcError;
use super::mailbox::Mailbox;
use super::outbox::OutboxCell;
use super::stats::Counters;
use crate::runtime::Runtime;
use crate::sync::Arc;
use crate::transport::TransportClient;

// loom has no `Weak` (and env is not built under loom).
use crate::sync::unmodeled::Weak;

// The outbox cache is set once per ref; env is not built under loom.
use crate::sync::unmodeled::OnceLock;

/// Where messages to one endpoint go.
pub(crate) enum Route {
    /// An endpoint of this env: its mailbox.
    Local(Arc<Mailbox>),
    /// An endpoint of another env: the outbox to that env.
    Remote(Arc<OutboxCell>),
    /// An endpoint of a client-mode env: the connection its ref came on.
    Client(TransportClient),
}

/// What refs (and the asks they start) need of their env: where an endpoint is, the clock,
/// the counters. The env implements it; refs hold it weakly, so a ref outliving its env
/// fails with [`RpcError::Unbound`].
pub(crate) trait Router: Send + Sync {
    /// Whether the env is shutting down.
    fn is_stopped(&self) -> bool;
    /// The env's own address; `None` in client mode.
    fn address(&self) -> Option<&RpcAddress>;
    /// The runtime the env runs on.
    fn runtime(&self) -> &Arc<dyn Runtime>;
    /// The env's counters.
    fn stats(&self) -> &Counters;
    /// The default timeout of an ask.
    fn ask_timeout(&self) -> Duration;
    /// The mailbox of this env's endpoint `name`, if it is registered.
    fn mailbox(&self, name: &str) -> Option<Arc<Mailbox>>;
    /// The outbox to the env at `remote` (made on first use, kept until the env stops).
    fn outbox(&self, remote: &RpcAddress) -> Arc<OutboxCell>;
}

/// Where messages to `target` go, from the env `env`. `client` is the connection a ref to a
/// client-mode endpoint came on; `outbox` caches the outbox of a remote target.
pub(crate) fn route(
    env: &dyn Router,
    target: &RpcEndpointAddress,
    client: &Option<TransportClient>,
    outbox: Option<&OnceLock<Arc<OutboxCell>>>,
) -> Result<Route, RpcError> {
    if env.is_stopped() {
        return Err(RpcError::EnvStopped);
    }
    let local = || {
        env.mailbox(&target.name)
            .map(Route::Local)
            .ok_or_else(|| RpcError::EndpointNotFound(target.to_string()))
    };
    match (&target.address, client) {
        (Some(a), _) if Some(a) == env.address() => local(),
        (Some(a), _) => Ok(Route::Remote(match outbox {
            Some(cached) => cached.get_or_init(|| env.outbox(a)).clone(),
            None => env.outbox(a),
        })),
        (None, Some(client)) if client.is_active() => Ok(Route::Client(client.clone())),
        (None, Some(client)) => Err(RpcError::Disconnected {
            peer: client.peer_addr().to_string(),
            cause: client
                .close_reason()
                .unwrap_or(ConnectionError::LocallyClosed),
        }),
        (None, None) => local(),
    }
}

/// No env: what a ref deserialized outside any env binds to. It cannot exist, so a
/// `Weak` to it never upgrades.
enum Detached {}

impl Router for Detached {
    fn is_stopped(&self) -> bool {
        match *self {}
    }
    fn address(&self) -> Option<&RpcAddress> {
        match *self {}
    }
    fn runtime(&self) -> &Arc<dyn Runtime> {
        match *self {}
    }
    fn stats(&self) -> &Counters {
        match *self {}
    }
    fn ask_timeout(&self) -> Duration {
        match *self {}
    }
    fn mailbox(&self, _: &str) -> Option<Arc<Mailbox>> {
        match *self {}
    }
    fn outbox(&self, _: &RpcAddress) -> Arc<OutboxCell> {
        match *self {}
    }
}

/// A router that never upgrades: no env.
pub(crate) fn detached() -> Weak<dyn Router> {
    Weak::<Detached>::new()
}

/// A router for unit tests: an env without sockets, on a stopped clock whose timers fire
/// when the test says.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::HashMap;
    use std::io;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Instant;

    use rpc_proto::{Outbox, OutboxConfig};

    use super::*;
    use crate::runtime::{AsyncListener, AsyncStream, AsyncTimer, BoxFuture};
    use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use crate::sync::Mutex;

    /// A clock stopped at one instant; its timers fire once [`fire`](Self::fire) is called.
    #[derive(Debug)]
    pub(crate) struct ManualClock {
        now: Instant,
        fired: Arc<AtomicBool>,
        /// Timers made so far.
        pub(crate) timers: AtomicUsize,
    }

    impl ManualClock {
        /// Fires every timer, made or to be made.
        pub(crate) fn fire(&self) {
            self.fired.store(true, Ordering::SeqCst);
        }
    }

    #[derive(Debug)]
    struct ManualTimer(Arc<AtomicBool>);

    impl AsyncTimer for ManualTimer {
        fn reset(self: Pin<&mut Self>, _: Instant) {}

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.0.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    impl Runtime for ManualClock {
        fn spawn(&self, _: BoxFuture<()>) {
            unreachable!("the fake env spawns nothing")
        }
        fn spawn_isolated(&self, _: BoxFuture<()>) {
            unreachable!("the fake env spawns nothing")
        }
        fn spawn_blocking(&self, _: Box<dyn FnOnce() + Send>) {
            unreachable!("the fake env spawns nothing")
        }
        fn new_timer(&self, _: Instant) -> Pin<Box<dyn AsyncTimer>> {
            self.timers.fetch_add(1, Ordering::SeqCst);
            Box::pin(ManualTimer(self.fired.clone()))
        }
        fn connect(&self, _: SocketAddr) -> BoxFuture<io::Result<Box<dyn AsyncStream>>> {
            unreachable!("the fake env opens no connection")
        }
        fn listen(&self, _: std::net::TcpListener) -> io::Result<Box<dyn AsyncListener>> {
            unreachable!("the fake env listens nowhere")
        }
        fn now(&self) -> Instant {
            self.now
        }
    }

    /// An env with endpoints (mailboxes) and outboxes, and nothing else.
    pub(crate) struct FakeEnv {
        pub(crate) stopped: AtomicBool,
        pub(crate) address: Option<RpcAddress>,
        pub(crate) mailboxes: Mutex<HashMap<String, Arc<Mailbox>>>,
        /// The outboxes made, by remote address.
        pub(crate) outboxes: Mutex<HashMap<RpcAddress, Arc<OutboxCell>>>,
        pub(crate) stats: Counters,
        pub(crate) clock: Arc<ManualClock>,
        rt: Arc<dyn Runtime>,
    }

    impl FakeEnv {
        /// An env at `address` (`None`: client mode).
        pub(crate) fn new(address: Option<RpcAddress>) -> Arc<Self> {
            let clock = Arc::new(ManualClock {
                now: Instant::now(),
                fired: Default::default(),
                timers: AtomicUsize::new(0),
            });
            Arc::new(Self {
                stopped: AtomicBool::new(false),
                address,
                mailboxes: Mutex::default(),
                outboxes: Mutex::default(),
                stats: Counters::default(),
                rt: clock.clone(),
                clock,
            })
        }

        /// Registers endpoint `name` with an inbox of `capacity`; its mailbox.
        pub(crate) fn endpoint(&self, name: &str, capacity: usize) -> Arc<Mailbox> {
            let mailbox = Arc::new(Mailbox::new(name, "() -> ()".to_owned(), false, capacity));
            self.mailboxes
                .lock()
                .unwrap()
                .insert(name.to_owned(), mailbox.clone());
            mailbox
        }
    }

    impl Router for FakeEnv {
        fn is_stopped(&self) -> bool {
            self.stopped.load(Ordering::SeqCst)
        }
        fn address(&self) -> Option<&RpcAddress> {
            self.address.as_ref()
        }
        fn runtime(&self) -> &Arc<dyn Runtime> {
            &self.rt
        }
        fn stats(&self) -> &Counters {
            &self.stats
        }
        fn ask_timeout(&self) -> Duration {
            Duration::from_secs(120)
        }
        fn mailbox(&self, name: &str) -> Option<Arc<Mailbox>> {
            self.mailboxes.lock().unwrap().get(name).cloned()
        }
        fn outbox(&self, remote: &RpcAddress) -> Arc<OutboxCell> {
            self.outboxes
                .lock()
                .unwrap()
                .entry(remote.clone())
                .or_insert_with(|| {
                    Arc::new(OutboxCell::new(
                        super::super::outbox::detached(),
                        remote.clone(),
                        Outbox::new(OutboxConfig::default(), 0),
                    ))
                })
                .clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeEnv;
    use super::*;

    fn at(host: &str, port: u16) -> RpcAddress {
        RpcAddress::new(host.to_owned(), port)
    }

    #[test]
    fn an_endpoint_of_the_env_itself_is_local() {
        let env = FakeEnv::new(Some(at("driver", 7077)));
        let mailbox = env.endpoint("master", 10);
        let target = RpcEndpointAddress::new(at("driver", 7077), "master");
        match route(&*env, &target, &None, None) {
            Ok(Route::Local(m)) => assert!(Arc::ptr_eq(&m, &mailbox)),
            _ => panic!("expected the local mailbox"),
        }
        // A ref naming no address, and no connection, is to this env too.
        let target = RpcEndpointAddress::client("master");
        assert!(matches!(
            route(&*env, &target, &None, None),
            Ok(Route::Local(_))
        ));
    }

    #[test]
    fn a_missing_local_endpoint_is_not_found() {
        let env = FakeEnv::new(Some(at("driver", 7077)));
        let target = RpcEndpointAddress::new(at("driver", 7077), "nobody");
        match route(&*env, &target, &None, None) {
            Err(RpcError::EndpointNotFound(name)) => assert!(name.contains("nobody"), "{name}"),
            _ => panic!("expected EndpointNotFound"),
        }
    }

    #[test]
    fn an_endpoint_of_another_env_goes_through_its_one_outbox() {
        let env = FakeEnv::new(Some(at("driver", 7077)));
        env.endpoint("master", 10); // same name, other env: not this one
        let target = RpcEndpointAddress::new(at("executor", 7078), "master");
        let first = match route(&*env, &target, &None, None) {
            Ok(Route::Remote(outbox)) => outbox,
            _ => panic!("expected the outbox"),
        };
        let cache = OnceLock::new();
        for _ in 0..3 {
            match route(&*env, &target, &None, Some(&cache)) {
                Ok(Route::Remote(outbox)) => assert!(Arc::ptr_eq(&outbox, &first)),
                _ => panic!("expected the outbox"),
            }
        }
        assert!(Arc::ptr_eq(cache.get().expect("cached"), &first));
        assert_eq!(env.outboxes.lock().unwrap().len(), 1);
        // A client-mode env routes by address just the same.
        let client_env = FakeEnv::new(None);
        assert!(matches!(
            route(&*client_env, &target, &None, None),
            Ok(Route::Remote(_))
        ));
    }

    #[test]
    fn a_stopped_env_routes_nothing() {
        let env = FakeEnv::new(Some(at("driver", 7077)));
        env.endpoint("master", 10);
        env.stopped
            .store(true, crate::sync::atomic::Ordering::SeqCst);
        for target in [
            RpcEndpointAddress::new(at("driver", 7077), "master"),
            RpcEndpointAddress::new(at("executor", 7078), "master"),
        ] {
            assert!(matches!(
                route(&*env, &target, &None, None),
                Err(RpcError::EnvStopped)
            ));
        }
        assert!(env.outboxes.lock().unwrap().is_empty(), "no outbox made");
    }

    #[test]
    fn a_detached_router_never_upgrades() {
        assert!(detached().upgrade().is_none());
    }
}
