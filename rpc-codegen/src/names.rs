//! Names, type paths and docs of one service, resolved from prost-build's
//! descriptor before any code is generated.

use std::collections::HashMap;

use proc_macro2::{Ident, Span, TokenStream};
use prost_build::{Comments, Method, Service};
use quote::quote;

use crate::builder::{Placement, Placements};

/// A service with every name the generated items use.
pub(crate) struct ServiceNames {
    /// `package.Service`, the name clients send.
    pub full_name: String,
    /// The server trait, e.g. `Echo`.
    pub trait_name: Ident,
    /// The adapter, e.g. `EchoServer`.
    pub server: Ident,
    /// The client stub, e.g. `EchoClient`.
    pub client: Ident,
    /// The module that holds them, e.g. `echo_rpc`.
    pub module: Ident,
    /// Doc lines from the `.proto` comments on the service.
    pub docs: Vec<String>,
    /// One per rpc, in `.proto` order.
    pub rpcs: Vec<RpcNames>,
}

/// One unary rpc.
pub(crate) struct RpcNames {
    /// The name on the wire, e.g. `Say`.
    pub proto_name: String,
    /// The trait and client method, e.g. `say`.
    pub method: Ident,
    /// The client's callback variant, e.g. `say_with`.
    pub method_with: Ident,
    /// The client's future variant, e.g. `say_async`.
    pub method_async: Ident,
    /// The constant holding the wire name, e.g. `SAY`.
    pub constant: Ident,
    /// The request type as seen from inside the service module.
    pub request: TokenStream,
    /// The reply type as seen from inside the service module.
    pub reply: TokenStream,
    /// Doc lines from the `.proto` comments on the rpc.
    pub docs: Vec<String>,
    /// Where the server runs it, as declared to the builder.
    pub placement: Placement,
}

impl ServiceNames {
    /// Resolves every name of `service`.
    ///
    /// # Panics
    ///
    /// On a streaming rpc (rpc-core calls are unary) and on names that would
    /// clash in Rust, with a message naming the service or rpc.
    pub(crate) fn new(service: &Service, placements: &Placements) -> ServiceNames {
        let full_name = if service.package.is_empty() {
            service.proto_name.clone()
        } else {
            format!("{}.{}", service.package, service.proto_name)
        };
        if let Err(message) = check_unary(&full_name, &service.methods) {
            panic!("{message}");
        }
        // The service module imports `rpc_core::codegen::*` and uses these
        // prelude names; a trait of the same name would shadow one of them.
        const USED: [&str; 24] = [
            "Bytes",
            "Callback",
            "Channel",
            "Code",
            "Context",
            "Duration",
            "Error",
            "Message",
            "ReplyFuture",
            "Service",
            "Status",
            "Transport",
            "Box",
            "Clone",
            "Copy",
            "Debug",
            "Default",
            "FnOnce",
            "Option",
            "Result",
            "Send",
            "String",
            "Sync",
            "Vec",
        ];
        if USED.contains(&service.name.as_str()) {
            panic!(
                "rpc-codegen: service {full_name} would be the Rust trait `{}`, which hides \
                 the `{}` the generated module uses; rename the service",
                service.name, service.name
            );
        }
        let rpcs: Vec<RpcNames> = service
            .methods
            .iter()
            .map(|m| {
                let placement = placements.get(&format!("{full_name}/{}", m.proto_name));
                RpcNames::new(m, placement.cloned().unwrap_or_default())
            })
            .collect();
        if let Err(message) = check_clashes(&full_name, &rpcs) {
            panic!("{message}");
        }
        let base = service.name.trim_start_matches("r#");
        ServiceNames {
            trait_name: ident(&service.name),
            server: ident(&format!("{base}Server")),
            client: ident(&format!("{base}Client")),
            module: ident(&format!("{}_rpc", snake_case(base))),
            docs: doc_lines(&service.comments),
            rpcs,
            full_name,
        }
    }
}

