/* svc_health.c: /healthz, /readyz and /metrics on a thread of their own. */
#include "svc_health.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>

#include "svc_private.h"

typedef struct health_check {
    char *name;
    bool ok;
    bool gating; /* false: reported, but the daemon is ready without it (svc_health_note()) */
} health_check_t;

struct svc_health {
    struct event_base *base;
    struct evhttp *http;
    struct event *stop_ev;
    pthread_t thread;
    bool running;
    int port;
    svc_metrics_t *metrics;

    pthread_mutex_t lock; /* guards the checks */
    health_check_t *checks;
    size_t nchecks;
    bool broken; /* a check could not be registered (out of memory): never report ready */
};

static pthread_once_t evthread_once = PTHREAD_ONCE_INIT;
static int evthread_status;

static void evthread_init(void)
{
    /* Makes event_base's lock and wake-up another thread's event_active() safe. */
    evthread_status = evthread_use_pthreads();
}

static void reply(struct evhttp_request *req, int code, const char *reason, const char *type,
                  struct evbuffer *body)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);

    evhttp_add_header(h, "Content-Type", type);
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_send_reply(req, code, reason, body);
}

static void problem_reply(struct evhttp_request *req, int code, const char *title, const char *slug,
                          const char *detail)
{
    struct evbuffer *body = evbuffer_new();
    char esc[1024];
    size_t pos = 0;

    if (!body) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    svc_json_escape(esc, sizeof(esc), &pos, detail, strlen(detail));
    evbuffer_add_printf(body,
                        "{\"type\":\"https://sensorbus.dev/problems/%s\",\"title\":\"%s\","
                        "\"status\":%d,\"detail\":\"%.*s\"}",
                        slug, title, code, (int)pos, esc);
    reply(req, code, title, "application/problem+json", body);
    evbuffer_free(body);
}

/* Ready when at least one check is registered and every check is ok. Caller holds the lock. */
static bool ready_locked(const svc_health_t *health)
{
    bool ready = health->nchecks > 0 && !health->broken;

    for (size_t i = 0; i < health->nchecks; i++)
        ready = ready && (health->checks[i].ok || !health->checks[i].gating);
    return ready;
}

static void healthz(svc_health_t *health, struct evbuffer *body, struct evhttp_request *req)
{
    (void)health;
    evbuffer_add_printf(body, "{\"status\":\"ok\"}");
    reply(req, HTTP_OK, "OK", "application/json", body);
}

static void readyz(svc_health_t *health, struct evbuffer *body, struct evhttp_request *req)
{
    bool ready, degraded = false;

    pthread_mutex_lock(&health->lock);
    ready = ready_locked(health);
    for (size_t i = 0; i < health->nchecks; i++)
        degraded = degraded || !health->checks[i].ok;
    evbuffer_add_printf(body, "{\"status\":\"%s\",\"checks\":{",
                        !ready     ? "not ready"
                        : degraded ? "degraded"
                                   : "ready");
    for (size_t i = 0; i < health->nchecks; i++) {
        char esc[256];
        size_t pos = 0;

        svc_json_escape(esc, sizeof(esc), &pos, health->checks[i].name,
                        strlen(health->checks[i].name));
        evbuffer_add_printf(body, "%s\"%.*s\":%s", i ? "," : "", (int)pos, esc,
                            health->checks[i].ok ? "true" : "false");
    }
    pthread_mutex_unlock(&health->lock);
    evbuffer_add_printf(body, "}}");
    if (ready)
        reply(req, HTTP_OK, "OK", "application/json", body);
    else
        reply(req, HTTP_SERVUNAVAIL, "Service Unavailable", "application/json", body);
}

static void metrics(svc_health_t *health, struct evbuffer *body, struct evhttp_request *req)
{
    char *text = NULL;
    size_t len = 0;

    if (svc_metrics_render(health->metrics, &text, &len) < 0) {
        problem_reply(req, HTTP_INTERNAL, "Internal Server Error", "internal",
                      "the metrics could not be rendered");
        return;
    }
    evbuffer_add(body, text, len);
    free(text);
    reply(req, HTTP_OK, "OK", "text/plain; version=0.0.4; charset=utf-8", body);
}

static const struct {
    const char *path;
    void (*handle)(svc_health_t *, struct evbuffer *, struct evhttp_request *);
} routes[] = {
    {"/healthz", healthz},
    {"/readyz", readyz},
    {"/metrics", metrics},
};

