/* ingest.c: POST /sensors/data.
 *
 * Authenticate (an API key with the ingest scope, or a person's access token with the operator
 * role and ?project_id=), decode and validate the whole body, produce every reading, and answer
 * only when Kafka has acknowledged every one of them (acks=all): 202 with the reading ids, or 503 +
 * Retry-After when any record failed, the local queue was full, or the acks did not all arrive
 * within produce_timeout_ms. Never a 2xx for a record Kafka does not have.
 *
 * A 503 does not mean "nothing was written": records acknowledged before (or after) the answer
 * stay in Kafka. Clients retry with the same reading ids, and consumers store each id once, so
 * the retry is idempotent; a reading sent without an id gets a fresh one on each attempt, which
 * is why SDKs should always send ids.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "gateway.h"
#include "svc_lifecycle.h"
#include "svc_log.h"
#include "svc_util.h"

/* One request waiting for its delivery reports. It lives until the answer is sent (one
 * reference) and every enqueued record has reported (one reference each), whichever is last:
 * reports that arrive after a timeout or after the client left only drop their reference. */
struct gw_pending {
    gw_pending_t *prev, *next; /* the loop's list */
    gw_loop_t *loop;
    gw_req_t *req; /* NULL once answered */
    struct event *timer;
    int refs;
    size_t n, acked, failed;
    rd_kafka_resp_err_t err;
    char (*ids)[37];
};

static void pending_unref(gw_pending_t *p)
{
    if (--p->refs > 0)
        return;
    if (p->prev)
        p->prev->next = p->next;
    else
        p->loop->pending = p->next;
    if (p->next)
        p->next->prev = p->prev;
    if (p->timer)
        event_free(p->timer);
    free(p->ids);
    free(p);
}

/* Answers the request (once) and drops the answer's reference. */
static void pending_answer(gw_pending_t *p, int status, const char *detail)
{
    gw_req_t *r = p->req;

    if (!r)
        return;
    p->req = NULL;
    p->loop->nwaiting--;
    event_del(p->timer);
    if (status == 202) {
        json_t *ids = json_array();

        for (size_t i = 0; ids && i < p->n; i++)
            json_array_append_new(ids, json_string(p->ids[i]));
        svc_metric_add(r->loop->gw->metrics.readings_accepted, (double)p->n);
        gw_reply_json(r, 202,
                      json_pack("{s:I, s:o, s:s}", "accepted", (json_int_t)p->n, "ids", ids,
                                "request_id", r->request_id));
    } else {
        svc_metric_inc(r->loop->gw->metrics.produce_failures);
        gw_req_enter(r);
        log_warn("produce failed for %zu readings: %s", p->n, detail);
        gw_reply_problemf(r, status, "unavailable", "%s", detail);
    }
    pending_unref(p);
}

static void pending_delivered(rd_kafka_resp_err_t err, int32_t partition, int64_t offset,
                              void *opaque)
{
    gw_pending_t *p = opaque;
    char detail[256];

    (void)partition;
    (void)offset;
    if (err) {
        if (!p->failed++)
            p->err = err;
    } else {
        p->acked++;
    }
    if (p->req && p->failed) {
        snprintf(detail, sizeof(detail),
                 "Kafka did not acknowledge every reading (%s); retry with the same ids",
                 rd_kafka_err2str(p->err));
        pending_answer(p, 503, detail);
    } else if (p->req && p->acked == p->n) {
        pending_answer(p, 202, NULL);
    }
    pending_unref(p);
}

static void pending_timeout(evutil_socket_t fd, short what, void *arg)
{
    gw_pending_t *p = arg;
    char detail[160];

    (void)fd;
    (void)what;
    snprintf(detail, sizeof(detail),
             "Kafka did not acknowledge every reading within %lld ms; retry with the same ids",
             (long long)p->loop->gw->cfg.produce_timeout_ms);
    pending_answer(p, 503, detail);
}

void gw_ingest_abandon(gw_loop_t *loop)
{
    for (gw_pending_t *p = loop->pending, *next; p; p = next) {
        next = p->next;
        /* Answering drops one reference; the pending stays listed while reports are due. */
        if (p->req)
            pending_answer(p, 503, "the gateway is shutting down; retry with the same ids");
    }
}