impl RpcNames {
    fn new(method: &Method, placement: Placement) -> RpcNames {
        // prost writes `self_`, `super_`, `crate_` and `Self_` for keywords that cannot be
        // raw identifiers; the other names built from them need no trailing `_`.
        let base = method.name.trim_start_matches("r#");
        let base = match base {
            "self_" | "super_" | "crate_" | "Self_" => base.trim_end_matches('_'),
            other => other,
        };
        RpcNames {
            proto_name: method.proto_name.clone(),
            method: ident(&method.name),
            method_with: ident(&format!("{base}_with")),
            method_async: ident(&format!("{base}_async")),
            constant: ident(&base.to_uppercase()),
            request: type_path(&method.input_type),
            reply: type_path(&method.output_type),
            docs: doc_lines(&method.comments),
            placement,
        }
    }
}

/// Fails with a readable message if any of `methods` streams.
fn check_unary(service: &str, methods: &[Method]) -> Result<(), String> {
    for m in methods {
        if let Some(kind) = streaming_kind(m.client_streaming, m.server_streaming) {
            return Err(not_unary(service, &m.proto_name, kind, &m.input_proto_type, &m.output_proto_type));
        }
    }
    Ok(())
}

/// Fails with a readable message if two rpcs, or an rpc and a method every
/// trait or client has, would get the same Rust name: `GetUser` and
/// `get_user`, `Say` and `SayWith` or `SayAsync`, or an rpc named `New` or `Timeout`.
fn check_clashes(service: &str, rpcs: &[RpcNames]) -> Result<(), String> {
    const GENERATED: [&str; 6] = ["new", "with_timeout", "timeout", "transport", "runs_inline", "lanes"];
    let mut taken: HashMap<String, &str> = HashMap::new();
    for rpc in rpcs {
        for name in [unraw(&rpc.method), unraw(&rpc.method_with), unraw(&rpc.method_async)] {
            if GENERATED.contains(&name.as_str()) {
                return Err(format!(
                    "rpc-codegen: {service}/{} would need a Rust method `{name}`, which every generated \
                     trait or client already has; rename the rpc",
                    rpc.proto_name
                ));
            }
            if let Some(other) = taken.insert(name.clone(), &rpc.proto_name) {
                return Err(format!(
                    "rpc-codegen: {service}/{other} and {service}/{} both need a Rust method `{name}`; \
                     rename one of them",
                    rpc.proto_name
                ));
            }
        }
    }
    Ok(())
}

/// What kind of streaming an rpc does, if any.
pub(crate) fn streaming_kind(client_streaming: bool, server_streaming: bool) -> Option<&'static str> {
    match (client_streaming, server_streaming) {
        (false, false) => None,
        (true, false) => Some("client-streaming"),
        (false, true) => Some("server-streaming"),
        (true, true) => Some("bidirectional-streaming"),
    }
}

/// The build error for a streaming rpc, with the unary form to use instead.
pub(crate) fn not_unary(service: &str, method: &str, kind: &str, input: &str, output: &str) -> String {
    let (input, output) = (input.trim_start_matches('.'), output.trim_start_matches('.'));
    format!(
        "rpc-codegen: {service}/{method} is {kind}, but rpc-core supports unary rpcs only; \
         declare it as `rpc {method}({input}) returns ({output})`"
    )
}

/// An identifier from a name prost-build already made valid (keywords come
/// as `r#type`).
fn ident(name: &str) -> Ident {
    match name.strip_prefix("r#") {
        Some(raw) => Ident::new_raw(raw, Span::call_site()),
        None => Ident::new(name, Span::call_site()),
    }
}

/// An identifier's name without the `r#` of a raw identifier.
pub(crate) fn unraw(ident: &Ident) -> String {
    ident.to_string().trim_start_matches("r#").to_owned()
}

