/* main.c: sb-gateway's configuration, startup and shutdown.
 *
 * Startup: read the configuration table, create the Kafka producer (shared by all threads; its
 * delivery reports come back to each thread's loop through that loop's bus_notifier), bind the
 * listening socket, and run one event loop per thread, each with its own evhttp server and
 * database connection. Shutdown (SIGINT/SIGTERM): each loop stops accepting and waits, bounded,
 * for its requests in flight to get their delivery reports and answers; then the producer is
 * flushed and destroyed, and the loops are freed. A second SIGINT exits at once.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/thread.h>

#include "gateway.h"
#include "sb-config.h"
#include "svc_lifecycle.h"
#include "svc_log.h"
#include "svc_util.h"

#define OFF(field) offsetof(gw_config_t, field)

static const svc_conf_entry_t gw_conf_table[] = {
    {SVC_CONF_STR, "listen", "127.0.0.1:8080", OFF(listen), "HTTP address and port (host:port)", 0,
     0, 0},
    {SVC_CONF_INT, "threads", "0", OFF(threads), "event-loop threads; 0 = one per CPU core", 0, 0,
     256},
    {SVC_CONF_STR, "pg_dsn", NULL, OFF(pg_dsn),
     "PostgreSQL connection string, for API key lookups (required)", SVC_CONF_SECRET, 0, 0},
    {SVC_CONF_STR, "key_pepper", NULL, OFF(key_pepper),
     "server-side secret that API key hashes are keyed with (required)", SVC_CONF_SECRET, 0, 0},
    {SVC_CONF_INT, "key_cache_ttl_ms", "30000", OFF(key_cache_ttl_ms),
     "how long an API key lookup is cached (a revoked key works at most this long)", 0, 0, 3600000},
    {SVC_CONF_INT, "key_cache_stale_ms", "600000", OFF(key_cache_stale_ms),
     "while PostgreSQL is unreachable, API keys checked within this long keep working (0: none)", 0,
     0, 86400000},
    {SVC_CONF_INT, "max_batch", "1000", OFF(max_batch), "most readings in one request", 0, 1,
     100000},
    {SVC_CONF_INT, "max_body_bytes", "1048576", OFF(max_body_bytes),
     "largest request body (413 beyond)", 0, 1024, 256 << 20},
    {SVC_CONF_INT, "max_header_bytes", "8192", OFF(max_header_bytes),
     "largest request line plus headers (431 beyond)", 0, 1024, 1 << 20},
    {SVC_CONF_INT, "request_timeout_ms", "10000", OFF(request_timeout_ms),
     "time to receive a whole request (408 beyond); idle keep-alive connections close 1 s later", 0,
     100, 600000},
    {SVC_CONF_INT, "max_connections", "10000", OFF(max_connections),
     "open client connections; more are answered 503 and closed", 0, 1, 1000000},
    {SVC_CONF_INT, "produce_timeout_ms", "5000", OFF(produce_timeout_ms),
     "time for Kafka to acknowledge a request's readings (503 + Retry-After beyond)", 0, 100,
     600000},
    {SVC_CONF_STR, "topic", "sensor.readings.v1", OFF(topic), "Kafka topic for readings", 0, 0, 0},
    {SVC_CONF_STR, "log_level", "info", OFF(log_level), "debug, info, warn or error", 0, 0, 0},
    {SVC_CONF_STR, "jwt_secret", NULL, OFF(jwt_secret),
     "HS256 key that people's access tokens are signed with, at least 32 bytes (required with "
     "jwt_alg HS256)",
     SVC_CONF_SECRET, 0, 0},
    {SVC_CONF_STR, "jwt_issuer", "sensorbus", OFF(jwt_issuer), "access tokens' iss claim", 0, 0, 0},
    {SVC_CONF_STR, "jwt_audience", "sensorbus-api", OFF(jwt_audience), "access tokens' aud claim",
     0, 0, 0},
    {SVC_CONF_INT, "access_ttl_s", "900", OFF(access_ttl_s), "access token lifetime in seconds", 0,
     30, 86400},
    {SVC_CONF_INT, "refresh_ttl_s", "2592000", OFF(refresh_ttl_s),
     "refresh token lifetime in seconds", 0, 60, 31536000},
    {SVC_CONF_INT, "password_workers", "2", OFF(password_workers),
     "threads that hash and check passwords (argon2id), off the event loops", 0, 1, 64},
    {SVC_CONF_STR, "cors_origins", "", OFF(cors_origins),
     "browser origins allowed by CORS: empty (none), \"*\" (any: development only) or a "
     "comma-separated allow-list such as https://app.example.com",
     0, 0, 0},
    {SVC_CONF_INT, "key_rate_per_s", "1000", OFF(key_rate_per_s),
     "requests per second per API key (token bucket refill; 0 = unlimited)", 0, 0, 10000000},
    {SVC_CONF_INT, "key_rate_burst", "2000", OFF(key_rate_burst),
     "requests an idle API key may send at once (token bucket size)", 0, 1, 10000000},
    {SVC_CONF_INT, "user_rate_per_s", "50", OFF(user_rate_per_s),
     "requests per second per person (token bucket refill; 0 = unlimited)", 0, 0, 10000000},
    {SVC_CONF_INT, "user_rate_burst", "100", OFF(user_rate_burst),
     "requests an idle person may send at once (token bucket size)", 0, 1, 10000000},
    {SVC_CONF_STR, "redis_url", "", OFF(redis_url),
     "Redis for the dashboard's live aggregates (redis://host:port/db); empty = PostgreSQL only",
     SVC_CONF_SECRET, 0, 0},
    {SVC_CONF_STR, "orders_topic", "orders.v1", OFF(orders_topic), "Kafka topic for orders", 0, 0,
     0},
    {SVC_CONF_STR, "jwt_alg", "HS256", OFF(jwt_alg),
     "how access tokens are signed: HS256 (jwt_secret), RS256 or ES256 (jwt_private_key_file)", 0,
     0, 0},
    {SVC_CONF_STR, "jwt_private_key_file", "", OFF(jwt_private_key_file),
     "PEM private key (RSA >= 2048 bits or EC P-256) for jwt_alg RS256 or ES256", 0, 0, 0},
    {SVC_CONF_STR, "oidc_issuer", "", OFF(oidc_issuer),
     "an external OIDC issuer whose tokens are accepted too (its iss); empty = none", 0, 0, 0},
    {SVC_CONF_STR, "oidc_audience", "", OFF(oidc_audience),
     "the aud the external issuer's tokens must carry (Cognito: the app client id)", 0, 0, 0},
    {SVC_CONF_STR, "oidc_jwks_file", "", OFF(oidc_jwks_file),
     "the external issuer's signing keys, a JWKS file (its /.well-known/jwks.json)", 0, 0, 0},
    {SVC_CONF_STR, "oidc_org_claim", "custom:org", OFF(oidc_org_claim),
     "the external token's claim holding the sensorbus organization id", 0, 0, 0},
    {SVC_CONF_STR, "oidc_roles_claim", "cognito:groups", OFF(oidc_roles_claim),
     "the external token's claim listing the caller's groups", 0, 0, 0},
    {SVC_CONF_STR, "oidc_role_map", "", OFF(oidc_role_map),
     "which of the issuer's groups grant which role: group=admin|operator|viewer,... (others are "
     "ignored)",
     0, 0, 0},
    {SVC_CONF_END, NULL, NULL, 0, NULL, 0, 0, 0},
};

/* Splits cors_origins into gw->cors_origins (NULL when empty). */
static int cors_parse(gw_t *gw)
{
    const char *s = gw->cfg.cors_origins;
    size_t n = 1, i = 0;

    if (!s || !*s)
        return 0;
    for (const char *c = s; *c; c++)
        n += *c == ',';
    gw->cors_origins = calloc(n + 1, sizeof(char *));
    if (!gw->cors_origins)
        return -ENOMEM;
    while (*s) {
        size_t len = strcspn(s, ",");
        const char *b = s, *e = s + len;

        while (b < e && *b == ' ')
            b++;
        while (e > b && e[-1] == ' ')
            e--;
        if (e > b && !(gw->cors_origins[i++] = strndup(b, (size_t)(e - b))))
            return -ENOMEM;
        s += len + (s[len] == ',');
    }
    return 0;
}

