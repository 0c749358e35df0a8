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
