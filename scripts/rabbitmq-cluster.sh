#!/usr/bin/env bash
# A 3-node RabbitMQ 3.10 cluster on loopback for failover tests, beside the
# host's own node (rabbit@localhost on 5672, which it never touches), run from
# the host's rabbitmq-server package:
#
#   node                 AMQP             distribution
#   rabbit-c1@localhost  127.0.0.1:5701   127.0.0.1:25711
#   rabbit-c2@localhost  127.0.0.1:5702   127.0.0.1:25712
#   rabbit-c3@localhost  127.0.0.1:5703   127.0.0.1:25713
#
# guest/guest, no plugins, cluster_partition_handling = pause_minority. The
# nodes share their own Erlang cookie and their own epmd (127.0.0.1:4372);
# their data, logs, configuration and pid files are under
# $NOVARPC_CACHE/rabbitmq-cluster/ and go away at each stop (each start
# builds a fresh cluster).
#
#   ensure_rabbitmq_cluster       starts the nodes and joins c2 and c3 to c1
#                                 (idempotent); exports NOVARPC_CLUSTER_URL
#   stop_rabbitmq_cluster         stops every process of the cluster and
#                                 removes its data
#   cluster_ctl N ARGS...         rabbitmqctl against node N (1..3); also
#                                 cluster_queues / cluster_diagnostics N ARGS...
#   cluster_stop_node N           stop_app on node N (graceful; the VM stays)
#   cluster_start_node N          start_app on node N, waits for its listener
#   cluster_kill_node N           SIGKILLs node N's Erlang VM (and only it)
#   cluster_restart_killed_node N starts node N again (its data kept), waits
#                                 until it is back in the cluster
#
# Sourced (after scripts/brokers.sh, or on its own), or run directly:
#   scripts/rabbitmq-cluster.sh start|stop|status
#   scripts/rabbitmq-cluster.sh kill|stop-node|start-node|restart-node N
#   scripts/rabbitmq-cluster.sh ctl N ARGS...
#
# Settings (environment):
#   NOVARPC_CACHE              cache folder (default ~/.cache/novarpc)
#   NOVARPC_RMQC_DIR           the cluster's folder (default $NOVARPC_CACHE/rabbitmq-cluster)
#   NOVARPC_RMQC_PORT_BASE     AMQP port of node N is this + N (default 5700)
#   NOVARPC_RMQC_DIST_BASE     distribution port of node N is this + N (default 25710)
#   NOVARPC_RMQC_EPMD_PORT     the cluster's epmd (default 4372)
#   NOVARPC_RMQC_PARTITIONS    cluster_partition_handling (default pause_minority)
#   NOVARPC_RMQC_CTL_DIST_PORT_MIN  first of the 31 ports the CLI tools use (default 35701)
#   NOVARPC_RMQC_ROOT          run RabbitMQ from this chroot instead of the host's
#                              package: RabbitMQ 4's (scripts/brokers-extra.sh,
#                              ensure_rabbitmq4 builds it); the nodes run as its
#                              rabbitmq user, their folder is inside it, and
#                              transient non-exclusive queues are denied, as on
#                              the single RabbitMQ 4 node. scripts/cluster-test
#                              rabbitmq4 sets this and other ports.

NOVARPC_CACHE="${NOVARPC_CACHE:-$HOME/.cache/novarpc}"
NOVARPC_RMQC_ROOT="${NOVARPC_RMQC_ROOT:-}"
if [ -n "$NOVARPC_RMQC_ROOT" ]; then
    NOVARPC_RMQC_DIR="${NOVARPC_RMQC_DIR:-$NOVARPC_RMQC_ROOT/var/lib/novarpc-cluster}"
else
    NOVARPC_RMQC_DIR="${NOVARPC_RMQC_DIR:-$NOVARPC_CACHE/rabbitmq-cluster}"
fi
NOVARPC_RMQC_PORT_BASE="${NOVARPC_RMQC_PORT_BASE:-5700}"
# Not 25701-25703: RabbitMQ 4's CLI tools (scripts/brokers-extra.sh) take
# their distribution ports from 25692-25702.
NOVARPC_RMQC_DIST_BASE="${NOVARPC_RMQC_DIST_BASE:-25710}"
NOVARPC_RMQC_EPMD_PORT="${NOVARPC_RMQC_EPMD_PORT:-4372}"
NOVARPC_RMQC_PARTITIONS="${NOVARPC_RMQC_PARTITIONS:-pause_minority}"
# The CLI tools' own distribution ports (the host's use 35672-35682).
NOVARPC_RMQC_CTL_DIST_PORT_MIN="${NOVARPC_RMQC_CTL_DIST_PORT_MIN:-35701}"

