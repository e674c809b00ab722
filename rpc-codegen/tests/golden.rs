//! Pins the generated code: compiles `tests/fixtures/*.proto` into a temporary
//! directory and compares every file with `tests/golden/`.
//!
//! After an intended change to the output, rewrite the golden files with
//! `UPDATE_GOLDEN=1 cargo test -p rpc-codegen --test golden` and review the diff.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory under Cargo's per-target temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rpc-codegen").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every file in `dir` with extension `ext`, by file name.
fn files(dir: &Path, ext: &str) -> BTreeMap<String, PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect()
}

#[test]
fn generated_code_matches_the_golden_files() {
    let fixtures = manifest_dir().join("tests/fixtures");
    let golden = manifest_dir().join("tests/golden");
    let out = scratch("golden");
    let protos: Vec<PathBuf> = files(&fixtures, "proto").into_values().collect();
    rpc_codegen::Builder::new()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .inline("echo.Echo/Stats")
        .heavy("fixtures.store.KVStore/Put")
        .lane("fixtures.store.KVStore/Type", "scans")
        .compile(&protos, &[&fixtures])
        .unwrap();
    let generated = files(&out, "rs");
    assert!(generated.contains_key("echo.rs"), "no echo.rs among {:?}", generated.keys());

    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        for (name, path) in files(&golden, "rs") {
            if !generated.contains_key(&name) {
                fs::remove_file(path).unwrap();
            }
        }
        for (name, path) in &generated {
            fs::copy(path, golden.join(name)).unwrap();
        }
        return;
    }

    let expected = files(&golden, "rs");
    assert_eq!(
        generated.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "generated files differ from tests/golden; rerun with UPDATE_GOLDEN=1 if intended"
    );
    for (name, path) in &generated {
        let got = fs::read_to_string(path).unwrap();
        let want = fs::read_to_string(&expected[name]).unwrap();
        if let Some(diff) = first_difference(&want, &got) {
            panic!(
                "generated {name} differs from tests/golden/{name}:\n{diff}\n\
                 rerun with UPDATE_GOLDEN=1 if the change is intended"
            );
        }
    }
}

/// The first differing line of two texts, with a little context.
fn first_difference(want: &str, got: &str) -> Option<String> {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let at = (0..w.len().max(g.len())).find(|&i| w.get(i) != g.get(i))?;
    let from = at.saturating_sub(3);
    let show = |lines: &[&str]| -> String {
        let shown = lines.iter().enumerate().skip(from).take(at - from + 4);
        shown.map(|(i, l)| format!("{:5} | {l}\n", i + 1)).collect()
    };
    Some(format!("golden (line {}):\n{}generated:\n{}", at + 1, show(&w), show(&g)))
}

/// Writes `source` as `<name>` in a fresh directory and compiles it.
fn compile_one(name: &str, source: &str) -> io::Result<PathBuf> {
    compile_one_with(name, source, rpc_codegen::Builder::new())
}

/// Like `compile_one`, with `builder`'s declarations.
fn compile_one_with(name: &str, source: &str, builder: rpc_codegen::Builder) -> io::Result<PathBuf> {
    let dir = scratch(name);
    fs::write(dir.join(name), source).unwrap();
    let out = dir.join("out");
    fs::create_dir_all(&out).unwrap();
    builder.out_dir(&out).emit_rerun_if_changed(false).compile(&[name], &[&dir])?;
    Ok(out)
}

const ROOM: &str = r#"
syntax = "proto3";
package chat;
message Msg { string text = 1; }
service Room {
  rpc Send(Msg) returns (Msg);
  rpc Count(Msg) returns (Msg);
}
"#;

