#!/usr/bin/env bash
# The project's test command: starts ZooKeeper, MariaDB and Redis (installing
# them if missing), then runs every check and every test of the workspace:
#
#   scripts/services.sh up
#   cargo fmt --all -- --check
#   cargo clippy --workspace --all-targets -- -D warnings
#   RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
#   clippy, doc and the unit tests of rpc-core without its default features
#       (no ZooKeeper)
#   cargo test --workspace --no-fail-fast      (unit, integration and doc tests)
#   scripts/packaged.sh                        (rpc-core and rpc-codegen as
#       published crates, used by the README's hello crate outside the workspace)
#
# Stops at the first failing step and exits non-zero. Clippy and doc share
# their dependency metadata; the test build compiles code once, and the hello
# crate reuses it. No step changes RUSTFLAGS, so nothing is rebuilt between
# steps or between runs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The services the integration tests use; tests read these names and fall
# back to the same values.
export CHATROOM_ZK="${CHATROOM_ZK:-127.0.0.1:2181}"
export CHATROOM_MYSQL_URL="${CHATROOM_MYSQL_URL:-mysql://chatroom:chatroom@127.0.0.1:3306/chatroom_test}"
export CHATROOM_REDIS_URL="${CHATROOM_REDIS_URL:-redis://127.0.0.1:6379/}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

TIMES=()
START=$SECONDS

# Runs one step; records its duration; exits with its status if it fails.
step() {
    local name=$1 t0=$SECONDS rc=0
    shift
    printf '\n==> %s\n' "$name"
    "$@" || rc=$?
    TIMES+=("$(printf '%5ss  %s' $((SECONDS - t0)) "$name")")
    if ((rc != 0)); then
        print_times
        printf '\nFAILED: %s (exit %d)\n' "$name" "$rc" >&2
        exit "$rc"
    fi
}

print_times() {
    printf '\n==> time per step\n'
    printf '%s\n' "${TIMES[@]}"
    printf '%5ss  total\n' $((SECONDS - START))
}

# Prints one line per test binary ("test result: ..." with the binary it came
# from) and the totals, from a cargo test log.
summarize() {
    sed 's/\x1b\[[0-9;]*m//g' "$1" | awk '
        /^ *Running / {
            # "Running tests/it/main.rs (target/debug/deps/it-0123abcd)"
            bin = $NF; gsub(/[()]/, "", bin); sub(/.*\//, "", bin); sub(/-[0-9a-f]+$/, "", bin)
            src = $0; sub(/^ *Running /, "", src); sub(/ \(.*$/, "", src)
            name = bin " " src
        }
        /^ *Doc-tests / { name = "doc-tests " $2 }
        /^test result:/ {
            n++
            printf "%-50s %s\n", name, $0
            for (i = 1; i <= NF; i++) {
                v = $(i - 1) + 0
                if ($i ~ /^passed/) passed += v
                else if ($i ~ /^failed/) failed += v
                else if ($i ~ /^ignored/) ignored += v
            }
        }
        END {
            if (n == 0) { print "no test results (did the build fail?)"; exit }
            printf "total: %d passed; %d failed; %d ignored (%d test binaries)\n", passed, failed, ignored, n
        }'
}

run_tests() {
    local log=target/test-logs/cargo-test.log rc=0
    mkdir -p "$(dirname "$log")"
    cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || rc=$?
    printf '\n==> cargo test summary (full log: %s)\n' "$log"
    summarize "$log"
    return "$rc"
}

# rpc-core builds, documents and passes its unit tests without the zookeeper
# feature. Built alone, rpc-core's dependencies get fewer features than in the
# workspace, so some (about twenty, syn among them) are compiled a second
# time, once: later runs find them built.
no_default_features() {
    cargo clippy -p rpc-core --no-default-features --all-targets -- -D warnings &&
        RUSTDOCFLAGS="-D warnings" cargo doc -p rpc-core --no-default-features --no-deps &&
        cargo test -p rpc-core --no-default-features --lib
}

ensure_component() {
    if ! cargo "$1" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null || {
            echo "cargo $1 is missing and rustup is not available to add it" >&2
            return 1
        }
        rustup component add "$2"
    fi
}

step "services up" bash scripts/services.sh up
step "rustfmt and clippy present" bash -c "$(declare -f ensure_component); ensure_component fmt rustfmt && ensure_component clippy clippy"
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
step "cargo doc" env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
step "rpc-core without default features" no_default_features
step "cargo test" run_tests
step "packaged crates" bash scripts/packaged.sh
print_times
printf '\nOK: all checks and tests passed\n'
