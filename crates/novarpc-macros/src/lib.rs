//! Procedural macros of novarpc, used through the `novarpc` crate (the
//! generated code names `::novarpc`):
//!
//! - `#[novarpc::service]` on a trait of async methods generates a typed
//!   client and the server-side registration (an `Endpoint`), with the
//!   trait's namespace and API version, per-method versions, calls, casts and
//!   streams, arguments sent as oslo keyword arguments named after the
//!   parameters;
//! - `#[derive(novarpc::RemoteError)]` maps an error enum to oslo failures
//!   and back (variant ↔ exception class and module, message, keyword
//!   arguments).
//!
//! Both are documented, with examples, where `novarpc` re-exports them.

use proc_macro::TokenStream;

mod remote_error;
mod service;

/// Generates a typed client and server registration from a trait; see
/// `novarpc::service`.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    service::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Implements `novarpc::RemoteError` for an enum; see `novarpc::RemoteError`.
#[proc_macro_derive(RemoteError, attributes(remote))]
pub fn derive_remote_error(item: TokenStream) -> TokenStream {
    remote_error::expand(item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Parses `"MAJOR.MINOR"` (or `"MAJOR"`) as oslo versions are written.
fn parse_version(lit: &syn::LitStr) -> syn::Result<(u32, u32)> {
    let text = lit.value();
    let (major, minor) = text.split_once('.').unwrap_or((&text, "0"));
    let part = |p: &str| {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse::<u32>().ok()
    };
    match (part(major), part(minor)) {
        (Some(major), Some(minor)) => Ok((major, minor)),
        _ => Err(syn::Error::new(
            lit.span(),
            format!("invalid RPC version `{text}`: expected \"MAJOR.MINOR\", e.g. \"1.2\""),
        )),
    }
}