void gw_ingest_release(gw_loop_t *loop)
{
    while (loop->pending) {
        loop->pending->refs = 1;
        pending_unref(loop->pending);
    }
}

/* The caller, and the project its readings go to: an API key's own project, or for a person
 * (operator or admin) the project named by ?project_id=, which must be their organization's.
 * 0, or a negative errno after answering. */
static int ingest_caller(gw_req_t *r, gw_principal_t *who)
{
    gw_t *gw = r->loop->gw;
    char ckey[GW_KEYCACHE_KEY_MAX + 1];
    const char *project_id;
    gw_key_t proj;
    int rc;

    if ((rc = gw_auth_require(r, GW_SCOPE_INGEST, AUTH_ROLE_OPERATOR, who)) < 0)
        return rc;
    if ((rc = gw_query_uuid(r, "project_id", &project_id)) < 0)
        return rc;
    if (who->kind == GW_PRINCIPAL_KEY) {
        /* An API key writes to its own project only; naming another is a mistake to report,
         * not to ignore. */
        if (project_id && strcmp(project_id, who->project_id) != 0) {
            gw_reply_problemf(r, 404, "not-found",
                              "this API key belongs to another project than %s; leave "
                              "project_id out",
                              project_id);
            return -ENOENT;
        }
        return 0;
    }
    if (!project_id) {
        gw_reply_problemf(r, 400, "invalid-parameter",
                          "project_id is required when a person posts readings "
                          "(POST /sensors/data?project_id=<uuid>)");
        return -EINVAL;
    }
    snprintf(ckey, sizeof(ckey), "p:%s", project_id);
    if (!gw_keycache_get(gw->keys, ckey, svc_now_ms(), &proj)) {
        db_t *db;

        rc = gw_loop_db(r->loop, &db);
        if (rc == 0)
            rc = gw_project_fetch(db, project_id, &proj);
        /* As for API keys (auth.c): once more after a connection the server closed. */
        if (rc == -ECONNRESET && gw_loop_db(r->loop, &db) == 0)
            rc = gw_project_fetch(db, project_id, &proj);
        if (rc < 0) {
            gw_loop_db_failed(r->loop);
            log_warn("project lookup failed: %s",
                     db_errmsg(r->loop->db)[0] ? db_errmsg(r->loop->db) : strerror(-rc));
            gw_reply_problemf(r, 503, "unavailable",
                              "the project cannot be checked right now (database unavailable)");
            return rc;
        }
        gw_keycache_put(gw->keys, ckey, &proj, svc_now_ms());
    }
    if (!proj.found || strcmp(proj.org_id, who->org_id) != 0) {
        gw_reply_problemf(r, 404, "not-found", "your organization has no project %s", project_id);
        return -ENOENT;
    }
    memcpy(who->project_id, project_id, sizeof(who->project_id));
    return 0;
}

/* Enqueues every reading. Returns the number enqueued; stops at the first failure (@ret_err). */
static size_t produce(gw_pending_t *p, gw_req_t *r, const gw_principal_t *who, gw_batch_t *batch,
                      int *ret_err)
{
    gw_loop_t *loop = r->loop;
    int64_t now = svc_wall_us();
    bus_header_t headers[] = {
        {"content-type", "application/json", strlen("application/json")},
        {"sb-contract", CONTRACT_READING_V1, strlen(CONTRACT_READING_V1)},
        {"sb-request-id", r->request_id, strlen(r->request_id)},
        {"sb-org-id", who->org_id, strlen(who->org_id)},
        {"sb-project-id", who->project_id, strlen(who->project_id)},
    };
    size_t i;

    *ret_err = 0;
    for (i = 0; i < batch->n; i++) {
        contract_reading_t *reading = &batch->readings[i];
        char k[sizeof(who->project_id) + CONTRACT_SENSOR_ID_MAX + 2];
        char *value;
        int klen, rc;

        if (!reading->has_id) {
            rc = svc_uuid4(reading->id);
            if (rc < 0) {
                *ret_err = rc;
                break;
            }
            reading->has_id = true;
        }
        if (!reading->has_ts) {
            reading->ts_us = now;
            reading->has_ts = true;
        }
        memcpy(p->ids[i], reading->id, sizeof(p->ids[i]));
        value = contract_reading_dump(reading);
        if (!value) {
            *ret_err = -ENOMEM;
            break;
        }
        klen = snprintf(k, sizeof(k), "%s/%s", who->project_id, reading->sensor_id);
        p->refs++;
        rc = bus_producer_produce(loop->gw->producer, loop->gw->cfg.topic, k, (size_t)klen, value,
                                  strlen(value), headers, sizeof(headers) / sizeof(headers[0]),
                                  loop->notifier, pending_delivered, p);
        free(value);
        if (rc < 0) {
            p->refs--;
            *ret_err = rc;
            break;
        }
    }
    return i;
}

