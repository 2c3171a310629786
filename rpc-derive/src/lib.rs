//! `#[derive(RpcMessage)]` for spark-rpc-rs: gives a message or reply type the stable name
//! peers know it by.
//!
//! Use it through the crate you already depend on (`rpc_tokio::RpcMessage`,
//! `rpc_async_std::RpcMessage` or `rpc_driver::env::RpcMessage`), which re-exports the trait
//! and this derive under the same name; the trait's documentation is the reference.
//!
//! ```text
//!   #[derive(RpcMessage)]                     impl RpcMessage for Hello {
//!   #[rpc(name = "spark.Hello")]      ──►         const NAME: &str = "spark.Hello";
//!   enum Hello { .. }                         }
//!
//!   #[derive(RpcMessage)]                     impl<T: RpcMessage> RpcMessage for Batch<T> {
//!   struct Batch<T> { .. }            ──►         const NAME: &str = "Batch";
//!                                                 fn write_identity(..) // "Batch<" T ">"
//!                                             }
//! ```
//!
//! Attributes, in `#[rpc(...)]`:
//!
//! - `name = "..."`: the name peers know the type by (default: the type's identifier). Keep it
//!   when renaming or moving the type, and peers built before the rename still talk to it.
//! - `crate = "..."`: the path of the crate that exports the trait, for a renamed dependency
//!   (default: the crate the derive was re-exported from).
//!
//! ```
//! use rpc_driver::env::RpcMessage;
//!
//! #[derive(RpcMessage)]
//! #[rpc(name = "spark.Hello")]
//! struct Greeting;
//!
//! #[derive(RpcMessage)]
//! struct Keyed<K, V, const N: usize>([(K, V); N]);
//!
//! assert_eq!(Greeting::identity(), "spark.Hello");
//! assert_eq!(Keyed::<String, u8, 2>::identity(), "Keyed<String, u8, 2>");
//! ```
//!
//! A name with a separator of generic identities, or an unknown attribute, does not compile:
//!
//! ```compile_fail
//! # use rpc_driver::env::RpcMessage;
//! #[derive(RpcMessage)]
//! #[rpc(name = "Vec<u8>")]
//! struct Bytes;
//! ```
//!
//! ```compile_fail
//! # use rpc_driver::env::RpcMessage;
//! #[derive(RpcMessage)]
//! #[rpc(rename = "Old")]
//! struct New;
//! ```

#![forbid(unsafe_code)]

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, ToTokens};
use syn::{parse_macro_input, parse_quote, DeriveInput, GenericParam, LitStr, Path};

/// Derives `RpcMessage` through `rpc_driver::env::RpcMessage`; `rpc_driver` re-exports it.
#[proc_macro_derive(RpcMessage, attributes(rpc))]
pub fn derive_rpc_message(input: TokenStream) -> TokenStream {
    expand(input, parse_quote!(::rpc_driver::env))
}

/// Derives `RpcMessage` through `rpc_tokio::RpcMessage`; `rpc_tokio` re-exports it as
/// `RpcMessage`.
#[proc_macro_derive(TokioRpcMessage, attributes(rpc))]
pub fn derive_tokio_rpc_message(input: TokenStream) -> TokenStream {
    expand(input, parse_quote!(::rpc_tokio))
}

/// Derives `RpcMessage` through `rpc_async_std::RpcMessage`; `rpc_async_std` re-exports it as
/// `RpcMessage`.
#[proc_macro_derive(AsyncStdRpcMessage, attributes(rpc))]
pub fn derive_async_std_rpc_message(input: TokenStream) -> TokenStream {
    expand(input, parse_quote!(::rpc_async_std))
}

fn expand(input: TokenStream, default_crate: Path) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match derive(input, default_crate) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Characters a name cannot contain: they separate the parts of a generic type's identity.
const RESERVED: &[char] = &['<', '>', ',', '(', ')', '[', ']', ';'];

fn derive(input: DeriveInput, default_crate: Path) -> syn::Result<TokenStream2> {
    let mut name: Option<LitStr> = None;
    let mut krate = default_crate;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("rpc")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                if name.is_some() {
                    return Err(meta.error("`name` is given twice"));
                }
                name = Some(meta.value()?.parse()?);
                Ok(())
            } else if meta.path.is_ident("crate") {
                krate = meta.value()?.parse::<LitStr>()?.parse()?;
                Ok(())
            } else {
                Err(meta.error("expected `name = \"...\"` or `crate = \"...\"`"))
            }
        })?;
    }
    let ident = &input.ident;
    let name = name.unwrap_or_else(|| {
        let bare = ident.to_string();
        LitStr::new(bare.strip_prefix("r#").unwrap_or(&bare), ident.span())
    });
    let value = name.value();
    if value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || RESERVED.contains(&c))
    {
        return Err(syn::Error::new(
            name.span(),
            "an rpc name is not empty and has no whitespace nor any of < > , ( ) [ ] ;",
        ));
    }

    let mut generics = input.generics.clone();
    let mut parameters = Vec::new();
    for param in &input.generics.params {
        match param {
            GenericParam::Type(t) => {
                let t = &t.ident;
                generics
                    .make_where_clause()
                    .predicates
                    .push(parse_quote!(#t: #krate::RpcMessage));
                parameters.push(quote!(<#t as #krate::RpcMessage>::write_identity(out);));
            }
            GenericParam::Const(c) => {
                let c = &c.ident;
                parameters.push(quote!(out.push_str(&::std::string::ToString::to_string(&#c));));
            }
            GenericParam::Lifetime(_) => {}
        }
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let write_identity = if parameters.is_empty() {
        TokenStream2::new()
    } else {
        let mut body = TokenStream2::new();
        for (i, p) in parameters.iter().enumerate() {
            if i > 0 {
                quote!(out.push_str(", ");).to_tokens(&mut body);
            }
            p.to_tokens(&mut body);
        }
        quote! {
            fn write_identity(out: &mut ::std::string::String) {
                out.push_str(<Self as #krate::RpcMessage>::NAME);
                out.push('<');
                #body
                out.push('>');
            }
        }
    };
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics #krate::RpcMessage for #ident #ty_generics #where_clause {
            const NAME: &'static str = #name;
            #write_identity
        }
    })
}
