# shellcheck shell=bash
# Variables set here are read by the other files of scripts/ (shellcheck sees one file).
# shellcheck disable=SC2034,SC2153
# scripts/lib/daemons.sh: the project's own daemons and the stack's one-time setup (migrations,
# topics, the demo tenant and API key). Sourced by common.sh.

# One line per daemon: name, binary under $SB_BUILD_DIR, the variable holding the port whose
# GET /readyz must answer 200, then its settings as NAME=VALUE. Each setting becomes the
# variable SB_<DAEMON>_<NAME> (svc_config's naming: "sensor-ingest" -> SB_SENSOR_INGEST_...);
# VALUE is one of: listen pg pg-gateway kafka redis pepper jwt-secret s3-endpoint s3-access-key
# s3-secret-key s3-secret-key-file s3-bucket cors (see sb_stack_value). Adding a daemon is adding a line.
SB_DAEMONS=(
    "gateway        sb-gateway        SB_GATEWAY_PORT        LISTEN=listen PG_DSN=pg-gateway KAFKA_BOOTSTRAP_SERVERS=kafka KEY_PEPPER_FILE=pepper JWT_SECRET_FILE=jwt-secret REDIS_URL=redis CORS_ORIGINS=cors"
    "sensor-ingest  sb-sensor-ingest  SB_INGEST_HEALTH_PORT  HEALTH_LISTEN=listen PG_DSN=pg REDIS_URL=redis KAFKA_BOOTSTRAP_SERVERS=kafka"
    "anomaly-detector  sb-anomaly-detector  SB_ANOMALY_HEALTH_PORT  HEALTH_LISTEN=listen PG_DSN=pg REDIS_URL=redis KAFKA_BOOTSTRAP_SERVERS=kafka"
    "order-processor  sb-order-processor  SB_ORDERS_HEALTH_PORT  HEALTH_LISTEN=listen PG_DSN=pg REDIS_URL=redis KAFKA_BOOTSTRAP_SERVERS=kafka"
    "s3-archiver  sb-s3-archiver  SB_ARCHIVER_HEALTH_PORT  HEALTH_LISTEN=listen KAFKA_BOOTSTRAP_SERVERS=kafka ENDPOINT=s3-endpoint ACCESS_KEY=s3-access-key SECRET_KEY_FILE=s3-secret-key-file BUCKET=s3-bucket"
)

SB_SBCTL_BIN=sbctl

# Reads daemon $1's line into D_NAME, D_BIN (absolute), D_PORT, D_PREFIX and D_SETTINGS.
sb_daemon_parse() {
    local line name bin portvar rest
    for line in "${SB_DAEMONS[@]}"; do
        read -r name bin portvar rest <<<"$line"
        [[ $name == "$1" ]] || continue
        D_NAME=$name
        D_BIN=$SB_BUILD_DIR/$bin
        D_PORT=${!portvar}
        D_PREFIX=SB_$(tr 'a-z-' 'A-Z_' <<<"$name")
        read -r -a D_SETTINGS <<<"$rest"
        return 0
    done
    sb_die "unknown daemon '$1' (one of: $(sb_daemon_names | tr '\n' ' '))"
}

sb_daemon_names() {
    local line
    for line in "${SB_DAEMONS[@]}"; do printf '%s\n' "${line%% *}"; done
}

# The value a daemon setting names; $2 is the daemon's health/listen port.
sb_stack_value() {
    case $1 in
    listen) printf '127.0.0.1:%s' "$2" ;;
    pg) printf '%s' "$SB_PG_DSN" ;;
    pg-gateway) sb_pg_gateway_dsn ;;
    kafka) printf '%s' "$SB_KAFKA_BOOTSTRAP" ;;
    redis) printf '%s' "$SB_REDIS_URL" ;;
    pepper) printf '%s' "$SB_KEY_PEPPER_FILE" ;;
    jwt-secret) printf '%s' "$SB_JWT_SECRET_FILE" ;;
    s3-endpoint) printf '%s' "$SB_S3_ENDPOINT" ;;
    s3-access-key) printf '%s' "$SB_S3_ACCESS_KEY" ;;
    s3-secret-key) printf '%s' "$SB_S3_SECRET_KEY" ;;
    s3-secret-key-file) printf '%s' "$SB_SECRETS_DIR/s3_secret_key" ;;
    s3-bucket) printf '%s' "$SB_S3_BUCKET" ;;
    cors) printf '%s' "$SB_CORS_ORIGINS" ;;
    *) sb_die "SB_DAEMONS names an unknown stack value '$1'" ;;
    esac
}