#[test]
fn a_method_declared_inline_or_heavy_must_exist() {
    let typo = rpc_codegen::Builder::new().inline("chat.Room/Cuont");
    let message = compile_one_with("typo.proto", ROOM, typo).unwrap_err().to_string();
    assert!(message.contains("`chat.Room/Cuont` is declared inline"), "{message}");
    assert!(message.contains("it has Send, Count"), "{message}");

    let no_service = rpc_codegen::Builder::new().heavy("Room/Send");
    let err = compile_one_with("no_service.proto", ROOM, no_service).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let message = err.to_string();
    assert!(message.contains("`Room/Send` is declared heavy"), "{message}");
    assert!(message.contains("the services are chat.Room"), "{message}");

    let both = rpc_codegen::Builder::new().inline("chat.Room/Count").heavy("chat.Room/Count");
    let message = compile_one_with("both.proto", ROOM, both).unwrap_err().to_string();
    assert!(message.contains("`chat.Room/Count` is declared both inline and heavy"), "{message}");

    let right = rpc_codegen::Builder::new().inline("chat.Room/Count").heavy("chat.Room/Send");
    let out = compile_one_with("right.proto", ROOM, right).unwrap();
    let code = fs::read_to_string(out.join("chat.rs")).unwrap();
    assert!(code.contains("matches!(method, methods::COUNT)"), "{code}");
    assert!(code.contains(r#"LANES: &[(&str, &str)] = &[(methods::SEND, "heavy")]"#), "{code}");
}

#[test]
fn a_method_is_declared_in_a_lane_by_name_and_in_one_place_only() {
    let lanes = rpc_codegen::Builder::new().lane("chat.Room/Send", "sends").heavy("chat.Room/Count");
    let out = compile_one_with("lanes.proto", ROOM, lanes).unwrap();
    let code = fs::read_to_string(out.join("chat.rs")).unwrap();
    let declared = |pair: &str| code.find(pair).unwrap_or_else(|| panic!("no {pair} in {code}"));
    assert!(code.contains("pub const LANES: &[(&str, &str)] = &["), "{code}");
    assert!(declared(r#"(methods::SEND, "sends"),"#) < declared(r#"(methods::COUNT, "heavy"),"#), "{code}");
    assert!(code.contains("Runs in the server's lane `sends`"), "{code}");

    for (builder, both) in [
        (
            rpc_codegen::Builder::new().lane("chat.Room/Send", "sends").lane("chat.Room/Send", "bulk"),
            r#"both in the lane "sends" and in the lane "bulk""#,
        ),
        (
            rpc_codegen::Builder::new().heavy("chat.Room/Send").lane("chat.Room/Send", "sends"),
            "both heavy and in",
        ),
        (rpc_codegen::Builder::new().lane("chat.Room/Send", "sends").inline("chat.Room/Send"), "and inline"),
    ] {
        let err = compile_one_with("twice.proto", ROOM, builder).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let message = err.to_string();
        assert!(message.contains("`chat.Room/Send` is declared ") && message.contains(both), "{message}");
    }
    // Declaring the same thing twice is one declaration.
    let again = rpc_codegen::Builder::new().lane("chat.Room/Send", "sends").lane("chat.Room/Send", "sends");
    compile_one_with("again.proto", ROOM, again).unwrap();

    let typo = rpc_codegen::Builder::new().lane("chat.Room/Sned", "sends");
    let message = compile_one_with("lane_typo.proto", ROOM, typo).unwrap_err().to_string();
    assert!(
        message.contains(r#"`chat.Room/Sned` is declared in the lane "sends", but chat.Room"#),
        "{message}"
    );

    let unnamed = rpc_codegen::Builder::new().lane("chat.Room/Send", "two words");
    let message = compile_one_with("lane_name.proto", ROOM, unnamed).unwrap_err().to_string();
    assert!(message.contains("a lane's name is letters, digits"), "{message}");
}

const STREAMING: &str = r#"
syntax = "proto3";
package chat;
message Msg { string text = 1; }
service Room {
  rpc Send(Msg) returns (Msg);
  rpc Listen(Msg) returns (stream Msg);
}
"#;

#[test]
fn a_streaming_rpc_fails_the_build_with_an_error_naming_it() {
    let err = compile_one("streaming.proto", STREAMING).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let message = err.to_string();
    assert!(message.contains("chat.Room/Listen is server-streaming"), "{message}");
    assert!(message.contains("rpc Listen(chat.Msg) returns (chat.Msg)"), "{message}");
}

#[test]
fn the_bare_service_generator_panics_on_a_streaming_rpc() {
    let dir = scratch("bare-generator");
    fs::write(
        dir.join("client_streaming.proto"),
        STREAMING
            .replace("package chat;", "package up;")
            .replace("rpc Listen(Msg) returns (stream Msg)", "rpc Upload(stream Msg) returns (Msg)"),
    )
    .unwrap();
    let fds = protox::compile(["client_streaming.proto"], [&dir]).unwrap();
    let panic = std::panic::catch_unwind(|| {
        let mut config = rpc_codegen::prost_build::Config::new();
        config.out_dir(&dir).service_generator(rpc_codegen::service_generator());
        config.compile_fds(fds)
    })
    .unwrap_err();
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("up.Room/Upload is client-streaming"), "{message}");
}

#[test]
fn a_syntax_error_names_the_file() {
    let err = compile_one("broken.proto", "syntax = \"proto3\";\nmessage {").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("broken.proto"), "{err}");
}

#[test]
fn a_missing_import_is_reported() {
    let err = compile_one("lonely.proto", "syntax = \"proto3\";\nimport \"nowhere.proto\";\n").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("nowhere.proto"), "{err}");
}

#[test]
fn an_rpc_named_like_a_generated_method_fails_the_build() {
    let source = "syntax = \"proto3\";\npackage clash;\nmessage M {}\n\
                  service Clock { rpc Now(M) returns (M); rpc Timeout(M) returns (M); }\n";
    let panic = std::panic::catch_unwind(|| compile_one("clash.proto", source)).unwrap_err();
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("clash.Clock/Timeout would need a Rust method `timeout`"), "{message}");
}

#[test]
fn two_rpcs_with_one_rust_name_fail_the_build() {
    let source = "syntax = \"proto3\";\npackage twins;\nmessage M {}\n\
                  service S { rpc Say(M) returns (M); rpc SayWith(M) returns (M); }\n";
    let panic = std::panic::catch_unwind(|| compile_one("twins.proto", source)).unwrap_err();
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("twins.S/Say and twins.S/SayWith both need a Rust method `say_with`"),
        "{message}"
    );
}

#[test]
fn a_service_named_like_an_imported_item_fails_the_build() {
    let source =
        "syntax = \"proto3\";\npackage meta;\nmessage M {}\nservice Status { rpc Get(M) returns (M); }\n";
    let panic = std::panic::catch_unwind(|| compile_one("meta.proto", source)).unwrap_err();
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("service meta.Status would be the Rust trait `Status`"), "{message}");
    // A prelude name the generated module uses is refused the same way.
    let source = source.replace("Status", "Result");
    let panic = std::panic::catch_unwind(|| compile_one("meta.proto", &source)).unwrap_err();
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("service meta.Result would be the Rust trait `Result`"), "{message}");
}
