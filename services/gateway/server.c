/* server.c: sockets, the per-thread evhttp servers, connection accounting, limits, routing and
 * the reply helpers every handler uses.
 *
 * Threads share one listening socket: each loop's evhttp accepts on its own dup() of it (evhttp
 * closes the fd it accepts on when freed, so sharing one fd number would close it N times). We
 * prefer this to N SO_REUSEPORT sockets because the kernel queues a connection on a reuseport
 * socket by hash, even when that socket's thread is busy for a while (a slow DB lookup), and
 * drops that socket's backlog when it closes at shutdown; with one shared socket a busy thread
 * simply does not accept, the idle ones do, and closing the socket loses nothing queued for a
 * thread that has already stopped.
 *
 * libevent 2.1.12 facts this file is built on (read in its http.c):
 * - evhttp has no "new connection" hook, only evhttp_set_bevcb(), called just before the
 *   connection object exists. We record the bufferevent there (holding a reference so it cannot
 *   vanish) and adopt it from an event activated for the same loop iteration: by then
 *   bufferevent_getcb() yields the evhttp_connection, so we can count it, refuse it beyond
 *   max_connections, and set the close callback that un-counts it.
 * - While a request is in the handler's hands evhttp stops reading the connection, so a client
 *   that hangs up is noticed only when the answer is written; the request object stays valid
 *   until evhttp_send_reply(). Only evhttp_free() (shutdown) frees it under us, and it calls the
 *   close callback first, which detaches our gw_req_t (evreq = NULL) before that happens.
 * - evhttp_set_timeout() is an inactivity timeout on reads and writes and closes the connection
 *   without an answer. We add a deadline per request, started by the request's first byte, that
 *   answers 408 problem+json and closes (this also stops a client that trickles one byte at a
 *   time). evhttp's own timeout, set one second longer, remains the idle keep-alive timeout
 *   (closing silently is right there) and the limit for writing an answer to a stalled reader.
 * - evhttp answers requests beyond its own body or header cap with an HTML 413 and closes. We
 *   give it 4x our limits as hard caps and check the limits ourselves, to answer problem+json
 *   (413, 431) for everything between the limit and the cap.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "cache.h"
#include "gateway.h"
#include "svc_lifecycle.h"
#include "svc_log.h"
#include "svc_util.h"

/* After a failed connect, DB calls fail fast (503) for this long instead of blocking the loop
 * in connect() on every request. */
#define DB_RETRY_MS 1000
/* How often a stopping loop checks whether its in-flight work is done. */
#define DRAIN_CHECK_MS 20

typedef enum conn_state {
    CONN_IDLE,     /* between requests */
    CONN_READING,  /* bytes of a request arrived; the request deadline runs */
    CONN_HANDLING, /* the request is in a handler's hands */
} conn_state_t;

struct gw_conn {
    gw_loop_t *loop;
    gw_conn_t *next_fresh;
    struct bufferevent *bev;
    struct evhttp_connection *evcon;
    struct evbuffer_cb_entry *input_cb;
    struct event *deadline;
    int fd;
    conn_state_t state;
    bool writing;     /* an answer is being written */
    int64_t first_us; /* when the current request's first byte arrived */
    gw_req_t *req;    /* the request in a handler's hands */
};

static int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static struct timeval tv_ms(int64_t ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 409:
        return "Conflict";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return NULL; /* libevent's own table */
    }
}

/* ---- listening socket -------------------------------------------------------------------- */

