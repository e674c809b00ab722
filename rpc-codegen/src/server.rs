//! The server side of a service: the trait users implement and the adapter
//! that serves it.

use proc_macro2::TokenStream;
use quote::quote;

use crate::builder::{Placement, HEAVY};
use crate::names::{RpcNames, ServiceNames};

/// `pub trait Echo`: one method per rpc, plus `runs_inline` and `lanes`.
pub(crate) fn service_trait(s: &ServiceNames) -> TokenStream {
    let ServiceNames { full_name, trait_name, server, .. } = s;
    let docs = join_docs(
        &s.docs,
        &[
            format!(" The server side of `{full_name}`: implement it and serve it with [`{server}`]."),
            String::new(),
            " Methods run on the server's worker threads, many at once, so they may block on".to_owned(),
            " I/O, unless the code was generated with the method declared inline (run on the".to_owned(),
            " event loop) or in a lane (run on that lane's threads): each method's docs say".to_owned(),
            " where it runs.".to_owned(),
            " A returned [`Status`] travels to the caller as it is.".to_owned(),
        ],
    );
    let methods = s.rpcs.iter().map(trait_method);
    let runs_inline = runs_inline(s);
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

            /// The methods (of the [`methods`] constants) that run in a named lane of the
            /// server, with the lane: threads and a bounded queue of its own, where a burst
            /// of the lane's calls waits (refused past the bound) without delaying the
            /// other methods. By default [`LANES`], the methods declared when this code
            /// was generated (`rpc_codegen::Builder::lane`, `Builder::heavy`). The server
            /// reads it once, when it binds.
            fn lanes(&self) -> &[(&'static str, &'static str)] {
                LANES
            }
        }
    }
}

/// `fn runs_inline`: whether `method` is one of the rpcs declared inline.
fn runs_inline(s: &ServiceNames) -> TokenStream {
    let constants: Vec<_> =
        s.rpcs.iter().filter(|r| r.placement == Placement::Inline).map(|r| &r.constant).collect();
    if constants.is_empty() {
        quote! {
            fn runs_inline(&self, _method: &str) -> bool {
                false
            }
        }
    } else {
        quote! {
            fn runs_inline(&self, method: &str) -> bool {
                matches!(method, #(methods::#constants)|*)
            }
        }
    }
}

/// `pub const LANES`: each rpc declared in a lane, with the lane's name.
pub(crate) fn lanes(s: &ServiceNames) -> TokenStream {
    let pairs = s.rpcs.iter().filter_map(|r| match &r.placement {
        Placement::Lane(lane) => {
            let constant = &r.constant;
            Some(quote! { (methods::#constant, #lane) })
        }
        _ => None,
    });
    quote! {
        /// The rpcs declared in a named lane of the server when this code was generated,
        /// with the lane: what the trait's `lanes` answers by default.
        pub const LANES: &[(&str, &str)] = &[#(#pairs),*];
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
    docs.push(match &rpc.placement {
        Placement::Workers => " Runs on the server's workers.".to_owned(),
        Placement::Inline => {
            " Runs on the server's event loop (declared inline): it must be cheap and never block.".to_owned()
        }
        Placement::Lane(lane) if lane == HEAVY => {
            " Runs on the server's heavy lane (declared heavy).".to_owned()
        }
        Placement::Lane(lane) => format!(" Runs in the server's lane `{lane}` (declared in that lane)."),
    });
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

            fn lanes(&self) -> &[(&'static str, &'static str)] {
                self.0.lanes()
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
