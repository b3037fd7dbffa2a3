/* order_store.c: see order_store.h. */
#include "order_store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contract.h"
#include "svc_util.h"

#define STORE_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

static const struct {
    const char *name;
    int nparams;
    const char *sql;
} store_statements[] = {
    {"order_lock_orgs", 1,
     "INSERT INTO order_org_generation (org_id, generation) SELECT id, 1 FROM organizations "
     "WHERE id = ANY($1::uuid[]) ORDER BY id ON CONFLICT (org_id) DO UPDATE SET generation = "
     "order_org_generation.generation + 1 RETURNING org_id"},
    /* No row: a new command. Rows whose event columns are NULL: applied, without events. */
    {"order_command_seen", 1,
     "SELECT e.event_id, e.order_id, e.org_id, e.seq, e.type, e.from_status, e.to_status, "
     "e.reason, e.route, e.command_id, " STORE_TS(
         "e.at") ", coalesce(e.request_id, '') "
                 "FROM order_commands c LEFT JOIN order_events e ON e.command_id = c.command_id "
                 "WHERE c.command_id = $1::uuid ORDER BY e.seq"},
    {"order_command_insert", 6,
     "INSERT INTO order_commands (command_id, org_id, order_id, type, kafka_partition, "
     "kafka_offset) VALUES ($1, $2, $3, $4, $5, $6)"},
    /* Everything the rules of a new order need, in one round trip: the org of an existing order
     * with this id, sku known, customer known and its route, the limit (the sku's own row before
     * '*'), and whether the project belongs to the organization. */
    {"order_create_facts", 5,
     "SELECT (SELECT org_id FROM orders WHERE id = $1::uuid), "
     "EXISTS (SELECT 1 FROM skus WHERE sku = $3::text AND active "
     "AND (org_id IS NULL OR org_id = $2::uuid)), "
     "c.id IS NOT NULL, c.route, "
     "(SELECT max_quantity FROM order_rules WHERE org_id = $2::uuid AND sku IN ($3::text, '*') "
     "ORDER BY sku = '*' LIMIT 1), "
     "$5::uuid IS NULL OR EXISTS (SELECT 1 FROM projects WHERE id = $5::uuid "
     "AND org_id = $2::uuid) "
     "FROM (SELECT 1) AS one LEFT JOIN customers c ON c.org_id = $2::uuid AND c.id = $4::text"},
    {"order_insert", 15,
     "INSERT INTO orders (id, org_id, project_id, customer_id, sku, quantity, shipping, notes, "
     "status, route, reject_reason, command_id, request_id, created_at, updated_at) VALUES ($1, "
     "$2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"},
    {"order_lock", 1,
     "SELECT org_id, status, route, (SELECT coalesce(max(seq), 0) FROM order_events WHERE "
     "order_id = $1::uuid) FROM orders WHERE id = $1::uuid FOR UPDATE"},
    {"order_update", 4,
     "UPDATE orders SET status = $2::text, reject_reason = CASE WHEN $2::text = 'rejected' THEN "
     "coalesce($3::text, 'rejected on request') ELSE reject_reason END, version = version + 1, "
     "updated_at = $4 WHERE id = $1::uuid"},
    {"order_event_insert", 13,
     "INSERT INTO order_events (org_id, order_id, seq, event_id, command_id, type, from_status, "
     "to_status, reason, route, request_id, actor, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
     "$9, $10, $11, $12, $13)"},
    {"order_counts", 1,
     "SELECT g.org_id, g.generation, o.status, count(o.id) FROM order_org_generation g "
     "LEFT JOIN orders o ON o.org_id = g.org_id WHERE $1::uuid[] IS NULL "
     "OR g.org_id = ANY($1::uuid[]) GROUP BY 1, 2, 3 ORDER BY 1"},
};

int order_store_prepare(db_t *db)
{
    for (size_t i = 0; i < sizeof(store_statements) / sizeof(store_statements[0]); i++) {
        int r = db_prepare(db, store_statements[i].name, store_statements[i].sql,
                           store_statements[i].nparams);
        if (r < 0)
            return r;
    }
    return 0;
}

