#!/usr/bin/env bash
# Checks that rpc-core and rpc-codegen work as published crates: packages both
# (cargo package, with its verify build), then builds the README's `hello`
# crate ("Using rpc-core in your project") outside the workspace against the
# packaged crates, offline, and runs its server and client once against the
# ZooKeeper in CHATROOM_ZK's default place, 127.0.0.1:2181 (the README's
# address; `bash scripts/services.sh up` starts it).
#
#   bash scripts/packaged.sh
#
# The hello crate is written to a temporary directory from the README's code
# blocks, each named by the `path` that starts the paragraph before it. It
# depends by path on the unpacked packages in target/package/, starts from the
# workspace's Cargo.lock so that it resolves the versions already downloaded,
# and builds into the workspace's target directory so that it reuses the
# dependencies the workspace built (its binaries, server and client, are
# named like none of the workspace's).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

# --allow-dirty: what is checked is the working tree, committed or not.
cargo package --offline --allow-dirty -p rpc-core -p rpc-codegen
version=$(cargo pkgid --offline -p rpc-core | sed 's/.*[#@]//')
core="$root/target/package/rpc-core-$version"
codegen="$root/target/package/rpc-codegen-$(cargo pkgid --offline -p rpc-codegen | sed 's/.*[#@]//')"

hello=$(mktemp -d "${TMPDIR:-/tmp}/hello.XXXXXX")
server_pid=
cleanup() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$hello"
}
trap cleanup EXIT

# Writes each fenced block of the README's section to the relative path named
# in backticks at the start of the paragraph just before it, and lists the
# paths written.
awk -v dir="$hello" '
    /^## / { inside = ($0 == "## Using rpc-core in your project"); blank = 1; next }
    /^### / { inside = 0; next }
    !inside { next }
    fence && /^```/ { fence = 0; if (file != "") close(file); file = ""; blank = 1; next }
    fence { if (file != "") print > file; next }
    /^```/ {
        fence = 1
        if (name != "") {
            file = dir "/" name
            system("mkdir -p \"$(dirname \"" file "\")\"")
            printf "" > file
            print name
        }
        name = ""
        next
    }
    /^$/ { blank = 1; next }
    blank {
        blank = 0
        name = ""
        if (match($0, /^`[A-Za-z][A-Za-z0-9_.\/-]*`/)) name = substr($0, 2, RLENGTH - 2)
    }
' README.md >"$hello/files"

for file in Cargo.toml build.rs src/lib.rs src/bin/server.rs src/bin/client.rs src/bin/direct.rs; do
    grep -qx "$file" "$hello/files" || {
        echo "README.md, \"Using rpc-core in your project\": no code block for $file" >&2
        exit 1
    }
done
sed -i -e "s|/path/to/chatroom/rpc-core\"|$core\"|" -e "s|/path/to/chatroom/rpc-codegen\"|$codegen\"|" \
    "$hello/Cargo.toml"
if grep -q /path/to/ "$hello/Cargo.toml"; then
    echo "README.md: the hello Cargo.toml names a path this script does not replace" >&2
    exit 1
fi
cp Cargo.lock "$hello/Cargo.lock"

export CARGO_TARGET_DIR="$root/target"
cargo build --offline --manifest-path "$hello/Cargo.toml" --bins

# The server prints its address once it is registered; the client then finds
# it through ZooKeeper and must print the greeting, and `direct` dials the
# address and must get 201 answers (blocking, callbacks, futures). On SIGTERM
# the server must deregister and exit, after which the client must fail at
# once with NoInstances, as the README says. Both dial 127.0.0.1:2181,
# as the README says: with the tests' ZooKeeper elsewhere there is none to use.
if [[ ${CHATROOM_ZK:-127.0.0.1:2181} != 127.0.0.1:2181 ]]; then
    echo "CHATROOM_ZK is $CHATROOM_ZK, not the README's 127.0.0.1:2181: hello built, not run"
    exit 0
fi
"$CARGO_TARGET_DIR/debug/server" >"$hello/server.out" &
server_pid=$!
for _ in $(seq 100); do
    grep -q '^serving' "$hello/server.out" && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
grep '^serving' "$hello/server.out" || {
    echo "the hello server did not start" >&2
    exit 1
}
reply=$(timeout 30 "$CARGO_TARGET_DIR/debug/client")
echo "$reply"
[[ $reply == "hello, world" ]] || {
    echo "the hello client printed '$reply', not 'hello, world'" >&2
    exit 1
}

addr=$(sed -n 's/^serving hello.Echo on //p' "$hello/server.out")
direct=$(timeout 30 "$CARGO_TARGET_DIR/debug/direct" "$addr")
echo "$direct"
[[ $direct == $'hello, caller 0\n100 answered by callbacks, 100 by futures' ]] || {
    echo "direct printed '$direct', not the README's two lines" >&2
    exit 1
}

kill -TERM "$server_pid"
for _ in $(seq 100); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$server_pid" 2>/dev/null; then
    echo "the hello server did not stop within 10 s of SIGTERM" >&2
    exit 1
fi
wait "$server_pid" || {
    echo "the hello server exited with status $? on SIGTERM" >&2
    exit 1
}
server_pid=
grep -x 'deregistered and stopped' "$hello/server.out" || {
    echo "the hello server did not say it deregistered" >&2
    exit 1
}
if gone=$(timeout 30 "$CARGO_TARGET_DIR/debug/client" 2>&1); then
    echo "the hello client succeeded with no server left: '$gone'" >&2
    exit 1
fi
echo "$gone"
[[ $gone == *NoInstances* ]] || {
    echo "with no server left the hello client said '$gone', not NoInstances" >&2
    exit 1
}
