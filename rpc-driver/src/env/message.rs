//! Message identities: the names peers check message and reply types by.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rpc_proto::wire::{write_array, write_generic, write_tuple};
use rpc_proto::{RpcAddress, RpcEndpointAddress};

/// A type that travels as a message or a reply, with the name peers know it by.
///
/// Every envelope carries the identity of the endpoint's message and reply types (`"Hello ->
/// String"`), and lookups ([`RpcEnv::setup_endpoint_ref`](crate::env::rpc_env::RpcEnv::setup_endpoint_ref))
/// and every remote message are checked against the endpoint's: different identities are
/// [`RpcError::TypeMismatch`](crate::env::error::RpcError::TypeMismatch). The identity is made of
/// [`NAME`](RpcMessage::NAME)s, which the program chooses, so it is the same across builds,
/// compiler versions, module moves and re-exports (unlike [`std::any::type_name`], which is
/// neither stable nor unique).
///
/// Derive it, next to serde's traits: the name is the type's identifier, or the one given
/// with `#[rpc(name = "...")]`.
///
/// ```
/// use rpc_driver::env::RpcMessage;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, RpcMessage)]
/// enum Hello { SayHi(String) }
///
/// #[derive(Serialize, Deserialize, RpcMessage)]
/// #[rpc(name = "spark.RegisterExecutor")]
/// struct Register { id: String }
///
/// #[derive(Serialize, Deserialize, RpcMessage)]
/// struct Batch<T> { items: Vec<T> }
///
/// assert_eq!(Hello::identity(), "Hello");
/// assert_eq!(Register::identity(), "spark.RegisterExecutor");
/// assert_eq!(Batch::<Option<u64>>::identity(), "Batch<Option<u64>>");
/// ```
///
/// `rpc_tokio::RpcMessage` and `rpc_async_std::RpcMessage` are this trait and its derive:
/// `use rpc_tokio::RpcMessage;` brings both. A renamed dependency is named with
/// `#[rpc(crate = "path::to::it")]`.
///
/// # Renaming a type without breaking peers
///
/// The name is what peers agree on, not the Rust path. Moving a type to another module or
/// crate, or reaching it through a re-export, changes nothing. To rename the Rust type, keep
/// its old name: `#[rpc(name = "Old")] enum New { .. }` still talks to peers built with
/// `enum Old`. Changing the name itself is a breaking change of the protocol, like changing
/// the type's fields: peers that still use the old name get `TypeMismatch` until they are
/// updated too.
///
/// Two types with the same name are interchangeable on the wire, so a name must be unique
/// among the messages one endpoint could be sent by mistake; a prefix (`"spark.Hello"`) helps.
/// Names cannot contain whitespace nor any of `< > , ( ) [ ] ;`, which separate the parts of
/// a generic type's identity.
///
/// # Provided implementations
///
/// `()`, `bool`, integers, floats, `char`, `String`, [`Bytes`], [`Duration`], `Vec`,
/// `VecDeque`, `Option`, `Result`, tuples up to 8 elements, arrays, `HashMap`, `BTreeMap`,
/// `HashSet`, `BTreeSet`, [`RpcAddress`], [`RpcEndpointAddress`] and [`RpcEndpointRef`](crate::env::reference::RpcEndpointRef), named
/// as Rust writes them: `Vec<u8>`, `Option<String>`, `(u32, bool)`, `[u8; 16]`,
/// `HashMap<String, u64>`. `Box<T>` is `T` (it serializes the same). `HashMap` and
/// `HashSet` ignore their hasher.
pub trait RpcMessage {
    /// The name peers know this type by: stable across builds, toolchains and module moves.
    const NAME: &'static str;

    /// Appends this type's identity to `out`: [`NAME`](RpcMessage::NAME), then, for a generic
    /// type, its parameters' identities (`Batch<Option<u64>>`). The derive writes it; implement
    /// it by hand only for a generic type without the derive.
    fn write_identity(out: &mut String) {
        out.push_str(Self::NAME);
    }

    /// This type's identity, as [`write_identity`](RpcMessage::write_identity) writes it.
    fn identity() -> String {
        let mut out = String::new();
        Self::write_identity(&mut out);
        out
    }
}

/// The identity an endpoint taking `M` and answering `R` is known by, carried in envelopes
/// (its grammar: [`rpc_proto::wire`]).
pub(crate) fn endpoint_identity<M: RpcMessage, R: RpcMessage>() -> String {
    rpc_proto::wire::endpoint_identity(M::write_identity, R::write_identity)
}

/// Plain types, named as Rust writes them.
macro_rules! named {
    ($($t:ty => $name:literal),* $(,)?) => {
        $(impl RpcMessage for $t {
            const NAME: &'static str = $name;
        })*
    };
}

