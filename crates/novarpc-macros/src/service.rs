//! `#[novarpc::service]`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemTrait, LitStr, Pat, PathArguments, ReturnType,
    TraitItem, TraitItemFn, Type,
};

use crate::parse_version;

#[derive(Default)]
struct ServiceArgs {
    namespace: Option<LitStr>,
    version: Option<(u32, u32)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Call,
    Cast,
    Stream,
}

struct Method {
    item: TraitItemFn,
    kind: Kind,
    name: String,
    since: (u32, u32),
    ctx: Ident,
    args: Vec<(Ident, Type)>,
    ok: Type,
    err: Type,
}

pub fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let mut args = ServiceArgs::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("namespace") {
            let lit: LitStr = meta.value()?.parse()?;
            if lit.value().is_empty() {
                return Err(syn::Error::new(
                    lit.span(),
                    "an empty namespace: leave `namespace` out for the default one",
                ));
            }
            args.namespace = Some(lit);
            Ok(())
        } else if meta.path.is_ident("version") {
            let lit: LitStr = meta.value()?.parse()?;
            args.version = Some(parse_version(&lit)?);
            Ok(())
        } else {
            Err(meta.error("unknown service option: expected `namespace = \"...\"` or `version = \"MAJOR.MINOR\"`"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    let mut item: ItemTrait = syn::parse2(item)?;
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            item.generics.span(),
            "a service trait cannot be generic",
        ));
    }
    let version = args.version.unwrap_or((1, 0));
    let mut methods = Vec::new();
    let mut errors: Option<syn::Error> = None;
    let mut push_error = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    for trait_item in &mut item.items {
        match trait_item {
            TraitItem::Fn(f) => match parse_method(f, version) {
                Ok(method) => methods.push(method),
                Err(e) => push_error(e),
            },
            other => push_error(syn::Error::new(
                other.span(),
                "a service trait holds RPC methods only",
            )),
        }
    }
    if let Some(errors) = errors {
        return Err(errors);
    }
    let mut seen = std::collections::HashSet::new();
    for m in &methods {
        if !seen.insert(m.name.clone()) {
            return Err(syn::Error::new(
                m.item.sig.ident.span(),
                format!("two methods are sent as `{}`", m.name),
            ));
        }
    }
    Ok(generate(&item, &args, version, &methods))
}

