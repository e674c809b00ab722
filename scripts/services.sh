#!/usr/bin/env bash
# Installs (when missing), starts, stops and reports the external services that
# ChatRoom's integration tests and cluster use, all on 127.0.0.1:
#
#   ZooKeeper 127.0.0.1:2181   MariaDB 127.0.0.1:3306   Redis 127.0.0.1:6379
#   nginx + stream module      (installed and checked only: the cluster launcher
#                               starts its own nginx with a generated config)
#
# Usage:
#   scripts/services.sh [up]                    install what is missing, start, wait, print env
#   scripts/services.sh down                    stop what `up` started (by pidfile)
#   scripts/services.sh status                  one line per service
#   scripts/services.sh env                     `export CHATROOM_...` lines for eval
#   scripts/services.sh zk-private start PORT DIR   private ZooKeeper on 127.0.0.1:PORT, data in DIR
#   scripts/services.sh zk-private stop DIR         stop exactly that private ZooKeeper
#
# Services are started as plain background processes (no systemd needed) in
# their own session, with their output in log files, and only processes whose
# pid this script recorded are ever stopped. A service that already answers on
# its port but was not started here is used as it is and never stopped.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

ZK_PORT=2181
MYSQL_PORT=3306
REDIS_PORT=6379
# How long to wait for a service to answer before giving up, in seconds.
TIMEOUT="${CHATROOM_SERVICES_TIMEOUT:-60}"
NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
MYSQL_DATADIR=/var/lib/mysql

if [[ $EUID -eq 0 ]]; then
    STATE_DIR="${CHATROOM_SERVICES_DIR:-/var/lib/chatroom-services}"
else
    STATE_DIR="${CHATROOM_SERVICES_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/chatroom-services}"
fi

ENV_ZK="127.0.0.1:$ZK_PORT"
ENV_MYSQL_URL="mysql://chatroom:chatroom@127.0.0.1:$MYSQL_PORT/chatroom_test"
ENV_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"

