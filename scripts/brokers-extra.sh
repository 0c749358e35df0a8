#!/usr/bin/env bash
# Extra test brokers beside the host's RabbitMQ 3.10 on 5672, idempotently:
#
#   ensure_rabbitmq4 / stop_rabbitmq4 / rabbitmq4ctl ARGS...
#       RabbitMQ 4.x (Debian 13 "trixie"'s package) in a debootstrap chroot,
#       AMQP 0-9-1 and AMQP 1.0 on 127.0.0.1:5682, guest/guest; exports
#       NOVARPC_RABBITMQ4_URL. Its own node (rabbit4@localhost), epmd (4371),
#       distribution port (25682) and cookie, so it never meets the 3.10 node.
#   ensure_proton_broker / stop_proton_broker
#       Qpid Proton's C++ example broker (Debian's) on 127.0.0.1:5692:
#       AMQP 1.0 only, SASL ANONYMOUS only; exports NOVARPC_PROTON_URL.
#
# Sourced by scripts/brokers.sh, or run directly:
#   scripts/brokers-extra.sh start|stop|status [rabbitmq4|proton]
#   scripts/brokers-extra.sh ctl ARGS...   (rabbitmqctl against RabbitMQ 4)
#
# Settings (environment):
#   NOVARPC_CACHE                 cache folder (default ~/.cache/novarpc)
#   NOVARPC_RMQ4_DENY_DEPRECATED  1 (default): deny the deprecated feature
#                                 transient_nonexcl_queues, as RabbitMQ 4
#                                 deployments may; 0: permit it
#   NOVARPC_RMQ4_PORT             AMQP port of RabbitMQ 4 (default 5682)
#   NOVARPC_RMQ4_TLS_PORT         its TLS port (default 5681), opened when the
#                                 test CA of scripts/brokers.sh exists
#                                 (NOVARPC_TLS_DIR); exports
#                                 NOVARPC_RABBITMQ4_TLS_PORT
#   NOVARPC_PROTON_PORT           port of the Proton broker (default 5692)
#   NOVARPC_DEBIAN_MIRROR         (default http://deb.debian.org/debian)

NOVARPC_CACHE="${NOVARPC_CACHE:-$HOME/.cache/novarpc}"

# ---------------------------------------------------------------------------
# helpers

_nrx_err() {
    echo "error: $*" >&2
}

# Whether something accepts TCP connections on 127.0.0.1:$1.
_nrx_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Whether process $1 is alive.
_nrx_alive() {
    [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null
}

_NRX_APT_UPDATED="${_NRX_APT_UPDATED:-}"

# Installs Debian packages on the host unless they are all installed already.
_nrx_apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        _nrx_err "missing Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]}) and rerun"
        return 1
    fi
    echo "installing ${missing[*]}"
    if [ -z "$_NRX_APT_UPDATED" ]; then
        apt-get update -qq || { _nrx_err "apt-get update failed; check the network and /etc/apt/sources.list"; return 1; }
        _NRX_APT_UPDATED=1
    fi
    local log
    log="$(mktemp)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -f "$log"
        _nrx_err "apt-get install ${missing[*]} failed (output above); fix that and rerun"
        return 1
    fi
    rm -f "$log"
}

# Runs "$@" holding an exclusive lock on file $1 (one build or start at a time).
_nrx_locked() {
    local lock="$1" fd rc=0
    shift
    mkdir -p "$(dirname "$lock")"
    exec {fd}>"$lock"
    if ! flock -w 1200 "$fd"; then
        exec {fd}>&-
        _nrx_err "timed out waiting for $lock (another run busy?); rerun when it is done"
        return 1
    fi
    "$@" || rc=$?
    exec {fd}>&-
    return "$rc"
}

# Unmounts every mount at or below $1, deepest first.
# The rabbitmq user and group ids ("uid:gid") of the chroot at $1 (the
# RabbitMQ 4 node's, and the cluster's when it runs from that chroot).
_nrx_chroot_user() {
    awk -F: '$1 == "rabbitmq" {print $3 ":" $4}' "$1/etc/passwd"
}