void gw_ingest_handle(gw_req_t *r)
{
    gw_loop_t *loop = r->loop;
    struct evbuffer *input = evhttp_request_get_input_buffer(r->evreq);
    gw_problem_t problem = {0};
    gw_batch_t batch = {0};
    gw_body_format_t format;
    gw_pending_t *p = NULL;
    struct timeval tv = {.tv_sec = loop->gw->cfg.produce_timeout_ms / 1000,
                         .tv_usec = (loop->gw->cfg.produce_timeout_ms % 1000) * 1000};
    size_t len = evbuffer_get_length(input), sent, n;
    const char *body;
    gw_principal_t who;
    int rc;

    if (ingest_caller(r, &who) < 0)
        return;
    if (gw_body_format(gw_req_get_header(r, "Content-Type"), &format, &problem) < 0)
        goto problem;
    body = len ? (const char *)evbuffer_pullup(input, -1) : "";
    if (!body) {
        gw_reply_problemf(r, 500, "internal-error", "out of memory");
        return;
    }
    rc = gw_batch_parse(&batch, body, len, format, (size_t)loop->gw->cfg.max_batch, &problem);
    if (rc == -ENOMEM) {
        gw_reply_problemf(r, 500, "internal-error", "out of memory");
        return;
    }
    if (rc < 0)
        goto problem;

    p = calloc(1, sizeof(*p));
    if (p)
        p->ids = calloc(batch.n, sizeof(*p->ids));
    if (p)
        p->timer = evtimer_new(loop->base, pending_timeout, p);
    if (!p || !p->ids || !p->timer) {
        if (p) {
            free(p->ids);
            if (p->timer)
                event_free(p->timer);
        }
        free(p);
        gw_batch_clear(&batch);
        gw_reply_problemf(r, 500, "internal-error", "out of memory");
        return;
    }
    p->loop = loop;
    p->req = r;
    p->n = batch.n;
    p->refs = 1;
    loop->nwaiting++;
    p->next = loop->pending;
    if (p->next)
        p->next->prev = p;
    loop->pending = p;

    n = batch.n;
    sent = produce(p, r, &who, &batch, &rc);
    gw_batch_clear(&batch);
    if (rc == -EIO && !atomic_exchange(&loop->gw->producer_failed, true)) {
        /* The idempotent producer can no longer guarantee order and no duplicates; librdkafka
         * requires a new instance. Exiting non-zero lets the supervisor restart us cleanly. */
        log_error("the Kafka producer hit a fatal error; stopping so that it is recreated");
        svc_request_stop();
    }
    if (rc < 0) {
        pending_answer(p, 503,
                       rc == -ENOBUFS ? "the Kafka producer queue is full; retry shortly"
                       : rc == -ESHUTDOWN
                           ? "the gateway is shutting down; retry with the same ids"
                           : "the readings could not be handed to Kafka; retry shortly");
        if (sent > 0)
            log_info("%zu of %zu readings were enqueued before the failure and may still be "
                     "delivered",
                     sent, n);
        return;
    }
    evtimer_add(p->timer, &tv);
    return;

problem:
    gw_reply_problem(r, &problem);
    gw_problem_clear(&problem);
}
