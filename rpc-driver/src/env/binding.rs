//! Ref binding: refs deserialized from a message bind to the env (and, for refs to
//! client-mode endpoints, the connection) the message came from.

use std::cell::RefCell;

use super::route::{detached, Router};
use crate::transport::TransportClient;

// loom has no `Weak` (and env is not built under loom).
use crate::sync::unmodeled::Weak;

/// The env a ref is bound to, held weakly.
pub(crate) type BoundEnv = Weak<dyn Router>;

thread_local! {
    /// The env (and connection) that refs deserialized on this thread bind to.
    static BINDING: RefCell<Option<(BoundEnv, Option<TransportClient>)>> =
        const { RefCell::new(None) };
}

/// Runs `f` (a deserialization) with refs binding to `env` and, for refs to client-mode
/// endpoints, to the connection `client` the message came on.
pub(crate) fn with_binding<T>(
    env: &BoundEnv,
    client: Option<TransportClient>,
    f: impl FnOnce() -> T,
) -> T {
    let previous = BINDING.with(|b| b.replace(Some((env.clone(), client))));
    let result = f();
    BINDING.with(|b| *b.borrow_mut() = previous);
    result
}

/// What a ref deserialized now binds to: the innermost [`with_binding`]'s env and
/// connection, or no env at all outside any.
pub(crate) fn current() -> (BoundEnv, Option<TransportClient>) {
    BINDING
        .with(|b| b.borrow().clone())
        .unwrap_or_else(|| (detached(), None))
}

#[cfg(test)]
mod tests {
    use super::super::route::fake::FakeEnv;
    use super::*;

    fn env() -> (crate::sync::Arc<FakeEnv>, BoundEnv) {
        let env = FakeEnv::new(None);
        let weak: Weak<FakeEnv> = crate::sync::Arc::downgrade(&env);
        (env, weak)
    }

    #[test]
    fn outside_any_binding_refs_bind_to_no_env() {
        let (env, client) = current();
        assert!(env.upgrade().is_none());
        assert!(client.is_none());
    }

    #[test]
    fn bindings_nest_and_are_restored() {
        let (_outer_env, outer) = env();
        let (_inner_env, inner) = env();
        with_binding(&outer, None, || {
            assert!(Weak::ptr_eq(&current().0, &outer));
            with_binding(&inner, None, || {
                assert!(Weak::ptr_eq(&current().0, &inner));
            });
            assert!(
                Weak::ptr_eq(&current().0, &outer),
                "the outer binding is back"
            );
        });
        assert!(current().0.upgrade().is_none(), "and none after it");
    }

    #[test]
    fn a_binding_is_per_thread() {
        let (_env, bound) = env();
        with_binding(&bound, None, || {
            let elsewhere = std::thread::spawn(|| current().0.upgrade().is_none())
                .join()
                .unwrap();
            assert!(elsewhere, "another thread's refs are not bound");
        });
    }
}