named! {
    () => "()",
    bool => "bool",
    u8 => "u8", u16 => "u16", u32 => "u32", u64 => "u64", u128 => "u128", usize => "usize",
    i8 => "i8", i16 => "i16", i32 => "i32", i64 => "i64", i128 => "i128", isize => "isize",
    f32 => "f32", f64 => "f64",
    char => "char",
    String => "String",
    Bytes => "Bytes",
    Duration => "Duration",
    RpcAddress => "RpcAddress",
    RpcEndpointAddress => "RpcEndpointAddress",
}

impl<T: RpcMessage> RpcMessage for Vec<T> {
    const NAME: &'static str = "Vec";
    fn write_identity(out: &mut String) {
        write_generic(out, Self::NAME, &[T::write_identity]);
    }
}

impl<T: RpcMessage> RpcMessage for VecDeque<T> {
    const NAME: &'static str = "VecDeque";
    fn write_identity(out: &mut String) {
        write_generic(out, Self::NAME, &[T::write_identity]);
    }
}

impl<T: RpcMessage> RpcMessage for Option<T> {
    const NAME: &'static str = "Option";
    fn write_identity(out: &mut String) {
        write_generic(out, Self::NAME, &[T::write_identity]);
    }
}

impl<T: RpcMessage, E: RpcMessage> RpcMessage for Result<T, E> {
    const NAME: &'static str = "Result";
    fn write_identity(out: &mut String) {
        write_generic(out, Self::NAME, &[T::write_identity, E::write_identity]);
    }
}

/// `Box<T>` serializes as `T`, so it is known as `T`.
impl<T: RpcMessage> RpcMessage for Box<T> {
    const NAME: &'static str = T::NAME;
    fn write_identity(out: &mut String) {
        T::write_identity(out);
    }
}

impl<K: RpcMessage, V: RpcMessage, S> RpcMessage for HashMap<K, V, S> {
    const NAME: &'static str = "HashMap";
    fn write_identity(out: &mut String) {
        write_generic(out, Self::NAME, &[K::write_identity, V::write_identity]);
    }
}

impl<K: RpcMessage, V: RpcMessage> RpcMessage for BTreeMap<K, V> {
    const NAME: &'static str = "BTreeMap";
    fn write_identity(out: &mut String) {
        write_generic(out, Self::NAME, &[K::write_identity, V::write_identity]);
    }
}

impl<T: RpcMessage, S> RpcMessage for HashSet<T, S> {
    const NAME: &'static str = "HashSet";
    fn write_identity(out: &mut String) {
        write_generic(out, Self::NAME, &[T::write_identity]);
    }
}

impl<T: RpcMessage> RpcMessage for BTreeSet<T> {
    const NAME: &'static str = "BTreeSet";
    fn write_identity(out: &mut String) {
        write_generic(out, Self::NAME, &[T::write_identity]);
    }
}

/// `[T; N]`.
impl<T: RpcMessage, const N: usize> RpcMessage for [T; N] {
    const NAME: &'static str = "[]";
    fn write_identity(out: &mut String) {
        write_array(out, T::write_identity, N);
    }
}

/// Tuples: `(A, B)`, and `(A,)` for one element.
macro_rules! tuple {
    ($($p:ident),+) => {
        impl<$($p: RpcMessage),+> RpcMessage for ($($p,)+) {
            const NAME: &'static str = "()";
            fn write_identity(out: &mut String) {
                write_tuple(out, &[$($p::write_identity),+]);
            }
        }
    };
}

tuple!(A);
tuple!(A, B);
tuple!(A, B, C);
tuple!(A, B, C, D);
tuple!(A, B, C, D, E);
tuple!(A, B, C, D, E, F);
tuple!(A, B, C, D, E, F, G);
tuple!(A, B, C, D, E, F, G, H);

#[cfg(test)]
mod tests {
    //! Golden identities: these strings are on the wire, so changing one breaks every peer
    //! built before the change. Do not edit them to make a test pass.

    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::env::reference::RpcEndpointRef;
    use crate::env::RpcMessage;

    #[derive(RpcMessage)]
    #[allow(dead_code)]
    enum Hello {
        SayHi(String),
    }

    #[derive(RpcMessage)]
    #[rpc(name = "spark.RegisterExecutor")]
    struct Register;

    #[derive(RpcMessage)]
    #[allow(dead_code)]
    struct Batch<T> {
        items: Vec<T>,
    }