int gw_server_listen(gw_t *gw)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    struct rlimit rl;
    char host[256], port_s[16];
    int port, fd = -1, one = 1, r;

    if (svc_parse_hostport(gw->cfg.listen, host, sizeof(host), &port) < 0) {
        log_error("listen: \"%s\" is not host:port", gw->cfg.listen);
        return -EINVAL;
    }
    snprintf(port_s, sizeof(port_s), "%d", port);
    r = getaddrinfo(host, port_s, &hints, &ai);
    if (r != 0) {
        log_error("listen: cannot resolve %s: %s", host, gai_strerror(r));
        return -EINVAL;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, SOMAXCONN) < 0) {
        r = -errno;
        log_error("listen: cannot listen on %s: %s", gw->cfg.listen, strerror(errno));
        goto fail;
    }
    freeaddrinfo(ai);
    ai = NULL;

    /* Every connection is a descriptor: allow as many as the hard limit lets us, and size the
     * fd -> connection table to match. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY ||
        rl.rlim_cur > (1u << 22))
        rl.rlim_cur = 1u << 22;
    if ((int64_t)rl.rlim_cur < gw->cfg.max_connections + 64)
        log_warn("the open-file limit (%llu) is below max_connections (%lld): connections "
                 "beyond it will wait in the backlog",
                 (unsigned long long)rl.rlim_cur, (long long)gw->cfg.max_connections);
    gw->conns_size = rl.rlim_cur;
    gw->conns = calloc(gw->conns_size, sizeof(*gw->conns));
    if (!gw->conns) {
        r = -ENOMEM;
        goto fail;
    }
    gw->listen_fd = fd;
    log_info("listening on %s (%zu threads)", gw->cfg.listen, gw->nloops);
    return 0;
fail:
    if (ai)
        freeaddrinfo(ai);
    if (fd >= 0)
        close(fd);
    return r;
}

/* ---- connections ------------------------------------------------------------------------- */

static void loop_open_connections_changed(gw_t *gw, long delta)
{
    long n = atomic_fetch_add(&gw->open_connections, delta) + delta;

    svc_metric_set(gw->metrics.connections_open, (double)n);
}

/* Writes a complete answer straight to the socket and closes the connection. Used where evhttp
 * offers no request to answer through (over the connection cap, a request past its deadline).
 * The answer is a few hundred bytes on a socket whose send buffer is empty, so one send() is
 * enough; if it fails the client is gone anyway. */
static void conn_refuse(gw_loop_t *loop, int fd, int status, const char *slug, const char *detail)
{
    gw_problem_t p = {0};
    char id[GW_REQUEST_ID_MAX + 1], head[512];
    char *body;
    int n;

    if (svc_uuid4(id) < 0)
        snprintf(id, sizeof(id), "none");
    gw_problem_set(&p, status, slug, "%s", detail);
    body = gw_problem_render(&p, id);
    if (body) {
        n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: application/problem+json\r\n"
                     "Content-Length: %zu\r\nX-Request-Id: %s\r\n%sConnection: close\r\n\r\n",
                     status, reason_phrase(status), strlen(body), id,
                     status == 503 ? "Retry-After: 1\r\n" : "");
        if (send(fd, head, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT | MSG_MORE) == n)
            (void)send(fd, body, strlen(body), MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    free(body);
    gw_metrics_request(&loop->gw->metrics, GW_ROUTE_OTHER, status, 0);
    log_info("connection refused with %d (%s) request_id=%s", status, slug, id);
}

static void conn_closed(struct evhttp_connection *evcon, void *arg)
{
    gw_conn_t *conn = arg;
    gw_loop_t *loop = conn->loop;

    (void)evcon;
    /* evhttp drains the input buffer after this callback: stop hearing about it. */
    evbuffer_remove_cb_entry(bufferevent_get_input(conn->bev), conn->input_cb);
    event_free(conn->deadline);
    if (conn->req) {
        conn->req->evreq = NULL;
        conn->req->conn = NULL;
    }
    if (conn->writing)
        loop->nwriting--;
    if (conn->fd >= 0 && (size_t)conn->fd < loop->gw->conns_size)
        loop->gw->conns[conn->fd] = NULL;
    loop_open_connections_changed(loop->gw, -1);
    free(conn);
}

/* The first byte of a request starts its deadline. */
static void conn_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    gw_conn_t *conn = arg;
    struct timeval tv = tv_ms(conn->loop->gw->cfg.request_timeout_ms);

    (void)buf;
    if (info->n_added == 0 || conn->state != CONN_IDLE)
        return;
    conn->state = CONN_READING;
    conn->first_us = now_us();
    evtimer_add(conn->deadline, &tv);
}

