/* bus_producer.c: the idempotent producer, its poll thread and the loop notifiers.
 *
 * Every record carries a heap completion as its librdkafka message opaque. The delivery-report
 * callback (run by the poll thread inside rd_kafka_poll()) either calls the user's callback
 * directly or queues the completion on the record's notifier and activates the notifier's event,
 * so that the callback runs in the loop that produced the record. `inflight` counts records whose
 * report has not been dispatched yet; bus_producer_flush() waits on it instead of calling
 * rd_kafka_flush(), which would poll, and so run callbacks, on the caller's thread.
 */
#include "bus_producer.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "bus_private.h"

/* While no broker has answered yet, the poll thread asks for metadata this often, with this
 * timeout: short enough that delivery reports are never held back for long. */
#define PROBE_INTERVAL_MS 1000
#define PROBE_TIMEOUT_MS  200

typedef struct bus_completion {
    bus_delivery_fn cb;
    void *opaque;
    bus_notifier_t *notifier;
    rd_kafka_resp_err_t err;
    int32_t partition;
    int64_t offset;
    struct bus_completion *next;
} bus_completion_t;

struct bus_notifier {
    struct event *ev;
    pthread_mutex_t lock;
    bus_completion_t *head, *tail;
};

struct bus_producer {
    rd_kafka_t *rk;
    pthread_t thread;
    bool thread_started;
    atomic_bool stop;
    atomic_bool closing;
    atomic_bool connected;
    atomic_int fatal; /* rd_kafka_resp_err_t of a fatal error, 0 while none */

    pthread_mutex_t lock; /* protects inflight */
    pthread_cond_t drained;
    long inflight;
};

static bus_log_fn log_fn;

void bus_set_log_fn(bus_log_fn fn)
{
    log_fn = fn;
}

static void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    if (log_fn)
        log_fn(level, fac, buf);
}

const char *bus_conf_get(const svc_conf_t *conf, const char *key)
{
    const char *value = NULL;

    /* The last occurrence wins, as it does when the keys are applied in order. */
    for (size_t i = 0; conf && i < conf->kafka_count; i++)
        if (strcmp(conf->kafka[i].key, key) == 0)
            value = conf->kafka[i].value;
    return value;
}

static int conf_set(rd_kafka_conf_t *kconf, const char *key, const char *value, char *errbuf,
                    size_t errsize)
{
    char reason[256];

    if (rd_kafka_conf_set(kconf, key, value, reason, sizeof(reason)) != RD_KAFKA_CONF_OK) {
        snprintf(errbuf, errsize, "kafka.%s: %s", key, reason);
        return -EINVAL;
    }
    return 0;
}

int bus_kafka_conf_new(const svc_conf_t *conf, const bus_kv_t *defaults, size_t ndefaults,
                       const bus_kv_t *forced, size_t nforced, rd_kafka_conf_t **ret_kconf,
                       char *errbuf, size_t errsize)
{
    rd_kafka_conf_t *kconf = rd_kafka_conf_new();
    int r = -ENOMEM;

    if (!kconf) {
        snprintf(errbuf, errsize, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < ndefaults; i++)
        if ((r = conf_set(kconf, defaults[i].key, defaults[i].value, errbuf, errsize)) < 0)
            goto fail;
    for (size_t i = 0; conf && i < conf->kafka_count; i++)
        if ((r = conf_set(kconf, conf->kafka[i].key, conf->kafka[i].value, errbuf, errsize)) < 0)
            goto fail;
    for (size_t i = 0; i < nforced; i++)
        if ((r = conf_set(kconf, forced[i].key, forced[i].value, errbuf, errsize)) < 0)
            goto fail;
    if (log_fn)
        rd_kafka_conf_set_log_cb(kconf, kafka_log_cb);
    *ret_kconf = kconf;
    return 0;
fail:
    if (kconf)
        rd_kafka_conf_destroy(kconf);
    return r;
}

int bus_errno(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
        return 0;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        return -ENOBUFS;
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
        return -EINVAL;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
        return -EMSGSIZE;
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
        return -ETIMEDOUT;
    case RD_KAFKA_RESP_ERR__DESTROY:
        return -ESHUTDOWN;
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__TRANSPORT:
        return -ENOTCONN;
    case RD_KAFKA_RESP_ERR__NOENT:
        return -ENOENT;
    default:
        return -EIO;
    }
}