int order_store_lock_orgs(db_t *db, const char *orgs, PGresult **ret_known)
{
    const char *params[] = {orgs};
    return db_exec(db, "order_lock_orgs", NULL, 1, params, ret_known);
}

int order_store_counts(db_t *db, const char *orgs, PGresult **ret_res)
{
    const char *params[] = {orgs};
    return db_exec(db, "order_counts", NULL, 1, params, ret_res);
}

static char *dup_or_null(const char *s, bool *oom)
{
    char *d = s ? strdup(s) : NULL;
    if (s && !d)
        *oom = true;
    return d;
}

/* Stores the @seq-th event of the command's order and queues it. */
static int event_new(db_t *db, const order_command_t *cmd, order_events_t *events, int64_t seq,
                     const char *type, order_status_t from, order_status_t to, const char *reason,
                     const char *route, const char *at)
{
    order_event_t ev = {
        .seq = seq, .type = type, .from = order_status_name(from), .to = order_status_name(to)};
    char seq_text[24], *actor = NULL;
    bool oom = false;
    int r;

    memcpy(ev.order_id, cmd->order_id, sizeof(ev.order_id));
    memcpy(ev.org_id, cmd->org_id, sizeof(ev.org_id));
    memcpy(ev.command_id, cmd->command_id, sizeof(ev.command_id));
    memcpy(ev.request_id, cmd->request_id, sizeof(ev.request_id));
    snprintf(ev.at, sizeof(ev.at), "%s", at);
    ev.reason = dup_or_null(reason, &oom);
    ev.route = dup_or_null(route, &oom);
    if (cmd->actor && !(actor = json_dumps(cmd->actor, JSON_COMPACT)))
        oom = true;
    r = oom ? -ENOMEM : order_event_id(ev.command_id, seq, ev.event_id);
    if (r == 0) {
        snprintf(seq_text, sizeof(seq_text), "%lld", (long long)seq);
        const char *params[] = {ev.org_id,
                                ev.order_id,
                                seq_text,
                                ev.event_id,
                                ev.command_id,
                                ev.type,
                                ev.from,
                                ev.to,
                                ev.reason,
                                ev.route,
                                ev.request_id[0] ? ev.request_id : NULL,
                                actor,
                                ev.at};
        r = db_exec(db, "order_event_insert", NULL, 13, params, NULL);
    }
    free(actor);
    if (r < 0) {
        order_event_clear(&ev);
        return r;
    }
    return order_events_push(events, &ev);
}

/* Queues the recorded events of a command applied before (rows of order_command_seen). */
static int events_replay(PGresult *res, order_events_t *events)
{
    for (int i = 0; i < PQntuples(res); i++) {
        if (PQgetisnull(res, i, 0))
            continue;
        order_event_t ev = {.seq = strtoll(PQgetvalue(res, i, 3), NULL, 10)};
        order_status_t from = ORDER_NSTATUS, to;
        bool oom = false;

        snprintf(ev.event_id, sizeof(ev.event_id), "%s", PQgetvalue(res, i, 0));
        snprintf(ev.order_id, sizeof(ev.order_id), "%s", PQgetvalue(res, i, 1));
        snprintf(ev.org_id, sizeof(ev.org_id), "%s", PQgetvalue(res, i, 2));
        snprintf(ev.command_id, sizeof(ev.command_id), "%s", PQgetvalue(res, i, 9));
        snprintf(ev.at, sizeof(ev.at), "%s", PQgetvalue(res, i, 10));
        snprintf(ev.request_id, sizeof(ev.request_id), "%s", PQgetvalue(res, i, 11));
        /* The table's CHECK constraints admit only these names. */
        if (order_event_type_parse(PQgetvalue(res, i, 4), &ev.type) < 0 ||
            order_status_parse(PQgetvalue(res, i, 6), &to) < 0 ||
            (!PQgetisnull(res, i, 5) && order_status_parse(PQgetvalue(res, i, 5), &from) < 0))
            return -EINVAL;
        ev.from = order_status_name(from); /* NULL for ORDER_NSTATUS */
        ev.to = order_status_name(to);
        ev.reason = dup_or_null(PQgetisnull(res, i, 7) ? NULL : PQgetvalue(res, i, 7), &oom);
        ev.route = dup_or_null(PQgetisnull(res, i, 8) ? NULL : PQgetvalue(res, i, 8), &oom);
        int r = oom ? -ENOMEM : order_events_push(events, &ev);
        if (r < 0) {
            order_event_clear(&ev);
            return r;
        }
    }
    return 0;
}