static void conn_deadline(evutil_socket_t fd, short what, void *arg)
{
    gw_conn_t *conn = arg;
    char detail[128];

    (void)fd;
    (void)what;
    if (conn->state != CONN_READING)
        return;
    snprintf(detail, sizeof(detail), "the request was not received completely within %lld ms",
             (long long)conn->loop->gw->cfg.request_timeout_ms);
    conn_refuse(conn->loop, conn->fd, 408, "request-timeout", detail);
    evhttp_connection_free(conn->evcon); /* calls conn_closed(), which frees conn */
}

static struct bufferevent *conn_new_bev(struct event_base *base, void *arg)
{
    gw_loop_t *loop = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    gw_conn_t *conn;

    if (!bev)
        return NULL;
    conn = calloc(1, sizeof(*conn));
    if (!conn)
        return bev; /* served, just not counted */
    conn->loop = loop;
    conn->bev = bev;
    conn->fd = -1;
    bufferevent_incref(bev);
    conn->next_fresh = loop->fresh;
    loop->fresh = conn;
    event_active(loop->adopt_ev, 0, 0);
    return bev;
}

static void conn_adopt(evutil_socket_t fd_unused, short what, void *arg)
{
    gw_loop_t *loop = arg;
    gw_t *gw = loop->gw;

    (void)fd_unused;
    (void)what;
    while (loop->fresh) {
        gw_conn_t *conn = loop->fresh;
        bufferevent_data_cb readcb = NULL;
        void *cbarg = NULL;
        long open;

        loop->fresh = conn->next_fresh;
        bufferevent_getcb(conn->bev, &readcb, NULL, NULL, &cbarg);
        conn->fd = bufferevent_getfd(conn->bev);
        if (!readcb || !cbarg || conn->fd < 0 || (size_t)conn->fd >= gw->conns_size) {
            /* evhttp already let go of it (or never took it): nothing to count. */
            bufferevent_decref(conn->bev);
            free(conn);
            continue;
        }
        conn->evcon = cbarg;
        open = atomic_load(&gw->open_connections);
        if (open >= gw->cfg.max_connections || loop->stopping) {
            svc_metric_inc(gw->metrics.connections_rejected);
            conn_refuse(loop, conn->fd, 503,
                        loop->stopping ? "unavailable" : "too-many-connections",
                        loop->stopping ? "the gateway is shutting down"
                                       : "the gateway is at its connection limit; retry shortly");
            evhttp_connection_free(conn->evcon);
            bufferevent_decref(conn->bev);
            free(conn);
            continue;
        }
        conn->deadline = evtimer_new(loop->base, conn_deadline, conn);
        conn->input_cb = evbuffer_add_cb(bufferevent_get_input(conn->bev), conn_input, conn);
        if (!conn->deadline || !conn->input_cb) {
            if (conn->input_cb)
                evbuffer_remove_cb_entry(bufferevent_get_input(conn->bev), conn->input_cb);
            event_free(conn->deadline);
            bufferevent_decref(conn->bev);
            free(conn);
            continue;
        }
        gw->conns[conn->fd] = conn;
        loop_open_connections_changed(gw, 1);
        evhttp_connection_set_closecb(conn->evcon, conn_closed, conn);
        bufferevent_decref(conn->bev);
        /* Bytes that arrived before adoption started no deadline: start it now. */
        if (evbuffer_get_length(bufferevent_get_input(conn->bev)) > 0) {
            struct evbuffer_cb_info info = {.n_added = 1};

            conn_input(NULL, &info, conn);
        }
    }
}

static gw_conn_t *conn_of(gw_loop_t *loop, struct evhttp_request *evreq)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(evreq);
    gw_conn_t *conn;
    int fd;

    if (!evcon)
        return NULL;
    fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
    if (fd < 0 || (size_t)fd >= loop->gw->conns_size)
        return NULL;
    conn = loop->gw->conns[fd];
    return conn && conn->evcon == evcon ? conn : NULL;
}