static void inflight_done(bus_producer_t *p)
{
    pthread_mutex_lock(&p->lock);
    if (--p->inflight == 0)
        pthread_cond_broadcast(&p->drained);
    pthread_mutex_unlock(&p->lock);
}

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
    bus_producer_t *p = opaque;
    bus_completion_t *c = rkm->_private;

    (void)rk;
    if (rkm->err == RD_KAFKA_RESP_ERR_NO_ERROR)
        atomic_store(&p->connected, true);
    c->err = rkm->err;
    c->partition = rkm->partition;
    c->offset = rkm->offset;
    if (c->notifier) {
        bus_notifier_t *n = c->notifier;

        pthread_mutex_lock(&n->lock);
        if (n->tail)
            n->tail->next = c;
        else
            n->head = c;
        n->tail = c;
        pthread_mutex_unlock(&n->lock);
        event_active(n->ev, EV_READ, 0);
    } else {
        c->cb(c->err, c->partition, c->offset, c->opaque);
        free(c);
    }
    inflight_done(p);
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    bus_producer_t *p = opaque;

    (void)reason;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char buf[256];

        /* The idempotent producer can no longer guarantee ordering without gaps: every later
         * produce fails with -EIO, and the owner sees it through its delivery reports. */
        atomic_store(&p->fatal, (int)rd_kafka_fatal_error(rk, buf, sizeof(buf)));
    } else if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        atomic_store(&p->connected, false);
    }
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *poll_main(void *arg)
{
    bus_producer_t *p = arg;
    int64_t next_probe = 0;

    while (!atomic_load(&p->stop)) {
        rd_kafka_poll(p->rk, 100);
        /* Readiness must not block callers, so the thread that already waits does the asking:
         * a metadata answer proves that a broker is reachable. */
        if (!atomic_load(&p->connected) && now_ms() >= next_probe) {
            const struct rd_kafka_metadata *md = NULL;

            if (rd_kafka_metadata(p->rk, 0, NULL, &md, PROBE_TIMEOUT_MS) ==
                RD_KAFKA_RESP_ERR_NO_ERROR) {
                if (md->broker_cnt > 0)
                    atomic_store(&p->connected, true);
                rd_kafka_metadata_destroy(md);
            }
            next_probe = now_ms() + PROBE_INTERVAL_MS;
        }
    }
    return NULL;
}

int bus_producer_new(const svc_conf_t *conf, bus_producer_t **ret_producer, char *errbuf,
                     size_t errsize)
{
    static const bus_kv_t defaults[] = {
        {"bootstrap.servers", "127.0.0.1:9092"},
        {"linger.ms", "5"},
        {"message.timeout.ms", "10000"},
        {"compression.type", "lz4"},
    };
    static const bus_kv_t forced[] = {
        {"enable.idempotence", "true"},
        {"acks", "all"},
    };
    rd_kafka_conf_t *kconf = NULL;
    bus_producer_t *p;
    char reason[512];
    int r;

    /* Completions are handed to other threads' loops with event_active(). */
    evthread_use_pthreads();

    p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(errbuf, errsize, "out of memory");
        return -ENOMEM;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->drained, NULL);

    r = bus_kafka_conf_new(conf, defaults, sizeof(defaults) / sizeof(defaults[0]), forced,
                           sizeof(forced) / sizeof(forced[0]), &kconf, errbuf, errsize);
    if (r < 0)
        goto fail;
    rd_kafka_conf_set_dr_msg_cb(kconf, dr_msg_cb);
    rd_kafka_conf_set_error_cb(kconf, error_cb);
    rd_kafka_conf_set_opaque(kconf, p);

    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, kconf, reason, sizeof(reason));
    if (!p->rk) {
        snprintf(errbuf, errsize, "kafka producer: %s", reason);
        r = -EINVAL;
        goto fail;
    }
    kconf = NULL; /* owned by rk now */

    r = -pthread_create(&p->thread, NULL, poll_main, p);
    if (r < 0) {
        snprintf(errbuf, errsize, "kafka producer: cannot start poll thread: %s", strerror(-r));
        goto fail;
    }
    p->thread_started = true;
    *ret_producer = p;
    return 0;
fail:
    if (kconf)
        rd_kafka_conf_destroy(kconf);
    bus_producer_free(p, 0);
    return r;
}