static int command_record(db_t *db, const order_store_cmd_t *sc)
{
    char partition[16], offset[24];
    snprintf(partition, sizeof(partition), "%d", (int)sc->partition);
    snprintf(offset, sizeof(offset), "%lld", (long long)sc->offset);
    const char *params[] = {
        sc->cmd->command_id, sc->cmd->org_id,
        sc->cmd->order_id,   sc->cmd->type == ORDER_CMD_CREATE ? "create" : "transition",
        partition,           offset};
    return db_exec(db, "order_command_insert", NULL, 6, params, NULL);
}

static bool is_true(PGresult *res, int col)
{
    return !strcmp(PQgetvalue(res, 0, col), "t");
}

static int apply_create(db_t *db, const order_store_cmd_t *sc, order_events_t *events,
                        order_outcome_t *ret_outcome, order_status_t *ret_status, char *reason,
                        size_t reason_size)
{
    const order_command_t *cmd = sc->cmd;
    const char *project = cmd->project_id[0] ? cmd->project_id : NULL;
    const char *facts_params[] = {cmd->order_id, cmd->org_id, cmd->sku, cmd->customer_id, project};
    char at[40], created[40], quantity[24], *shipping = NULL;
    PGresult *res = NULL;
    int r;

    if ((r = db_exec(db, "order_create_facts", NULL, 5, facts_params, &res)) < 0)
        return r;
    if (!PQgetisnull(res, 0, 0)) {
        /* The same order sent again under a new command id: never a second order. */
        *ret_outcome = ORDER_OUT_IGNORED;
        r = command_record(db, sc);
        goto out;
    }
    if (!is_true(res, 5)) {
        *ret_outcome = ORDER_OUT_DLQ;
        snprintf(reason, reason_size, "project_id %s is not a project of organization %s",
                 cmd->project_id, cmd->org_id);
        goto out;
    }

    order_facts_t facts = {
        .quantity = cmd->quantity,
        .sku_known = is_true(res, 1),
        .customer_known = is_true(res, 2),
        .sku = cmd->sku,
        .customer_id = cmd->customer_id,
        .route = PQgetisnull(res, 0, 3) ? NULL : PQgetvalue(res, 0, 3),
        .max_quantity = PQgetisnull(res, 0, 4) ? 0 : strtoll(PQgetvalue(res, 0, 4), NULL, 10),
        .default_route = sc->default_route,
    };
    order_verdict_t v;
    order_decide(&facts, &v);
    const char *why = v.reason[0] ? v.reason : NULL;

    contract_format_rfc3339(svc_wall_us(), at, sizeof(at));
    contract_format_rfc3339(cmd->requested_us, created, sizeof(created));
    snprintf(quantity, sizeof(quantity), "%lld", (long long)cmd->quantity);
    if (!(shipping = json_dumps(cmd->shipping, JSON_COMPACT))) {
        r = -ENOMEM;
        goto out;
    }
    const char *params[] = {cmd->order_id,
                            cmd->org_id,
                            project,
                            cmd->customer_id,
                            cmd->sku,
                            quantity,
                            shipping,
                            cmd->notes,
                            order_status_name(v.status),
                            v.route,
                            v.status == ORDER_REJECTED ? why : NULL,
                            cmd->command_id,
                            cmd->request_id[0] ? cmd->request_id : NULL,
                            created,
                            at};
    /* Two events: the order exists (pending), then the verdict takes it out of pending. */
    if ((r = db_exec(db, "order_insert", NULL, 15, params, NULL)) < 0 ||
        (r = event_new(db, cmd, events, 1, ORDER_EV_CREATED, ORDER_NSTATUS, ORDER_PENDING, NULL,
                       NULL, at)) < 0 ||
        (r = event_new(db, cmd, events, 2,
                       v.status == ORDER_REJECTED ? ORDER_EV_REJECTED : ORDER_EV_STATUS_CHANGED,
                       ORDER_PENDING, v.status, why, v.route, at)) < 0 ||
        (r = command_record(db, sc)) < 0)
        goto out;
    *ret_outcome = ORDER_OUT_APPLIED;
    *ret_status = v.status;
    snprintf(reason, reason_size, "%s", v.reason);
out:
    free(shipping);
    PQclear(res);
    return r;
}