/// A message type as seen from inside the service module, one level below the
/// package: relative paths get a `super::`; absolute ones (extern types such
/// as `::prost_types::Timestamp`), `()` for `google.protobuf.Empty` and the
/// primitives of the wrapper types (`google.protobuf.Int64Value` is `i64`) stay.
fn type_path(rust_type: &str) -> TokenStream {
    const PRIMITIVES: [&str; 7] = ["bool", "i32", "i64", "u32", "u64", "f32", "f64"];
    let path = if rust_type == "()"
        || PRIMITIVES.contains(&rust_type)
        || rust_type.starts_with("::")
        || rust_type.starts_with("crate::")
    {
        rust_type.to_owned()
    } else {
        format!("super::{rust_type}")
    };
    match syn::parse_str::<syn::Type>(&path) {
        Ok(ty) => quote!(#ty),
        Err(e) => panic!("rpc-codegen: prost-build gave an unusable type path `{rust_type}`: {e}"),
    }
}

/// `UserService` -> `user_service`, `HTTPProxy` -> `http_proxy`.
fn snake_case(camel: &str) -> String {
    let chars: Vec<char> = camel.chars().collect();
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1);
            let word_starts = prev.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit())
                || (prev.is_some_and(char::is_uppercase) && next.is_some_and(|n| n.is_lowercase()));
            if word_starts {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The leading and trailing comments of a `.proto` item as rustdoc lines.
///
/// Each line is made safe for rustdoc the way prost-build treats message
/// docs: bare URLs become `<autolinks>` and brackets are escaped, so `[0, n)`
/// is not read as an intra-doc link.
fn doc_lines(comments: &Comments) -> Vec<String> {
    let mut lines: Vec<String> = comments.leading.iter().map(|l| sanitize(l)).collect();
    if !lines.is_empty() && !comments.trailing.is_empty() {
        lines.push(String::new());
    }
    lines.extend(comments.trailing.iter().map(|l| sanitize(l)));
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    lines
}

fn sanitize(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 8);
    let mut rest = line;
    // Inside `code spans` brackets are literal already.
    let mut in_code = false;
    while !rest.is_empty() {
        let url_at = ["https://", "http://"].iter().filter_map(|p| rest.find(p)).min();
        let (text, url) = match url_at {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        for c in text.chars() {
            if c == '`' {
                in_code = !in_code;
            }
            if (c == '[' || c == ']') && !in_code {
                out.push('\\');
            }
            out.push(c);
        }
        let end = url.find(|c: char| c.is_whitespace() || c == ')' || c == '>').unwrap_or(url.len());
        if end > 0 {
            out.push('<');
            out.push_str(&url[..end]);
            out.push('>');
        }
        rest = &url[end..];
    }
    // `/// text`: rustdoc lines read best with one space after the slashes.
    if !out.is_empty() && !out.starts_with(' ') {
        out.insert(0, ' ');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_splits_words_and_acronyms() {
        assert_eq!(snake_case("Echo"), "echo");
        assert_eq!(snake_case("UserService"), "user_service");
        assert_eq!(snake_case("HTTPProxy"), "http_proxy");
        assert_eq!(snake_case("V2Api"), "v2_api");
    }

    #[test]
    fn docs_escape_brackets_and_link_urls() {
        assert_eq!(sanitize(" Returns [0, n) items."), r" Returns \[0, n) items.");
        assert_eq!(sanitize(" Like `v[0]`, not [v]."), r" Like `v[0]`, not \[v\].");
        assert_eq!(sanitize("See https://x.dev/a."), " See <https://x.dev/a.>");
        assert_eq!(sanitize(" (see http://a.b)"), " (see <http://a.b>)");
    }

    #[test]
    fn type_paths_are_seen_from_the_service_module() {
        assert_eq!(type_path("EchoRequest").to_string(), "super :: EchoRequest");
        assert_eq!(type_path("super::common::Id").to_string(), "super :: super :: common :: Id");
        assert_eq!(type_path("::prost_types::Timestamp").to_string(), ":: prost_types :: Timestamp");
        assert_eq!(type_path("()").to_string(), "()");
        assert_eq!(type_path("i64").to_string(), "i64");
        assert_eq!(type_path("bool").to_string(), "bool");
    }
}