/* ---- replies ----------------------------------------------------------------------------- */

void gw_req_enter(gw_req_t *r)
{
    svc_log_set_request_id(r->request_id);
}

void gw_req_header(gw_req_t *r, const char *name, const char *value)
{
    if (r->evreq)
        evhttp_add_header(evhttp_request_get_output_headers(r->evreq), name, value);
}

const char *gw_req_get_header(gw_req_t *r, const char *name)
{
    return r->evreq ? evhttp_find_header(evhttp_request_get_input_headers(r->evreq), name) : NULL;
}

static void reply_sent(struct evhttp_request *evreq, void *arg)
{
    gw_conn_t *conn = arg;

    (void)evreq;
    if (conn->writing) {
        conn->writing = false;
        conn->loop->nwriting--;
    }
}

void gw_reply(gw_req_t *r, int status, const char *content_type, const char *body, size_t len)
{
    gw_loop_t *loop = r->loop;
    double seconds = (double)(now_us() - r->start_us) / 1e6;

    gw_req_enter(r);
    if (r->evreq) {
        struct evkeyvalq *h = evhttp_request_get_output_headers(r->evreq);
        struct evbuffer *buf = evbuffer_new();

        if (content_type)
            evhttp_add_header(h, "Content-Type", content_type);
        evhttp_add_header(h, "X-Request-Id", r->request_id);
        gw_cors_headers(r);
        if (loop->stopping)
            evhttp_add_header(h, "Connection", "close");
        if (buf)
            evbuffer_add(buf, body, len);
        if (r->conn) {
            r->conn->req = NULL;
            r->conn->writing = true;
            loop->nwriting++;
            r->conn->state = CONN_IDLE;
            evhttp_request_set_on_complete_cb(r->evreq, reply_sent, r->conn);
        }
        evhttp_send_reply(r->evreq, status, reason_phrase(status), buf);
        evbuffer_free(buf);
    }
    gw_metrics_request(&loop->gw->metrics, r->route, status, seconds);
    /* Successful requests are logged at debug: at tens of thousands of readings per second an
     * info line each would drown everything else (and /metrics counts them). Every refusal and
     * failure is logged at info, with the key's prefix when the caller authenticated. */
    svc_log(status < 400 ? SVC_LOG_DEBUG : SVC_LOG_INFO,
            "%s %s %d duration_ms=%.3f key_prefix=%s%s", r->method, r->path, status, seconds * 1e3,
            r->key_prefix[0] ? r->key_prefix : "-", r->evreq ? "" : " (client gone)");
    svc_log_set_request_id(NULL);
    if (r->query) {
        evhttp_clear_headers(r->query);
        free(r->query);
    }
    free(r);
}

const char *gw_req_query(gw_req_t *r, const char *name)
{
    if (!r->query) {
        const struct evhttp_uri *uri = r->evreq ? evhttp_request_get_evhttp_uri(r->evreq) : NULL;
        const char *q = uri ? evhttp_uri_get_query(uri) : NULL;

        r->query = calloc(1, sizeof(*r->query));
        if (!r->query)
            return NULL;
        r->query->tqh_first = NULL; /* TAILQ_INIT, without <sys/queue.h> */
        r->query->tqh_last = &r->query->tqh_first;
        if (q && evhttp_parse_query_str(q, r->query) < 0)
            evhttp_clear_headers(r->query);
    }
    return evhttp_find_header(r->query, name);
}

void gw_reply_json(gw_req_t *r, int status, json_t *doc)
{
    char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;

    json_decref(doc);
    if (!body) {
        gw_reply_problemf(r, 500, "internal-error", "out of memory");
        return;
    }
    gw_reply(r, status, "application/json", body, strlen(body));
    free(body);
}

