# shellcheck shell=bash
# Variables set here are read by the other files of scripts/ (shellcheck sees one file).
# shellcheck disable=SC2034,SC2153
# scripts/lib/components.sh: PostgreSQL, Redis, Kafka (KRaft) and S3Proxy as local processes.
# Sourced by common.sh. Each component has _launch (start it unless it runs), _wait (poll a
# real readiness check with a deadline), _stop and _status.

# --- PostgreSQL --------------------------------------------------------------------------------
# A throwaway cluster run as user postgres (PostgreSQL refuses root). Roles log in over TCP on
# 127.0.0.1 with a password (scram-sha-256); the postgres superuser only over the cluster's own
# unix socket (peer). The roles (docs/tenancy.md):
#   sb          owns the database and the tables; runs the migrations, sbctl and the consumer
#               daemons. BYPASSRLS, because those write every tenant's rows.
#   sb_api      NOLOGIN: exactly the privileges the HTTP API needs (sql/0009_rls.sql grants them).
#   sb_gateway  the gateway's login, a member of sb_api. It owns nothing, so row-level security
#               always applies to it.

sb_pg_bindir() {
    local dir
    dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
        sort -V | tail -n 1)
    [[ -x $dir/pg_ctl ]] || sb_die "PostgreSQL server binaries not found under /usr/lib/postgresql"
    printf '%s\n' "$dir"
}

sb_pg_paths() {
    SB_PG_DIR=$SB_RUN_DIR/pg
    SB_PG_DATA=$SB_PG_DIR/data
    SB_PG_SOCK=$SB_PG_DIR/sock
    SB_PG_LOG=$SB_LOG_DIR/postgres.log
    SB_PG_BIN=$(sb_pg_bindir)
}

# Runs a command as postgres from / (root's working directory may be closed to it).
sb_as_postgres() { (cd / && runuser -u postgres -- "$@"); }