    #[derive(RpcMessage)]
    #[rpc(name = "Pair")]
    #[allow(dead_code)]
    struct Keyed<'a, K, V, const N: usize> {
        key: &'a K,
        values: [V; N],
    }

    #[derive(RpcMessage)]
    struct r#Match;

    /// The same type before and after a move to another module.
    mod before {
        #[derive(crate::env::RpcMessage)]
        pub(super) struct Heartbeat;
    }
    mod after {
        pub(super) mod moved {
            #[derive(crate::env::RpcMessage)]
            pub(in super::super) struct Heartbeat;
        }
    }

    /// A type renamed in Rust, keeping the name peers know.
    #[derive(RpcMessage)]
    #[rpc(name = "Heartbeat")]
    struct Pulse;

    #[test]
    fn derived_identities_are_the_golden_names() {
        assert_eq!(Hello::identity(), "Hello");
        assert_eq!(Register::identity(), "spark.RegisterExecutor");
        assert_eq!(Batch::<Option<u64>>::NAME, "Batch");
        assert_eq!(Batch::<Option<u64>>::identity(), "Batch<Option<u64>>");
        assert_eq!(
            Keyed::<'static, String, Batch<Hello>, 4>::identity(),
            "Pair<String, Batch<Hello>, 4>"
        );
        assert_eq!(r#Match::identity(), "Match");
    }

    #[test]
    fn std_identities_are_the_golden_names() {
        assert_eq!(<()>::identity(), "()");
        assert_eq!(bool::identity(), "bool");
        assert_eq!(u8::identity(), "u8");
        assert_eq!(i128::identity(), "i128");
        assert_eq!(usize::identity(), "usize");
        assert_eq!(f64::identity(), "f64");
        assert_eq!(char::identity(), "char");
        assert_eq!(String::identity(), "String");
        assert_eq!(Bytes::identity(), "Bytes");
        assert_eq!(Duration::identity(), "Duration");
        assert_eq!(Vec::<u8>::identity(), "Vec<u8>");
        assert_eq!(Option::<String>::identity(), "Option<String>");
        assert_eq!(
            Result::<Vec<String>, String>::identity(),
            "Result<Vec<String>, String>"
        );
        assert_eq!(Box::<Hello>::identity(), "Hello");
        assert_eq!(<(u32,)>::identity(), "(u32,)");
        assert_eq!(<(u32, bool, Hello)>::identity(), "(u32, bool, Hello)");
        assert_eq!(<[u8; 16]>::identity(), "[u8; 16]");
        assert_eq!(HashMap::<String, u64>::identity(), "HashMap<String, u64>");
        assert_eq!(
            BTreeMap::<u32, Vec<Bytes>>::identity(),
            "BTreeMap<u32, Vec<Bytes>>"
        );
        assert_eq!(
            RpcEndpointRef::<Hello, Option<u64>>::identity(),
            "RpcEndpointRef<Hello, Option<u64>>"
        );
        assert_eq!(RpcEndpointAddress::identity(), "RpcEndpointAddress");
    }

    #[test]
    fn an_endpoint_is_known_by_its_message_and_reply() {
        assert_eq!(endpoint_identity::<Hello, String>(), "Hello -> String");
        assert_eq!(endpoint_identity::<(), ()>(), "() -> ()");
        assert_eq!(
            endpoint_identity::<Batch<Register>, Result<(), String>>(),
            "Batch<spark.RegisterExecutor> -> Result<(), String>"
        );
    }

    /// Regression: identities were `std::any::type_name`, which names the module path
    /// (`rpc_driver::env::message::tests::before::Heartbeat`), so moving or renaming a type
    /// broke every peer built before the move.
    #[test]
    fn identity_survives_a_module_move_and_a_rename() {
        let moved = after::moved::Heartbeat::identity();
        assert_eq!(before::Heartbeat::identity(), moved);
        assert_eq!(Pulse::identity(), moved);
        assert_eq!(moved, "Heartbeat");
        assert_ne!(
            std::any::type_name::<before::Heartbeat>(),
            std::any::type_name::<after::moved::Heartbeat>()
        );
        assert_ne!(moved, std::any::type_name::<after::moved::Heartbeat>());
    }

    /// The derive writes identities itself; they follow rpc-proto's grammar like the rest.
    #[test]
    fn identities_follow_the_wire_grammar() {
        use rpc_proto::wire::TypeIdentity;
        for identity in [
            Keyed::<'static, String, Batch<Hello>, 4>::identity(),
            Batch::<(u32,)>::identity(),
            Batch::<[Option<u8>; 3]>::identity(),
            <(Hello, Register, ())>::identity(),
        ] {
            let parsed = TypeIdentity::parse(&identity).unwrap();
            assert_eq!(parsed.to_string(), identity);
        }
        let endpoint = endpoint_identity::<Batch<Register>, Result<(), String>>();
        let (message, reply) = TypeIdentity::parse_endpoint(&endpoint).unwrap();
        assert_eq!(message.to_string(), Batch::<Register>::identity());
        assert_eq!(reply.to_string(), "Result<(), String>");
    }
}
