//! The prost-build `ServiceGenerator`: one module per service, then the
//! package-level re-exports.

use std::collections::{HashMap, HashSet};

use proc_macro2::{Ident, TokenStream};
use prost_build::{Service, ServiceGenerator};
use quote::quote;

use crate::builder::Placements;
use crate::names::ServiceNames;
use crate::{client, server};

/// Generates rpc-core code for each service prost-build hands it.
#[derive(Default)]
pub(crate) struct Generator {
    /// Methods declared inline or in a lane, by `package.Service/Method`.
    placements: Placements,
    /// By package, per service: its module and the names to re-export from it.
    /// Emitted by `finalize_package`, once every message of the package is
    /// known, so a re-export never clashes with a message.
    reexports: HashMap<String, Vec<(Ident, Vec<Ident>)>>,
}

impl Generator {
    /// A generator that places the declared methods (already checked against the
    /// compiled files).
    pub(crate) fn new(placements: Placements) -> Generator {
        Generator { placements, reexports: HashMap::new() }
    }
}

impl ServiceGenerator for Generator {
    fn generate(&mut self, service: Service, buf: &mut String) {
        let names = ServiceNames::new(&service, &self.placements);
        buf.push_str(&format_items(service_module(&names)));
        let exported = vec![names.trait_name.clone(), names.server.clone(), names.client.clone()];
        self.reexports.entry(service.package).or_default().push((names.module, exported));
    }

    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        let mut taken = top_level_names(buf);
        let mut uses = TokenStream::new();
        for (module, names) in self.reexports.remove(package).unwrap_or_default() {
            let names: Vec<Ident> = names.into_iter().filter(|n| taken.insert(n.to_string())).collect();
            if !names.is_empty() {
                uses.extend(quote! { pub use self::#module::{#(#names),*}; });
            }
        }
        if !uses.is_empty() {
            buf.push_str(&format_items(uses));
        }
    }
}

/// `pub mod echo_rpc { ... }`: the names, the trait, the adapter and the client.
fn service_module(s: &ServiceNames) -> TokenStream {
    let ServiceNames { full_name, trait_name, server, client, module, .. } = s;
    let docs = [
        format!(" The `{full_name}` service: the [`{trait_name}`] trait to implement, the"),
        format!(" [`{server}`] adapter that serves it and the [`{client}`] stub that calls it."),
    ];
    let constants = s.rpcs.iter().map(|rpc| {
        let (name, constant) = (&rpc.proto_name, &rpc.constant);
        let doc = format!(" `{full_name}/{name}`.");
        quote! {
            #[doc = #doc]
            pub const #constant: &str = #name;
        }
    });
    let all = s.rpcs.iter().map(|rpc| &rpc.constant);
    let lanes = server::lanes(s);
    let service_trait = server::service_trait(s);
    let adapter = server::adapter(s);
    let client = client::client(s);
    quote! {
        #(#[doc = #docs])*
        pub mod #module {
            use rpc_core::codegen::*;

            /// The service's fully-qualified name, as sent in request frames.
            pub const SERVICE_NAME: &str = #full_name;

            /// The rpc names, as sent in request frames and passed to `runs_inline`.
            pub mod methods {
                #(#constants)*
                /// Every rpc name, in the order of the `.proto`.
                pub const ALL: &[&str] = &[#(#all),*];
            }

            #lanes

            #service_trait

            #adapter

            #client
        }
    }
}

/// Formats generated items the way rustfmt would lay them out.
fn format_items(tokens: TokenStream) -> String {
    let file: syn::File = match syn::parse2(tokens) {
        Ok(file) => file,
        Err(e) => panic!("rpc-codegen generated invalid Rust (a bug in rpc-codegen): {e}"),
    };
    prettyplease::unparse(&file)
}

/// Names of the items at the top of a generated package file.
fn top_level_names(buf: &str) -> HashSet<String> {
    let Ok(file) = syn::parse_file(buf) else { return HashSet::new() };
    file.items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Struct(i) => Some(i.ident.to_string()),
            syn::Item::Enum(i) => Some(i.ident.to_string()),
            syn::Item::Trait(i) => Some(i.ident.to_string()),
            syn::Item::Type(i) => Some(i.ident.to_string()),
            syn::Item::Mod(i) => Some(i.ident.to_string()),
            syn::Item::Const(i) => Some(i.ident.to_string()),
            syn::Item::Static(i) => Some(i.ident.to_string()),
            syn::Item::Fn(i) => Some(i.sig.ident.to_string()),
            syn::Item::Union(i) => Some(i.ident.to_string()),
            _ => None,
        })
        .collect()
}