static int apply_transition(db_t *db, const order_store_cmd_t *sc, order_events_t *events,
                            order_outcome_t *ret_outcome, order_status_t *ret_status, char *reason,
                            size_t reason_size)
{
    const order_command_t *cmd = sc->cmd;
    const char *lock_params[] = {cmd->order_id};
    PGresult *res = NULL;
    order_status_t from;
    char at[40];
    int r;

    if ((r = db_exec(db, "order_lock", NULL, 1, lock_params, &res)) < 0)
        return r;
    if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), cmd->org_id) != 0) {
        /* An order's commands share its partition, so its create is always applied before its
         * transitions: an order missing here was never created in this organization. */
        *ret_outcome = ORDER_OUT_DLQ;
        snprintf(reason, reason_size, "no order %s in organization %s", cmd->order_id, cmd->org_id);
        goto out;
    }
    if ((r = order_status_parse(PQgetvalue(res, 0, 1), &from)) < 0)
        goto out;
    const char *route = PQgetisnull(res, 0, 2) ? NULL : PQgetvalue(res, 0, 2);
    int64_t seq = strtoll(PQgetvalue(res, 0, 3), NULL, 10) + 1;
    contract_format_rfc3339(svc_wall_us(), at, sizeof(at));

    if (order_transition_allowed(from, cmd->to)) {
        const char *params[] = {cmd->order_id, order_status_name(cmd->to), cmd->reason, at};
        if ((r = db_exec(db, "order_update", NULL, 4, params, NULL)) < 0 ||
            (r = event_new(db, cmd, events, seq,
                           cmd->to == ORDER_REJECTED ? ORDER_EV_REJECTED : ORDER_EV_STATUS_CHANGED,
                           from, cmd->to, cmd->reason, route, at)) < 0)
            goto out;
        *ret_outcome = ORDER_OUT_APPLIED;
        *ret_status = cmd->to;
    } else {
        snprintf(reason, reason_size, "an order that is %s cannot become %s%s",
                 order_status_name(from), order_status_name(cmd->to),
                 order_status_final(from) ? " (its status is final)" : "");
        if ((r = event_new(db, cmd, events, seq, ORDER_EV_TRANSITION_REFUSED, from, cmd->to, reason,
                           route, at)) < 0)
            goto out;
        *ret_outcome = ORDER_OUT_REFUSED;
        *ret_status = from;
    }
    r = command_record(db, sc);
out:
    PQclear(res);
    return r;
}

int order_store_apply(db_t *db, const order_store_cmd_t *sc, order_events_t *events,
                      order_outcome_t *ret_outcome, order_status_t *ret_status, char *reason,
                      size_t reason_size)
{
    const char *params[] = {sc->cmd->command_id};
    PGresult *res = NULL;
    int r;

    reason[0] = '\0';
    if ((r = db_exec(db, "order_command_seen", NULL, 1, params, &res)) < 0)
        return r;
    if (PQntuples(res) > 0) {
        *ret_outcome = ORDER_OUT_REPLAYED;
        r = events_replay(res, events);
        PQclear(res);
        return r;
    }
    PQclear(res);
    return sc->cmd->type == ORDER_CMD_CREATE
               ? apply_create(db, sc, events, ret_outcome, ret_status, reason, reason_size)
               : apply_transition(db, sc, events, ret_outcome, ret_status, reason, reason_size);
}
