# shellcheck shell=bash
# Variables set here are read by the other files of scripts/ (shellcheck sees one file).
# shellcheck disable=SC2034,SC2153
# scripts/lib/common.sh: the local stack's shared functions, sourced by scripts/run,
# scripts/test and scripts/stack.
#
# Everything runs as plain processes on 127.0.0.1, each component's data, logs, pids and
# secrets under $SB_RUN_DIR. Every function is idempotent: running it twice does no harm, and
# a second start reuses the data (no re-download, no re-initdb, no re-format).
#
# Settings (each overridable from the environment; scripts/test sets its own):
#   SB_RUN_DIR SB_BUILD_DIR SB_CACHE_DIR SB_GATEWAY_PORT SB_KAFKA_PORT SB_KAFKA_CONTROLLER_PORT
#   SB_PG_PORT SB_REDIS_PORT SB_S3_PORT SB_INGEST_HEALTH_PORT SB_ANOMALY_HEALTH_PORT
#   SB_ORDERS_HEALTH_PORT SB_ARCHIVER_HEALTH_PORT SB_S3_BUCKET SB_TOPIC_PARTITIONS
#   SB_DAEMON_ENV: extra daemon settings, space-separated SB_<DAEMON>_<NAME>=VALUE words; each
#   goes to the daemon whose prefix it has (kept in stack.env, so restarts keep it).

SB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SB_KAFKA_VERSION=3.9.1
# The newest S3Proxy 2.x (2.x runs on Java 11+; this machine has Java 17).
SB_S3PROXY_VERSION=2.9.0

# The variables the stack defines. They are removed from the environment of every program the
# stack starts: a daemon rejects SB_<SERVICE>_* variables it does not declare, and
# SB_GATEWAY_PORT/SB_GATEWAY_URL fall under the gateway's prefix.
SB_STACK_VARS=(
    SB_RUN_DIR SB_BUILD_DIR SB_CACHE_DIR SB_GATEWAY_PORT SB_KAFKA_PORT SB_KAFKA_CONTROLLER_PORT
    SB_PG_PORT SB_REDIS_PORT SB_S3_PORT SB_INGEST_HEALTH_PORT SB_ANOMALY_HEALTH_PORT
    SB_ORDERS_HEALTH_PORT SB_ARCHIVER_HEALTH_PORT SB_S3_BUCKET SB_CORS_ORIGINS
    SB_TOPIC_PARTITIONS SB_GATEWAY_URL SB_DEMO_API_KEY SB_PG_DSN SB_PG_GATEWAY_DSN SB_KAFKA_BOOTSTRAP SB_REDIS_URL SB_S3_ENDPOINT
    SB_S3_ACCESS_KEY SB_S3_SECRET_KEY SB_KEY_PEPPER_FILE SB_JWT_SECRET_FILE SB_HEALTH_URL_GATEWAY
    SB_HEALTH_URL_SENSOR_INGEST SB_HEALTH_URL_ANOMALY_DETECTOR SB_HEALTH_URL_ORDER_PROCESSOR
    SB_HEALTH_URL_S3_ARCHIVER SB_DAEMON_ENV
)

sb_info() { printf '[sb] %s\n' "$*" >&2; }
sb_warn() { printf '[sb] WARN: %s\n' "$*" >&2; }
sb_die() {
    printf '[sb] ERROR: %s\n' "$*" >&2
    exit 1
}

# Fills in the defaults (the dev stack's) for every setting the environment leaves unset.
sb_env_defaults() {
    : "${SB_RUN_DIR:=$SB_ROOT/.run}"
    : "${SB_BUILD_DIR:=$SB_ROOT/build}"
    local home=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
    : "${SB_CACHE_DIR:=${XDG_CACHE_HOME:-$home/.cache}/sensorbus}"
    : "${SB_GATEWAY_PORT:=8080}"
    : "${SB_KAFKA_PORT:=19092}"
    : "${SB_KAFKA_CONTROLLER_PORT:=19093}"
    : "${SB_PG_PORT:=15432}"
    : "${SB_REDIS_PORT:=16379}"
    : "${SB_S3_PORT:=19000}"
    : "${SB_INGEST_HEALTH_PORT:=19101}"
    : "${SB_ANOMALY_HEALTH_PORT:=19102}"
    : "${SB_ORDERS_HEALTH_PORT:=19103}"
    : "${SB_ARCHIVER_HEALTH_PORT:=19104}"
    : "${SB_S3_BUCKET:=sensorbus-archive}"
    # Browsers may call the dev stack from any origin; scripts/test uses an allow-list.
    : "${SB_CORS_ORIGINS:=*}"
    : "${SB_TOPIC_PARTITIONS:=6}"
    : "${SB_DAEMON_ENV:=}"
    SB_SECRETS_DIR=$SB_RUN_DIR/secrets
    SB_LOG_DIR=$SB_RUN_DIR/logs
    SB_PID_DIR=$SB_RUN_DIR/pids
    SB_KEY_PEPPER_FILE=$SB_SECRETS_DIR/key_pepper
    SB_JWT_SECRET_FILE=$SB_SECRETS_DIR/jwt_secret
    SB_KAFKA_BOOTSTRAP=127.0.0.1:$SB_KAFKA_PORT
    SB_REDIS_URL=redis://127.0.0.1:$SB_REDIS_PORT/0
    SB_S3_ENDPOINT=http://127.0.0.1:$SB_S3_PORT
    SB_GATEWAY_URL=http://127.0.0.1:$SB_GATEWAY_PORT
    SB_JAR_DIR_KAFKA=$SB_CACHE_DIR/jars/kafka-$SB_KAFKA_VERSION
    SB_JAR_DIR_S3PROXY=$SB_CACHE_DIR/jars/s3proxy-$SB_S3PROXY_VERSION
}

