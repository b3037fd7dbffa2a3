/* sb-order-processor: orders.v1 commands -> PostgreSQL orders/order_events -> orders.events.v1.
 *
 * The single writer of order state. A batch of commands is applied in one transaction:
 *   1. the batch's organizations are locked in id order (order_store_lock_orgs()); commands of
 *      organizations that do not exist are dead-lettered;
 *   2. each command is applied by order_store_apply(): a command_id applied before (a
 *      redelivery) only queues its recorded events again; a new one is judged by the rules or the
 *      state machine and written with its events and its command_id;
 *   3. COMMIT; then the touched organizations' counts are rewritten in Redis (order_counts.h,
 *      never failing the batch), and the queued events are produced to orders.events.v1 and
 *      their acknowledgements awaited. Only then does the runtime store the offsets.
 * A crash anywhere before the offsets are stored redelivers the batch, and step 2 turns every
 * command already committed into a re-publication of the same events (same event_id): a change
 * is never applied twice and never goes unpublished. docs/orders.md walks through the windows.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bus_daemon.h"
#include "bus_producer.h"
#include "cache.h"
#include "db.h"
#include "order_codec.h"
#include "order_counts.h"
#include "order_store.h"
#include "svc_log.h"
#include "svc_util.h"

/* Longer than the producer's message.timeout.ms (10 s), so every report has arrived. */
#define OP_FLUSH_MS         15000
#define OP_REDIS_TIMEOUT_MS 500

typedef struct op_conf {
    char *pg_dsn;
    char *redis_url;
    char *events_topic;
    char *default_route;
} op_conf_t;

static const svc_conf_entry_t op_conf_table[] = {
    {SVC_CONF_STR, "pg_dsn", NULL, offsetof(op_conf_t, pg_dsn),
     "PostgreSQL connection string (libpq key=value or URI), required", SVC_CONF_SECRET, 0, 0},
    {SVC_CONF_STR, "redis_url", "redis://127.0.0.1:6379/0", offsetof(op_conf_t, redis_url),
     "Redis for the order counts, redis://[[user]:password@]host[:port][/db]", SVC_CONF_SECRET, 0,
     0},
    {SVC_CONF_STR, "events_topic", "orders.events.v1", offsetof(op_conf_t, events_topic),
     "topic the order events are produced to", 0, 0, 0},
    {SVC_CONF_STR, "default_route", "standard", offsetof(op_conf_t, default_route),
     "fulfilment route of orders whose customer has none", 0, 0, 0},
    {SVC_CONF_END, NULL, NULL, 0, NULL, 0, 0, 0},
};

/* One record of the batch. */
typedef struct op_cmd {
    bus_record_t *rec;
    order_command_t cmd;
    bool valid; /* decoded, not rejected before the transaction */
    /* A rejection decided inside the transaction: applied only once it committed, so that a
     * rolled-back attempt never leaves a record marked for the DLQ. "" when none. */
    char dlq[ORDER_REASON_MAX];
} op_cmd_t;

typedef struct op {
    bus_daemon_t *d;
    const op_conf_t *conf;
    db_t *db;
    cache_t *cache;
    order_counts_t *counts;
    svc_health_t *health;
    svc_metric_t *m_applied, *m_replayed, *m_refused, *m_rejected;
    op_cmd_t *cmds;
    size_t ncmds, cmdscap;
    order_events_t events; /* to publish once the batch committed */
    atomic_int delivery_errors;
    atomic_int last_delivery_error;
} op_t;

static int op_db_state(op_t *st, int r)
{
    svc_health_set(st->health, "db", db_connected(st->db));
    return r;
}

/* --- applying the batch ------------------------------------------------------------------------
 */

/* Decodes the batch into st->cmds; records that are not commands are rejected at once. */
static int op_decode(op_t *st, bus_record_t *recs, size_t n)
{
    if (n > st->cmdscap) {
        op_cmd_t *v = realloc(st->cmds, n * sizeof(*v));
        if (!v)
            return -ENOMEM;
        st->cmds = v;
        st->cmdscap = n;
    }
    st->ncmds = 0;
    for (size_t i = 0; i < n; i++) {
        op_cmd_t *c = &st->cmds[st->ncmds++];
        char reason[256];
        const void *hv;
        size_t hlen;

        *c = (op_cmd_t){.rec = &recs[i]};
        int r =
            order_command_decode(recs[i].value, recs[i].value_len, &c->cmd, reason, sizeof(reason));
        if (r == -ENOMEM)
            return r;
        if (r < 0) {
            bus_record_reject(&recs[i], "order_command.v1: %s", reason);
            continue;
        }
        /* The key puts the command in its order's partition, which is what keeps an order's
         * commands in sequence; a tenant header that disagrees with the body is a forgery. */
        if (recs[i].key_len != 36 || strncasecmp(recs[i].key, c->cmd.order_id, 36) != 0)
            bus_record_reject(&recs[i], "the record key must be the order id %s", c->cmd.order_id);
        else if (bus_record_header(&recs[i], "sb-org-id", &hv, &hlen) == 0 &&
                 (hlen != 36 || strncasecmp(hv, c->cmd.org_id, 36) != 0))
            bus_record_reject(&recs[i], "header sb-org-id does not match org_id %s", c->cmd.org_id);
        else
            c->valid = true;
        if (!c->valid)
            order_command_clear(&c->cmd);
    }
    return 0;
}