fn parse_method(f: &mut TraitItemFn, version: (u32, u32)) -> syn::Result<Method> {
    let mut kind = Kind::Call;
    let mut since = None;
    let mut name = None;
    let mut kind_set: Option<Span> = None;
    let mut rest = Vec::new();
    for attr in f.attrs.drain(..) {
        if !attr.path().is_ident("rpc") {
            rest.push(attr);
            continue;
        }
        attr.parse_nested_meta(|meta| {
            let mut set_kind = |k: Kind, span: Span| {
                if kind_set.is_some() {
                    return Err(syn::Error::new(
                        span,
                        "a method is one of `cast` or `stream` (or neither: a call)",
                    ));
                }
                kind_set = Some(span);
                kind = k;
                Ok(())
            };
            if meta.path.is_ident("cast") {
                set_kind(Kind::Cast, meta.path.span())
            } else if meta.path.is_ident("stream") {
                set_kind(Kind::Stream, meta.path.span())
            } else if meta.path.is_ident("since") {
                let lit: LitStr = meta.value()?.parse()?;
                let v = parse_version(&lit)?;
                if v.0 != version.0 || v.1 > version.1 {
                    return Err(syn::Error::new(
                        lit.span(),
                        format!(
                            "method version {}.{} is not served by the service's version {}.{}",
                            v.0, v.1, version.0, version.1
                        ),
                    ));
                }
                since = Some(v);
                Ok(())
            } else if meta.path.is_ident("name") {
                let lit: LitStr = meta.value()?.parse()?;
                name = Some(lit.value());
                Ok(())
            } else {
                Err(meta.error(
                    "unknown rpc option: expected `cast`, `stream`, `since = \"MAJOR.MINOR\"` or `name = \"...\"`",
                ))
            }
        })?;
    }
    f.attrs = rest;
    let sig = &f.sig;
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "RPC methods cannot be generic: their arguments are deserialized into concrete types",
        ));
    }
    if f.default.is_some() {
        return Err(syn::Error::new(
            f.default.span(),
            "RPC methods have no default body: the service implements them",
        ));
    }
    match (kind, sig.asyncness.is_some()) {
        (Kind::Stream, true) => {
            return Err(syn::Error::new(
                sig.asyncness.span(),
                "a `stream` method is a plain `fn` returning `RpcStream<T, E>`, not an `async fn`",
            ))
        }
        (Kind::Call | Kind::Cast, false) => {
            return Err(syn::Error::new(
                sig.fn_token.span(),
                "RPC methods are `async fn` (or `#[rpc(stream)] fn` returning `RpcStream<T, E>`)",
            ))
        }
        _ => {}
    }
    let name = name.unwrap_or_else(|| {
        let ident = sig.ident.to_string();
        ident.strip_prefix("r#").map(str::to_owned).unwrap_or(ident)
    });
    if name.starts_with('_') {
        return Err(syn::Error::new(
            sig.ident.span(),
            "methods whose name starts with `_` are never dispatched (oslo's rule for private methods)",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
        Some(other) => {
            return Err(syn::Error::new_spanned(
                other,
                "RPC methods take `&self` (the server shares one service between requests)",
            ))
        }
        None => {
            return Err(syn::Error::new(
                sig.span(),
                "RPC methods take `&self` and the request context: `(&self, ctx: &Context, ...)`",
            ))
        }
    }
    let ctx_error = || {
        syn::Error::new(
            sig.ident.span(),
            "the first parameter after `&self` is the request context: `ctx: &Context`",
        )
    };
    let ctx = match inputs.next() {
        Some(FnArg::Typed(pt)) if matches!(&*pt.ty, Type::Reference(_)) => match &*pt.pat {
            Pat::Ident(p) => p.ident.clone(),
            Pat::Wild(_) => format_ident!("__ctx"),
            _ => return Err(ctx_error()),
        },
        Some(other) => return Err(syn::Error::new_spanned(other, ctx_error().to_string())),
        None => return Err(ctx_error()),
    };
    let mut args = Vec::new();
    for input in inputs {
        let FnArg::Typed(pt) = input else {
            return Err(syn::Error::new(input.span(), "unexpected receiver"));
        };
        let Pat::Ident(p) = &*pt.pat else {
            return Err(syn::Error::new_spanned(
                &pt.pat,
                "RPC arguments are plain names: they are the keyword arguments' names on the wire",
            ));
        };
        if p.by_ref.is_some() || p.subpat.is_some() {
            return Err(syn::Error::new_spanned(
                &pt.pat,
                "RPC arguments are plain names: they are the keyword arguments' names on the wire",
            ));
        }
        if matches!(&*pt.ty, Type::Reference(_)) {
            return Err(syn::Error::new_spanned(
                &pt.ty,
                "RPC arguments are owned values (the server deserializes them): write `String`, not `&str`",
            ));
        }
        let mut ident = p.ident.clone();
        ident.set_span(pt.pat.span());
        args.push((ident, (*pt.ty).clone()));
    }
    let (ok, err) = match kind {
        Kind::Stream => two_args(&sig.output, "RpcStream").ok_or_else(|| {
            syn::Error::new_spanned(
                &sig.output,
                "a `stream` method returns `RpcStream<T, E>` (items `T`, errors `E`)",
            )
        })?,
        Kind::Call | Kind::Cast => two_args(&sig.output, "Result").ok_or_else(|| {
            syn::Error::new_spanned(
                &sig.output,
                "RPC methods return `Result<T, E>`, spelled out with both types",
            )
        })?,
    };
    Ok(Method {
        item: f.clone(),
        kind,
        name,
        since: since.unwrap_or((version.0, 0)),
        ctx,
        args,
        ok,
        err,
    })
}

/// `T` and `E` of a return type `...::wrapper<T, E>`.
fn two_args(output: &ReturnType, wrapper: &str) -> Option<(Type, Type)> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    let Type::Path(path) = &**ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != wrapper {
        return None;
    }
    let PathArguments::AngleBracketed(generic) = &last.arguments else {
        return None;
    };
    let mut types = generic.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    match (types.next(), types.next(), types.next()) {
        (Some(ok), Some(err), None) => Some((ok, err)),
        _ => None,
    }
}

fn docs(attrs: &[Attribute]) -> Vec<&Attribute> {
    attrs.iter().filter(|a| a.path().is_ident("doc")).collect()
}