static void on_request(struct evhttp_request *req, void *arg)
{
    svc_health_t *health = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    struct evbuffer *body;
    char detail[600];

    if (!path || !*path)
        path = "/";
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (strcmp(path, routes[i].path) != 0)
            continue;
        if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
            snprintf(detail, sizeof(detail), "%s only answers GET and HEAD", routes[i].path);
            problem_reply(req, 405, "Method Not Allowed", "method-not-allowed", detail);
            return;
        }
        body = evbuffer_new();
        if (!body) {
            evhttp_send_error(req, HTTP_INTERNAL, NULL);
            return;
        }
        routes[i].handle(health, body, req);
        evbuffer_free(body);
        return;
    }
    snprintf(detail, sizeof(detail),
             "no resource at %.256s; this port serves /healthz, /readyz and /metrics", path);
    problem_reply(req, HTTP_NOTFOUND, "Not Found", "not-found", detail);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

static void *health_thread(void *arg)
{
    svc_health_t *health = arg;

    event_base_loop(health->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

int svc_health_new(const char *addr, int port, svc_metrics_t *metrics, svc_health_t **ret_health)
{
    svc_health_t *health = NULL;
    struct evhttp_bound_socket *bound;
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof(ss);
    sigset_t block, old;
    int r;

    pthread_once(&evthread_once, evthread_init);
    if (evthread_status < 0)
        return -ENOSYS;
    if (port < 0 || port > 65535 || !metrics)
        return -EINVAL;
    health = calloc(1, sizeof(*health));
    if (!health)
        return -ENOMEM;
    pthread_mutex_init(&health->lock, NULL);
    health->metrics = metrics;
    r = -ENOMEM;
    health->base = event_base_new();
    if (!health->base || !(health->http = evhttp_new(health->base)))
        goto fail;
    health->stop_ev = event_new(health->base, -1, 0, on_stop, health->base);
    if (!health->stop_ev)
        goto fail;
    evhttp_set_gencb(health->http, on_request, health);

    errno = 0;
    bound =
        evhttp_bind_socket_with_handle(health->http, addr ? addr : "127.0.0.1", (ev_uint16_t)port);
    if (!bound) {
        r = errno ? -errno : -EADDRNOTAVAIL;
        goto fail;
    }
    if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&ss, &sslen) < 0) {
        r = -errno;
        goto fail;
    }
    health->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                  : ((struct sockaddr_in *)&ss)->sin_port);

    /* Signals go to the daemon's own threads, never to this one. */
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    r = -pthread_create(&health->thread, NULL, health_thread, health);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r < 0)
        goto fail;
    health->running = true;
    *ret_health = health;
    return 0;
fail:
    svc_health_free(health);
    return r;
}

int svc_health_port(const svc_health_t *health)
{
    return health->port;
}

static void check_set(svc_health_t *health, const char *check, bool ok, bool gating)
{
    health_check_t *grown;
    char *name;

    if (!health || !check)
        return;
    pthread_mutex_lock(&health->lock);
    for (size_t i = 0; i < health->nchecks; i++) {
        if (strcmp(health->checks[i].name, check) == 0) {
            health->checks[i].ok = ok;
            health->checks[i].gating = gating;
            goto out;
        }
    }
    name = strdup(check);
    grown = realloc(health->checks, (health->nchecks + 1) * sizeof(*grown));
    if (!name || !grown) {
        free(name);
        if (grown)
            health->checks = grown;
        health->broken = true;
        goto out;
    }
    health->checks = grown;
    health->checks[health->nchecks++] = (health_check_t){name, ok, gating};
out:
    pthread_mutex_unlock(&health->lock);
}

void svc_health_set(svc_health_t *health, const char *check, bool ok)
{
    check_set(health, check, ok, true);
}

void svc_health_note(svc_health_t *health, const char *check, bool ok)
{
    check_set(health, check, ok, false);
}

bool svc_health_ready(svc_health_t *health)
{
    bool ready;

    pthread_mutex_lock(&health->lock);
    ready = ready_locked(health);
    pthread_mutex_unlock(&health->lock);
    return ready;
}

void svc_health_free(svc_health_t *health)
{
    if (!health)
        return;
    if (health->running) {
        /* An active event survives until the loop runs it, so this works even if the thread
         * has not entered its loop yet (a loopbreak before the loop starts would be lost). */
        event_active(health->stop_ev, EV_READ, 0);
        pthread_join(health->thread, NULL);
    }
    if (health->http)
        evhttp_free(health->http);
    if (health->stop_ev)
        event_free(health->stop_ev);
    if (health->base)
        event_base_free(health->base);
    for (size_t i = 0; i < health->nchecks; i++)
        free(health->checks[i].name);
    free(health->checks);
    pthread_mutex_destroy(&health->lock);
    free(health);
}