# Sets, from $SB_RUN_DIR/stack.env, the variables the environment leaves unset, so that
# `scripts/stack` acting on an existing run dir finds the ports that stack was started with.
sb_env_load_saved() {
    local file=${SB_RUN_DIR:-$SB_ROOT/.run}/stack.env line name
    [[ -r $file ]] || return 0
    while IFS= read -r line; do
        name=${line%%=*}
        [[ $name =~ ^SB_[A-Z0-9_]+$ ]] || continue
        # The file is ours and every value in it is single-quoted (sb_quote).
        [[ -v $name ]] || eval "$line"
    done <"$file"
}

# Prints $1 single-quoted for the shell.
sb_quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

sb_dirs_make() {
    mkdir -p "$SB_RUN_DIR" "$SB_LOG_DIR" "$SB_PID_DIR"
    (umask 077 && mkdir -p "$SB_SECRETS_DIR")
}

# Prints the secret in $SB_SECRETS_DIR/$1, generating $2 random bytes (hex) the first time.
sb_secret() {
    local file=$SB_SECRETS_DIR/$1 bytes=$2
    if [[ ! -s $file ]]; then
        (umask 077 && od -An -vtx1 -N"$bytes" /dev/urandom | tr -d ' \n' >"$file.tmp" &&
            mv "$file.tmp" "$file")
    fi
    cat "$file"
}

sb_secrets_make() {
    sb_secret key_pepper 32 >/dev/null
    sb_secret jwt_secret 32 >/dev/null # HS256 key of people's access tokens
    SB_PG_PASSWORD=$(sb_secret pg_password 24)
    SB_PG_DSN="postgresql://sb:$SB_PG_PASSWORD@127.0.0.1:$SB_PG_PORT/sensorbus"
    # AWS-style identities: an upper-case access key, a longer secret.
    SB_S3_ACCESS_KEY=$(sb_secret s3_access_key 10 | tr 'a-f' 'A-F')
    SB_S3_SECRET_KEY=$(sb_secret s3_secret_key 20)
}

# --- processes ---------------------------------------------------------------------------------

sb_pidfile() { printf '%s/%s.pid' "$SB_PID_DIR" "$1"; }

# Prints the pid of component $1 when it runs and its command line contains $2 (so a reused
# pid never passes for ours); fails otherwise.
sb_pid() {
    local file pid state
    file=$(sb_pidfile "$1")
    [[ -r $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2" || return 1
    state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1) || return 1
    [[ $state != Z ]] || return 1
    printf '%s\n' "$pid"
}

sb_pid_running() {
    local state
    [[ -r /proc/$1/stat ]] || return 1
    state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
    [[ -n $state && $state != Z ]]
}

sb_port_busy() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

sb_port_check_free() {
    if sb_port_busy "$2"; then
        sb_die "$1: port 127.0.0.1:$2 is already in use by another process" \
            "(another stack? override its port variable)"
    fi
}

# Starts "$@" in its own session (Ctrl-C in the terminal reaches only the scripts, which stop
# the stack in order) with output appended to $2, and records its pid as component $1.
# The daemons get an environment without the stack's own variables.
sb_spawn() {
    local name=$1 log=$2 unset_args=() var
    shift 2
    for var in "${SB_STACK_VARS[@]}"; do unset_args+=(-u "$var"); done
    setsid env "${unset_args[@]}" "$@" </dev/null >>"$log" 2>&1 &
    printf '%s\n' "$!" >"$(sb_pidfile "$name")"
    # The stack outlives this shell's job table: no "Killed" notices when a test kills it.
    disown "$!"
}

sb_log_tail() {
    if [[ -r $1 ]]; then
        printf '[sb] --- last lines of %s ---\n' "$1" >&2
        tail -n 40 "$1" >&2
        printf '[sb] ---\n' >&2
    fi
}

# sb_wait_ready WHAT SECONDS PID LOG CMD...: polls CMD until it succeeds. Fails, showing the
# end of LOG, when PID exits first or the deadline passes.
sb_wait_ready() {
    local what=$1 secs=$2 pid=$3 log=$4 deadline
    shift 4
    deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [[ -n $pid ]] && ! sb_pid_running "$pid"; then
            sb_log_tail "$log"
            sb_die "$what exited while starting (log: $log)"
        fi
        if ((SECONDS >= deadline)); then
            sb_log_tail "$log"
            sb_die "$what was not ready after ${secs}s (log: $log)"
        fi
        sleep 0.2
    done
}

# sb_proc_stop NAME MARKER SECONDS: SIGTERM, then SIGKILL once the deadline passes.
sb_proc_stop() {
    local name=$1 marker=$2 secs=$3 pid deadline
    if ! pid=$(sb_pid "$name" "$marker"); then
        rm -f "$(sb_pidfile "$name")"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + secs))
    while sb_pid_running "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if sb_pid_running "$pid"; then
        sb_warn "$name (pid $pid) ignored SIGTERM for ${secs}s: sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while sb_pid_running "$pid"; do sleep 0.1; done
    fi
    rm -f "$(sb_pidfile "$name")"
    sb_info "$name stopped"
}