fn generate(
    item: &ItemTrait,
    args: &ServiceArgs,
    version: (u32, u32),
    methods: &[Method],
) -> TokenStream {
    let vis = &item.vis;
    let trait_name = &item.ident;
    let client_name = format_ident!("{}Client", trait_name);
    let (major, minor) = version;
    let namespace = match &args.namespace {
        Some(ns) => quote!(::core::option::Option::Some(#ns)),
        None => quote!(::core::option::Option::None),
    };
    let set_namespace = args
        .namespace
        .as_ref()
        .map(|ns| quote!(let endpoint = endpoint.namespace(#ns);));

    // The trait as written, `async fn` made `Send` so that servers can spawn them.
    let trait_attrs = &item.attrs;
    let unsafety = &item.unsafety;
    let supertraits = &item.supertraits;
    let colon = if supertraits.is_empty() {
        quote!(:)
    } else {
        quote!(: #supertraits +)
    };
    let trait_methods = methods.iter().map(|m| {
        let attrs = &m.item.attrs;
        let mut sig = m.item.sig.clone();
        if m.kind != Kind::Stream {
            sig.asyncness = None;
            let output = match &sig.output {
                ReturnType::Type(_, ty) => quote!(#ty),
                ReturnType::Default => quote!(()),
            };
            sig.output = syn::parse_quote_spanned! {output.span()=>
                -> impl ::core::future::Future<Output = #output> + ::core::marker::Send
            };
        }
        quote!(#(#attrs)* #sig;)
    });

    let registrations = methods.iter().map(|m| {
        let method = &m.item.sig.ident;
        let name = &m.name;
        let ctx = &m.ctx;
        let err = &m.err;
        let names: Vec<_> = m.args.iter().map(|(n, _)| n).collect();
        let types: Vec<_> = m.args.iter().map(|(_, t)| t).collect();
        let encode = quote_spanned! {err.span()=>
            |error: #err| {
                #[allow(unused_imports)]
                use ::novarpc::__private::{EncodeBoxed as _, EncodeInto as _, EncodeTyped as _};
                (&&&::novarpc::__private::Tag::<#err>::new()).encode(error)
            }
        };
        let args_struct = quote! {
            #[derive(::novarpc::__private::serde::Deserialize)]
            #[serde(crate = "::novarpc::__private::serde")]
            struct __Args { #(#names: #types,)* }
        };
        match m.kind {
            Kind::Call | Kind::Cast => quote! {
                let endpoint = {
                    #args_struct
                    let __service = ::std::sync::Arc::clone(&__service);
                    endpoint.method(#name, move |#ctx: ::novarpc::Context, __args: __Args| {
                        let __service = ::std::sync::Arc::clone(&__service);
                        async move {
                            let __Args { #(#names,)* } = __args;
                            __service.#method(&#ctx, #(#names),*).await.map_err(#encode)
                        }
                    })
                };
            },
            Kind::Stream => quote! {
                let endpoint = {
                    #args_struct
                    let __service = ::std::sync::Arc::clone(&__service);
                    endpoint.stream_method(#name, move |#ctx: ::novarpc::Context, __args: __Args| {
                        use ::novarpc::__private::futures::StreamExt as _;
                        let __Args { #(#names,)* } = __args;
                        let __encode = #encode;
                        __service
                            .#method(&#ctx, #(#names),*)
                            .map(move |item| item.map_err(__encode))
                    })
                };
            },
        }
    });

    let client_methods = methods.iter().map(|m| {
        let method = &m.item.sig.ident;
        let ctx = &m.ctx;
        let doc = docs(&m.item.attrs);
        let name = &m.name;
        let (smaj, smin) = m.since;
        let ok = &m.ok;
        let err = &m.err;
        let names: Vec<_> = m.args.iter().map(|(n, _)| n).collect();
        let types: Vec<_> = m.args.iter().map(|(_, t)| t).collect();
        let args_struct = quote! {
            #[derive(::novarpc::__private::serde::Serialize)]
            #[serde(crate = "::novarpc::__private::serde")]
            struct __Args { #(#names: #types,)* }
            let __args = __Args { #(#names,)* };
        };
        let decode = quote_spanned! {err.span()=>
            |failure| {
                #[allow(unused_imports)]
                use ::novarpc::__private::{DecodeTyped as _, DecodeUntyped as _};
                (&&::novarpc::__private::Tag::<#err>::new()).decode(failure)
            }
        };
        let since = quote!(::novarpc::__private::version(#smaj, #smin));
        let since_doc = format!(
            "\n\nSent as `{name}`, version {smaj}.{smin} (refused before sending under a lower version cap)."
        );
        match m.kind {
            Kind::Call => quote! {
                #(#doc)*
                #[doc = #since_doc]
                pub async fn #method(&self, #ctx: &::novarpc::Context, #(#names: #types),*)
                    -> ::core::result::Result<#ok, ::novarpc::CallError<#err>>
                {
                    #args_struct
                    self.inner.call(#ctx, #name, #since, &__args, #decode).await
                }
            },
            Kind::Cast => quote! {
                #(#doc)*
                #[doc = #since_doc]
                #[doc = "\n\nA cast: returns once the request is sent (to every server when the client is a fanout)."]
                pub async fn #method(&self, #ctx: &::novarpc::Context, #(#names: #types),*)
                    -> ::core::result::Result<(), ::novarpc::Error>
                {
                    #args_struct
                    self.inner.cast(#ctx, #name, #since, &__args).await
                }
            },
            Kind::Stream => quote! {
                #(#doc)*
                #[doc = #since_doc]
                #[doc = "\n\nA stream (multicall): its elements arrive as the server sends them."]
                pub async fn #method(&self, #ctx: &::novarpc::Context, #(#names: #types),*)
                    -> ::core::result::Result<
                        ::novarpc::RpcStream<#ok, ::novarpc::CallError<#err>>,
                        ::novarpc::CallError<#err>,
                    >
                {
                    #args_struct
                    self.inner.multicall(#ctx, #name, #since, &__args, #decode).await
                }
            },
        }
    });

    let client_doc = format!(
        "The typed client of [`{trait_name}`]: sends its methods as oslo keyword-argument \
         requests (namespace and versions included), returns their typed results and errors."
    );
    let into_endpoint_doc = format!(
        "This implementation of [`{trait_name}`] as an endpoint (namespace and version \
         included), to serve with `RpcServer::builder(..).endpoint(..)`."
    );
    let version_doc = format!("The API version the service implements ({major}.{minor}).");

    quote! {
        #(#trait_attrs)*
        #vis #unsafety trait #trait_name #colon ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#trait_methods)*

            #[doc = #into_endpoint_doc]
            fn into_endpoint(self) -> ::novarpc::Endpoint
            where
                Self: ::core::marker::Sized,
            {
                let __service = ::std::sync::Arc::new(self);
                let endpoint = ::novarpc::Endpoint::new()
                    .version(::novarpc::__private::version(#major, #minor));
                #set_namespace
                #(#registrations)*
                endpoint
            }
        }

        #[doc = #client_doc]
        #[derive(Clone, Debug)]
        #vis struct #client_name {
            inner: ::novarpc::ServiceClient,
        }

        impl #client_name {
            /// The namespace the service's endpoint serves (`None`: the default one).
            pub const NAMESPACE: ::core::option::Option<&'static str> = #namespace;
            #[doc = #version_doc]
            pub const VERSION: ::novarpc::Version = ::novarpc::__private::version(#major, #minor);

            /// A client of the service on `target` (its topic, and server if any).
            pub fn new(transport: ::novarpc::Transport, target: ::novarpc::Target) -> Self {
                Self::from_client(::novarpc::RpcClient::new(transport, target))
            }

            /// A client of the service through an existing untyped client.
            pub fn from_client(client: ::novarpc::RpcClient) -> Self {
                #client_name { inner: ::novarpc::ServiceClient::new(client, Self::NAMESPACE) }
            }

            /// A copy to adjust with the methods below, as oslo's `prepare()`.
            pub fn prepare(&self) -> Self {
                self.clone()
            }

            /// Sends to one server (host) of the topic.
            pub fn server(self, server: impl ::core::convert::Into<::std::string::String>) -> Self {
                #client_name { inner: self.inner.server(server) }
            }

            /// Casts go to every server of the topic.
            pub fn fanout(self, fanout: bool) -> Self {
                #client_name { inner: self.inner.fanout(fanout) }
            }

            /// How long a call waits for its reply (a stream: for each reply).
            pub fn timeout(self, timeout: ::std::time::Duration) -> Self {
                #client_name { inner: self.inner.timeout(timeout) }
            }

            /// Every message claims `version` instead of its method's own.
            pub fn version(self, version: ::novarpc::Version) -> Self {
                #client_name { inner: self.inner.version(version) }
            }

            /// Refuses, before sending, methods newer than `cap`.
            pub fn version_cap(self, cap: ::novarpc::Version) -> Self {
                #client_name { inner: self.inner.version_cap(cap) }
            }

            /// Sends every request to another message broker (a Nova cell).
            pub fn broker(self, broker: ::novarpc::Broker) -> Self {
                #client_name { inner: self.inner.broker(broker) }
            }

            /// Whether a message of `version` may be sent under the version cap.
            pub fn can_send_version(&self, version: ::novarpc::Version) -> bool {
                self.inner.can_send_version(version)
            }

            /// The underlying untyped client.
            pub fn rpc_client(&self) -> &::novarpc::RpcClient {
                self.inner.rpc_client()
            }

            #(#client_methods)*
        }
    }
}
