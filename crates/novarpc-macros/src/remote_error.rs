//! `#[derive(novarpc::RemoteError)]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, LitStr};

#[derive(Default)]
struct Names {
    class: Option<LitStr>,
    module: Option<LitStr>,
}

fn names(attrs: &[Attribute], allow_class: bool) -> syn::Result<Names> {
    let mut names = Names::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("remote")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("module") {
                names.module = Some(meta.value()?.parse()?);
                Ok(())
            } else if allow_class && meta.path.is_ident("class") {
                names.class = Some(meta.value()?.parse()?);
                Ok(())
            } else if allow_class {
                Err(meta.error(
                    "unknown remote option: expected `class = \"...\"` or `module = \"...\"`",
                ))
            } else {
                Err(meta.error("unknown remote option: expected `module = \"...\"`"))
            }
        })?;
    }
    Ok(names)
}

pub fn expand(item: TokenStream) -> syn::Result<TokenStream> {
    let input: DeriveInput = syn::parse2(item)?;
    let Data::Enum(data) = &input.data else {
        return Err(syn::Error::new(
            input.ident.span(),
            "RemoteError is derived for enums: each variant is an exception class",
        ));
    };
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            input.generics.span(),
            "RemoteError cannot be derived for a generic enum",
        ));
    }
    let default_module = names(&input.attrs, false)?
        .module
        .unwrap_or_else(|| LitStr::new("novarpc", input.ident.span()));
    let name = &input.ident;
    let mut encode = Vec::new();
    let mut decode = Vec::new();
    for variant in &data.variants {
        let v = &variant.ident;
        let names = names(&variant.attrs, true)?;
        let class = names
            .class
            .unwrap_or_else(|| LitStr::new(&v.to_string(), v.span()));
        let module = names.module.unwrap_or_else(|| default_module.clone());
        match &variant.fields {
            Fields::Unit => {
                encode.push(quote! {
                    #name::#v => ::novarpc::RemoteFailure::new(#class, #module, __message),
                });
                decode.push(quote! {
                    #class if __failure.module.is_empty() || __failure.module == #module => {
                        ::core::result::Result::Ok(#name::#v)
                    }
                });
            }
            Fields::Named(fields) => {
                let idents: Vec<_> = fields.named.iter().map(|f| &f.ident).collect();
                let types: Vec<_> = fields.named.iter().map(|f| &f.ty).collect();
                let keys: Vec<_> = idents
                    .iter()
                    .map(|i| {
                        let text = i.as_ref().map(|i| i.to_string()).unwrap_or_default();
                        text.strip_prefix("r#").map(str::to_owned).unwrap_or(text)
                    })
                    .collect();
                encode.push(quote! {
                    #name::#v { #(#idents,)* } => {
                        let mut __failure = ::novarpc::RemoteFailure::new(#class, #module, __message);
                        #(
                            __failure.kwargs.insert(
                                ::std::string::String::from(#keys),
                                ::novarpc::__private::serde_json::to_value(&#idents)
                                    .unwrap_or(::novarpc::__private::serde_json::Value::Null),
                            );
                        )*
                        __failure
                    }
                });
                decode.push(quote! {
                    #class if __failure.module.is_empty() || __failure.module == #module => {
                        #[derive(::novarpc::__private::serde::Deserialize)]
                        #[serde(crate = "::novarpc::__private::serde")]
                        struct __Fields { #(#idents: #types,)* }
                        let mut __failure = __failure;
                        let __kwargs = ::novarpc::__private::serde_json::Value::Object(
                            ::core::mem::take(&mut __failure.kwargs),
                        );
                        let __fields = <__Fields as ::novarpc::__private::serde::Deserialize>::deserialize(&__kwargs);
                        match __fields {
                            ::core::result::Result::Ok(__Fields { #(#idents,)* }) => {
                                ::core::result::Result::Ok(#name::#v { #(#idents,)* })
                            }
                            ::core::result::Result::Err(_) => {
                                if let ::novarpc::__private::serde_json::Value::Object(__kwargs) = __kwargs {
                                    __failure.kwargs = __kwargs;
                                }
                                ::core::result::Result::Err(__failure)
                            }
                        }
                    }
                });
            }
            Fields::Unnamed(fields) => return Err(syn::Error::new(
                fields.span(),
                "give the variant named fields: they travel as the exception's keyword arguments",
            )),
        }
    }
    let encode_body = if encode.is_empty() {
        quote!(match self {})
    } else {
        quote! {
            let __message = ::std::string::ToString::to_string(&self);
            match self { #(#encode)* }
        }
    };
    Ok(quote! {
        impl ::novarpc::RemoteError for #name {
            fn into_failure(self) -> ::novarpc::RemoteFailure {
                #encode_body
            }

            fn from_failure(
                __failure: ::std::boxed::Box<::novarpc::RemoteFailure>,
            ) -> ::core::result::Result<Self, ::std::boxed::Box<::novarpc::RemoteFailure>> {
                match __failure.class.as_str() {
                    #(#decode)*
                    _ => ::core::result::Result::Err(__failure),
                }
            }
        }
    })
}