int bus_producer_produce(bus_producer_t *p, const char *topic, const void *key, size_t key_len,
                         const void *value, size_t value_len, const bus_header_t *headers,
                         size_t nheaders, bus_notifier_t *notifier, bus_delivery_fn cb,
                         void *opaque)
{
    rd_kafka_headers_t *hdrs = NULL;
    bus_completion_t *c = NULL;
    rd_kafka_resp_err_t err;
    int r;

    if (!p || !topic || !cb || (nheaders > 0 && !headers))
        return -EINVAL;
    if (atomic_load(&p->closing))
        return -ESHUTDOWN;
    if (atomic_load(&p->fatal))
        return -EIO;

    c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    *c = (bus_completion_t){.cb = cb, .opaque = opaque, .notifier = notifier};

    if (nheaders > 0) {
        hdrs = rd_kafka_headers_new(nheaders);
        if (!hdrs) {
            r = -ENOMEM;
            goto fail;
        }
        for (size_t i = 0; i < nheaders; i++) {
            err = rd_kafka_header_add(hdrs, headers[i].name, -1, headers[i].value,
                                      (ssize_t)headers[i].len);
            if (err) {
                r = bus_errno(err);
                goto fail;
            }
        }
    }

    /* Counted before the record can be reported, so that the report never sees zero. */
    pthread_mutex_lock(&p->lock);
    p->inflight++;
    pthread_mutex_unlock(&p->lock);

    err = rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, key_len),
                            RD_KAFKA_V_VALUE((void *)value, value_len),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(hdrs),
                            RD_KAFKA_V_OPAQUE(c), RD_KAFKA_V_END);
    if (err) {
        inflight_done(p);
        r = bus_errno(err);
        if (err == RD_KAFKA_RESP_ERR__FATAL)
            r = -EIO;
        goto fail;
    }
    /* On success librdkafka owns the headers. */
    return 0;
fail:
    if (hdrs)
        rd_kafka_headers_destroy(hdrs);
    free(c);
    return r;
}

static int wait_drained(bus_producer_t *p, int timeout_ms)
{
    struct timespec deadline;
    int r = 0;

    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&p->lock);
    while (p->inflight > 0 && r == 0)
        r = pthread_cond_timedwait(&p->drained, &p->lock, &deadline);
    r = p->inflight > 0 ? -ETIMEDOUT : 0;
    pthread_mutex_unlock(&p->lock);
    return r;
}

int bus_producer_flush(bus_producer_t *p, int timeout_ms)
{
    return wait_drained(p, timeout_ms < 0 ? 0 : timeout_ms);
}

int bus_producer_outq_len(bus_producer_t *p)
{
    long n;

    pthread_mutex_lock(&p->lock);
    n = p->inflight;
    pthread_mutex_unlock(&p->lock);
    return (int)n;
}

int bus_producer_connected(bus_producer_t *p)
{
    return atomic_load(&p->connected);
}

rd_kafka_t *bus_producer_handle(bus_producer_t *p)
{
    return p->rk;
}

void bus_producer_free(bus_producer_t *p, int timeout_ms)
{
    if (!p)
        return;
    atomic_store(&p->closing, true);
    if (p->thread_started) {
        if (bus_producer_flush(p, timeout_ms) < 0) {
            /* Give every record left its one callback (with a purge error) rather than leak
             * its completion; the poll thread serves those reports promptly. */
            rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
            wait_drained(p, 5000);
        }
        atomic_store(&p->stop, true);
        pthread_join(p->thread, NULL);
    }
    if (p->rk)
        rd_kafka_destroy(p->rk);
    pthread_cond_destroy(&p->drained);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

static void notifier_cb(evutil_socket_t fd, short what, void *arg)
{
    bus_notifier_t *n = arg;
    bus_completion_t *c;

    (void)fd;
    (void)what;
    pthread_mutex_lock(&n->lock);
    c = n->head;
    n->head = n->tail = NULL;
    pthread_mutex_unlock(&n->lock);
    while (c) {
        bus_completion_t *next = c->next;

        c->cb(c->err, c->partition, c->offset, c->opaque);
        free(c);
        c = next;
    }
}

int bus_notifier_new(struct event_base *base, bus_notifier_t **ret_notifier)
{
    bus_notifier_t *n;

    if (!base)
        return -EINVAL;
    /* Idempotent in libevent 2.1 (the same callbacks may be installed again); it only makes
     * bases created afterwards thread-safe, hence the note in the header. */
    if (evthread_use_pthreads() < 0)
        return -ENOTSUP;
    n = calloc(1, sizeof(*n));
    if (!n)
        return -ENOMEM;
    pthread_mutex_init(&n->lock, NULL);
    n->ev = event_new(base, -1, 0, notifier_cb, n);
    if (!n->ev) {
        bus_notifier_free(n);
        return -ENOMEM;
    }
    *ret_notifier = n;
    return 0;
}

void bus_notifier_free(bus_notifier_t *n)
{
    bus_completion_t *c;

    if (!n)
        return;
    if (n->ev)
        event_free(n->ev);
    c = n->head;
    while (c) {
        bus_completion_t *next = c->next;

        free(c);
        c = next;
    }
    pthread_mutex_destroy(&n->lock);
    free(n);
}