sb_daemon_log() { printf '%s/%s.log' "$SB_LOG_DIR" "$1"; }

# Starts daemon $1 unless it runs; does not wait.
sb_daemon_launch() {
    local setting env_args=()
    sb_daemon_parse "$1"
    sb_pid "$D_NAME" "$D_BIN" >/dev/null && return 0
    [[ -x $D_BIN ]] || sb_die "$D_NAME: $D_BIN is not built (run the build first)"
    sb_port_check_free "$D_NAME" "$D_PORT"
    for setting in "${D_SETTINGS[@]}"; do
        env_args+=("${D_PREFIX}_${setting%%=*}=$(sb_stack_value "${setting#*=}" "$D_PORT")")
    done
    for setting in $SB_DAEMON_ENV; do
        [[ $setting == "${D_PREFIX}"_*=* ]] && env_args+=("$setting")
    done
    sb_info "starting $D_NAME on 127.0.0.1:$D_PORT"
    sb_spawn "$D_NAME" "$(sb_daemon_log "$D_NAME")" "${env_args[@]}" "$D_BIN"
}

sb_daemon_wait() {
    local pid deadline=$((SECONDS + 5))
    sb_daemon_parse "$1"
    # Right after the spawn the process can still be the shell that is about to exec the daemon.
    until pid=$(sb_pid "$D_NAME" "$D_BIN") || ((SECONDS >= deadline)); do sleep 0.1; done
    [[ -n $pid ]] || {
        sb_log_tail "$(sb_daemon_log "$D_NAME")"
        sb_die "$D_NAME is not running (log: $(sb_daemon_log "$D_NAME"))"
    }
    sb_wait_ready "$D_NAME" 60 "$pid" "$(sb_daemon_log "$D_NAME")" \
        sb_http_ok "http://127.0.0.1:$D_PORT/readyz"
    sb_info "$D_NAME ready"
}

sb_daemon_start() {
    sb_daemon_launch "$1"
    sb_daemon_wait "$1"
}

sb_daemon_stop() {
    sb_daemon_parse "$1"
    sb_proc_stop "$D_NAME" "$D_BIN" 20
}

# Sends signal $2 (default KILL) to daemon $1, as a crash or an operator would. After KILL it
# waits until the process is gone.
sb_daemon_kill() {
    local sig=${2:-KILL} pid
    sb_daemon_parse "$1"
    pid=$(sb_pid "$D_NAME" "$D_BIN") || sb_die "$D_NAME is not running"
    kill -s "$sig" "$pid"
    sb_info "sent SIG${sig#SIG} to $D_NAME (pid $pid)"
    if [[ ${sig#SIG} == KILL ]]; then
        while sb_pid_running "$pid"; do sleep 0.1; done
        rm -f "$(sb_pidfile "$D_NAME")"
        # The main thread can be a zombie while other threads still exit and hold the sockets;
        # the port is free once the last of them is gone.
        local deadline=$((SECONDS + 10))
        while sb_port_busy "$D_PORT" && ((SECONDS < deadline)); do sleep 0.1; done
    fi
}

sb_daemons_start() {
    local name
    for name in $(sb_daemon_names); do sb_daemon_launch "$name"; done
    for name in $(sb_daemon_names); do sb_daemon_wait "$name"; done
}

sb_daemons_stop() {
    local names i
    mapfile -t names < <(sb_daemon_names)
    for ((i = ${#names[@]} - 1; i >= 0; i--)); do sb_daemon_stop "${names[i]}"; done
}

sb_daemons_status() {
    local name pid ready
    for name in $(sb_daemon_names); do
        sb_daemon_parse "$name"
        if pid=$(sb_pid "$D_NAME" "$D_BIN"); then
            ready=not-ready
            sb_http_ok "http://127.0.0.1:$D_PORT/readyz" && ready=ready
            sb_status_line "$D_NAME" "running (pid $pid)" "127.0.0.1:$D_PORT $ready"
        else
            sb_status_line "$D_NAME" stopped "127.0.0.1:$D_PORT"
        fi
    done
}

# Sets SB_HEALTH_URL_<DAEMON> for every daemon and lists those names in SB_HEALTH_URL_VARS.
# (Not SB_<DAEMON>_..., which the daemon would take for a setting of its own.)
sb_daemon_health_urls() {
    local name var
    SB_HEALTH_URL_VARS=()
    for name in $(sb_daemon_names); do
        sb_daemon_parse "$name"
        var=SB_HEALTH_URL_${D_PREFIX#SB_}
        printf -v "$var" 'http://127.0.0.1:%s/readyz' "$D_PORT"
        SB_HEALTH_URL_VARS+=("$var")
    done
}

# --- setup -------------------------------------------------------------------------------------

sb_sbctl() {
    local unset_args=() var
    for var in "${SB_STACK_VARS[@]}"; do unset_args+=(-u "$var"); done
    env "${unset_args[@]}" SB_RUN_DIR="$SB_RUN_DIR" SB_PG_DSN="$SB_PG_DSN" \
        SB_KAFKA_BOOTSTRAP="$SB_KAFKA_BOOTSTRAP" SB_KEY_PEPPER_FILE="$SB_KEY_PEPPER_FILE" \
        SB_TOPIC_PARTITIONS="$SB_TOPIC_PARTITIONS" "$SB_BUILD_DIR/$SB_SBCTL_BIN" "$@"
}

sb_psql() { psql "$SB_PG_DSN" -v ON_ERROR_STOP=1 -qAt "$@"; }

# Prints the stored demo key when it is still valid in this database.
sb_demo_key_stored() {
    local file=$SB_SECRETS_DIR/demo_api_key token prefix
    [[ -s $file ]] || return 1
    token=$(<"$file")
    prefix=${token#lok_}
    prefix=${prefix%%.*}
    [[ $prefix =~ ^[a-z2-7]{12}$ ]] || return 1
    [[ $(sb_psql -c "SELECT count(*) FROM api_keys WHERE prefix = '$prefix'
        AND revoked_at IS NULL" 2>/dev/null) == 1 ]] || return 1
    printf '%s\n' "$token"
}

sb_demo_make() {
    local file=$SB_SECRETS_DIR/demo_api_key token
    if [[ $(sb_psql -c "SELECT count(*) FROM organizations WHERE slug = 'demo'") == 0 ]]; then
        sb_sbctl orgs create demo >/dev/null || sb_die "sbctl orgs create demo failed"
    fi
    if [[ $(sb_psql -c "SELECT count(*) FROM projects p JOIN organizations o ON o.id = p.org_id
        WHERE o.slug = 'demo' AND p.slug = 'demo'") == 0 ]]; then
        sb_sbctl projects create demo demo >/dev/null || sb_die "sbctl projects create failed"
    fi
    if token=$(sb_demo_key_stored); then
        SB_DEMO_API_KEY=$token
        return 0
    fi
    sb_info "creating the demo API key (scopes ingest,read)"
    token=$(sb_sbctl keys create --org demo --project demo --name demo --scopes ingest,read) ||
        sb_die "sbctl keys create failed"
    [[ $token == lok_* ]] || sb_die "sbctl keys create printed no lok_ token"
    (umask 077 && printf '%s\n' "$token" >"$file")
    SB_DEMO_API_KEY=$token
}

# Migrations, topics, the demo organization, project and key: each step is a no-op when done.
sb_setup() {
    SB_DEMO_API_KEY=
    [[ -x $SB_BUILD_DIR/$SB_SBCTL_BIN ]] || sb_die "sbctl: $SB_BUILD_DIR/$SB_SBCTL_BIN is not built"
    sb_sbctl migrate || sb_die "sbctl migrate failed"
    sb_sbctl topics create || sb_die "sbctl topics create failed"
    sb_demo_make
}