void gw_reply_problem(gw_req_t *r, const gw_problem_t *p)
{
    char *body = gw_problem_render(p, r->request_id);

    /* A handler may have set a more precise challenge (error="invalid_token"). */
    if (p->status == 401 && r->evreq &&
        !evhttp_find_header(evhttp_request_get_output_headers(r->evreq), "WWW-Authenticate"))
        gw_req_header(r, "WWW-Authenticate", "Bearer");
    if (p->status == 503)
        gw_req_header(r, "Retry-After", "1");
    if (!body) {
        static const char oom[] = "{\"type\":\"" GW_PROBLEM_BASE "internal-error\",\"title\":"
                                  "\"Internal server error\",\"status\":500,\"detail\":"
                                  "\"out of memory\"}";

        gw_reply(r, 500, "application/problem+json", oom, sizeof(oom) - 1);
        return;
    }
    gw_reply(r, p->status, "application/problem+json", body, strlen(body));
    free(body);
}

void gw_reply_problemv(gw_req_t *r, int status, const char *slug, const char *fmt, va_list ap)
{
    gw_problem_t p = {0};

    gw_problem_set(&p, status, slug, "%s", "");
    vsnprintf(p.detail, sizeof(p.detail), fmt, ap);
    gw_reply_problem(r, &p);
}

void gw_reply_problemf(gw_req_t *r, int status, const char *slug, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    gw_reply_problemv(r, status, slug, fmt, ap);
    va_end(ap);
}

/* ---- dispatch ---------------------------------------------------------------------------- */

static const char *method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    default:
        return "OTHER";
    }
}

/* The request line plus every header line as sent ("Name: value\r\n"). */
static size_t header_bytes(struct evhttp_request *evreq)
{
    const struct evkeyvalq *h = evhttp_request_get_input_headers(evreq);
    size_t n = strlen(evhttp_request_get_uri(evreq)) + 16;

    for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next)
        n += strlen(kv->key) + strlen(kv->value) + 4;
    return n;
}

static void dispatch(struct evhttp_request *evreq, void *arg)
{
    gw_loop_t *loop = arg;
    const gw_config_t *cfg = &loop->gw->cfg;
    gw_conn_t *conn = conn_of(loop, evreq);
    enum evhttp_cmd_type method = evhttp_request_get_command(evreq);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(evreq);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    gw_req_t *r;

    if (!path || !*path)
        path = "/";
    r = calloc(1, sizeof(*r));
    if (!r || gw_request_id_pick(
                  evhttp_find_header(evhttp_request_get_input_headers(evreq), "X-Request-Id"),
                  r->request_id) < 0) {
        free(r);
        evhttp_send_error(evreq, 500, NULL);
        return;
    }
    r->loop = loop;
    r->evreq = evreq;
    r->conn = conn;
    r->route = GW_ROUTE_OTHER;
    r->start_us = now_us();
    snprintf(r->method, sizeof(r->method), "%s", method_name(method));
    snprintf(r->path, sizeof(r->path), "%s", path);
    if (conn) {
        if (conn->state == CONN_READING && conn->first_us)
            r->start_us = conn->first_us;
        evtimer_del(conn->deadline);
        conn->state = CONN_HANDLING;
        conn->req = r;
    }
    gw_req_enter(r);

    if (header_bytes(evreq) > (size_t)cfg->max_header_bytes) {
        gw_reply_problemf(r, 431, "headers-too-large",
                          "the request line and headers may total at most %lld bytes",
                          (long long)cfg->max_header_bytes);
        return;
    }
    if (evbuffer_get_length(evhttp_request_get_input_buffer(evreq)) > (size_t)cfg->max_body_bytes) {
        gw_reply_problemf(r, 413, "body-too-large",
                          "the request body may be at most %lld bytes; split the batch",
                          (long long)cfg->max_body_bytes);
        return;
    }
    gw_route_dispatch(r, r->method);
}

/* ---- loops ------------------------------------------------------------------------------- */