_nrx_umount_below() {
    local m
    # shellcheck disable=SC2013 # mount points have no blanks (\040 if any)
    for m in $(awk -v d="$1" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    return 0
}

# Starts "$@" in a new session (it outlives the calling script), writing its
# pid (the same through exec) to file $1.
_nrx_spawn() {
    local pidfile="$1" log="$2"
    shift 2
    rm -f "$pidfile"
    # The new session closes every inherited descriptor beyond 2 (such as a
    # lock's), else it would hold them for as long as it runs.
    # shellcheck disable=SC2016
    setsid bash -c '
        for fd in /proc/$$/fd/*; do
            fd="${fd##*/}"
            [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
        done
        echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"
    ' "$pidfile" "$@" >"$log" 2>&1 </dev/null &
    local i
    for i in $(seq 1 50); do
        [ -s "$pidfile" ] && return 0
        sleep 0.1
    done
    _nrx_err "could not start $1 (no pid file $pidfile)"
    return 1
}

# ---------------------------------------------------------------------------
# RabbitMQ 4 in a Debian trixie chroot

NOVARPC_RMQ4_ROOT="${NOVARPC_RMQ4_ROOT:-$NOVARPC_CACHE/trixie-rabbitmq}"
NOVARPC_RMQ4_PORT="${NOVARPC_RMQ4_PORT:-5682}"
NOVARPC_RMQ4_TLS_PORT="${NOVARPC_RMQ4_TLS_PORT:-5681}"
NOVARPC_RMQ4_NODE="${NOVARPC_RMQ4_NODE:-rabbit4@localhost}"
NOVARPC_RMQ4_EPMD_PORT="${NOVARPC_RMQ4_EPMD_PORT:-4371}"
NOVARPC_RMQ4_DIST_PORT="${NOVARPC_RMQ4_DIST_PORT:-25682}"
NOVARPC_DEBIAN_MIRROR="${NOVARPC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# Inside the chroot (paths relative to its root).
_RMQ4_PIDFILE=run/novarpc-rabbitmq4.pid
_RMQ4_CONSOLE=var/log/rabbitmq/novarpc-console.log

# "uid:gid" of the chroot's rabbitmq user.
_rmq4_user() {
    _nrx_chroot_user "$NOVARPC_RMQ4_ROOT"
}

# The command line that runs a program in the chroot as its rabbitmq user,
# with a clean environment that points Erlang at the chroot's own epmd.
_rmq4_prefix() {
    _RMQ4_PREFIX=(chroot --userspec="$(_rmq4_user)" "$NOVARPC_RMQ4_ROOT" /usr/bin/env -i
        PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/var/lib/rabbitmq LANG=C.UTF-8 LC_ALL=C.UTF-8
        ERL_EPMD_PORT="$NOVARPC_RMQ4_EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1
        RABBITMQ_CTL_DIST_PORT_MIN=$((NOVARPC_RMQ4_DIST_PORT + 10)))
}

_rmq4_run() {
    _rmq4_prefix
    "${_RMQ4_PREFIX[@]}" "$@"
}

# rabbitmqctl against the RabbitMQ 4 node, e.g. `rabbitmq4ctl list_queues`.
rabbitmq4ctl() {
    if [ ! -x "$NOVARPC_RMQ4_ROOT/usr/lib/rabbitmq/bin/rabbitmqctl" ]; then
        _nrx_err "no RabbitMQ 4 chroot at $NOVARPC_RMQ4_ROOT; run ensure_rabbitmq4 first"
        return 1
    fi
    _rmq4_run /usr/lib/rabbitmq/bin/rabbitmqctl -n "$NOVARPC_RMQ4_NODE" "$@"
}

# RabbitMQ's version in the chroot ("4.0.5"), from its library folder.
_rmq4_version() {
    local d
    for d in "$NOVARPC_RMQ4_ROOT"/usr/lib/rabbitmq/lib/rabbitmq_server-*; do
        [ -d "$d" ] && echo "${d##*rabbitmq_server-}" && return 0
    done
    echo unknown
}

_rmq4_pid() {
    cat "$NOVARPC_RMQ4_ROOT/$_RMQ4_PIDFILE" 2>/dev/null || true
}

# Pids of every process whose root is the chroot (the node, its epmd, ...).
_rmq4_procs() {
    local root p
    root="$(realpath "$NOVARPC_RMQ4_ROOT" 2>/dev/null)" || return 0
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && echo "${p#/proc/}"
    done
    return 0
}

# Whether process $1 runs in the chroot (a stale pid file may name another).
_rmq4_is_ours() {
    _nrx_alive "${1:-}" &&
        [ "$(readlink "/proc/$1/root" 2>/dev/null)" = "$(realpath "$NOVARPC_RMQ4_ROOT" 2>/dev/null)" ]
}

_rmq4_running() {
    _rmq4_is_ours "$(_rmq4_pid)" && _nrx_port_open "$NOVARPC_RMQ4_PORT"
}

# Builds the chroot into a temporary folder, then moves it into place: an
# interrupted build leaves no cache behind (its leftovers go at the next one).
_rmq4_build() {
    local root="$NOVARPC_RMQ4_ROOT" parent old
    parent="$(dirname "$root")"
    mkdir -p "$parent"
    for old in "$parent"/.trixie-rabbitmq.tmp.*; do
        [ -e "$old" ] || continue
        [ -d "$old" ] && _nrx_umount_below "$old"
        rm -rf --one-file-system "$old"
    done
    _nrx_apt_install debootstrap || return 1
    if [ ! -e /usr/share/debootstrap/scripts/trixie ]; then
        _nrx_err "this debootstrap does not know trixie; install a newer debootstrap (bookworm's 1.0.128 does)"
        return 1
    fi
    (
        set -euo pipefail
        tmp="$(mktemp -d "$parent/.trixie-rabbitmq.tmp.XXXXXX")"
        chmod 755 "$tmp" # the chroot's /, which its rabbitmq user must traverse
        log="$tmp.log"
        finished=
        # shellcheck disable=SC2317 # called by the trap
        cleanup() {
            _nrx_umount_below "$tmp"
            if [ -z "$finished" ]; then
                rm -rf --one-file-system "$tmp"
            fi
        }
        trap cleanup EXIT
        trap 'exit 130' INT TERM
        echo "building a Debian trixie chroot with rabbitmq-server in $root (a few minutes, once)"
        if ! debootstrap --variant=minbase trixie "$tmp" "$NOVARPC_DEBIAN_MIRROR" >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            _nrx_err "debootstrap failed (log: $log); check that $NOVARPC_DEBIAN_MIRROR is reachable and rerun"
            exit 1
        fi
        # Never let a package start a service inside the chroot: it would
        # share the host's network (5672, epmd 4369).
        printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
        chmod 755 "$tmp/usr/sbin/policy-rc.d"
        mount -t proc proc "$tmp/proc"
        if ! chroot "$tmp" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
            DEBIAN_FRONTEND=noninteractive ERL_EPMD_PORT="$NOVARPC_RMQ4_EPMD_PORT" sh -c '
                apt-get update -qq &&
                apt-get install -y -qq --no-install-recommends rabbitmq-server &&
                apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
            ' >>"$log" 2>&1; then
            tail -n 20 "$log" >&2
            _nrx_err "installing rabbitmq-server in the chroot failed (log: $log); rerun to retry"
            exit 1
        fi
        # Anything the package scripts left running there (nothing should).
        for p in /proc/[0-9]*; do
            [ "$(readlink "$p/root" 2>/dev/null)" = "$tmp" ] && kill -9 "${p#/proc/}" 2>/dev/null
        done
        umount "$tmp/proc"
        rm -rf "$tmp"/usr/share/locale/*
        # Give the chroot's rabbitmq user ids that the host does not use, so
        # its processes and files never pass for a host user's (a system uid
        # such as 101 is postgres or another daemon on the host).
        old_uid="$(awk -F: '$1 == "rabbitmq" {print $3}' "$tmp/etc/passwd")"
        old_gid="$(awk -F: '$1 == "rabbitmq" {print $4}' "$tmp/etc/passwd")"
        id=4371
        while awk -F: -v id="$id" '$3 == id {found = 1} END {exit !found}' \
            /etc/passwd /etc/group "$tmp/etc/passwd" "$tmp/etc/group"; do
            id=$((id + 1))
        done
        chroot "$tmp" groupmod -g "$id" rabbitmq
        chroot "$tmp" usermod -u "$id" -g "$id" rabbitmq
        find "$tmp" -xdev -uid "$old_uid" -exec chown -h "$id" {} +
        find "$tmp" -xdev -gid "$old_gid" -exec chgrp -h "$id" {} +
        if [ ! -s "$tmp/var/lib/rabbitmq/.erlang.cookie" ]; then
            # The chroot's own cookie, never the host's.
            head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/var/lib/rabbitmq/.erlang.cookie"
            chroot "$tmp" chown rabbitmq:rabbitmq /var/lib/rabbitmq/.erlang.cookie
            chmod 400 "$tmp/var/lib/rabbitmq/.erlang.cookie"
        fi
        mv "$tmp" "$root"
        finished=1
        rm -f "$log"
        echo "chroot ready: $root ($(du -sh "$root" | cut -f1))"
    )
}

# Writes the node's settings into the chroot; they are read at each start.
_rmq4_write_config() {
    local root="$NOVARPC_RMQ4_ROOT" permit=false name
    [ "${NOVARPC_RMQ4_DENY_DEPRECATED:-1}" = 0 ] && permit=true
    # RabbitMQ 4 looks up this machine's host name while answering every
    # AMQP 1.0 open (the default cluster name), in one process for the whole
    # node. Debootstrap's /etc/hosts does not name this machine, so the
    # lookup went to DNS and, when the resolver did not answer, every new
    # connection on the node waited 5 s for its timeout. The host name is
    # written in at each start, as the machine (and CI's) may differ from the
    # one the chroot was built on; libc rereads the file, so a running node
    # picks it up too.
    name="$(hostname 2>/dev/null || true)"
    {
        echo "# Written by novarpc's scripts/brokers-extra.sh: this machine's name resolves locally."
        printf '127.0.0.1\tlocalhost'
        for n in $(printf '%s\n' $name $(hostname -s 2>/dev/null || true) | sort -u); do
            [ "$n" != localhost ] && printf ' %s' "$n"
        done
        printf '\n::1\t\tlocalhost ip6-localhost ip6-loopback\n'
    } >"$root/etc/hosts.new" && mv "$root/etc/hosts.new" "$root/etc/hosts"
    cat >"$root/etc/rabbitmq/rabbitmq-env.conf" <<EOF
# Written by novarpc's scripts/brokers-extra.sh.
NODENAME=$NOVARPC_RMQ4_NODE
DIST_PORT=$NOVARPC_RMQ4_DIST_PORT
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CTL_DIST_PORT_MIN=$((NOVARPC_RMQ4_DIST_PORT + 10))
export ERL_EPMD_PORT=$NOVARPC_RMQ4_EPMD_PORT
export ERL_EPMD_ADDRESS=127.0.0.1
EOF
    cat >"$root/etc/rabbitmq/rabbitmq.conf.new" <<EOF
# Written by novarpc's scripts/brokers-extra.sh.
# AMQP 0-9-1 and AMQP 1.0 (built into RabbitMQ 4) share this listener.
listeners.tcp.default = 127.0.0.1:$NOVARPC_RMQ4_PORT
loopback_users = none
# NOVARPC_RMQ4_DENY_DEPRECATED=${NOVARPC_RMQ4_DENY_DEPRECATED:-1}
deprecated_features.permit.transient_nonexcl_queues = $permit
EOF
    # The host node's test certificates, for the TLS failure tests: copied
    # in, as the chroot's rabbitmq user cannot read the host's copy.
    local tls="${NOVARPC_TLS_DIR:-/etc/rabbitmq/novarpc-tls}" user
    if [ -s "$tls/ca.pem" ] && [ -s "$tls/server.pem" ] && [ -s "$tls/server.key" ]; then
        user="$(_rmq4_user)"
        install -d -m 755 "$root/etc/rabbitmq/novarpc-tls"
        install -m 644 "$tls/ca.pem" "$tls/server.pem" "$root/etc/rabbitmq/novarpc-tls/"
        install -m 640 -o "${user%%:*}" -g "${user##*:}" "$tls/server.key" "$root/etc/rabbitmq/novarpc-tls/"
        cat >>"$root/etc/rabbitmq/rabbitmq.conf.new" <<EOF
listeners.ssl.default = 127.0.0.1:$NOVARPC_RMQ4_TLS_PORT
ssl_options.cacertfile = /etc/rabbitmq/novarpc-tls/ca.pem
ssl_options.certfile = /etc/rabbitmq/novarpc-tls/server.pem
ssl_options.keyfile = /etc/rabbitmq/novarpc-tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
EOF
    fi
}

# Exports the node's URL (and TLS port, when it has a TLS listener).
_rmq4_export() {
    export NOVARPC_RABBITMQ4_URL="amqp://guest:guest@127.0.0.1:$NOVARPC_RMQ4_PORT/"
    if grep -q '^listeners.ssl.default' "$NOVARPC_RMQ4_ROOT/etc/rabbitmq/rabbitmq.conf" 2>/dev/null; then
        export NOVARPC_RABBITMQ4_TLS_PORT="$NOVARPC_RMQ4_TLS_PORT"
    fi
}

_rmq4_stop_procs() {
    local root="$NOVARPC_RMQ4_ROOT" pid i procs
    pid="$(_rmq4_pid)"
    if _rmq4_is_ours "$pid"; then
        rabbitmq4ctl -q stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 30); do
            _rmq4_is_ours "$pid" || break
            sleep 1
        done
    fi
    procs="$(_rmq4_procs)"
    if [ -n "$procs" ]; then
        # shellcheck disable=SC2086
        kill -TERM $procs 2>/dev/null || true
        for i in $(seq 1 10); do
            procs="$(_rmq4_procs)"
            [ -z "$procs" ] && break
            sleep 0.5
        done
        # shellcheck disable=SC2086
        [ -n "$procs" ] && kill -KILL $procs 2>/dev/null
    fi
    rm -f "$root/$_RMQ4_PIDFILE"
    _nrx_umount_below "$(realpath "$root")/proc"
    return 0
}

_rmq4_ensure() {
    local root="$NOVARPC_RMQ4_ROOT" pid deadline version
    if [ "$(id -u)" != 0 ]; then
        _nrx_err "RabbitMQ 4 runs in a chroot, which needs root (debootstrap, chroot, mount); rerun as root"
        return 1
    fi
    if [ ! -x "$root/usr/lib/rabbitmq/bin/rabbitmq-server" ]; then
        _rmq4_build || return 1
    fi
    version="$(_rmq4_version)"
    chmod 755 "$root" 2>/dev/null || true # its /: the rabbitmq user must get in
    _rmq4_write_config
    if _rmq4_running; then
        if cmp -s "$root/etc/rabbitmq/rabbitmq.conf.new" "$root/etc/rabbitmq/rabbitmq.conf"; then
            rm -f "$root/etc/rabbitmq/rabbitmq.conf.new"
            echo "RabbitMQ $version is already running on 127.0.0.1:$NOVARPC_RMQ4_PORT"
            _rmq4_export
            return 0
        fi
        echo "restarting RabbitMQ $version for a changed configuration"
    fi
    _rmq4_stop_procs
    mv "$root/etc/rabbitmq/rabbitmq.conf.new" "$root/etc/rabbitmq/rabbitmq.conf"
    if _nrx_port_open "$NOVARPC_RMQ4_PORT"; then
        _nrx_err "127.0.0.1:$NOVARPC_RMQ4_PORT is taken by another program; stop it or set NOVARPC_RMQ4_PORT"
        return 1
    fi
    if grep -q '^listeners.ssl.default' "$root/etc/rabbitmq/rabbitmq.conf" &&
        _nrx_port_open "$NOVARPC_RMQ4_TLS_PORT"; then
        _nrx_err "127.0.0.1:$NOVARPC_RMQ4_TLS_PORT is taken by another program; stop it or set NOVARPC_RMQ4_TLS_PORT"
        return 1
    fi
    if _nrx_port_open "$NOVARPC_RMQ4_EPMD_PORT"; then
        _nrx_err "port $NOVARPC_RMQ4_EPMD_PORT (RabbitMQ 4's own epmd) is taken by another program; stop it or set NOVARPC_RMQ4_EPMD_PORT"
        return 1
    fi
    echo "starting RabbitMQ $version (trixie chroot) on 127.0.0.1:$NOVARPC_RMQ4_PORT"
    mountpoint -q "$root/proc" || mount -t proc proc "$root/proc" || {
        _nrx_err "cannot mount /proc in $root; the chroot needs root and a mount-capable host"
        return 1
    }
    # A fresh node each start: no queues or messages left from earlier runs.
    rm -rf --one-file-system "$root/var/lib/rabbitmq/mnesia"
    install -d -o "$(_rmq4_user | cut -d: -f1)" -g "$(_rmq4_user | cut -d: -f2)" -m 750 "$root/var/lib/rabbitmq/mnesia"
    rm -f "$root"/var/log/rabbitmq/*.log
    mkdir -p "$root/run"
    _rmq4_prefix
    _nrx_spawn "$root/$_RMQ4_PIDFILE" "$root/$_RMQ4_CONSOLE" \
        "${_RMQ4_PREFIX[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server || return 1
    pid="$(_rmq4_pid)"
    deadline=$((SECONDS + 180))
    while :; do
        if ! _nrx_alive "$pid"; then
            tail -n 30 "$root/$_RMQ4_CONSOLE" >&2
            _nrx_err "RabbitMQ 4 exited at start; see $root/$_RMQ4_CONSOLE and $root/var/log/rabbitmq/"
            _rmq4_stop_procs
            return 1
        fi
        if rabbitmq4ctl -q await_startup --timeout 5 >/dev/null 2>&1; then
            break
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            _nrx_err "RabbitMQ 4 did not start in time; see $root/var/log/rabbitmq/ (stop_rabbitmq4 to clean up)"
            return 1
        fi
        sleep 1
    done
    if ! rabbitmq4ctl -q enable_feature_flag all >/dev/null; then
        _nrx_err "could not enable RabbitMQ 4's feature flags; see $root/var/log/rabbitmq/"
        return 1
    fi
    echo "RabbitMQ $version is up on 127.0.0.1:$NOVARPC_RMQ4_PORT"
    _rmq4_export
}

ensure_rabbitmq4() {
    _nrx_locked "$NOVARPC_CACHE/.trixie-rabbitmq.lock" _rmq4_ensure
}

# Stops the RabbitMQ 4 node and whatever else runs in its chroot (its epmd),
# and unmounts the chroot's /proc. The host's RabbitMQ is not touched.
stop_rabbitmq4() {
    [ -d "$NOVARPC_RMQ4_ROOT" ] || return 0
    if [ -n "$(_rmq4_procs)" ]; then
        echo "stopping RabbitMQ 4 (127.0.0.1:$NOVARPC_RMQ4_PORT)"
    fi
    _rmq4_stop_procs
}

# ---------------------------------------------------------------------------
# Qpid Proton's C++ example broker

NOVARPC_PROTON_PORT="${NOVARPC_PROTON_PORT:-5692}"
NOVARPC_PROTON_DIR="${NOVARPC_PROTON_DIR:-$NOVARPC_CACHE/proton-broker}"

_proton_pid() {
    cat "$NOVARPC_PROTON_DIR/broker.pid" 2>/dev/null || true
}

# Whether process $1 runs our broker binary.
_proton_is_ours() {
    _nrx_alive "${1:-}" &&
        [ "$(readlink "/proc/$1/exe" 2>/dev/null)" = "$(realpath "$NOVARPC_PROTON_DIR" 2>/dev/null)/broker" ]
}

_proton_running() {
    _proton_is_ours "$(_proton_pid)" && _nrx_port_open "$NOVARPC_PROTON_PORT"
}

ensure_proton_broker() {
    local dir="$NOVARPC_PROTON_DIR" src pid i
    dir="$(mkdir -p "$dir" && realpath "$dir")" || return 1
    NOVARPC_PROTON_DIR="$dir"
    if _proton_running; then
        echo "Proton's example broker is already running on 127.0.0.1:$NOVARPC_PROTON_PORT"
        export NOVARPC_PROTON_URL="amqp://127.0.0.1:$NOVARPC_PROTON_PORT"
        return 0
    fi
    if [ ! -x "$dir/broker" ]; then
        _nrx_apt_install g++ libqpid-proton-cpp12-dev libqpid-proton11-dev-examples || return 1
        src="$(dpkg -L libqpid-proton11-dev-examples | grep '/cpp/broker\.cpp$' | head -n 1)"
        if [ -z "$src" ] || [ ! -f "$src" ]; then
            _nrx_err "no cpp/broker.cpp in libqpid-proton11-dev-examples; reinstall it (apt-get install --reinstall libqpid-proton11-dev-examples)"
            return 1
        fi
        echo "building Proton's example broker from $src"
        if ! g++ -O2 -std=c++11 -pthread -I"$(dirname "$src")" -o "$dir/broker.tmp" "$src" -lqpid-proton-cpp; then
            rm -f "$dir/broker.tmp"
            _nrx_err "compiling $src failed; check that libqpid-proton-cpp12-dev is installed"
            return 1
        fi
        mv "$dir/broker.tmp" "$dir/broker"
    fi
    stop_proton_broker >/dev/null # ours but not listening (if at all): start anew
    if _nrx_port_open "$NOVARPC_PROTON_PORT"; then
        _nrx_err "127.0.0.1:$NOVARPC_PROTON_PORT is taken by another program; stop it or set NOVARPC_PROTON_PORT"
        return 1
    fi
    echo "starting Proton's example broker on 127.0.0.1:$NOVARPC_PROTON_PORT"
    _nrx_spawn "$dir/broker.pid" "$dir/broker.log" "$dir/broker" -a "127.0.0.1:$NOVARPC_PROTON_PORT" || return 1
    pid="$(_proton_pid)"
    for i in $(seq 1 100); do
        _nrx_port_open "$NOVARPC_PROTON_PORT" && break
        if ! _nrx_alive "$pid" || [ "$i" = 100 ]; then
            cat "$dir/broker.log" >&2
            _nrx_err "Proton's example broker did not start; see $dir/broker.log"
            return 1
        fi
        sleep 0.1
    done
    echo "Proton's example broker is up on 127.0.0.1:$NOVARPC_PROTON_PORT (SASL ANONYMOUS only)"
    export NOVARPC_PROTON_URL="amqp://127.0.0.1:$NOVARPC_PROTON_PORT"
}

stop_proton_broker() {
    local pid i
    pid="$(_proton_pid)"
    if _proton_is_ours "$pid"; then
        echo "stopping Proton's example broker (127.0.0.1:$NOVARPC_PROTON_PORT)"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do
            _nrx_alive "$pid" || break
            sleep 0.1
        done
        _nrx_alive "$pid" && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$NOVARPC_PROTON_DIR/broker.pid"
    return 0
}

# ---------------------------------------------------------------------------
# run directly: scripts/brokers-extra.sh start|stop|status [rabbitmq4|proton]

_nrx_main() {
    # `ctl ARGS...`: rabbitmqctl against the RabbitMQ 4 node (the fault
    # tests drive it through NOVARPC_TEST_RABBITMQCTL).
    if [ "${1:-}" = ctl ]; then
        shift
        rabbitmq4ctl "$@"
        return
    fi
    local cmd="${1:-}" which="${2:-all}" rc=0
    case "$which" in
        all | rabbitmq4 | proton) ;;
        *) cmd=usage ;;
    esac
    case "$cmd" in
        start)
            if [ "$which" != proton ]; then ensure_rabbitmq4 || rc=1; fi
            if [ "$which" != rabbitmq4 ]; then ensure_proton_broker || rc=1; fi
            ;;
        stop)
            if [ "$which" != rabbitmq4 ]; then stop_proton_broker; fi
            if [ "$which" != proton ]; then stop_rabbitmq4; fi
            ;;
        status)
            if [ "$which" != proton ]; then
                if _rmq4_running; then
                    echo "RabbitMQ $(_rmq4_version): running on 127.0.0.1:$NOVARPC_RMQ4_PORT (pid $(_rmq4_pid), node $NOVARPC_RMQ4_NODE)"
                else
                    echo "RabbitMQ 4: not running"
                    rc=1
                fi
            fi
            if [ "$which" != rabbitmq4 ]; then
                if _proton_running; then
                    echo "Proton's example broker: running on 127.0.0.1:$NOVARPC_PROTON_PORT (pid $(_proton_pid))"
                else
                    echo "Proton's example broker: not running"
                    rc=1
                fi
            fi
            ;;
        *)
            echo "usage: $0 start|stop|status [rabbitmq4|proton]" >&2
            return 2
            ;;
    esac
    return "$rc"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    _nrx_main "$@"
fi