sb_http_answers() { [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "$1") != 000 ]]; }
sb_http_ok() { [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "$1") == 200 ]]; }

# --- installation ------------------------------------------------------------------------------

SB_APT_PACKAGES=(
    build-essential pkg-config meson ninja-build clang-format librdkafka-dev libevent-dev
    libpq-dev libjansson-dev libhiredis-dev libjwt-dev libssl-dev libcriterion-dev
    libargon2-dev libcurl4-openssl-dev zlib1g-dev libzstd-dev postgresql redis-server kcat
    wrk curl jq python3-venv python3-yaml
)

sb_apt_missing() {
    local pkg
    for pkg in "${SB_APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed ||
            printf '%s\n' "$pkg"
    done
    # Java and Maven may come from elsewhere than a Debian package: check the commands.
    command -v java >/dev/null || printf '%s\n' openjdk-17-jre-headless
    command -v mvn >/dev/null || printf '%s\n' maven
}

sb_install_deps() {
    local missing
    mapfile -t missing < <(sb_apt_missing)
    if ((${#missing[@]})); then
        ((EUID == 0)) || sb_die "missing packages (${missing[*]}); run as root to install them"
        sb_info "installing ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${missing[@]}"
    fi
    sb_venv_make
}

SB_REQUIREMENTS=$SB_ROOT/tests/requirements.txt

# The Python test venv; `pip install` runs again only when tests/requirements.txt changes.
sb_venv_make() {
    local venv=$SB_CACHE_DIR/venv hash stamp
    SB_VENV=$venv
    stamp=$venv/.sb-requirements.sha256
    if ! "$venv/bin/python" -c '' 2>/dev/null; then
        sb_info "creating the Python venv in $venv"
        rm -rf "$venv"
        python3 -m venv "$venv" ||
            sb_die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    fi
    [[ -r $SB_REQUIREMENTS ]] || return 0
    hash=$(sha256sum "$SB_REQUIREMENTS" | cut -d' ' -f1)
    [[ -r $stamp && $(<"$stamp") == "$hash" ]] && return 0
    sb_info "installing Python test dependencies (tests/requirements.txt)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$SB_REQUIREMENTS"
    printf '%s\n' "$hash" >"$stamp"
}

# sb_jars_fetch DIR COORD...: the runtime classpath of the Maven coordinates (group:artifact:
# version) copied into DIR/libs, from Maven Central through the local Maven repository.
sb_jars_fetch() {
    local dir=$1 coord group artifact version deps=''
    shift
    [[ -f $dir/.complete ]] && return 0
    for coord in "$@"; do
        IFS=: read -r group artifact version <<<"$coord"
        deps+="<dependency><groupId>$group</groupId><artifactId>$artifact</artifactId>"
        deps+="<version>$version</version></dependency>"
    done
    sb_info "fetching ${dir##*/} from Maven Central (once; cached in $dir)"
    rm -rf "$dir"
    mkdir -p "$dir/pom"
    cat >"$dir/pom/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.sensorbus.local</groupId>
  <artifactId>${dir##*/}</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>$deps</dependencies>
  <build><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId>
    <artifactId>maven-dependency-plugin</artifactId>
    <version>3.6.1</version>
  </plugin></plugins></build>
</project>
EOF
    mvn -q -B -f "$dir/pom/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$dir/libs" >"$dir/mvn.log" 2>&1 || {
        sb_log_tail "$dir/mvn.log"
        sb_die "Maven could not fetch ${dir##*/} (is Maven Central reachable?)"
    }
    touch "$dir/.complete"
}

sb_fetch_jars() {
    # Kafka 3.x declares its logging backend compile-only: add it, or the broker can die
    # with NoClassDefFoundError.
    sb_jars_fetch "$SB_JAR_DIR_KAFKA" "org.apache.kafka:kafka_2.13:$SB_KAFKA_VERSION" \
        org.slf4j:slf4j-reload4j:1.7.36 ch.qos.reload4j:reload4j:1.2.25
    sb_jars_fetch "$SB_JAR_DIR_S3PROXY" "org.gaul:s3proxy:$SB_S3PROXY_VERSION"
}

# sb_build DIR [MESON OPTION...]: configures DIR once (or applies changed options) and builds.
sb_build() {
    local dir=$1
    shift
    if [[ ! -f $dir/build.ninja ]]; then
        sb_info "configuring $dir"
        meson setup "$dir" "$SB_ROOT" "$@" >/dev/null || sb_die "meson setup $dir failed"
    elif (($#)); then
        meson configure "$dir" "$@" >/dev/null || sb_die "meson configure $dir failed"
    fi
    sb_info "building $dir"
    ninja -C "$dir" >"$dir/sb-build.log" 2>&1 || {
        tail -n 60 "$dir/sb-build.log" >&2
        sb_die "the build failed (full log: $dir/sb-build.log)"
    }
}

# shellcheck source=scripts/lib/components.sh
source "$SB_ROOT/scripts/lib/components.sh"
# shellcheck source=scripts/lib/daemons.sh
source "$SB_ROOT/scripts/lib/daemons.sh"

# --- the whole stack ---------------------------------------------------------------------------

SB_COMPONENTS=(pg redis kafka s3)

sb_component_check() {
    [[ " ${SB_COMPONENTS[*]} " == *" $1 "* ]] ||
        sb_die "unknown component '$1' (one of: ${SB_COMPONENTS[*]})"
}

sb_component_start() {
    sb_component_check "$1"
    "sb_$1_launch"
    "sb_$1_wait"
}

sb_component_stop() {
    sb_component_check "$1"
    "sb_$1_stop"
}

# Writes $SB_RUN_DIR/stack.env: what a client (a person, a test) needs to reach the stack.
sb_stack_env_write() {
    local file=$SB_RUN_DIR/stack.env var
    local vars=(
        SB_GATEWAY_URL SB_DEMO_API_KEY SB_PG_DSN SB_PG_GATEWAY_DSN SB_KAFKA_BOOTSTRAP SB_REDIS_URL
        SB_S3_ENDPOINT
        SB_S3_ACCESS_KEY SB_S3_SECRET_KEY SB_S3_BUCKET SB_KEY_PEPPER_FILE SB_JWT_SECRET_FILE
        SB_RUN_DIR SB_BUILD_DIR SB_GATEWAY_PORT SB_KAFKA_PORT SB_KAFKA_CONTROLLER_PORT SB_PG_PORT
        SB_REDIS_PORT SB_S3_PORT SB_INGEST_HEALTH_PORT SB_ANOMALY_HEALTH_PORT SB_ORDERS_HEALTH_PORT
        SB_ARCHIVER_HEALTH_PORT SB_TOPIC_PARTITIONS SB_CORS_ORIGINS SB_DAEMON_ENV
    )
    sb_daemon_health_urls
    vars+=("${SB_HEALTH_URL_VARS[@]}")
    SB_PG_GATEWAY_DSN=$(sb_pg_gateway_dsn)
    (
        umask 077
        {
            printf '# Written by scripts/stack: local dev secrets, never commit.\n'
            for var in "${vars[@]}"; do
                printf '%s=%s\n' "$var" "$(sb_quote "${!var-}")"
            done
        } >"$file.tmp"
        mv "$file.tmp" "$file"
    )
}

sb_stack_start() {
    local c
    sb_dirs_make
    sb_secrets_make
    sb_fetch_jars
    # Launch everything first, then wait: the JVMs start in parallel.
    for c in "${SB_COMPONENTS[@]}"; do "sb_${c}_launch"; done
    for c in "${SB_COMPONENTS[@]}"; do "sb_${c}_wait"; done
    sb_setup
    sb_daemons_start
    sb_stack_env_write
    sb_info "stack ready (run dir $SB_RUN_DIR)"
}

sb_stack_stop() {
    local i
    sb_daemons_stop
    for ((i = ${#SB_COMPONENTS[@]} - 1; i >= 0; i--)); do "sb_${SB_COMPONENTS[i]}_stop"; done
}

sb_stack_status() {
    local c
    for c in "${SB_COMPONENTS[@]}"; do "sb_${c}_status"; done
    sb_daemons_status
}