_RMQC_BIN=/usr/lib/rabbitmq/bin
_RMQC_NODES=(1 2 3)

# Helpers shared with the other broker scripts (_nrx_err, _nrx_port_open,
# _nrx_locked, _nrx_apt_install, _nrx_chroot_user).
if ! declare -F _nrx_locked >/dev/null; then
    # shellcheck source=scripts/brokers-extra.sh
    source "$(dirname "${BASH_SOURCE[0]}")/brokers-extra.sh"
fi

# ---------------------------------------------------------------------------
# helpers

_rmqc_name() { echo "rabbit-c$1@localhost"; }

# A path of the cluster as its programs see it (inside the chroot, if any).
_rmqc_in() {
    if [ -n "$NOVARPC_RMQC_ROOT" ]; then
        echo "${1#"$NOVARPC_RMQC_ROOT"}"
    else
        echo "$1"
    fi
}

# The chroot's rabbitmq user and group ids ("uid:gid").
_rmqc_user() {
    _nrx_chroot_user "$NOVARPC_RMQC_ROOT"
}

# What runs a program of the cluster: `env -i`, in the chroot as its rabbitmq
# user when there is one.
_rmqc_runner() {
    if [ -n "$NOVARPC_RMQC_ROOT" ]; then
        _RMQC_RUNNER=(chroot --userspec="$(_rmqc_user)" "$NOVARPC_RMQC_ROOT" /usr/bin/env -i)
    else
        _RMQC_RUNNER=(env -i)
    fi
}
_rmqc_port() { echo $((NOVARPC_RMQC_PORT_BASE + $1)); }
_rmqc_dist_port() { echo $((NOVARPC_RMQC_DIST_BASE + $1)); }
_rmqc_dir() { echo "$NOVARPC_RMQC_DIR/c$1"; }

_rmqc_check_n() {
    case "${1:-}" in
        1 | 2 | 3) return 0 ;;
    esac
    _nrx_err "no cluster node '${1:-}': expected 1, 2 or 3"
    return 1
}

# Seconds since $1 (an $EPOCHREALTIME), to one decimal.
_rmqc_since() {
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}