static void cors_free(gw_t *gw)
{
    for (char **o = gw->cors_origins; o && *o; o++)
        free(*o);
    free(gw->cors_origins);
}

/* librdkafka's log lines, as ours. Its levels are syslog's. */
static void kafka_log(int level, const char *fac, const char *msg)
{
    svc_log_level_t l = level <= 3   ? SVC_LOG_ERROR
                        : level == 4 ? SVC_LOG_WARN
                        : level <= 6 ? SVC_LOG_INFO
                                     : SVC_LOG_DEBUG;

    svc_log(l, "kafka %s: %s", fac, msg);
}

static int check_config(gw_t *gw)
{
    const gw_config_t *cfg = &gw->cfg;

    if (!cfg->key_pepper || !*cfg->key_pepper) {
        log_error("key_pepper is required: set SB_GATEWAY_KEY_PEPPER or SB_GATEWAY_KEY_PEPPER_FILE "
                  "(the secret API key hashes were made with)");
        return -EINVAL;
    }
    if (!cfg->pg_dsn || !*cfg->pg_dsn) {
        log_error("pg_dsn is required: set SB_GATEWAY_PG_DSN or SB_GATEWAY_PG_DSN_FILE");
        return -EINVAL;
    }
    if (strcmp(cfg->jwt_alg, "HS256") == 0 &&
        (!cfg->jwt_secret || strlen(cfg->jwt_secret) < AUTH_JWT_HS_SECRET_MIN)) {
        log_error("jwt_secret is required and must be at least %d bytes: set "
                  "SB_GATEWAY_JWT_SECRET or SB_GATEWAY_JWT_SECRET_FILE (the key people's access "
                  "tokens are signed with)",
                  AUTH_JWT_HS_SECRET_MIN);
        return -EINVAL;
    }
    if (!cfg->jwt_issuer || !*cfg->jwt_issuer || !cfg->jwt_audience || !*cfg->jwt_audience) {
        log_error("jwt_issuer and jwt_audience must not be empty");
        return -EINVAL;
    }
    if (!cfg->topic || !*cfg->topic) {
        log_error("topic must not be empty");
        return -EINVAL;
    }
    /* Sensible defaults for a local stack; every kafka.* key overrides them. */
    if (!svc_conf_kafka_get(gw->conf, "bootstrap.servers") &&
        svc_conf_kafka_set(gw->conf, "bootstrap.servers", "127.0.0.1:9092") < 0)
        return -ENOMEM;
    if (!svc_conf_kafka_get(gw->conf, "client.id") &&
        svc_conf_kafka_set(gw->conf, "client.id", "sb-gateway") < 0)
        return -ENOMEM;
    /* Every HTTP answer waits for its records' acks, so the linger time is paid on every
     * request: with 5 ms (librdkafka's default) a keep-alive client is capped near 1/6 ms. At
     * 1 ms, records still batch under load (they queue while a request is in flight), and
     * scripts/bench measured 2.6x the single-reading throughput on 2 cores. */
    if (!svc_conf_kafka_get(gw->conf, "linger.ms") &&
        svc_conf_kafka_set(gw->conf, "linger.ms", "1") < 0)
        return -ENOMEM;
    return 0;
}