/* Locks the batch's organizations; commands of organizations that do not exist get a DLQ
 * reason. */
static int op_lock_orgs(op_t *st)
{
    char *orgs = malloc(st->ncmds * 37 + 3);
    PGresult *res = NULL;
    size_t len = 0;
    int r;

    if (!orgs)
        return -ENOMEM;
    orgs[len++] = '{';
    for (size_t i = 0; i < st->ncmds; i++) {
        orgs[len] = '\0';
        if (st->cmds[i].valid && !strstr(orgs, st->cmds[i].cmd.org_id))
            len += (size_t)sprintf(orgs + len, "%s%s", len > 1 ? "," : "", st->cmds[i].cmd.org_id);
    }
    strcpy(orgs + len, "}");
    r = order_store_lock_orgs(st->db, orgs, &res);
    free(orgs);
    if (r < 0)
        return r;
    for (size_t i = 0; i < st->ncmds; i++) {
        op_cmd_t *c = &st->cmds[i];
        bool known = false;
        for (int j = 0; c->valid && j < PQntuples(res) && !known; j++)
            known = !strcmp(PQgetvalue(res, j, 0), c->cmd.org_id);
        if (c->valid && !known)
            snprintf(c->dlq, sizeof(c->dlq), "unknown organization %s", c->cmd.org_id);
    }
    PQclear(res);
    return 0;
}

/* Applies one command and counts and logs what it did. */
static int op_apply_one(op_t *st, op_cmd_t *c)
{
    order_store_cmd_t sc = {.cmd = &c->cmd,
                            .partition = c->rec->partition,
                            .offset = c->rec->offset,
                            .default_route = st->conf->default_route};
    order_outcome_t outcome;
    order_status_t status = ORDER_NSTATUS;
    char why[ORDER_REASON_MAX];
    int r = order_store_apply(st->db, &sc, &st->events, &outcome, &status, why, sizeof(why));

    if (r < 0)
        return r;
    switch (outcome) {
    case ORDER_OUT_APPLIED:
        svc_metric_inc(st->m_applied);
        if (c->cmd.type == ORDER_CMD_CREATE && status == ORDER_REJECTED)
            svc_metric_inc(st->m_rejected);
        log_debug("order %s: %s%s%s", c->cmd.order_id, order_status_name(status),
                  why[0] ? ": " : "", why);
        break;
    case ORDER_OUT_REFUSED:
        svc_metric_inc(st->m_refused);
        log_info("order %s: transition refused: %s (command %s)", c->cmd.order_id, why,
                 c->cmd.command_id);
        break;
    case ORDER_OUT_REPLAYED:
        svc_metric_inc(st->m_replayed);
        log_debug("command %s was applied before: its events are published again",
                  c->cmd.command_id);
        break;
    case ORDER_OUT_IGNORED:
        log_info("order %s exists; create command %s ignored", c->cmd.order_id, c->cmd.command_id);
        break;
    case ORDER_OUT_DLQ:
        snprintf(c->dlq, sizeof(c->dlq), "%s", why);
        break;
    }
    return 0;
}

/* Applies the batch in one transaction. With @careful, each command runs in a savepoint so that
 * one PostgreSQL refuses (-EINVAL) goes to the DLQ alone instead of failing the batch forever. */
