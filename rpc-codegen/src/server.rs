//! The server side of a service: the trait users implement and the adapter
//! that serves it.

use proc_macro2::TokenStream;
use quote::quote;

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
            " I/O (or on the event loop, for those `runs_inline` names; on the heavy lane, for".to_owned(),
            " those `is_heavy` names); a returned [`Status`] travels to the caller as it is.".to_owned(),
        ],
    );
    let methods = s.rpcs.iter().map(trait_method);
    quote! {
        #(#[doc = #docs])*
        pub trait #trait_name: Send + Sync + 'static {
            #(#methods)*

            /// Whether `method` (one of the [`methods`] constants) is cheap and never
            /// blocks, so the server's event loop may run it itself instead of handing
            /// it to a worker. The default, `false`, suits almost every method: a slow
            /// inline method stalls every connection on its loop.
            fn runs_inline(&self, _method: &str) -> bool {
                false
            }

            /// Whether `method` (one of the [`methods`] constants) is expensive, such as a
            /// password hash, so that it runs on the server's small heavy lane, where a
            /// burst of it waits (bounded, refused past the bound) without delaying the
            /// other methods. The default, `false`, runs it on the workers.
            fn is_heavy(&self, _method: &str) -> bool {
                false
            }
        }
    }
}

fn trait_method(rpc: &RpcNames) -> TokenStream {
    let RpcNames { proto_name, method, request, reply, .. } = rpc;
    let docs = if rpc.docs.is_empty() {
        vec![format!(" Answers the `{proto_name}` rpc.")]
    } else {
        rpc.docs.clone()
    };
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