int main(int argc, char **argv)
{
    svc_conf_section_t sections[] = {{gw_conf_table, NULL}};
    gw_t gw = {.listen_fd = -1};
    svc_log_level_t level;
    size_t started = 0;
    char err[512];
    int cores;
    int r, status = 1;

    sections[0].target = &gw.cfg;
    svc_log_init("gateway", SVC_LOG_INFO);
    r = svc_conf_load("gateway",
                      "sb-gateway: authenticates devices and puts their readings on Kafka",
                      sections, 1, argc, argv, &gw.conf, err, sizeof(err));
    if (r == 1)
        return 0;
    if (r < 0) {
        log_error("configuration: %s", err);
        return 2;
    }
    if (svc_log_level_parse(gw.cfg.log_level, &level) < 0) {
        log_error("log_level must be debug, info, warn or error, not \"%s\"", gw.cfg.log_level);
        status = 2;
        goto out;
    }
    svc_log_init("gateway", level);
    if (check_config(&gw) < 0) {
        status = 2;
        goto out;
    }

    /* Delivery reports are handed to the loops from the producer's poll thread, which needs
     * libevent's locking switched on before any base exists. */
    if (evthread_use_pthreads() < 0 || svc_lifecycle_init() < 0) {
        log_error("cannot set up threads or signal handling");
        goto out;
    }
    /* One loop per CPU the process may use: a container's CPU limit, not the node's cores. */
    cores = svc_cpu_count();
    gw.nloops = gw.cfg.threads > 0 ? (size_t)gw.cfg.threads : (size_t)cores;

    if (gw_auth_init(&gw) < 0)
        goto out;
    if (gw_metrics_init(&gw.metrics, svc_metrics_default()) < 0 ||
        gw_keycache_new(gw.cfg.key_cache_ttl_ms, gw.cfg.key_cache_stale_ms, 100000, &gw.keys) < 0 ||
        gw_ratelimit_new(&gw.ratelimit) < 0 || cors_parse(&gw) < 0) {
        log_error("out of memory");
        goto out;
    }
    bus_set_log_fn(kafka_log);
    if (bus_producer_new(gw.conf, &gw.producer, err, sizeof(err)) < 0) {
        log_error("cannot create the Kafka producer: %s", err);
        goto out;
    }
    gw.loops = calloc(gw.nloops, sizeof(*gw.loops));
    if (!gw.loops || gw_server_listen(&gw) < 0)
        goto out;
    for (size_t i = 0; i < gw.nloops; i++) {
        gw.loops[i].gw = &gw;
        gw.loops[i].index = i;
        r = gw_loop_init(&gw.loops[i]);
        if (r < 0) {
            log_error("cannot set up event loop %zu: %s", i, strerror(-r));
            goto out;
        }
    }
    /* Each loop accepts on its own dup(): with ours closed, the socket closes as soon as the
     * last loop stops accepting at shutdown, so new clients are refused at once instead of
     * queueing on a socket nobody will accept from. */
    close(gw.listen_fd);
    gw.listen_fd = -1;
    for (; started < gw.nloops; started++) {
        r = pthread_create(&gw.loops[started].thread, NULL, gw_loop_run, &gw.loops[started]);
        if (r != 0) {
            log_error("cannot start thread %zu: %s", started, strerror(r));
            svc_request_stop();
            break;
        }
    }
    if (started == gw.nloops) {
        log_info("sb-gateway %s ready on %s, producing to %s", SB_VERSION, gw.cfg.listen,
                 gw.cfg.topic);
        status = 0;
    }
    for (size_t i = 0; i < started; i++)
        pthread_join(gw.loops[i].thread, NULL);
    log_info("stopped accepting; flushing the producer");

out:
    /* Before the loops are torn down: a password job still running would activate an event on
     * a freed base. */
    gw_auth_stop(&gw);
    if (gw.producer) {
        if (bus_producer_flush(gw.producer, (int)gw.cfg.produce_timeout_ms) < 0)
            log_warn("%d records were still undelivered at shutdown",
                     bus_producer_outq_len(gw.producer));
        bus_producer_free(gw.producer, 0);
    }
    for (size_t i = 0; gw.loops && i < gw.nloops; i++)
        gw_loop_teardown(&gw.loops[i]);
    free(gw.loops);
    free(gw.conns);
    if (gw.listen_fd >= 0)
        close(gw.listen_fd);
    gw_keycache_free(gw.keys);
    gw_ratelimit_free(gw.ratelimit);
    cors_free(&gw);
    gw_auth_free(&gw);
    svc_conf_free(gw.conf);
    svc_conf_target_free(gw_conf_table, &gw.cfg);
    if (atomic_load(&gw.producer_failed))
        status = 1;
    if (status == 0)
        log_info("bye");
    return status;
}