say() { printf 'services: %s\n' "$*" >&2; }
die() {
    printf 'services: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------
# Processes and pidfiles

# Prints the pid recorded in PIDFILE if that process is alive (not a zombie)
# and its command line contains MATCH, so a recycled pid is never mistaken
# for ours. Fails otherwise.
live_pid() {
    local pidfile=$1 match=$2 pid state
    [[ -r $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$match" || return 1
    echo "$pid"
}

# Starts COMMAND... in the background in its own session, output appended to
# LOG, and writes its pid to PIDFILE. The pid is written by the very process
# that then execs COMMAND, so it is exact. File descriptor 9 (our lock) is
# closed so a long-lived daemon never holds it.
launch() {
    local pidfile=$1 log=$2
    shift 2
    rm -f "$pidfile"
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
        </dev/null >>"$log" 2>&1 9>&- &
    # Wait for the pidfile so callers can watch the process at once.
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $pidfile ]] && return 0
        sleep 0.05
    done
    die "could not start $1 (no pidfile $pidfile)"
}

# Sends SIGTERM to the pid in PIDFILE (if it is still ours), waits up to 30 s
# for it to exit, then SIGKILLs it. Removes the pidfile.
stop_pid() {
    local name=$1 pidfile=$2 match=$3 pid i
    if ! pid=$(live_pid "$pidfile" "$match"); then
        rm -f "$pidfile"
        return 1
    fi
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        live_pid "$pidfile" "$match" >/dev/null || break
        sleep 0.1
    done
    if live_pid "$pidfile" "$match" >/dev/null; then
        say "$name (pid $pid) did not exit after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            live_pid "$pidfile" "$match" >/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$pidfile"
}

# Polls CHECK... every 0.2 s until it succeeds or TIMEOUT seconds pass. While
# waiting, also fails early if the process in PIDFILE (when given) has died.
# Arguments: NAME LOG PIDFILE MATCH CHECK...
wait_for() {
    local name=$1 log=$2 pidfile=$3 match=$4
    shift 4
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if [[ -n $pidfile ]] && ! live_pid "$pidfile" "$match" >/dev/null; then
            [[ -n $log && -r $log ]] && tail -n 20 "$log" >&2
            die "$name exited during startup (log: ${log:-none})"
        fi
        if ((SECONDS >= deadline)); then
            [[ -n $log && -r $log ]] && tail -n 20 "$log" >&2
            die "$name did not answer within ${TIMEOUT}s (log: ${log:-none})"
        fi
        sleep 0.2
    done
}

# True if something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

# Holds an exclusive lock on FILE (fd 9) until this script exits, so two
# concurrent runs (for example two `scripts/test.sh`) do not race.
take_lock() {
    mkdir -p "$(dirname "$1")"
    exec 9>"$1"
    flock -w 300 9 || die "timed out waiting for lock $1"
}

# ---------------------------------------------------------------------------
# Packages

have_zookeeper_jars() {
    [[ -f /usr/share/java/zookeeper.jar ]] || compgen -G '/usr/share/zookeeper/lib/zookeeper-*.jar' >/dev/null
}

# Installs, with apt-get, only the packages whose programs or files are
# missing. Services are not started by the packages: a policy-rc.d that denies
# starts is put in place for the install when there is none.
ensure_packages() {
    local need=()
    have_zookeeper_jars || need+=(zookeeper)
    command -v java >/dev/null || need+=(default-jre-headless)
    command -v mariadbd >/dev/null || command -v mysqld >/dev/null || need+=(mariadb-server)
    command -v mysqladmin >/dev/null || need+=(mariadb-client)
    command -v redis-server >/dev/null || need+=(redis-server)
    command -v redis-cli >/dev/null || need+=(redis-tools)
    command -v nginx >/dev/null || need+=(nginx)
    [[ -f $NGINX_STREAM_MODULE ]] || nginx_has_static_stream || need+=(libnginx-mod-stream)
    # The `kill` program, which the fault tests run to SIGKILL a service.
    [[ -x /bin/kill || -x /usr/bin/kill ]] || need+=(procps)
    ((${#need[@]} == 0)) && return 0

    [[ $EUID -eq 0 ]] || die "missing packages: ${need[*]}; run as root or install them with apt-get"
    command -v apt-get >/dev/null || die "missing packages: ${need[*]}; apt-get not found"
    say "installing: ${need[*]}"
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# Temporary, from scripts/services.sh: do not start services on install.\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
    if ((added_policy)); then
        rm -f "$policy"
        trap - EXIT
    fi
}

nginx_has_static_stream() {
    command -v nginx >/dev/null && nginx -V 2>&1 | grep -qE -- '--with-stream( |$)'
}

# ---------------------------------------------------------------------------
# ZooKeeper (shared instance and private instances use the same code)

zk_classpath() {
    local cp
    if [[ -f /usr/share/java/zookeeper.jar ]]; then
        # Debian's jar names its dependencies in its manifest Class-Path.
        cp=/usr/share/java/zookeeper.jar
    else
        cp=$(printf '%s:' /usr/share/zookeeper/lib/*.jar /usr/share/zookeeper/*.jar)
        cp=${cp%:}
    fi
    # A logging binding, so the server log is not silently discarded.
    [[ -f /usr/share/java/slf4j-simple.jar ]] && cp="$cp:/usr/share/java/slf4j-simple.jar"
    echo "$cp"
}

# Sends a four-letter word to 127.0.0.1:PORT and prints the answer.
zk_4lw() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1; printf %s "$1" >&3; cat <&3' \
        "$1" "$2" 2>/dev/null
}

# True if the ZooKeeper on 127.0.0.1:PORT is up and serving requests.
zk_serving() {
    zk_4lw "$1" srvr | grep -q '^Mode: '
}

# Starts a standalone ZooKeeper on 127.0.0.1:PORT with its config, data, log
# and pidfile in DIR, and waits until it serves. Does nothing if the one
# recorded in DIR is already running. Restarting with the same DIR keeps the
# data, so sessions can survive a quick restart.
zk_start() {
    local name=$1 port=$2 dir=$3
    mkdir -p "$dir/data"
    dir=$(cd "$dir" && pwd)
    local cfg=$dir/zoo.cfg pidfile=$dir/zookeeper.pid log=$dir/zookeeper.log pid
    if pid=$(live_pid "$pidfile" "$cfg"); then
        wait_for "$name" "$log" "$pidfile" "$cfg" zk_serving "$port"
        say "$name already running on 127.0.0.1:$port (pid $pid)"
        return 0
    fi
    if port_open "$port"; then
        die "$name: 127.0.0.1:$port is already in use by a process not recorded in $pidfile"
    fi
    # tickTime 1 s lets clients ask for sessions as short as 1 s (tests of
    # session expiry); forceSync=no skips fsync, which tests do not need and
    # which is slow on virtual disks (data still reaches the files, so it
    # survives a process restart).
    cat >"$cfg" <<EOF
# Written by scripts/services.sh on every start; edits are lost.
tickTime=1000
minSessionTimeout=1000
maxSessionTimeout=60000
initLimit=10
syncLimit=5
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=*
forceSync=no
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
EOF
    say "starting $name on 127.0.0.1:$port (data in $dir)"
    # C1-only JIT and the serial collector make the JVM start fast and keep
    # it light on small machines; ZooKeeper's load here is tiny.
    launch "$pidfile" "$log" java \
        -Xms32m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
        -Djava.net.preferIPv4Stack=true \
        -Dzookeeper.log.dir="$dir" \
        -Dzookeeper.admin.enableServer=false \
        -Dzookeeper.4lw.commands.whitelist='*' \
        -Dzookeeper.forceSync=no \
        -Dorg.slf4j.simpleLogger.showDateTime=true \
        -Dorg.slf4j.simpleLogger.dateTimeFormat="yyyy-MM-dd HH:mm:ss.SSS" \
        -cp "$(zk_classpath)" \
        org.apache.zookeeper.server.quorum.QuorumPeerMain "$cfg"
    wait_for "$name" "$log" "$pidfile" "$cfg" zk_serving "$port"
    say "$name up on 127.0.0.1:$port (pid $(<"$pidfile"))"
}

zk_stop() {
    local name=$1 dir=$2
    [[ -d $dir ]] || {
        say "$name: no directory $dir, nothing to stop"
        return 0
    }
    dir=$(cd "$dir" && pwd)
    stop_pid "$name" "$dir/zookeeper.pid" "$dir/zoo.cfg" || say "$name in $dir is not running"
}

# ---------------------------------------------------------------------------
# MariaDB

mysql_alive() {
    mysqladmin --protocol=tcp -h127.0.0.1 -P"$MYSQL_PORT" --connect-timeout=2 \
        -uchatroom -pchatroom ping
}

mysql_chatroom_ok() {
    mariadb_client --protocol=tcp -h127.0.0.1 -P"$MYSQL_PORT" --connect-timeout=2 \
        -uchatroom -pchatroom chatroom_test -e 'SELECT 1'
}

mariadb_client() {
    if command -v mariadb >/dev/null; then mariadb "$@"; else mysql "$@"; fi
}

mysql_start() {
    local pidfile=$STATE_DIR/mariadb.pid log=$STATE_DIR/mariadb.log pid server
    if pid=$(live_pid "$pidfile" "$MYSQL_DATADIR"); then
        wait_for mariadb "$log" "$pidfile" "$MYSQL_DATADIR" mysql_alive
        say "mariadb already running on 127.0.0.1:$MYSQL_PORT (pid $pid)"
    elif port_open "$MYSQL_PORT"; then
        wait_for mariadb "" "" "" mysql_alive
        say "mariadb: using the server already listening on 127.0.0.1:$MYSQL_PORT (not started here)"
    else
        [[ $EUID -eq 0 ]] || die "mariadb is not running and only root can start it here"
        server=$(command -v mariadbd || command -v mysqld)
        if [[ ! -d $MYSQL_DATADIR/mysql ]]; then
            say "initialising $MYSQL_DATADIR"
            mkdir -p "$MYSQL_DATADIR"
            chown mysql:mysql "$MYSQL_DATADIR"
            if command -v mariadb-install-db >/dev/null; then
                mariadb-install-db --user=mysql --datadir="$MYSQL_DATADIR" >>"$log" 2>&1
            else
                mysql_install_db --user=mysql --datadir="$MYSQL_DATADIR" >>"$log" 2>&1
            fi
        fi
        install -d -o mysql -g root -m 755 /run/mysqld
        say "starting mariadb on 127.0.0.1:$MYSQL_PORT"
        launch "$pidfile" "$log" "$server" \
            --user=mysql --datadir="$MYSQL_DATADIR" \
            --bind-address=127.0.0.1 --port="$MYSQL_PORT" \
            --max-connections=500
        wait_for mariadb "$log" "$pidfile" "$MYSQL_DATADIR" mysql_alive
        say "mariadb up on 127.0.0.1:$MYSQL_PORT (pid $(<"$pidfile"))"
    fi
    mysql_setup_user
}

# Creates the databases and the `chatroom` user (idempotent). Root reaches the
# server only through the unix socket (unix_socket authentication).
mysql_setup_user() {
    local sql
    sql="
CREATE DATABASE IF NOT EXISTS chatroom CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS chatroom_test CHARACTER SET utf8mb4;"
    local host
    for host in 127.0.0.1 localhost; do
        sql+="
CREATE USER IF NOT EXISTS 'chatroom'@'$host' IDENTIFIED BY 'chatroom';
ALTER USER 'chatroom'@'$host' IDENTIFIED BY 'chatroom';
GRANT ALL PRIVILEGES ON \`chatroom\`.* TO 'chatroom'@'$host';
GRANT ALL PRIVILEGES ON \`chatroom\\_%\`.* TO 'chatroom'@'$host';"
    done
    if ! mariadb_client --protocol=socket -uroot -e "$sql" 2>/dev/null; then
        mysql_chatroom_ok >/dev/null 2>&1 && return 0
        die "mariadb: cannot log in as root over the unix socket to create user 'chatroom'; run as root, or create it yourself:
$sql"
    fi
    mysql_chatroom_ok >/dev/null 2>&1 ||
        die "mariadb: user chatroom cannot log in over TCP to chatroom_test"
}

mysql_stop() {
    stop_pid mariadb "$STATE_DIR/mariadb.pid" "$MYSQL_DATADIR"
}

# ---------------------------------------------------------------------------
# Redis

redis_alive() {
    [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
}

redis_start() {
    local dir=$STATE_DIR/redis pidfile=$STATE_DIR/redis.pid log=$STATE_DIR/redis.log pid
    local match="127.0.0.1:$REDIS_PORT"
    if pid=$(live_pid "$pidfile" "$match"); then
        wait_for redis "$log" "$pidfile" "$match" redis_alive
        say "redis already running on $match (pid $pid)"
        return 0
    fi
    if port_open "$REDIS_PORT"; then
        wait_for redis "" "" "" redis_alive
        say "redis: using the server already listening on $match (not started here)"
        return 0
    fi
    mkdir -p "$dir"
    say "starting redis on $match"
    launch "$pidfile" "$log" redis-server \
        --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
        --daemonize no --dir "$dir" --logfile ""
    wait_for redis "$log" "$pidfile" "$match" redis_alive
    say "redis up on $match (pid $(<"$pidfile"))"
}

redis_stop() {
    stop_pid redis "$STATE_DIR/redis.pid" "127.0.0.1:$REDIS_PORT"
}

# ---------------------------------------------------------------------------
# nginx: installed and checked, never started here.

# Prints the stream module's path (or "built in") after checking that nginx
# accepts a config that loads it and defines a stream server.
nginx_check() {
    local tmp load=""
    command -v nginx >/dev/null || die "nginx is not installed"
    if [[ -f $NGINX_STREAM_MODULE ]]; then
        load="load_module $NGINX_STREAM_MODULE;"
    elif ! nginx_has_static_stream; then
        die "nginx has no stream module (expected $NGINX_STREAM_MODULE)"
    fi
    tmp=$(mktemp -d)
    cat >"$tmp/nginx.conf" <<EOF
$load
pid $tmp/nginx.pid;
error_log stderr;
events {}
stream { server { listen 127.0.0.1:1; proxy_pass 127.0.0.1:2; } }
EOF
    if ! nginx -q -t -p "$tmp" -c "$tmp/nginx.conf" -e stderr >"$tmp/out" 2>&1; then
        cat "$tmp/out" >&2
        rm -rf "$tmp"
        die "nginx rejects a config using the stream module"
    fi
    rm -rf "$tmp"
    if [[ -n $load ]]; then echo "$NGINX_STREAM_MODULE"; else echo "built in"; fi
}

# ---------------------------------------------------------------------------
# Commands

print_env_line() {
    echo "CHATROOM_ZK=$ENV_ZK CHATROOM_MYSQL_URL=$ENV_MYSQL_URL CHATROOM_REDIS_URL=$ENV_REDIS_URL"
}

cmd_up() {
    take_lock "$STATE_DIR/lock"
    ensure_packages
    zk_start zookeeper "$ZK_PORT" "$STATE_DIR/zookeeper"
    mysql_start
    redis_start
    local module
    module=$(nginx_check)
    say "nginx $(nginx -v 2>&1 | sed 's/^nginx version: //'), stream module: $module (not started here)"
    print_env_line
}

cmd_down() {
    take_lock "$STATE_DIR/lock"
    redis_stop || say "redis: not started by services.sh, left alone"
    mysql_stop || say "mariadb: not started by services.sh, left alone"
    zk_stop zookeeper "$STATE_DIR/zookeeper"
}

# One line per service; exits 1 if any of ZooKeeper, MariaDB, Redis is down.
cmd_status() {
    local all=0
    status_line zookeeper "$ENV_ZK" "$STATE_DIR/zookeeper/zookeeper.pid" \
        "$STATE_DIR/zookeeper/zoo.cfg" zk_serving "$ZK_PORT" || all=1
    status_line mariadb "127.0.0.1:$MYSQL_PORT" "$STATE_DIR/mariadb.pid" \
        "$MYSQL_DATADIR" mysql_alive || all=1
    status_line redis "127.0.0.1:$REDIS_PORT" "$STATE_DIR/redis.pid" \
        "127.0.0.1:$REDIS_PORT" redis_alive || all=1
    local module
    if module=$(nginx_check 2>/dev/null); then
        printf '%-10s %-5s %-16s %s\n' nginx ready "-" "stream module $module (started by the cluster launcher)"
    else
        printf '%-10s %-5s %-16s %s\n' nginx down "-" "nginx or its stream module is missing"
    fi
    print_env_line
    return "$all"
}

status_line() {
    local name=$1 addr=$2 pidfile=$3 match=$4 pid note
    shift 4
    if "$@" >/dev/null 2>&1; then
        if pid=$(live_pid "$pidfile" "$match"); then
            note="pid $pid, started by services.sh"
        else
            note="not started by services.sh"
        fi
        printf '%-10s %-5s %-16s %s\n' "$name" up "$addr" "$note"
    else
        printf '%-10s %-5s %-16s\n' "$name" down "$addr"
        return 1
    fi
}

cmd_env() {
    echo "export CHATROOM_ZK=$ENV_ZK"
    echo "export CHATROOM_MYSQL_URL=$ENV_MYSQL_URL"
    echo "export CHATROOM_REDIS_URL=$ENV_REDIS_URL"
}

cmd_zk_private() {
    local action=${1:-}
    case $action in
    start)
        (($# == 3)) || die "usage: $0 zk-private start PORT DIR"
        [[ $2 =~ ^[0-9]+$ ]] || die "zk-private: PORT must be a number, got '$2'"
        if ! command -v java >/dev/null || ! have_zookeeper_jars; then
            die "zk-private: ZooKeeper is not installed; run '$0 up' first"
        fi
        mkdir -p "$3"
        take_lock "$3/lock"
        zk_start "private zookeeper" "$2" "$3"
        ;;
    stop)
        (($# == 2)) || die "usage: $0 zk-private stop DIR"
        [[ -d $2 ]] && take_lock "$2/lock"
        zk_stop "private zookeeper" "$2"
        ;;
    *) die "usage: $0 zk-private start PORT DIR | zk-private stop DIR" ;;
    esac
}

main() {
    local cmd=${1:-up}
    (($# > 0)) && shift
    case $cmd in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    zk-private) cmd_zk_private "$@" ;;
    -h | --help | help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" ;;
    *) die "unknown command '$cmd' (up, down, status, env, zk-private)" ;;
    esac
}

main "$@"
