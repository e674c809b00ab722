//! The server side of a service: the trait users implement and the adapter
//! that serves it.

use proc_macro2::TokenStream;
use quote::quote;

use crate::builder::Placement;
use crate::names::{RpcNames, ServiceNames};

/// `pub trait Echo`: one method per rpc, plus `runs_inline` and `is_heavy`.
pub(crate) fn service_trait(s: &ServiceNames) -> TokenStream {
    let ServiceNames { full_name, trait_name, server, .. } = s;
    let docs = join_docs(
        &s.docs,
        &[
            format!(" The server side of `{full_name}`: implement it and serve it with [`{server}`]."),
            String::new(),
            " Methods run on the server's worker threads, many at once, so they may block on".to_owned(),
            " I/O, unless the code was generated with the method declared inline (run on the".to_owned(),
            " event loop) or heavy (run on the heavy lane): each method's docs say where it runs.".to_owned(),
            " A returned [`Status`] travels to the caller as it is.".to_owned(),
        ],
    );
    let methods = s.rpcs.iter().map(trait_method);
    let runs_inline = placed(s, quote!(runs_inline), Placement::Inline);
    let is_heavy = placed(s, quote!(is_heavy), Placement::Heavy);
    quote! {
        #(#[doc = #docs])*
        pub trait #trait_name: Send + Sync + 'static {
            #(#methods)*

            /// Whether `method` (one of the [`methods`] constants) is cheap and never
            /// blocks, so the server's event loop may run it itself instead of handing
            /// it to a worker: by default, the methods declared inline when this code
            /// was generated (`rpc_codegen::Builder::inline`). Override it only to
            /// decide at run time; a slow inline method stalls every connection on its
            /// loop.
            #runs_inline

            /// Whether `method` (one of the [`methods`] constants) is expensive, such as a
            /// password hash, so that it runs on the server's small heavy lane, where a
            /// burst of it waits (bounded, refused past the bound) without delaying the
            /// other methods: by default, the methods declared heavy when this code was
            /// generated (`rpc_codegen::Builder::heavy`).
            #is_heavy
        }
    }
}

/// `fn runs_inline` or `fn is_heavy` (`name`): whether `method` is one of the rpcs
/// declared with `placement`.
fn placed(s: &ServiceNames, name: TokenStream, placement: Placement) -> TokenStream {
    let constants: Vec<_> = s.rpcs.iter().filter(|r| r.placement == placement).map(|r| &r.constant).collect();
    if constants.is_empty() {
        quote! {
            fn #name(&self, _method: &str) -> bool {
                false
            }
        }
    } else {
        quote! {
            fn #name(&self, method: &str) -> bool {
                matches!(method, #(methods::#constants)|*)
            }
        }
    }
}

fn trait_method(rpc: &RpcNames) -> TokenStream {
    let RpcNames { proto_name, method, request, reply, .. } = rpc;
    let mut docs = if rpc.docs.is_empty() {
        vec![format!(" Answers the `{proto_name}` rpc.")]
    } else {
        rpc.docs.clone()
    };
    docs.push(String::new());
    docs.push(
        match rpc.placement {
            Placement::Workers => " Runs on the server's workers.",
            Placement::Inline => {
                " Runs on the server's event loop (declared inline): it must be cheap and never block."
            }
            Placement::Heavy => " Runs on the server's heavy lane (declared heavy).",
        }
        .to_owned(),
    );
    quote! {
        #(#[doc = #docs])*
        fn #method(&self, ctx: &Context, request: #request) -> Result<#reply, Status>;
    }
}

/// `pub struct EchoServer<T>(pub T)` and its `rpc_core::server::Service` impl.
pub(crate) fn adapter(s: &ServiceNames) -> TokenStream {
    let ServiceNames { full_name, trait_name, server, .. } = s;
    let doc = format!(" Serves any implementation of [`{trait_name}`] as the `{full_name}` service.");
    let call = if s.rpcs.is_empty() {
        quote! {
            fn call(&self, _ctx: &Context, method: &str, _body: Bytes) -> Result<Bytes, Status> {
                Err(unimplemented(SERVICE_NAME, method))
            }
        }
    } else {
        let arms = s.rpcs.iter().map(|rpc| {
            let RpcNames { constant, method, .. } = rpc;
            // `google.protobuf.Empty` is `()`: still check the body, but bind nothing.
            let (decode, request) = if rpc.request.to_string() == "()" {
                (quote! { decode_request::<()>(method, body)?; }, quote! { () })
            } else {
                (quote! { let request = decode_request(method, body)?; }, quote! { request })
            };
            quote! {
                methods::#constant => {
                    #decode
                    self.0.#method(ctx, #request).map(|reply| encode_reply(&reply))
                }
            }
        });
        quote! {
            fn call(&self, ctx: &Context, method: &str, body: Bytes) -> Result<Bytes, Status> {
                match method {
                    #(#arms)*
                    _ => Err(unimplemented(SERVICE_NAME, method)),
                }
            }
        }
    };
    quote! {
        #[doc = #doc]
        ///
        /// Hand it to `rpc_core::server::Builder::service`. It decodes each request,
        /// answering `InvalidArgument` when the body is not the expected message, calls
        /// the trait method the frame names and encodes the reply; an unknown method is
        /// answered with `Unimplemented`.
        #[derive(Debug, Clone, Default)]
        pub struct #server<T>(pub T);

        impl<T: #trait_name> Service for #server<T> {
            fn name(&self) -> &str {
                SERVICE_NAME
            }

            #call

            fn runs_inline(&self, method: &str) -> bool {
                self.0.runs_inline(method)
            }

            fn is_heavy(&self, method: &str) -> bool {
                self.0.is_heavy(method)
            }
        }
    }
}

/// The `.proto` docs, a blank line, then what the generator says about the item;
/// only the latter when the `.proto` has nothing.
pub(crate) fn join_docs(proto: &[String], generated: &[String]) -> Vec<String> {
    let mut docs = proto.to_vec();
    if !docs.is_empty() {
        docs.push(String::new());
    }
    docs.extend_from_slice(generated);
    docs
}