# Whether process $1 is alive: a killed process whose parent is pid 1 stays
# a zombie for a while on some machines (an init that reaps late).
_rmqc_alive() {
    local stat
    [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [ "${stat%% *}" != Z ]
}

# Every process of node $1 carries NOVARPC_RMQC_NODE=<its folder> in its
# environment (the VM and what it spawns: erl_child_setup, inet_gethost), the
# cluster's epmd NOVARPC_RMQC_EPMD=<cluster folder>. The CLI tools carry
# neither, nor does anything else on the machine.
_rmqc_marked() {
    grep -lzxF "$1" /proc/[0-9]*/environ 2>/dev/null | awk -F/ '{print $3}'
    return 0
}

_rmqc_node_procs() {
    _rmqc_marked "NOVARPC_RMQC_NODE=$(_rmqc_dir "$1")"
}

_rmqc_epmd_procs() {
    _rmqc_marked "NOVARPC_RMQC_EPMD=$NOVARPC_RMQC_DIR"
}

# Whether process $1 is the Erlang VM of node $2.
_rmqc_is_vm() {
    _rmqc_alive "${1:-}" &&
        [[ "$(readlink "/proc/$1/exe" 2>/dev/null)" == */beam.smp ]] &&
        grep -qzxF "NOVARPC_RMQC_NODE=$(_rmqc_dir "$2")" "/proc/$1/environ" 2>/dev/null
}

# The pid of node $1's Erlang VM, or nothing: the node's pid file (written by
# RabbitMQ itself) when it names that VM, else a scan for the node's marker
# (the VM writes its pid file only some way into its boot).
_rmqc_vm_pid() {
    local pid p
    pid="$(cat "$(_rmqc_dir "$1")/rabbit.pid" 2>/dev/null)" || true
    if _rmqc_is_vm "$pid" "$1"; then
        echo "$pid"
        return 0
    fi
    for p in $(_rmqc_node_procs "$1"); do
        if _rmqc_is_vm "$p" "$1"; then
            echo "$p"
            return 0
        fi
    done
    return 0
}

# Whether node $1 is up: its VM runs and its AMQP listener accepts.
_rmqc_running() {
    [ -n "$(_rmqc_vm_pid "$1")" ] && _nrx_port_open "$(_rmqc_port "$1")"
}

_rmqc_epmd_running() {
    [ -n "$(_rmqc_epmd_procs)" ] && _nrx_port_open "$NOVARPC_RMQC_EPMD_PORT"
}

# The environment every program of the cluster runs with (`env -i` first:
# nothing of the caller's ERL_FLAGS, RABBITMQ_* or HOME leaks in). HOME holds
# the cluster's Erlang cookie; RABBITMQ_CONF_ENV_FILE points away from the
# host's /etc/rabbitmq/rabbitmq-env.conf (NODENAME=rabbit@localhost, ERL_FLAGS).
_rmqc_common_env() {
    _rmqc_runner
    _RMQC_ENV=("${_RMQC_RUNNER[@]}"
        PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 LC_ALL=C.UTF-8
        HOME="$(_rmqc_in "$NOVARPC_RMQC_DIR/home")"
        ERL_EPMD_PORT="$NOVARPC_RMQC_EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1
        RABBITMQ_CONF_ENV_FILE="$(_rmqc_in "$NOVARPC_RMQC_DIR/rabbitmq-env.conf")"
        RABBITMQ_CTL_DIST_PORT_MIN="$NOVARPC_RMQC_CTL_DIST_PORT_MIN"
        RABBITMQ_CTL_DIST_PORT_MAX=$((NOVARPC_RMQC_CTL_DIST_PORT_MIN + 30)))
}

# The environment of node $1: its own name, ports, data, logs, pid file,
# configuration and (empty) plugin list, so that nothing of /etc/rabbitmq
# (the host's TLS listener, rabbitmq_amqp1_0) applies.
_rmqc_node_env() {
    local d
    d="$(_rmqc_in "$(_rmqc_dir "$1")")"
    _rmqc_common_env
    _RMQC_ENV+=(
        RABBITMQ_NODENAME="$(_rmqc_name "$1")"
        RABBITMQ_DIST_PORT="$(_rmqc_dist_port "$1")"
        RABBITMQ_MNESIA_BASE="$d/mnesia"
        RABBITMQ_LOG_BASE="$d/log"
        RABBITMQ_PID_FILE="$d/rabbit.pid"
        RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
        RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
        RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}")
}

# Runs RabbitMQ's CLI tool $1 against node $2: `_rmqc_cli rabbitmqctl 1 ARGS`.
_rmqc_cli() {
    local tool="$1" n="$2"
    shift 2
    _rmqc_check_n "$n" || return 1
    if [ ! -s "$NOVARPC_RMQC_DIR/home/.erlang.cookie" ]; then
        _nrx_err "the RabbitMQ cluster was never started; run ensure_rabbitmq_cluster first"
        return 1
    fi
    _rmqc_node_env "$n"
    "${_RMQC_ENV[@]}" "$_RMQC_BIN/$tool" -n "$(_rmqc_name "$n")" "$@"
}

# rabbitmqctl against node N: `cluster_ctl 2 list_queues name type`.
cluster_ctl() {
    local n="${1:-}"
    shift
    _rmqc_cli rabbitmqctl "$n" "$@"
}

# rabbitmq-queues against node N: `cluster_queues 1 quorum_status QUEUE`.
cluster_queues() {
    local n="${1:-}"
    shift
    _rmqc_cli rabbitmq-queues "$n" "$@"
}

# rabbitmq-diagnostics against node N: `cluster_diagnostics 3 cluster_status`.
cluster_diagnostics() {
    local n="${1:-}"
    shift
    _rmqc_cli rabbitmq-diagnostics "$n" "$@"
}

# The running members of the cluster as node $1 sees them, one a line.
_rmqc_running_members() {
    cluster_ctl "$1" -q eval 'rabbit_nodes:all_running().' 2>/dev/null |
        grep -o "rabbit-c[0-9]*@localhost" | sort -u
}

# All members of the cluster (running or not) as node $1 sees them.
_rmqc_members() {
    cluster_ctl "$1" -q eval 'rabbit_mnesia:cluster_nodes(all).' 2>/dev/null |
        grep -o "rabbit-c[0-9]*@localhost" | sort -u
}

# A node other than $1 whose listener is up, or nothing.
_rmqc_other_running() {
    local n
    for n in "${_RMQC_NODES[@]}"; do
        [ "$n" = "$1" ] && continue
        _rmqc_running "$n" && echo "$n" && return 0
    done
    return 0
}

# Whether the cluster is whole: three VMs up and listening, and c1 sees all
# three running.
_rmqc_whole() {
    local n
    _rmqc_epmd_running || return 1
    for n in "${_RMQC_NODES[@]}"; do
        _rmqc_running "$n" || return 1
    done
    [ "$(_rmqc_running_members 1 | wc -l)" = 3 ]
}

_rmqc_export_url() {
    local n hosts=()
    for n in "${_RMQC_NODES[@]}"; do
        hosts+=("guest:guest@127.0.0.1:$(_rmqc_port "$n")")
    done
    NOVARPC_CLUSTER_URL="rabbit://$(IFS=,; echo "${hosts[*]}")/"
    export NOVARPC_CLUSTER_URL
}

# Writes the cluster's cookie, the files that keep /etc/rabbitmq out, and
# node $n's configuration (read at each start of its VM).
_rmqc_write_files() {
    local dir="$NOVARPC_RMQC_DIR" n d
    mkdir -p "$dir/home"
    chmod 700 "$dir/home"
    if [ ! -s "$dir/home/.erlang.cookie" ]; then
        # The cluster's own cookie: never the host node's.
        (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/home/.erlang.cookie")
    fi
    chmod 400 "$dir/home/.erlang.cookie"
    echo "# Written by novarpc's scripts/rabbitmq-cluster.sh: keeps /etc/rabbitmq/rabbitmq-env.conf out." \
        >"$dir/rabbitmq-env.conf"
    for n in "${_RMQC_NODES[@]}"; do
        d="$(_rmqc_dir "$n")"
        mkdir -p "$d/mnesia" "$d/log"
        cat >"$d/rabbitmq.conf" <<EOF
# Written by novarpc's scripts/rabbitmq-cluster.sh.
listeners.tcp.default = 127.0.0.1:$(_rmqc_port "$n")
loopback_users = none
# 3 nodes: a node cut off alone pauses itself; the other two go on.
cluster_partition_handling = $NOVARPC_RMQC_PARTITIONS
EOF
        echo "[]." >"$d/enabled_plugins"
        # An empty advanced.config, so /etc/rabbitmq/advanced.config never applies.
        echo "[]." >"$d/advanced.config"
    done
    if [ -n "$NOVARPC_RMQC_ROOT" ]; then
        # The nodes run as the chroot's rabbitmq user; RabbitMQ needs /proc.
        chown -R "$(_rmqc_user)" "$dir"
        mountpoint -q "$NOVARPC_RMQC_ROOT/proc" || mount -t proc proc "$NOVARPC_RMQC_ROOT/proc" || {
            _nrx_err "cannot mount /proc in $NOVARPC_RMQC_ROOT; the chroot needs root and a mount-capable host"
            return 1
        }
    fi
}

# Starts the cluster's epmd (in the foreground of its own session, so that
# its pid is known and it is stopped with the cluster).
_rmqc_start_epmd() {
    local i
    _rmqc_epmd_running && return 0
    if _nrx_port_open "$NOVARPC_RMQC_EPMD_PORT"; then
        _nrx_err "127.0.0.1:$NOVARPC_RMQC_EPMD_PORT (the cluster's epmd) is taken by another program; stop it or set NOVARPC_RMQC_EPMD_PORT"
        return 1
    fi
    _rmqc_runner
    # shellcheck disable=SC2016
    setsid "${_RMQC_RUNNER[@]}" PATH=/usr/bin:/bin NOVARPC_RMQC_EPMD="$NOVARPC_RMQC_DIR" bash -c '
        for fd in /proc/$$/fd/*; do
            fd="${fd##*/}"
            [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
        done
        exec epmd -port "$0" -address 127.0.0.1
    ' "$NOVARPC_RMQC_EPMD_PORT" >"$NOVARPC_RMQC_DIR/epmd.log" 2>&1 </dev/null &
    for i in $(seq 1 50); do
        _nrx_port_open "$NOVARPC_RMQC_EPMD_PORT" && return 0
        sleep 0.1
    done
    cat "$NOVARPC_RMQC_DIR/epmd.log" >&2
    _nrx_err "the cluster's epmd did not start on 127.0.0.1:$NOVARPC_RMQC_EPMD_PORT"
    return 1
}

# Launches node $1's VM detached (returns at once; its data is kept).
_rmqc_launch() {
    local n="$1" d
    d="$(_rmqc_dir "$n")"
    if _nrx_port_open "$(_rmqc_port "$n")" || _nrx_port_open "$(_rmqc_dist_port "$n")"; then
        _nrx_err "127.0.0.1:$(_rmqc_port "$n") or :$(_rmqc_dist_port "$n") (node c$n) is taken by another program; stop it or set NOVARPC_RMQC_PORT_BASE / NOVARPC_RMQC_DIST_BASE"
        return 1
    fi
    rm -f "$d/rabbit.pid"
    _rmqc_node_env "$n"
    # The detached VM closes every inherited descriptor beyond 2 (such as a
    # lock's), else it would hold them for as long as it runs.
    # shellcheck disable=SC2016
    (cd "$d" && exec "${_RMQC_ENV[@]}" NOVARPC_RMQC_NODE="$d" bash -c '
        for fd in /proc/$$/fd/*; do
            fd="${fd##*/}"
            [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
        done
        exec "$@"
    ' _ "$_RMQC_BIN/rabbitmq-server" -detached) >"$d/startup.log" 2>&1 </dev/null || {
        cat "$d/startup.log" >&2
        _nrx_err "could not launch node c$n (output above)"
        return 1
    }
}

# Waits (up to $2 seconds, default 120) until node $1 accepts AMQP
# connections and has finished booting. Polls the port first: every CLI call
# is an Erlang VM of its own, which slows the booting nodes down on 2 cores.
_rmqc_wait_node() {
    local n="$1" deadline=$((SECONDS + ${2:-120})) d seen=
    d="$(_rmqc_dir "$n")"
    while ! _nrx_port_open "$(_rmqc_port "$n")"; do
        if [ -n "$(_rmqc_vm_pid "$n")" ]; then
            seen=1
        elif [ -n "$seen" ] || [ "$SECONDS" -ge $((deadline - ${2:-120} + 10)) ]; then
            tail -n 20 "$d/startup.log" "$d/log/$(_rmqc_name "$n").log" >&2 2>/dev/null
            _nrx_err "node c$n exited while starting; see $d/log/ and $d/startup.log"
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            _nrx_err "node c$n did not open 127.0.0.1:$(_rmqc_port "$n") in time; see $d/log/"
            return 1
        fi
        sleep 0.2
    done
    cluster_ctl "$n" -q await_startup --timeout $((deadline - SECONDS > 5 ? deadline - SECONDS : 5)) >/dev/null || {
        _nrx_err "node c$n did not finish booting; see $d/log/"
        return 1
    }
}

# Whether node $1's VM runs with the RabbitMQ application stopped by hand
# (`cluster_stop_node`): not booting, and not paused by pause_minority (a
# paused node has a rabbit_outside_app_process and restarts by itself once
# it sees a majority again; start_app must not meddle with it).
_rmqc_app_stopped() {
    [ "$(cluster_ctl "$1" -q eval '
        case rabbit:is_booting() orelse rabbit:is_running()
                orelse whereis(rabbit_outside_app_process) =/= undefined of
            true -> busy;
            false -> stopped
        end.' 2>/dev/null)" = stopped ]
}

# Runs `cluster_ctl N -q ARGS` with its output in node N's cli.log (a join
# prints harmless feature-flag warnings), shown when it fails.
_rmqc_ctl_logged() {
    local n="$1" log
    log="$(_rmqc_dir "$n")/cli.log"
    echo "$(date +%T.%3N) \$ rabbitmqctl -n $(_rmqc_name "$n") ${*:2}" >>"$log"
    if ! cluster_ctl "$n" -q "${@:2}" >>"$log" 2>&1; then
        tail -n 20 "$log" >&2
        _nrx_err "rabbitmqctl -n $(_rmqc_name "$n") ${*:2} failed (output above, log in $(_rmqc_dir "$n")/)"
        return 1
    fi
}

# Runs "$1 N" for each node N that follows, at the same time; fails if any did.
_rmqc_each() {
    local fn="$1" n pids=() p rc=0
    shift
    for n in "$@"; do
        "$fn" "$n" &
        pids+=("$!")
    done
    for p in "${pids[@]}"; do
        wait "$p" || rc=1
    done
    return "$rc"
}

_rmqc_stop_and_reset() {
    _rmqc_ctl_logged "$1" stop_app && _rmqc_ctl_logged "$1" reset
}

_rmqc_start_app() {
    _rmqc_ctl_logged "$1" start_app
}

# Joins the (running) nodes given to c1's cluster: `stop_app; reset;
# join_cluster rabbit-c1@localhost; start_app` on each. The joins themselves
# go one at a time (concurrent mnesia joins can clash); stop_app+reset and
# start_app run side by side.
_rmqc_join() {
    local n c1
    [ "$#" = 0 ] && return 0
    c1="$(_rmqc_name 1)"
    echo "joining $(printf 'rabbit-c%s@localhost ' "$@")to $c1"
    _rmqc_each _rmqc_stop_and_reset "$@" || return 1
    for n in "$@"; do
        _rmqc_ctl_logged "$n" join_cluster "$c1" || return 1
    done
    _rmqc_each _rmqc_start_app "$@"
}

# Stops every process of the cluster (SIGTERM: a graceful shutdown in
# RabbitMQ 3.10; SIGKILL after 30 s), then its epmd.
_rmqc_stop_procs() {
    local n pids p i
    pids="$(for n in "${_RMQC_NODES[@]}"; do _rmqc_vm_pid "$n"; done)"
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        for i in $(seq 1 300); do
            for p in $pids; do
                _rmqc_alive "$p" && break
                p=
            done
            [ -z "$p" ] && break
            sleep 0.1
        done
    fi
    # Whatever is left of the nodes (a VM stuck in shutdown, erl_child_setup).
    pids="$(for n in "${_RMQC_NODES[@]}"; do _rmqc_node_procs "$n"; done)"
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
    pids="$(_rmqc_epmd_procs)"
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -TERM $pids 2>/dev/null
    for i in $(seq 1 50); do
        pids="$(_rmqc_epmd_procs; for n in "${_RMQC_NODES[@]}"; do _rmqc_node_procs "$n"; done)"
        [ -z "$pids" ] && return 0
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null
    return 0
}

_rmqc_ensure() {
    local start="$EPOCHREALTIME" n dead=() alive=0 jobs=() job members joiners
    if [ -n "$NOVARPC_RMQC_ROOT" ]; then
        if [ ! -x "$NOVARPC_RMQC_ROOT$_RMQC_BIN/rabbitmq-server" ] || [ -z "$(_rmqc_user)" ]; then
            _nrx_err "no RabbitMQ chroot at $NOVARPC_RMQC_ROOT; run ensure_rabbitmq4 (scripts/brokers.sh) first"
            return 1
        fi
    elif [ ! -x "$_RMQC_BIN/rabbitmq-server" ]; then
        _nrx_apt_install rabbitmq-server || return 1
    fi
    if _rmqc_whole; then
        _rmqc_export_url
        echo "the RabbitMQ cluster is already running on 127.0.0.1:$(_rmqc_port 1)-$(_rmqc_port 3)"
        return 0
    fi
    for n in "${_RMQC_NODES[@]}"; do
        if [ -n "$(_rmqc_vm_pid "$n")" ]; then
            alive=$((alive + 1))
        else
            dead+=("$n")
        fi
    done
    if [ "$alive" -gt 0 ] && ! _rmqc_epmd_running; then
        echo "the RabbitMQ cluster lost its epmd; starting it anew"
        _rmqc_stop_procs
        alive=0
        dead=("${_RMQC_NODES[@]}")
    fi
    if [ "$alive" = 0 ]; then
        # A fresh cluster: no queues, messages or members left from before.
        _rmqc_stop_procs
        rm -rf --one-file-system "${NOVARPC_RMQC_DIR:?}"/c[0-9]
        echo "starting a 3-node RabbitMQ $(_rmqc_version) cluster on 127.0.0.1:$(_rmqc_port 1)-$(_rmqc_port 3)"
    else
        echo "completing the RabbitMQ cluster (nodes not running: ${dead[*]:-none})"
    fi
    _rmqc_write_files || return 1
    _rmqc_start_epmd || return 1
    for n in "${dead[@]}"; do
        _rmqc_launch "$n" || return 1
    done
    # Nodes whose VM runs but whose application was stopped (stop_app).
    if [ "$alive" -gt 0 ]; then
        for n in "${_RMQC_NODES[@]}"; do
            if ! _nrx_port_open "$(_rmqc_port "$n")" && _rmqc_app_stopped "$n"; then
                cluster_ctl "$n" -q start_app >/dev/null &
                jobs+=("$!")
            fi
        done
    fi
    for job in "${jobs[@]}"; do
        wait "$job" || true
    done
    _rmqc_each _rmqc_wait_node "${_RMQC_NODES[@]}" || return 1
    if [ "$alive" = 0 ]; then
        _rmqc_join 2 3 || return 1
    else
        members="$(_rmqc_members 1)"
        joiners=()
        for n in 2 3; do
            grep -qxF "$(_rmqc_name "$n")" <<<"$members" || joiners+=("$n")
        done
        _rmqc_join "${joiners[@]}" || return 1
    fi
    if [ "$(_rmqc_running_members 1 | wc -l)" != 3 ]; then
        _nrx_err "the cluster is not whole: c1 sees $(_rmqc_running_members 1 | tr '\n' ' ')"
        return 1
    fi
    _rmqc_export_url
    echo "the RabbitMQ cluster is up on 127.0.0.1:$(_rmqc_port 1)-$(_rmqc_port 3) ($(_rmqc_since "$start") s)"
}

_rmqc_version() {
    local d
    for d in "$NOVARPC_RMQC_ROOT"/usr/lib/rabbitmq/lib/rabbitmq_server-*; do
        [ -d "$d" ] && echo "${d##*rabbitmq_server-}" && return 0
    done
    echo unknown
}

# ---------------------------------------------------------------------------
# entry points

ensure_rabbitmq_cluster() {
    _nrx_locked "$NOVARPC_CACHE/.rabbitmq-cluster.lock" _rmqc_ensure
}

# Stops the three nodes and the cluster's epmd, and removes the cluster's
# data. The host's RabbitMQ and epmd are not touched.
stop_rabbitmq_cluster() {
    local start="$EPOCHREALTIME"
    [ -d "$NOVARPC_RMQC_DIR" ] || return 0
    _nrx_locked "$NOVARPC_CACHE/.rabbitmq-cluster.lock" _rmqc_stop_procs
    rm -rf --one-file-system "${NOVARPC_RMQC_DIR:?}"/c[0-9] "$NOVARPC_RMQC_DIR/epmd.log"
    echo "the RabbitMQ cluster is stopped ($(_rmqc_since "$start") s)"
}

# stop_app on node N: the node leaves service gracefully, its VM stays up.
cluster_stop_node() {
    local n="${1:-}" start="$EPOCHREALTIME"
    _rmqc_check_n "$n" || return 1
    if [ -z "$(_rmqc_vm_pid "$n")" ]; then
        _nrx_err "node c$n is not running"
        return 1
    fi
    cluster_ctl "$n" -q stop_app >/dev/null || return 1
    echo "stopped the application of node c$n ($(_rmqc_since "$start") s)"
}

# start_app on node N (after cluster_stop_node); waits for its listener.
cluster_start_node() {
    local n="${1:-}" start="$EPOCHREALTIME"
    _rmqc_check_n "$n" || return 1
    if [ -z "$(_rmqc_vm_pid "$n")" ]; then
        _nrx_err "node c$n's VM is not running; use cluster_restart_killed_node $n"
        return 1
    fi
    cluster_ctl "$n" -q start_app >/dev/null || return 1
    _rmqc_wait_node "$n" 60 || return 1
    echo "started the application of node c$n ($(_rmqc_since "$start") s)"
}

# SIGKILLs node N's Erlang VM (its pid file, checked against the node's
# marker), then whatever it had spawned. No other node's process is touched.
cluster_kill_node() {
    local n="${1:-}" pid rest i
    _rmqc_check_n "$n" || return 1
    pid="$(_rmqc_vm_pid "$n")"
    if [ -z "$pid" ]; then
        _nrx_err "node c$n is not running"
        return 1
    fi
    kill -KILL "$pid" || return 1
    for i in $(seq 1 50); do
        _rmqc_alive "$pid" || break
        sleep 0.1
    done
    # Its erl_child_setup and inet_gethost end with it; make sure.
    rest="$(_rmqc_node_procs "$n")"
    # shellcheck disable=SC2086
    [ -n "$rest" ] && kill -KILL $rest 2>/dev/null
    echo "killed node c$n (pid $pid)"
}

# Starts node N again after cluster_kill_node (its data kept, so it rejoins
# as the member it was) and waits until another node sees it running.
cluster_restart_killed_node() {
    local n="${1:-}" start="$EPOCHREALTIME" other i
    _rmqc_check_n "$n" || return 1
    if [ -n "$(_rmqc_vm_pid "$n")" ]; then
        if ! _nrx_port_open "$(_rmqc_port "$n")" && _rmqc_app_stopped "$n"; then
            cluster_ctl "$n" -q start_app >/dev/null || return 1
        fi
    else
        if [ ! -d "$(_rmqc_dir "$n")/mnesia" ]; then
            _nrx_err "node c$n has no data; run ensure_rabbitmq_cluster"
            return 1
        fi
        _rmqc_start_epmd || return 1
        _rmqc_launch "$n" || return 1
    fi
    _rmqc_wait_node "$n" || return 1
    other="$(_rmqc_other_running "$n")"
    if [ -n "$other" ]; then
        for i in $(seq 1 60); do
            _rmqc_running_members "$other" | grep -qxF "$(_rmqc_name "$n")" && break
            if [ "$i" = 60 ]; then
                _nrx_err "node c$n runs but c$other does not see it in the cluster"
                return 1
            fi
            sleep 0.5
        done
    fi
    echo "node c$n is back in the cluster ($(_rmqc_since "$start") s)"
}

# Prints each node's state; fails unless the cluster is whole.
_rmqc_status() {
    local n pid rc=0 members
    for n in "${_RMQC_NODES[@]}"; do
        pid="$(_rmqc_vm_pid "$n")"
        if [ -z "$pid" ]; then
            echo "rabbit-c$n@localhost: not running"
            rc=1
        elif _nrx_port_open "$(_rmqc_port "$n")"; then
            echo "rabbit-c$n@localhost: running on 127.0.0.1:$(_rmqc_port "$n") (pid $pid, $(awk '/^VmRSS/ {printf "%d MiB RSS", $2 / 1024}' "/proc/$pid/status"))"
        else
            echo "rabbit-c$n@localhost: VM up (pid $pid), AMQP listener closed (booting, or application stopped)"
            rc=1
        fi
    done
    n="$(_rmqc_other_running 0)"
    if [ -n "$n" ]; then
        members="$(_rmqc_running_members "$n" | tr '\n' ' ')" || true
        echo "running members (as c$n sees them): ${members% }"
        [ "$(wc -w <<<"$members")" = 3 ] || rc=1
    fi
    if [ "$rc" = 0 ]; then
        _rmqc_export_url
        echo "NOVARPC_CLUSTER_URL=$NOVARPC_CLUSTER_URL"
    fi
    return "$rc"
}

# ---------------------------------------------------------------------------
# run directly

_rmqc_main() {
    local cmd="${1:-}"
    shift || true
    case "$cmd" in
        start) ensure_rabbitmq_cluster ;;
        stop) stop_rabbitmq_cluster ;;
        status) _rmqc_status ;;
        kill) cluster_kill_node "$@" ;;
        stop-node) cluster_stop_node "$@" ;;
        start-node) cluster_start_node "$@" ;;
        restart-node) cluster_restart_killed_node "$@" ;;
        ctl) cluster_ctl "$@" ;;
        *)
            echo "usage: $0 start|stop|status" >&2
            echo "       $0 kill|stop-node|start-node|restart-node N     (N = 1, 2 or 3)" >&2
            echo "       $0 ctl N RABBITMQCTL-ARGS..." >&2
            return 2
            ;;
    esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    _rmqc_main "$@"
fi