static int op_apply(op_t *st, bool careful)
{
    int r;

    order_events_truncate(&st->events, 0);
    for (size_t i = 0; i < st->ncmds; i++)
        st->cmds[i].dlq[0] = '\0';
    if ((r = db_exec_simple(st->db, "BEGIN")) < 0 || (r = op_lock_orgs(st)) < 0) {
        if (careful && r == -EINVAL)
            r = -EAGAIN; /* not a command's fault */
        goto fail;
    }
    for (size_t i = 0; i < st->ncmds; i++) {
        op_cmd_t *c = &st->cmds[i];
        size_t mark = st->events.n;

        if (!c->valid || c->dlq[0])
            continue;
        svc_log_set_request_id(c->cmd.request_id[0] ? c->cmd.request_id : NULL);
        if (careful && (r = db_exec_simple(st->db, "SAVEPOINT op_cmd")) < 0)
            goto fail;
        r = op_apply_one(st, c);
        if (r == -EINVAL && careful) {
            snprintf(c->dlq, sizeof(c->dlq), "PostgreSQL refused the command: %s",
                     db_errmsg(st->db));
            order_events_truncate(&st->events, mark);
            if ((r = db_exec_simple(st->db, "ROLLBACK TO SAVEPOINT op_cmd")) < 0)
                goto fail;
            continue;
        }
        if (r < 0 || (careful && (r = db_exec_simple(st->db, "RELEASE SAVEPOINT op_cmd")) < 0))
            goto fail;
    }
    svc_log_set_request_id(NULL);
    if ((r = db_exec_simple(st->db, "COMMIT")) < 0)
        goto fail;
    return 0;

fail:
    svc_log_set_request_id(NULL);
    log_warn("batch of %zu commands not applied%s: %s", st->ncmds,
             r == -EINVAL && !careful ? "; retrying command by command" : ", will retry",
             r == -ENOMEM ? "out of memory" : db_errmsg(st->db));
    if (db_connected(st->db))
        (void)db_exec_simple(st->db, "ROLLBACK");
    order_events_truncate(&st->events, 0);
    return careful && r == -EINVAL ? -EAGAIN : r;
}

/* --- publishing --------------------------------------------------------------------------------
 */

static void op_delivered(rd_kafka_resp_err_t err, int32_t partition, int64_t offset, void *opaque)
{
    op_t *st = opaque;
    (void)partition;
    (void)offset;
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        atomic_fetch_add(&st->delivery_errors, 1);
        atomic_store(&st->last_delivery_error, (int)err);
    }
}

/* Produces the batch's events, keyed by order id, and waits for every acknowledgement. */
static int op_publish(op_t *st)
{
    const char *topic = st->conf->events_topic;
    bus_producer_t *prod;
    int r;

    if (st->events.n == 0)
        return 0;
    if (!(prod = bus_daemon_producer(st->d)))
        return -EAGAIN;
    atomic_store(&st->delivery_errors, 0);
    for (size_t i = 0; i < st->events.n; i++) {
        const order_event_t *ev = &st->events.v[i];
        char *value = order_event_dump(ev);
        if (!value)
            return -ENOMEM;
        bus_header_t headers[] = {
            {"content-type", "application/json", strlen("application/json")},
            {"sb-contract", "order_event.v1", strlen("order_event.v1")},
            {"sb-org-id", ev->org_id, 36},
            {"sb-request-id", ev->request_id, strlen(ev->request_id)},
        };
        size_t nheaders = sizeof(headers) / sizeof(headers[0]) - (ev->request_id[0] ? 0 : 1);
        r = bus_producer_produce(prod, topic, ev->order_id, 36, value, strlen(value), headers,
                                 nheaders, NULL, op_delivered, st);
        free(value);
        if (r < 0) {
            log_warn("cannot produce to %s: %s; the batch will be retried", topic, strerror(-r));
            (void)bus_producer_flush(prod, OP_FLUSH_MS); /* no report may outlive the batch */
            return r == -ENOBUFS || r == -EIO || r == -ESHUTDOWN ? -EAGAIN : r;
        }
    }
    if (bus_producer_flush(prod, OP_FLUSH_MS) < 0) {
        log_warn("%s: events not acknowledged within %d ms; the batch will be retried", topic,
                 OP_FLUSH_MS);
        return -ETIMEDOUT;
    }
    int errors = atomic_load(&st->delivery_errors);
    if (errors > 0) {
        log_warn("%d event(s) to %s failed (%s); the batch will be retried", errors, topic,
                 rd_kafka_err2str((rd_kafka_resp_err_t)atomic_load(&st->last_delivery_error)));
        return -EAGAIN;
    }
    return 0;
}

/* --- the batch ---------------------------------------------------------------------------------
 */

static int op_handle_batch(void *opaque, bus_record_t *recs, size_t n)
{
    op_t *st = opaque;
    size_t nvalid = 0;
    int r = op_decode(st, recs, n);

    for (size_t i = 0; i < st->ncmds; i++)
        nvalid += st->cmds[i].valid;
    if (r < 0 || nvalid == 0)
        goto done;

    r = op_apply(st, false);
    if (r == -EINVAL)
        r = op_apply(st, true);
    if (r < 0)
        goto done;
    for (size_t i = 0; i < st->ncmds; i++) {
        op_cmd_t *c = &st->cmds[i];
        if (c->dlq[0]) {
            log_warn("command %s sent to the dead-letter topic: %s", c->cmd.command_id, c->dlq);
            bus_record_reject(c->rec, "%s", c->dlq);
        } else if (c->valid) {
            order_counts_mark(st->counts, c->cmd.org_id);
        }
    }
    order_counts_flush(st->counts);
    r = op_publish(st);
    log_debug("batch: %zu records, %zu commands, %zu events", n, nvalid, st->events.n);

done:
    for (size_t i = 0; i < st->ncmds; i++)
        order_command_clear(&st->cmds[i].cmd);
    st->ncmds = 0;
    order_events_truncate(&st->events, 0);
    return op_db_state(st, r);
}

