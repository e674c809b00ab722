//! The client side of a service: a typed stub over any `Transport`.

use proc_macro2::TokenStream;
use quote::quote;

use crate::names::{unraw, RpcNames, ServiceNames};
use crate::server::join_docs;

/// `pub struct EchoClient<T: Transport = Channel>` with a blocking, a
/// callback and an async method per rpc.
pub(crate) fn client(s: &ServiceNames) -> TokenStream {
    let ServiceNames { full_name, client, .. } = s;
    let doc = format!(" Calls the `{full_name}` service through a [`Transport`].");
    let methods = s.rpcs.iter().map(client_methods);
    quote! {
        #[doc = #doc]
        ///
        /// The transport is a [`Channel`] to one server or a load-balanced set of them;
        /// calls from many threads share its connections. Cheap to clone when the
        /// transport is.
        #[derive(Debug, Clone)]
        pub struct #client<T: Transport = Channel> {
            /// Carries the calls.
            transport: T,
            /// Deadline of each call; `None` leaves it to the transport's default.
            timeout: Option<Duration>,
        }

        impl<T: Transport> #client<T> {
            /// A client calling through `transport`, with the transport's default timeout.
            pub fn new(transport: T) -> Self {
                Self { transport, timeout: None }
            }

            /// Gives every call made through this client a deadline of `timeout`.
            pub fn with_timeout(mut self, timeout: Duration) -> Self {
                self.timeout = Some(timeout);
                self
            }

            /// The deadline of each call, if this client sets one.
            pub fn timeout(&self) -> Option<Duration> {
                self.timeout
            }

            /// The transport the calls go through.
            pub fn transport(&self) -> &T {
                &self.transport
            }

            #(#methods)*
        }
    }
}

/// `fn say` (blocking), `fn say_with` (callback) and `fn say_async` (future) for one rpc.
fn client_methods(rpc: &RpcNames) -> TokenStream {
    let RpcNames { proto_name, method, method_with, method_async, constant, request, reply, .. } = rpc;
    let docs = join_docs(
        &rpc.docs,
        &[
            format!(" Calls `{proto_name}` and waits for the reply, up to the client's timeout."),
            String::new(),
            " # Errors".to_owned(),
            String::new(),
            " [`Error::Status`] with the server's status if the call failed there, or what".to_owned(),
            " went wrong on the way: [`Error::Timeout`], [`Error::Connect`], ...".to_owned(),
        ],
    );
    let docs_with = [
        format!(" Starts a `{proto_name}` call and returns at once; `callback` gets the outcome."),
        String::new(),
        // Intra-doc links take `Self::type`, not `Self::r#type`.
        format!(" Like [`Self::{}`], but many calls can be in flight from one thread. The", unraw(method)),
        " callback runs on the client's event-loop thread (or on this one, before this".to_owned(),
        " returns, if the call could not be sent), so it should hand work off rather".to_owned(),
        " than block.".to_owned(),
    ];
    let docs_async = [
        format!(" Sends a `{proto_name}` call and returns a future of its reply, for async code."),
        String::new(),
        format!(" Like [`Self::{}`], but awaited; works on any executor. The call is sent", unraw(method)),
        " at once; dropping the future does not cancel it (see [`ReplyFuture`]).".to_owned(),
    ];
    quote! {
        #(#[doc = #docs])*
        pub fn #method(&self, request: &#request) -> Result<#reply, Error> {
            let body = self.transport.call(SERVICE_NAME, methods::#constant, request, self.timeout)?;
            decode_response(body)
        }

        #(#[doc = #docs_with])*
        pub fn #method_with(
            &self,
            request: &#request,
            callback: impl FnOnce(Result<#reply, Error>) + Send + 'static,
        ) {
            self.transport.call_with(
                SERVICE_NAME,
                methods::#constant,
                request,
                self.timeout,
                Box::new(move |body| callback(body.and_then(decode_response))),
            );
        }

        #(#[doc = #docs_async])*
        pub fn #method_async(&self, request: &#request) -> ReplyFuture<#reply> {
            let (future, callback) = ReplyFuture::new(decode_response);
            self.transport.call_with(SERVICE_NAME, methods::#constant, request, self.timeout, callback);
            future
        }
    }
}