int gw_loop_db(gw_loop_t *loop, db_t **ret_db)
{
    if (!db_connected(loop->db)) {
        if (svc_now_ms() < loop->db_retry_at_ms)
            return -ECONNREFUSED;
        if (db_connect(loop->db) < 0) {
            loop->db_retry_at_ms = svc_now_ms() + DB_RETRY_MS;
            return -ECONNREFUSED;
        }
    }
    *ret_db = loop->db;
    return 0;
}

void gw_loop_db_failed(gw_loop_t *loop)
{
    int64_t now = svc_now_ms();

    /* Starts a back-off only when none is running: a failure answered from inside the window
     * must not extend it, or a steady stream of requests would never let a reconnect happen. */
    if (!db_connected(loop->db) && now >= loop->db_retry_at_ms)
        loop->db_retry_at_ms = now + DB_RETRY_MS;
}

static void accept_resume(evutil_socket_t fd, short what, void *arg)
{
    gw_loop_t *loop = arg;

    (void)fd;
    (void)what;
    if (loop->bound)
        evconnlistener_enable(evhttp_bound_socket_get_listener(loop->bound));
}

/* accept() failed (EMFILE/ENFILE/ENOMEM): without this, libevent would retry at once, forever,
 * spinning the CPU. Pause accepting for a moment; the backlog holds the clients meanwhile. */
static void accept_error(struct evconnlistener *listener, void *arg)
{
    gw_loop_t *loop = arg;
    struct timeval tv = tv_ms(100);
    int err = EVUTIL_SOCKET_ERROR();

    log_warn("accept failed: %s; pausing accepts for 100 ms", strerror(err));
    evconnlistener_disable(listener);
    evtimer_add(loop->resume_ev, &tv);
}

static void loop_drain(evutil_socket_t fd, short what, void *arg)
{
    gw_loop_t *loop = arg;
    bool busy = loop->nwaiting > 0 || loop->nwriting > 0;

    (void)fd;
    (void)what;
    if (busy && svc_now_ms() < loop->stop_deadline_ms)
        return;
    if (busy)
        log_warn("shutdown: giving up on in-flight requests after the grace period");
    gw_ingest_abandon(loop);
    event_base_loopexit(loop->base, NULL);
}

/* SIGINT/SIGTERM: stop accepting, let requests in flight get their delivery reports and their
 * answers written (bounded by produce_timeout_ms plus a little), then leave the loop. */
static void loop_stop(evutil_socket_t fd, short what, void *arg)
{
    gw_loop_t *loop = arg;
    struct timeval tv = tv_ms(DRAIN_CHECK_MS);

    (void)fd;
    (void)what;
    event_del(loop->stop_ev); /* the stop fd stays readable */
    loop->stopping = true;
    if (loop->bound) {
        evhttp_del_accept_socket(loop->http, loop->bound);
        loop->bound = NULL;
    }
    loop->stop_deadline_ms = svc_now_ms() + loop->gw->cfg.produce_timeout_ms + 2000;
    event_add(loop->drain_ev, &tv);
}