/* --- lifecycle ---------------------------------------------------------------------------------
 */

static void op_on_assign(void *opaque, const rd_kafka_topic_partition_list_t *parts)
{
    op_t *st = opaque;
    (void)parts;
    (void)op_db_state(st, db_connect(st->db));
}

/* Between batches: keeps /readyz true to PostgreSQL's state and writes counts Redis missed. */
static void op_tick(void *state)
{
    op_t *st = state;
    (void)op_db_state(st, db_exec_simple(st->db, "SELECT 1"));
    order_counts_flush(st->counts);
}

static void op_fini(void *state)
{
    op_t *st = state;
    if (!st)
        return;
    order_events_free(&st->events);
    free(st->cmds);
    order_counts_free(st->counts);
    db_free(st->db);
    cache_free(st->cache);
    free(st);
}

static int op_init(bus_daemon_t *d, void *conf, void **ret_state)
{
    const op_conf_t *c = conf;
    svc_metrics_t *m = bus_daemon_metrics(d);
    char errbuf[256];
    int r;

    if (!c->pg_dsn || !*c->pg_dsn) {
        log_error("pg_dsn is not set (SB_ORDER_PROCESSOR_PG_DSN or "
                  "SB_ORDER_PROCESSOR_PG_DSN_FILE)");
        return -EINVAL;
    }
    if (!c->events_topic || !*c->events_topic) {
        log_error("events_topic must not be empty");
        return -EINVAL;
    }
    if (!c->default_route || !*c->default_route || strlen(c->default_route) > ORDER_TEXT_MAX) {
        log_error("default_route must be 1-%d characters", ORDER_TEXT_MAX);
        return -EINVAL;
    }
    if (cache_url_check(c->redis_url ? c->redis_url : "", errbuf, sizeof(errbuf)) < 0) {
        log_error("redis_url: %s", errbuf);
        return -EINVAL;
    }
    op_t *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    st->d = d;
    st->conf = c;
    st->health = bus_daemon_health(d);
    st->m_applied = svc_metrics_counter(m, "sb_orders_commands_applied_total",
                                        "Commands that changed an order", NULL);
    st->m_replayed = svc_metrics_counter(
        m, "sb_orders_commands_replayed_total",
        "Redelivered commands whose recorded events were published again", NULL);
    st->m_refused = svc_metrics_counter(m, "sb_orders_transitions_refused_total",
                                        "Transitions the state machine refused", NULL);
    st->m_rejected = svc_metrics_counter(m, "sb_orders_rejected_total",
                                         "New orders rejected by the business rules", NULL);
    if (!st->m_applied || !st->m_replayed || !st->m_refused || !st->m_rejected) {
        r = -ENOMEM;
        goto fail;
    }

    if ((r = cache_new(c->redis_url, OP_REDIS_TIMEOUT_MS, &st->cache)) < 0) {
        log_error("cannot create the Redis client: %s", strerror(-r));
        goto fail;
    }
    if (!cache_connected(st->cache))
        log_warn("Redis is not reachable yet; order counts wait for it: %s",
                 cache_errmsg(st->cache));
    if ((r = db_new(c->pg_dsn, &st->db)) < 0) {
        log_error("pg_dsn is not a valid PostgreSQL connection string");
        goto fail;
    }
    if (!db_connected(st->db))
        log_warn("PostgreSQL is not reachable yet, will retry: %s", db_errmsg(st->db));
    if ((r = order_store_prepare(st->db)) < 0) {
        log_error("cannot prepare statements (has `sbctl migrate` run?): %s", db_errmsg(st->db));
        goto fail;
    }
    if ((r = order_counts_new(st->cache, st->db, st->health, m, &st->counts)) < 0)
        goto fail;
    (void)op_db_state(st, 0);
    *ret_state = st;
    return 0;

fail:
    op_fini(st);
    return r;
}

static const bus_daemon_desc_t op_desc = {
    .name = "order-processor",
    .summary = "applies orders.v1 commands to PostgreSQL orders and publishes orders.events.v1",
    .topics = "orders.v1",
    .conf = op_conf_table,
    .conf_size = sizeof(op_conf_t),
    .batch_max = 500,
    .batch_ms = 100,
    .init = op_init,
    .handle_batch = op_handle_batch,
    .on_assign = op_on_assign,
    .tick = op_tick,
    .fini = op_fini,
};

int main(int argc, char **argv)
{
    return bus_daemon_main(&op_desc, argc, argv);
}