# The postgres user must be able to reach the data directory: grant others traversal (o+x) of
# each parent directory that it cannot pass, top-down, saying so.
sb_pg_path_open() {
    local dir=${1%/*} path='' part
    local -a parts
    IFS=/ read -r -a parts <<<"${dir#/}"
    for part in "${parts[@]}"; do
        path+=/$part
        if ! sb_as_postgres test -x "$path"; then
            sb_warn "granting others traversal (o+x) of $path so that user postgres reaches $1"
            chmod o+x "$path"
        fi
    done
}

sb_pg_init() {
    [[ -f $SB_PG_DATA/PG_VERSION ]] && return 0
    id postgres >/dev/null 2>&1 || sb_die "user postgres does not exist (install postgresql)"
    sb_info "creating the PostgreSQL cluster in $SB_PG_DATA (once)"
    rm -rf "$SB_PG_DIR"
    mkdir -p "$SB_PG_DIR"
    chown postgres: "$SB_PG_DIR"
    chmod 700 "$SB_PG_DIR"
    sb_pg_path_open "$SB_PG_DIR"
    sb_as_postgres "$SB_PG_BIN/initdb" -D "$SB_PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >"$SB_LOG_DIR/initdb.log" 2>&1 || {
        sb_log_tail "$SB_LOG_DIR/initdb.log"
        sb_die "initdb failed"
    }
    # Ports and paths live in a file rewritten at every start, so changing a port needs no
    # new cluster.
    printf "\ninclude_if_exists = 'sensorbus.conf'\n" >>"$SB_PG_DATA/postgresql.conf"
}

sb_pg_running() { sb_as_postgres "$SB_PG_BIN/pg_ctl" -D "$SB_PG_DATA" status >/dev/null 2>&1; }

sb_pg_launch() {
    sb_pg_paths
    sb_pg_init
    sb_pg_running && return 0
    sb_port_check_free PostgreSQL "$SB_PG_PORT"
    sb_as_postgres mkdir -p "$SB_PG_SOCK"
    sb_as_postgres tee "$SB_PG_DATA/sensorbus.conf" >/dev/null <<EOF
# Written by scripts/stack at every start.
listen_addresses = '127.0.0.1'
port = $SB_PG_PORT
unix_socket_directories = '$SB_PG_SOCK'
password_encryption = 'scram-sha-256'
EOF
    touch "$SB_PG_LOG"
    chown postgres: "$SB_PG_LOG"
    sb_info "starting PostgreSQL on 127.0.0.1:$SB_PG_PORT"
    # pg_ctl forks the server out of this process group itself.
    sb_as_postgres "$SB_PG_BIN/pg_ctl" -D "$SB_PG_DATA" -l "$SB_PG_LOG" -W start >/dev/null
}

# The superuser's psql over the cluster's unix socket; SQL on stdin.
sb_pg_psql_admin() {
    sb_as_postgres psql -h "$SB_PG_SOCK" -p "$SB_PG_PORT" -d postgres -v ON_ERROR_STOP=1 -qAt
}

sb_pg_wait() {
    local pid
    sb_pg_paths
    pid=$(head -n 1 "$SB_PG_DATA/postmaster.pid" 2>/dev/null || true)
    sb_wait_ready PostgreSQL 60 "$pid" "$SB_PG_LOG" \
        pg_isready -q -h 127.0.0.1 -p "$SB_PG_PORT" -d postgres
    # Passwords follow the secret files; every statement is a no-op when done.
    sb_pg_psql_admin >/dev/null <<EOF || sb_die "could not create the roles and the database"
SET client_min_messages = warning;
SELECT 'CREATE ROLE sb LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sb')\\gexec
ALTER ROLE sb LOGIN BYPASSRLS PASSWORD '$SB_PG_PASSWORD';
SELECT 'CREATE ROLE sb_api NOLOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sb_api')\\gexec
SELECT 'CREATE ROLE sb_gateway LOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sb_gateway')\\gexec
ALTER ROLE sb_gateway LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE
    PASSWORD '$(sb_secret pg_gateway_password 24)';
GRANT sb_api TO sb_gateway;
SELECT 'CREATE DATABASE sensorbus OWNER sb'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'sensorbus')\\gexec
EOF
    psql "$SB_PG_DSN" -qAt -c 'SELECT 1' >/dev/null ||
        sb_die "PostgreSQL is up but role sb does not log in ($SB_PG_DSN)"
    psql "$(sb_pg_gateway_dsn)" -qAt -c 'SELECT 1' >/dev/null ||
        sb_die "PostgreSQL is up but role sb_gateway does not log in"
    sb_info "PostgreSQL ready"
}

# The gateway's DSN: role sb_gateway, whose password is generated once into the secrets dir.
sb_pg_gateway_dsn() {
    printf 'postgresql://sb_gateway:%s@127.0.0.1:%s/sensorbus' \
        "$(sb_secret pg_gateway_password 24)" "$SB_PG_PORT"
}

sb_pg_stop() {
    sb_pg_paths
    [[ -f $SB_PG_DATA/PG_VERSION ]] && sb_pg_running || return 0
    sb_as_postgres "$SB_PG_BIN/pg_ctl" -D "$SB_PG_DATA" -m fast -w -t 60 stop >/dev/null
    sb_info "PostgreSQL stopped"
}

sb_pg_status() {
    sb_pg_paths
    if [[ -f $SB_PG_DATA/PG_VERSION ]] && sb_pg_running; then
        sb_status_line pg "running (pid $(head -n 1 "$SB_PG_DATA/postmaster.pid"))" \
            "127.0.0.1:$SB_PG_PORT"
    else
        sb_status_line pg stopped "127.0.0.1:$SB_PG_PORT"
    fi
}

# --- Redis -------------------------------------------------------------------------------------

sb_redis_launch() {
    sb_pid redis redis-server >/dev/null && return 0
    sb_port_check_free Redis "$SB_REDIS_PORT"
    mkdir -p "$SB_RUN_DIR/redis"
    sb_info "starting Redis on 127.0.0.1:$SB_REDIS_PORT"
    sb_spawn redis "$SB_LOG_DIR/redis.log" redis-server --port "$SB_REDIS_PORT" \
        --bind 127.0.0.1 --dir "$SB_RUN_DIR/redis" --save '' --appendonly yes \
        --daemonize no --logfile ''
}

sb_redis_ping() { [[ $(redis-cli -h 127.0.0.1 -p "$SB_REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

sb_redis_wait() {
    sb_wait_ready Redis 30 "$(sb_pid redis redis-server || true)" "$SB_LOG_DIR/redis.log" \
        sb_redis_ping
    sb_info "Redis ready"
}

# SIGTERM makes Redis flush the append-only file and exit (no RDB snapshot: --save '').
sb_redis_stop() { sb_proc_stop redis redis-server 20; }

sb_redis_status() { sb_proc_status redis redis-server "127.0.0.1:$SB_REDIS_PORT"; }

# --- Kafka -------------------------------------------------------------------------------------
# One KRaft node that is both broker and controller, from the Maven Central jars.

SB_KAFKA_MARKER=kafka.Kafka

sb_kafka_paths() {
    SB_KAFKA_DIR=$SB_RUN_DIR/kafka
    SB_KAFKA_LOG=$SB_LOG_DIR/kafka.log
}

# The JVM command for a Kafka main class; arguments follow.
sb_kafka_java() {
    SB_KAFKA_JAVA=(java -Xmx512m -Xms256m -Djava.awt.headless=true
        -Dlog4j.configuration="file:$SB_KAFKA_DIR/log4j.properties"
        -cp "$SB_JAR_DIR_KAFKA/libs/*" "$@")
}

sb_kafka_config_write() {
    cat >"$SB_KAFKA_DIR/server.properties" <<EOF
# Written by scripts/stack at every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$SB_KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$SB_KAFKA_PORT,CONTROLLER://127.0.0.1:$SB_KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$SB_KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$SB_KAFKA_DIR/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
EOF
    cat >"$SB_KAFKA_DIR/log4j.properties" <<EOF
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$SB_KAFKA_LOG
log4j.appender.file.Append=true
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
EOF
}

# Formats the storage once, with a cluster id kept beside it.
sb_kafka_format() {
    local id_file=$SB_KAFKA_DIR/cluster_id
    [[ -f $SB_KAFKA_DIR/data/meta.properties ]] && return 0
    if [[ ! -s $id_file ]]; then
        sb_kafka_java kafka.tools.StorageTool random-uuid
        "${SB_KAFKA_JAVA[@]}" >"$id_file" 2>/dev/null || sb_die "kafka-storage random-uuid failed"
    fi
    sb_info "formatting Kafka storage (once, cluster id $(<"$id_file"))"
    sb_kafka_java kafka.tools.StorageTool format -t "$(<"$id_file")" \
        -c "$SB_KAFKA_DIR/server.properties"
    "${SB_KAFKA_JAVA[@]}" >>"$SB_LOG_DIR/kafka.out" 2>&1 || {
        sb_log_tail "$SB_LOG_DIR/kafka.out"
        sb_die "Kafka storage format failed"
    }
}

sb_kafka_launch() {
    sb_kafka_paths
    sb_pid kafka "$SB_KAFKA_MARKER" >/dev/null && return 0
    sb_port_check_free Kafka "$SB_KAFKA_PORT"
    sb_port_check_free "Kafka controller" "$SB_KAFKA_CONTROLLER_PORT"
    sb_fetch_jars
    mkdir -p "$SB_KAFKA_DIR/data"
    sb_kafka_config_write
    sb_kafka_format
    touch "$SB_KAFKA_LOG"
    # Readiness looks only at what this start logs.
    wc -l <"$SB_KAFKA_LOG" >"$SB_KAFKA_DIR/log_mark"
    sb_info "starting Kafka $SB_KAFKA_VERSION on 127.0.0.1:$SB_KAFKA_PORT"
    sb_kafka_java "$SB_KAFKA_MARKER" "$SB_KAFKA_DIR/server.properties"
    sb_spawn kafka "$SB_LOG_DIR/kafka.out" "${SB_KAFKA_JAVA[@]}"
}

sb_kafka_started() {
    tail -n +"$(($(<"$SB_KAFKA_DIR/log_mark") + 1))" "$SB_KAFKA_LOG" |
        grep -q 'Kafka Server started' &&
        kcat -b "$SB_KAFKA_BOOTSTRAP" -L -m 5 >/dev/null 2>&1
}

sb_kafka_wait() {
    sb_kafka_paths
    sb_wait_ready Kafka 120 "$(sb_pid kafka "$SB_KAFKA_MARKER" || true)" "$SB_KAFKA_LOG" \
        sb_kafka_started
    sb_info "Kafka ready"
}

sb_kafka_stop() { sb_proc_stop kafka "$SB_KAFKA_MARKER" 60; }

sb_kafka_status() { sb_proc_status kafka "$SB_KAFKA_MARKER" "$SB_KAFKA_BOOTSTRAP"; }

# --- S3 (S3Proxy) ------------------------------------------------------------------------------
# Checks AWS SigV2/SigV4 signatures against a generated identity; stores objects as files.

SB_S3_MARKER=org.gaul.s3proxy.Main

sb_s3_launch() {
    local dir=$SB_RUN_DIR/s3
    sb_pid s3 "$SB_S3_MARKER" >/dev/null && return 0
    sb_port_check_free S3Proxy "$SB_S3_PORT"
    sb_fetch_jars
    # With the filesystem provider a bucket is a directory, and one that others may read is
    # served as public-read: keep everything owner-only (umask 077, here and for S3Proxy).
    (umask 077 && mkdir -p "$dir/data/$SB_S3_BUCKET")
    chmod -R go-rwx "$dir/data"
    (
        umask 077
        cat >"$dir/s3proxy.conf" <<EOF
s3proxy.endpoint=$SB_S3_ENDPOINT
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=$SB_S3_ACCESS_KEY
s3proxy.credential=$SB_S3_SECRET_KEY
jclouds.provider=filesystem-nio2
jclouds.filesystem.basedir=$dir/data
EOF
    )
    sb_info "starting S3Proxy $SB_S3PROXY_VERSION on $SB_S3_ENDPOINT"
    (
        umask 077
        sb_spawn s3 "$SB_LOG_DIR/s3proxy.log" java -Xmx256m -Djava.awt.headless=true \
            -cp "$SB_JAR_DIR_S3PROXY/libs/*" "$SB_S3_MARKER" --properties "$dir/s3proxy.conf"
    )
}

sb_s3_wait() {
    sb_wait_ready S3Proxy 60 "$(sb_pid s3 "$SB_S3_MARKER" || true)" "$SB_LOG_DIR/s3proxy.log" \
        sb_http_answers "$SB_S3_ENDPOINT/"
    sb_info "S3Proxy ready"
}

sb_s3_stop() { sb_proc_stop s3 "$SB_S3_MARKER" 20; }

sb_s3_status() { sb_proc_status s3 "$SB_S3_MARKER" "$SB_S3_ENDPOINT"; }

# --- status helpers ----------------------------------------------------------------------------

sb_status_line() { printf '%-14s %-22s %s\n' "$1" "$2" "$3"; }

sb_proc_status() {
    local pid
    if pid=$(sb_pid "$1" "$2"); then
        sb_status_line "$1" "running (pid $pid)" "$3"
    else
        sb_status_line "$1" stopped "$3"
    fi
}
