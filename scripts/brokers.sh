# Starts the brokers the tests need, idempotently. Sourced by scripts/test.

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
        if ! rabbitmqctl -q await_startup --timeout 120; then
            echo "error: RabbitMQ did not start; see /var/log/rabbitmq/" >&2
            return 1
        fi
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
