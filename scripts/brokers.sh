# Starts the brokers the tests need, idempotently. Sourced by scripts/test.

# Waits (up to 2 minutes) until RabbitMQ answers; `await_startup` alone fails
# at once while the Erlang node is still booting.
wait_for_rabbitmq() {
    local i
    for i in $(seq 1 60); do
        if rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1; then
            return 0
        fi
        sleep 2
    done
    echo "error: RabbitMQ did not start; see /var/log/rabbitmq/" >&2
    return 1
}

restart_rabbitmq() {
    rabbitmqctl -q stop >/dev/null 2>&1 || true
    local i
    for i in $(seq 1 30); do
        rabbitmqctl -q ping >/dev/null 2>&1 || break
        sleep 1
    done
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_for_rabbitmq
}

ensure_rabbitmq() {
    if ! command -v rabbitmqctl >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "installing rabbitmq-server"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
        else
            echo "error: RabbitMQ is not installed; install rabbitmq-server (Debian) and rerun" >&2
            return 1
        fi
    fi
    if ! rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1; then
        echo "starting RabbitMQ"
        rabbitmq-server -detached >/dev/null 2>&1 || true
        wait_for_rabbitmq || return 1
    fi
    echo "RabbitMQ is up on 127.0.0.1:5672"
}

# A Python virtual environment with oslo.messaging, for the interop tests.
# Reused while it works; NOVARPC_PYTHON tells the tests which python to run.
NOVARPC_VENV="${NOVARPC_VENV:-$HOME/.cache/novarpc/venv-oslo-18.3.1}"

ensure_oslo_venv() {
    if ! "$NOVARPC_VENV/bin/python" -c "import oslo_messaging" >/dev/null 2>&1; then
        echo "creating $NOVARPC_VENV with oslo.messaging 18.3.1 (PyPI)"
        python3 -m venv "$NOVARPC_VENV"
        "$NOVARPC_VENV/bin/pip" install -q --disable-pip-version-check "oslo.messaging==18.3.1"
    fi
    export NOVARPC_PYTHON="$NOVARPC_VENV/bin/python"
    echo "oslo.messaging $("$NOVARPC_PYTHON" -c 'import importlib.metadata as m; print(m.version("oslo.messaging"))') in $NOVARPC_VENV"
}

# A TLS listener on 127.0.0.1:5671 with a throw-away CA, for the TLS tests.
# The server certificate names only `localhost`, so connecting by IP address
# must fail host-name verification. NOVARPC_TEST_TLS_DIR tells the tests where
# the CA and a client certificate are.
NOVARPC_TLS_DIR="${NOVARPC_TLS_DIR:-/etc/rabbitmq/novarpc-tls}"

ensure_rabbitmq_tls() {
    local dir="$NOVARPC_TLS_DIR" conf=/etc/rabbitmq/rabbitmq.conf
    if [ ! -s "$dir/server.pem" ] || [ ! -s "$dir/client.pem" ]; then
        echo "creating a test CA and certificates in $dir"
        mkdir -p "$dir"
        (
            cd "$dir"
            openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
                -subj "/CN=novarpc test CA" 2>/dev/null
            for who in server client; do
                openssl req -newkey rsa:2048 -nodes -keyout "$who.key" -out "$who.csr" \
                    -subj "/CN=novarpc-$who" 2>/dev/null
            done
            printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
            printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' >client.ext
            for who in server client; do
                openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
                    -out "$who.pem" -days 3650 -extfile "$who.ext" 2>/dev/null
            done
            chmod 644 ./*.pem ./*.key
        )
        chown -R rabbitmq:rabbitmq "$dir" 2>/dev/null || true
    fi
    export NOVARPC_TEST_TLS_DIR="$dir"
    if ! grep -q "novarpc test TLS listener" "$conf" 2>/dev/null; then
        echo "adding a TLS listener on 127.0.0.1:5671 to $conf"
        cat >>"$conf" <<CONF
# novarpc test TLS listener (added by novarpc's scripts/brokers.sh)
listeners.ssl.default = 127.0.0.1:5671
ssl_options.cacertfile = $dir/ca.pem
ssl_options.certfile = $dir/server.pem
ssl_options.keyfile = $dir/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
CONF
    fi
    if ! rabbitmq-diagnostics -q listeners 2>/dev/null | grep -q "port: 5671"; then
        echo "restarting RabbitMQ to open the TLS listener"
        restart_rabbitmq || return 1
        if ! rabbitmq-diagnostics -q listeners 2>/dev/null | grep -q "port: 5671"; then
            echo "error: RabbitMQ has no TLS listener on 5671; see /var/log/rabbitmq/" >&2
            return 1
        fi
    fi
    echo "RabbitMQ TLS is up on 127.0.0.1:5671 (CA in $dir)"
}

# RabbitMQ's AMQP 1.0 plugin (on port 5672 beside 0-9-1), for the qpid driver,
# and the operator policy its `rabbitmq3` addressing profile needs: RabbitMQ
# 3.x never deletes the private `amq.gen-*` queue of an AMQP 1.0 receiver on
# `/topic/KEY` (fanout copies, reply nodes), even after a closing detach, so
# unused ones expire after a minute.
ensure_rabbitmq_amqp1() {
    if ! rabbitmq-plugins -q is_enabled rabbitmq_amqp1_0 >/dev/null 2>&1; then
        echo "enabling rabbitmq_amqp1_0"
        rabbitmq-plugins -q enable rabbitmq_amqp1_0 >/dev/null || return 1
    fi
    rabbitmqctl -q set_policy --apply-to queues --priority 0 novarpc-amqp1-private \
        '^amq\.gen-' '{"expires": 60000}' >/dev/null || return 1
    echo "RabbitMQ's AMQP 1.0 plugin is enabled (policy novarpc-amqp1-private set)"
}

# python-qpid-proton (PyPI) in the interop venv: the independent AMQP 1.0
# client of the qpid interop test.
ensure_proton() {
    if ! "$NOVARPC_VENV/bin/python" -c "import proton" >/dev/null 2>&1; then
        echo "installing python-qpid-proton 0.40.0 into $NOVARPC_VENV"
        "$NOVARPC_VENV/bin/pip" install -q --disable-pip-version-check "python-qpid-proton==0.40.0" || return 1
    fi
    echo "python-qpid-proton $("$NOVARPC_VENV/bin/python" -c 'import proton; print(proton.VERSION)' 2>/dev/null | tr -d '(),' | tr ' ' '.') in $NOVARPC_VENV"
}

# RabbitMQ 4 (in a Debian trixie chroot) and Qpid Proton's example broker.
# shellcheck source=scripts/brokers-extra.sh
source "$(dirname "${BASH_SOURCE[0]}")/brokers-extra.sh"

# Brokers this run started, stopped again when it ends (`stop_started_brokers`).
NOVARPC_STARTED_BROKERS=()

# Like ensure_proton_broker, remembering whether this run started it.
ensure_proton_broker_for_run() {
    _proton_running || NOVARPC_STARTED_BROKERS+=(stop_proton_broker)
    ensure_proton_broker
}

# Like ensure_rabbitmq4, remembering whether this run started it.
ensure_rabbitmq4_for_run() {
    _rmq4_running || NOVARPC_STARTED_BROKERS+=(stop_rabbitmq4)
    ensure_rabbitmq4
}

stop_started_brokers() {
    local stop
    for stop in "${NOVARPC_STARTED_BROKERS[@]}"; do
        "$stop" || true
    done
}