int gw_loop_init(gw_loop_t *loop)
{
    const gw_config_t *cfg = &loop->gw->cfg;
    /* evhttp's inactivity timeout runs a second longer than our request deadline, so that a
     * request stalled after a burst gets our 408 rather than a silent close. */
    struct timeval timeout = tv_ms(cfg->request_timeout_ms + 1000);
    int fd = -1, r;

    loop->base = event_base_new();
    if (!loop->base)
        return -ENOMEM;
    loop->http = evhttp_new(loop->base);
    if (!loop->http)
        return -ENOMEM;
    evhttp_set_max_body_size(loop->http, 4 * cfg->max_body_bytes);
    evhttp_set_max_headers_size(loop->http, 4 * cfg->max_header_bytes);
    evhttp_set_timeout_tv(loop->http, &timeout);
    /* Every method reaches dispatch(), so that a wrong one gets 405 with Allow (not libevent's
     * HTML 501). */
    evhttp_set_allowed_methods(loop->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                               EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                               EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                               EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_gencb(loop->http, dispatch, loop);
    evhttp_set_bevcb(loop->http, conn_new_bev, loop);

    loop->adopt_ev = event_new(loop->base, -1, 0, conn_adopt, loop);
    loop->stop_ev = event_new(loop->base, svc_stop_fd(), EV_READ | EV_PERSIST, loop_stop, loop);
    loop->drain_ev = event_new(loop->base, -1, EV_PERSIST, loop_drain, loop);
    loop->resume_ev = evtimer_new(loop->base, accept_resume, loop);
    if (!loop->adopt_ev || !loop->stop_ev || !loop->drain_ev || !loop->resume_ev)
        return -ENOMEM;
    if (event_add(loop->stop_ev, NULL) < 0)
        return -EIO;

    fd = fcntl(loop->gw->listen_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    loop->bound = evhttp_accept_socket_with_handle(loop->http, fd);
    if (!loop->bound) {
        close(fd);
        return -EIO;
    }
    evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(loop->bound), accept_error);

    r = bus_notifier_new(loop->base, &loop->notifier);
    if (r < 0)
        return r;
    /* One connection per loop, used synchronously: the key cache makes lookups rare (one per
     * key and TTL), so a blocking query now and then costs less than a pool's hand-offs. */
    r = db_new(cfg->pg_dsn, &loop->db);
    if (r < 0) {
        log_error("pg_dsn cannot be parsed");
        return r;
    }
    r = gw_key_prepare(loop->db);
    if (r == 0)
        r = gw_project_prepare(loop->db);
    if (r < 0) {
        log_error("cannot prepare the API key lookup: %s", db_errmsg(loop->db));
        return r;
    }
    /* People's sign-ins are not cached like API keys, so /auth/ queries go through a small
     * asynchronous pool that never blocks the loop. */
    r = db_pool_new(loop->base, cfg->pg_dsn, 2, NULL, &loop->pool);
    if (r < 0) {
        log_error("cannot create the database pool: %s", strerror(-r));
        return r;
    }
    /* The dashboard reads Redis when there is one; it connects (and reconnects) in the loop. */
    if (cfg->redis_url && *cfg->redis_url) {
        r = cache_async_new(loop->base, cfg->redis_url, 500, &loop->redis);
        if (r < 0) {
            log_error("cannot create the Redis client: %s", strerror(-r));
            return r;
        }
    }
    return 0;
}

void *gw_loop_run(void *arg)
{
    gw_loop_t *loop = arg;

    event_base_dispatch(loop->base);
    return NULL;
}

void gw_loop_teardown(gw_loop_t *loop)
{
    /* Called after the thread has left its loop and the producer is destroyed, so every
     * delivery report is already queued on the notifier. */
    loop->stopping = true;
    if (loop->stop_ev)
        event_del(loop->stop_ev);
    if (loop->drain_ev)
        event_del(loop->drain_ev);
    if (loop->resume_ev)
        event_del(loop->resume_ev);
    if (loop->adopt_ev)
        conn_adopt(-1, 0, loop);
    gw_ingest_abandon(loop);
    if (loop->http)
        evhttp_free(loop->http); /* closes every connection: conn_closed() frees ours */
    /* With no connection left, one pass runs only the queued delivery reports, which release
     * the last pending requests. */
    if (loop->base)
        event_base_loop(loop->base, EVLOOP_NONBLOCK);
    /* That pass also ran the password jobs the stopped pwpool completed; queries they or the
     * loop left in flight are cancelled here, and their callbacks free what waits on them. */
    db_pool_free(loop->pool);
    loop->pool = NULL;
    cache_async_free(loop->redis);
    loop->redis = NULL;
    gw_ingest_release(loop);
    if (loop->adopt_ev)
        event_free(loop->adopt_ev);
    if (loop->stop_ev)
        event_free(loop->stop_ev);
    if (loop->drain_ev)
        event_free(loop->drain_ev);
    if (loop->resume_ev)
        event_free(loop->resume_ev);
    bus_notifier_free(loop->notifier);
    db_free(loop->db);
    if (loop->base)
        event_base_free(loop->base);
}
