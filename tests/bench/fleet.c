/* sb-bench-fleet: a fleet of devices, each on its own keep-alive connection, each posting one
 * reading at a paced rate (the original design's headline load: 5,000 devices at 2 requests/s).
 *
 * wrk sends as fast as the server answers; a fleet does not. Here every device sends on its own
 * schedule: a random phase, then one request per interval with +-jitter drawn per request, so the
 * fleet offers devices x rate requests/s spread evenly, whatever the server does. Connections
 * open gradually over the ramp; the measured window starts after the ramp and a short settle.
 *
 * Latency runs from the moment a request was due, not from when it was written: a device whose
 * previous answer is late sends its next reading late, and that wait counts (the coordinated-
 * omission correction wrk2 makes). The generator's own lag (written minus due, for sends not held
 * back by an answer) is reported apart, so a generator starved of CPU shows up as lag rather than
 * passing for a slow server.
 *
 * One thread, libevent bufferevents and hand-written HTTP/1.1 (each device's request differs
 * only in its value), a log-linear histogram with 1/64 resolution (HdrHistogram's layout with 2
 * significant digits). With --pid it samples the server's VmRSS/VmHWM and CPU time from /proc.
 *
 * Connections come from --source (127.0.0.2 by default) with IP_BIND_ADDRESS_NO_PORT: thousands
 * of ephemeral ports on 127.0.0.1 would make other programs' later bind() to 127.0.0.1:<port>
 * fail on a shared machine, while ports on another loopback address never collide with them.
 *
 * usage: sb-bench-fleet --url http://HOST:PORT/PATH [options]   (--help lists them)
 * Exit status: 0 no errors, 1 errors or failure, 2 usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#define KEY_MAX        256
#define LINE_MAX_BYTES 8192
/* The highest latency the histogram resolves, in microseconds (about 18 hours). */
#define HIST_MAX_EXP 36
#define HIST_HALF    64
#define HIST_SIZE    ((HIST_MAX_EXP - 5) * HIST_HALF)

/* ---- histogram ------------------------------------------------------------------------------ */

/* Values below 128 have their own bucket; above, each power of two is split into 64 buckets,
 * so a reported value is at most 1/64 (1.6 %) above the true one. */
typedef struct hist {
    uint64_t counts[HIST_SIZE];
    uint64_t total, max;
} hist_t;

static size_t hist_index(uint64_t v)
{
    if (v < 2 * HIST_HALF)
        return (size_t)v;
    int shift = 63 - __builtin_clzll(v) - 6;
    if (shift > HIST_MAX_EXP - 7)
        return HIST_SIZE - 1;
    return (size_t)shift * HIST_HALF + (size_t)(v >> shift);
}

/* The highest value that falls in bucket @i. */
static uint64_t hist_bucket_top(size_t i)
{
    if (i < 2 * HIST_HALF)
        return i;
    size_t shift = i / HIST_HALF - 1;
    uint64_t sub = i % HIST_HALF + HIST_HALF;
    return ((sub + 1) << shift) - 1;
}

static void hist_add(hist_t *h, uint64_t v)
{
    h->counts[hist_index(v)]++;
    h->total++;
    if (v > h->max)
        h->max = v;
}

/* The value at quantile @q (0..1): the top of its bucket, never above the exact maximum. */
static uint64_t hist_quantile(const hist_t *h, double q)
{
    if (h->total == 0)
        return 0;
    uint64_t rank = (uint64_t)ceil(q * (double)h->total), seen = 0;
    if (rank == 0)
        rank = 1;
    for (size_t i = 0; i < HIST_SIZE; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t top = hist_bucket_top(i);
            return top < h->max ? top : h->max;
        }
    }
    return h->max;
}

/* ---- the fleet ------------------------------------------------------------------------------ */

typedef enum dev_state {
    DEV_DOWN,       /* not connected; the timer connects */
    DEV_CONNECTING, /* connect() in progress */
    DEV_IDLE,       /* connected, no request outstanding; the timer sends the next one */
    DEV_WAITING,    /* a request is outstanding */
} dev_state_t;

typedef enum err_kind {
    ERR_STATUS,  /* answered with another status than --expect */
    ERR_TIMEOUT, /* no complete answer within --timeout-ms */
    ERR_CONNECT, /* connect() failed or timed out */
    ERR_CLOSED,  /* the server closed or reset an open connection */
    ERR_BAD,     /* an answer this tool cannot parse */
    ERR_KINDS,
} err_kind_t;

static const char *const err_names[ERR_KINDS] = {"status", "timeout", "connect", "closed",
                                                 "bad_response"};

typedef struct fleet fleet_t;

typedef struct device {
    fleet_t *fl;
    unsigned idx;
    dev_state_t state;
    struct bufferevent *bev;
    struct event *timer; /* connect, next send, or reconnect, depending on state */
    uint64_t next_due;   /* when the timer's send is due (us, monotonic) */
    uint64_t due;        /* when the outstanding request was due */
    uint64_t sent_at;    /* when it was written */
    uint64_t base;       /* latency runs from here: due, or the send if a timer fired early */
    uint64_t late_due;   /* a send that came due while waiting: sent at the answer; 0 if none */
    double value;
    /* answer parsing */
    bool in_body, close_after, have_status;
    int status;
    int64_t content_length;
} device_t;

typedef struct server_sample {
    uint64_t rss_kib, hwm_kib, cpu_ticks;
    bool ok;
} server_sample_t;

struct fleet {
    /* settings */
    const char *url, *keys_file, *source, *json_path;
    unsigned devices, per_key;
    double rate, jitter, ramp_s, settle_s, seconds;
    int expect, timeout_ms, reconnect_ms;
    int pid;
    bool quiet;
    unsigned seed;

    /* derived */
    char host[256], port[8], *path;
    struct sockaddr_storage addr, src;
    socklen_t addr_len, src_len;
    char **keys;
    size_t nkeys;
    uint64_t interval_us;

    /* run */
    struct event_base *base;
    device_t *devs;
    struct event *tick, *sigint, *sigterm;
    uint64_t t0, meas_start, meas_end, stop_deadline;
    bool stopping, interrupted, marked_start, marked_end;
    unsigned connected, outstanding;
    uint64_t rng;

    /* results: errors over the whole run, the rest over the measured window */
    uint64_t errors[ERR_KINDS], status_counts[600], connects;
    uint64_t sent, answered, ok, late_sends, skipped_sends;
    hist_t latency, wire, lag; /* from the due time, from the write, write minus due */
    server_sample_t srv_start, srv_meas_start, srv_end;
    uint64_t rss_peak_kib;
    struct rusage self_start, self_end;
    char first_err[160];
    /* progress */
    uint64_t last_ok, last_tick;
};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* xorshift64*: cheap, and the run is reproducible with --seed. */
static double fleet_random(fleet_t *fl)
{
    fl->rng ^= fl->rng >> 12;
    fl->rng ^= fl->rng << 25;
    fl->rng ^= fl->rng >> 27;
    return (double)((fl->rng * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

static void timer_at(device_t *d, uint64_t at)
{
    uint64_t now = now_us(), wait = at > now ? at - now : 0;
    struct timeval tv = {.tv_sec = (time_t)(wait / 1000000u),
                         .tv_usec = (suseconds_t)(wait % 1000000u)};
    evtimer_add(d->timer, &tv);
}

static bool in_window(const fleet_t *fl, uint64_t due)
{
    return due >= fl->meas_start && due < fl->meas_end;
}

/* Counts an error; the first socket error's text is kept for the summary (errno-based kinds). */
static void fleet_error(fleet_t *fl, err_kind_t kind, int err)
{
    fl->errors[kind]++;
    if (err && !fl->first_err[0])
        snprintf(fl->first_err, sizeof(fl->first_err), "%s: %s", err_names[kind], strerror(err));
}

static void fleet_finish_check(fleet_t *fl)
{
    if (fl->stopping && fl->outstanding == 0)
        event_base_loopbreak(fl->base);
}

/* Drops the connection; reconnects after --reconnect-ms unless the run is over. */
static void dev_down(device_t *d)
{
    fleet_t *fl = d->fl;

    if (d->state == DEV_WAITING)
        fl->outstanding--;
    if (d->state == DEV_IDLE || d->state == DEV_WAITING)
        fl->connected--;
    if (d->bev) {
        bufferevent_free(d->bev);
        d->bev = NULL;
    }
    d->state = DEV_DOWN;
    d->late_due = 0;
    d->next_due = 0; /* a new phase after reconnecting, rather than a burst of missed sends */
    evtimer_del(d->timer);
    if (!fl->stopping)
        timer_at(d, now_us() + (uint64_t)fl->reconnect_ms * 1000u);
    fleet_finish_check(fl);
}

static void dev_send(device_t *d, uint64_t due)
{
    fleet_t *fl = d->fl;
    const char *key = fl->nkeys ? fl->keys[d->idx / fl->per_key] : NULL;
    struct evbuffer *out = bufferevent_get_output(d->bev);
    char body[128];
    uint64_t now = now_us();

    /* A slow random walk between 15 and 25, so the readings look like a room's temperature. */
    d->value += (fleet_random(fl) - 0.5) * 0.2;
    if (d->value < 15 || d->value > 25)
        d->value = 20;
    int blen = snprintf(body, sizeof(body),
                        "{\"sensor_id\":\"fleet-%05u\",\"value\":%.2f,"
                        "\"unit\":\"Cel\"}",
                        d->idx, d->value);
    evbuffer_add_printf(out,
                        "POST %s HTTP/1.1\r\nHost: %s:%s\r\n%s%s%sContent-Type: application/json"
                        "\r\nContent-Length: %d\r\n\r\n%s",
                        fl->path, fl->host, fl->port, key ? "Authorization: Bearer " : "",
                        key ? key : "", key ? "\r\n" : "", blen, body);
    d->due = due;
    /* libevent schedules from the time cached at the start of its loop iteration, so a timer
     * can fire slightly before the due time: count from the send then. */
    d->base = now < due ? now : due;
    d->sent_at = now;
    d->state = DEV_WAITING;
    d->in_body = d->have_status = d->close_after = false;
    d->content_length = -1;
    fl->outstanding++;
    if (in_window(fl, due))
        fl->sent++;
    struct timeval tv = {.tv_sec = fl->timeout_ms / 1000, .tv_usec = fl->timeout_ms % 1000 * 1000};
    bufferevent_set_timeouts(d->bev, &tv, &tv);
}

/* The next due time: one interval on, the interval drawn within +-jitter. */
static uint64_t dev_next_due(device_t *d, uint64_t from)
{
    fleet_t *fl = d->fl;
    double f = 1.0 + fl->jitter * (2.0 * fleet_random(fl) - 1.0);
    return from + (uint64_t)((double)fl->interval_us * f);
}

/* The schedule: send if idle, else remember that a send came due (it goes out with the answer,
 * its latency counted from now). A device never has two requests outstanding. */
static void dev_due(device_t *d)
{
    fleet_t *fl = d->fl;
    uint64_t due = d->next_due;

    if (due >= fl->meas_end) {
        if (!fl->stopping) {
            /* The first device past the window ends the run for everyone. */
            fl->stopping = true;
            fleet_finish_check(fl);
        }
        return;
    }
    if (d->state == DEV_IDLE) {
        /* Only here is a late send the generator's fault (a held send waited for the server). */
        uint64_t now = now_us();
        if (in_window(fl, due))
            hist_add(&fl->lag, now > due ? now - due : 0);
        dev_send(d, due);
    } else if (d->late_due == 0)
        d->late_due = due;
    else if (in_window(fl, due))
        fl->skipped_sends++; /* a second one while still waiting: this one is never sent */
    d->next_due = dev_next_due(d, due);
    timer_at(d, d->next_due);
}

/* One complete answer has been read. */
static void dev_answered(device_t *d)
{
    fleet_t *fl = d->fl;
    uint64_t now = now_us();

    fl->outstanding--;
    d->state = DEV_IDLE;
    bufferevent_set_timeouts(d->bev, NULL, NULL);
    if (d->status != fl->expect) {
        fleet_error(fl, ERR_STATUS, 0);
        if (d->status >= 100 && d->status < 600)
            fl->status_counts[d->status]++;
    }
    if (in_window(fl, d->due)) {
        fl->answered++;
        if (d->status == fl->expect) {
            fl->ok++;
            hist_add(&fl->latency, now - d->base);
            hist_add(&fl->wire, now - d->sent_at);
        }
    }
    if (d->close_after) {
        fleet_error(fl, ERR_CLOSED, 0);
        dev_down(d);
        return;
    }
    if (d->late_due && (!fl->stopping || in_window(fl, d->late_due))) {
        uint64_t due = d->late_due;
        d->late_due = 0;
        if (in_window(fl, due))
            fl->late_sends++;
        dev_send(d, due);
        return;
    }
    d->late_due = 0;
    fleet_finish_check(fl);
}

/* Reads one CRLF-terminated line into @line; 0 when a line was read, -EAGAIN when it is not all
 * there yet, -EMSGSIZE when it is too long. */
static int line_read(struct evbuffer *in, char *line, size_t size)
{
    size_t eol_len = 0;
    struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF_STRICT);

    if (p.pos < 0)
        return evbuffer_get_length(in) > LINE_MAX_BYTES ? -EMSGSIZE : -EAGAIN;
    if ((size_t)p.pos >= size)
        return -EMSGSIZE;
    evbuffer_remove(in, line, (size_t)p.pos);
    line[p.pos] = '\0';
    evbuffer_drain(in, eol_len);
    return 0;
}

/* Parses what has arrived: status line, headers (Content-Length and Connection matter), body. */
static void dev_read(struct bufferevent *bev, void *arg)
{
    device_t *d = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    char line[1024];

    while (evbuffer_get_length(in) > 0) {
        if (d->state != DEV_WAITING) {
            fleet_error(d->fl, ERR_BAD, 0); /* bytes nobody asked for */
            dev_down(d);
            return;
        }
        if (d->in_body) {
            size_t n = evbuffer_get_length(in);
            if ((int64_t)n > d->content_length)
                n = (size_t)d->content_length;
            evbuffer_drain(in, n);
            d->content_length -= (int64_t)n;
            if (d->content_length > 0)
                return;
            dev_answered(d);
            if (d->state != DEV_IDLE && d->state != DEV_WAITING)
                return;
            continue;
        }
        int rc = line_read(in, line, sizeof(line));
        if (rc == -EAGAIN)
            return;
        if (rc < 0)
            goto bad;
        if (!d->have_status) {
            if (strncmp(line, "HTTP/1.", 7) != 0 || strlen(line) < 12 || line[8] != ' ')
                goto bad;
            d->status = atoi(line + 9);
            d->have_status = true;
            d->close_after = line[7] == '0';
        } else if (line[0] == '\0') {
            if (d->content_length < 0) {
                /* evhttp always frames its answers with Content-Length; 204/304 carry none. */
                if (d->status != 204 && d->status != 304)
                    goto bad;
                d->content_length = 0;
            }
            d->in_body = true;
            if (d->content_length == 0) {
                dev_answered(d);
                if (d->state != DEV_IDLE && d->state != DEV_WAITING)
                    return;
            }
        } else if (strncasecmp(line, "Content-Length:", 15) == 0) {
            char *end;
            long long v = strtoll(line + 15, &end, 10);
            if (v < 0 || end == line + 15)
                goto bad;
            d->content_length = v;
        } else if (strncasecmp(line, "Connection:", 11) == 0) {
            d->close_after = strcasestr(line + 11, "close") != NULL;
        } else if (strncasecmp(line, "Transfer-Encoding:", 18) == 0) {
            goto bad; /* not used by evhttp for complete answers; not parsed here */
        }
    }
    return;
bad:
    fleet_error(d->fl, ERR_BAD, 0);
    dev_down(d);
}

static void dev_event(struct bufferevent *bev, short what, void *arg)
{
    device_t *d = arg;
    fleet_t *fl = d->fl;
    (void)bev;

    if (what & BEV_EVENT_CONNECTED) {
        d->state = DEV_IDLE;
        fl->connected++;
        bufferevent_set_timeouts(d->bev, NULL, NULL);
        bufferevent_enable(d->bev, EV_READ | EV_WRITE);
        /* A random phase within one interval spreads the fleet's sends evenly. */
        if (d->next_due == 0)
            d->next_due = now_us() + (uint64_t)(fleet_random(fl) * (double)fl->interval_us);
        timer_at(d, d->next_due);
        return;
    }
    int err = what & BEV_EVENT_ERROR ? EVUTIL_SOCKET_ERROR() : 0;
    if (d->state == DEV_CONNECTING)
        fleet_error(fl, ERR_CONNECT, what & BEV_EVENT_TIMEOUT ? ETIMEDOUT : err);
    else if (what & BEV_EVENT_TIMEOUT)
        fleet_error(fl, ERR_TIMEOUT, 0);
    else
        fleet_error(fl, ERR_CLOSED, err);
    dev_down(d);
}

static void dev_connect(device_t *d)
{
    fleet_t *fl = d->fl;
    int fd = -1, one = 1, err;
    struct timeval tv = {.tv_sec = fl->timeout_ms / 1000, .tv_usec = fl->timeout_ms % 1000 * 1000};

    fl->connects++;
    fd = socket(fl->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (fl->src_len) {
        /* Choose the port at connect(), by the whole 4-tuple: bind() alone would reserve one
         * port per socket and run out long before 5,000 connections on a busy machine. */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&fl->src, fl->src_len) < 0)
            goto fail;
    }
    d->bev = bufferevent_socket_new(fl->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!d->bev)
        goto fail;
    fd = -1;
    bufferevent_setcb(d->bev, dev_read, NULL, dev_event, d);
    bufferevent_set_timeouts(d->bev, &tv, &tv);
    d->state = DEV_CONNECTING;
    if (bufferevent_socket_connect(d->bev, (struct sockaddr *)&fl->addr, (int)fl->addr_len) < 0)
        goto fail;
    return;
fail:
    err = errno;
    if (fd >= 0)
        close(fd);
    fleet_error(fl, ERR_CONNECT, err);
    dev_down(d);
}

static void dev_timer(evutil_socket_t fd, short what, void *arg)
{
    device_t *d = arg;
    (void)fd;
    (void)what;

    if (d->fl->stopping)
        return;
    if (d->state == DEV_DOWN)
        dev_connect(d);
    else if (d->state == DEV_IDLE || d->state == DEV_WAITING)
        dev_due(d);
}

/* ---- the server's memory and CPU --------------------------------------------------------------
 */

static server_sample_t server_sample(int pid)
{
    server_sample_t s = {0};
    char path[64], buf[4096];
    FILE *f;

    if (pid <= 0)
        return s;
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    if (!(f = fopen(path, "r")))
        return s;
    while (fgets(buf, sizeof(buf), f)) {
        unsigned long long v;
        if (sscanf(buf, "VmRSS: %llu kB", &v) == 1)
            s.rss_kib = v;
        else if (sscanf(buf, "VmHWM: %llu kB", &v) == 1)
            s.hwm_kib = v;
    }
    fclose(f);
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    if (!(f = fopen(path, "r")))
        return s;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after the command name, which may hold spaces: state is field 3, utime 14. */
    char *p = strrchr(buf, ')');
    unsigned long long ut, st;
    if (p &&
        sscanf(p + 2, "%*c %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %llu %llu", &ut, &st) == 2) {
        s.cpu_ticks = ut + st;
        s.ok = s.rss_kib > 0;
    }
    return s;
}

/* Samples the server's and our own CPU time at the window's start or end. */
static void fleet_mark(fleet_t *fl, bool end)
{
    if (!end) {
        fl->srv_meas_start = server_sample(fl->pid);
        getrusage(RUSAGE_SELF, &fl->self_start);
        fl->marked_start = true;
    } else {
        fl->srv_end = server_sample(fl->pid);
        getrusage(RUSAGE_SELF, &fl->self_end);
        fl->marked_end = true;
    }
}

static void fleet_mark_start(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fleet_mark(arg, false);
}

static void fleet_mark_end(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fleet_mark(arg, true);
}

static void fleet_tick(evutil_socket_t fd, short what, void *arg)
{
    fleet_t *fl = arg;
    uint64_t now = now_us();
    (void)fd;
    (void)what;

    server_sample_t s = server_sample(fl->pid);
    if (now >= fl->meas_start && now <= fl->meas_end && s.rss_kib > fl->rss_peak_kib)
        fl->rss_peak_kib = s.rss_kib;
    if (now >= fl->meas_end && !fl->stopping) {
        fl->stopping = true; /* no device reached the end of the window (all down?) */
        fleet_finish_check(fl);
    }
    if (!fl->quiet && now - fl->last_tick >= 10000000u) {
        uint64_t errs = 0;
        for (int k = 0; k < ERR_KINDS; k++)
            errs += fl->errors[k];
        double dt = (double)(now - fl->last_tick) / 1e6;
        fprintf(stderr,
                "[fleet] %4.0f s  %u/%u connected  %.0f ok/s in window  errors %" PRIu64
                "  server RSS %.1f MiB\n",
                (double)(now - fl->t0) / 1e6, fl->connected, fl->devices,
                (double)(fl->ok - fl->last_ok) / dt, errs, (double)s.rss_kib / 1024.0);
        fl->last_ok = fl->ok;
        fl->last_tick = now;
    }
    if (fl->stopping && now >= fl->stop_deadline)
        event_base_loopbreak(fl->base);
}

static void fleet_signal(evutil_socket_t fd, short what, void *arg)
{
    fleet_t *fl = arg;
    (void)fd;
    (void)what;
    fl->interrupted = true;
    event_base_loopbreak(fl->base);
}

/* ---- setup and report -------------------------------------------------------------------------
 */

static int fleet_url_parse(fleet_t *fl)
{
    const char *u = fl->url, *host, *colon, *slash;

    if (strncmp(u, "http://", 7) != 0)
        return -EINVAL;
    host = u + 7;
    slash = strchr(host, '/');
    if (!slash)
        slash = host + strlen(host);
    colon = memchr(host, ':', (size_t)(slash - host));
    if (!colon || colon == host || (size_t)(colon - host) >= sizeof(fl->host) ||
        (size_t)(slash - colon - 1) >= sizeof(fl->port) || slash == colon + 1)
        return -EINVAL;
    memcpy(fl->host, host, (size_t)(colon - host));
    memcpy(fl->port, colon + 1, (size_t)(slash - colon - 1));
    fl->path = strdup(*slash ? slash : "/");
    return fl->path ? 0 : -ENOMEM;
}

static int addr_resolve(const char *host, const char *port, struct sockaddr_storage *ret,
                        socklen_t *ret_len)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai = NULL;

    if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai)
        return -ENOENT;
    memcpy(ret, ai->ai_addr, ai->ai_addrlen);
    *ret_len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

/* The API keys, one per line; they stay off the command line, where `ps` would show them. */
static int fleet_keys_load(fleet_t *fl)
{
    FILE *f = fopen(fl->keys_file, "r");
    char line[KEY_MAX + 2];
    size_t cap = 0;

    if (!f)
        return -errno;
    while (fgets(line, sizeof(line), f)) {
        size_t n = strcspn(line, "\r\n");
        line[n] = '\0';
        if (n == 0)
            continue;
        if (fl->nkeys == cap) {
            cap = cap ? 2 * cap : 64;
            char **k = realloc(fl->keys, cap * sizeof(*k));
            if (!k)
                goto nomem;
            fl->keys = k;
        }
        if (!(fl->keys[fl->nkeys] = strdup(line)))
            goto nomem;
        fl->nkeys++;
    }
    fclose(f);
    return 0;
nomem:
    fclose(f);
    return -ENOMEM;
}

/* Enough descriptors for every device, or a clear refusal. */
static int fleet_nofile_raise(unsigned need)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -errno;
    if (rl.rlim_cur >= need)
        return 0;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
        fprintf(stderr,
                "sb-bench-fleet: %u connections need %u open files; the hard limit is %llu "
                "(raise it: ulimit -Hn %u, as root)\n",
                need - 64, need, (unsigned long long)rl.rlim_max, need);
        return -EMFILE;
    }
    rl.rlim_cur = need;
    return setrlimit(RLIMIT_NOFILE, &rl) < 0 ? -errno : 0;
}

static double ms(uint64_t us)
{
    return (double)us / 1000.0;
}

static double tv_s(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static uint64_t fleet_errors(const fleet_t *fl)
{
    uint64_t n = 0;
    for (int k = 0; k < ERR_KINDS; k++)
        n += fl->errors[k];
    return n;
}

static void fleet_report(fleet_t *fl)
{
    double offered = fl->rate * fl->devices, achieved = (double)fl->ok / fl->seconds;
    uint64_t errs = fleet_errors(fl);
    const server_sample_t *a = &fl->srv_meas_start, *b = &fl->srv_end;
    double srv_cpu_s =
        a->ok && b->ok ? (double)(b->cpu_ticks - a->cpu_ticks) / (double)sysconf(_SC_CLK_TCK) : NAN;
    double self_cpu_s = tv_s(fl->self_end.ru_utime) + tv_s(fl->self_end.ru_stime) -
                        tv_s(fl->self_start.ru_utime) - tv_s(fl->self_start.ru_stime);
    FILE *j;

    if (!fl->quiet) {
        fprintf(stderr,
                "sb-bench-fleet: %u devices x %g req/s = %.0f req/s offered, %g s measured "
                "after a %g s ramp%s\n",
                fl->devices, fl->rate, offered, fl->seconds, fl->ramp_s + fl->settle_s,
                fl->interrupted ? " (INTERRUPTED)" : "");
        fprintf(stderr,
                "  sent %" PRIu64 "  answered %" PRIu64 "  ok %" PRIu64
                "  achieved %.0f req/s (%.1f %% of offered)\n",
                fl->sent, fl->answered, fl->ok, achieved, 100.0 * achieved / offered);
        fprintf(stderr, "  errors %" PRIu64 ":", errs);
        for (int k = 0; k < ERR_KINDS; k++)
            fprintf(stderr, " %s %" PRIu64 "%s", err_names[k], fl->errors[k],
                    k + 1 < ERR_KINDS ? "," : "");
        for (int s = 0; s < 600; s++)
            if (fl->status_counts[s])
                fprintf(stderr, " [HTTP %d: %" PRIu64 "]", s, fl->status_counts[s]);
        fprintf(stderr, "  (%" PRIu64 " connects)\n", fl->connects);
        if (fl->first_err[0])
            fprintf(stderr, "  first socket error: %s\n", fl->first_err);
        fprintf(stderr,
                "  latency from the due time: p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms\n",
                ms(hist_quantile(&fl->latency, 0.5)), ms(hist_quantile(&fl->latency, 0.9)),
                ms(hist_quantile(&fl->latency, 0.99)), ms(fl->latency.max));
        fprintf(stderr, "  latency from the write:    p50 %.2f ms  p99 %.2f ms\n",
                ms(hist_quantile(&fl->wire, 0.5)), ms(hist_quantile(&fl->wire, 0.99)));
        fprintf(stderr,
                "  generator lag (due to written, sends not held back): p50 %.2f ms  p99 %.2f ms  "
                "max %.2f ms\n",
                ms(hist_quantile(&fl->lag, 0.5)), ms(hist_quantile(&fl->lag, 0.99)),
                ms(fl->lag.max));
        fprintf(stderr,
                "  sends held back by an outstanding answer %" PRIu64
                ", skipped (a device still waiting two intervals on) %" PRIu64 "\n",
                fl->late_sends, fl->skipped_sends);
        if (fl->pid > 0)
            fprintf(stderr,
                    "  server pid %d: VmRSS %.1f MiB before, %.1f MiB peak in the window, "
                    "%.1f MiB at its end; VmHWM %.1f MiB; CPU %.2f cores, %.1f us/req\n",
                    fl->pid, (double)fl->srv_start.rss_kib / 1024.0,
                    (double)fl->rss_peak_kib / 1024.0, (double)b->rss_kib / 1024.0,
                    (double)b->hwm_kib / 1024.0, srv_cpu_s / fl->seconds,
                    srv_cpu_s * 1e6 / (double)(fl->answered ? fl->answered : 1));
        fprintf(stderr, "  generator CPU %.2f cores\n", self_cpu_s / fl->seconds);
    }
    if (!fl->json_path)
        return;
    j = strcmp(fl->json_path, "-") == 0 ? stdout : fopen(fl->json_path, "w");
    if (!j) {
        fprintf(stderr, "sb-bench-fleet: cannot write %s: %s\n", fl->json_path, strerror(errno));
        return;
    }
    fprintf(j,
            "{\"devices\": %u, \"rate_per_device\": %g, \"offered_rps\": %.1f, \"seconds\": %g, "
            "\"ramp_s\": %g, \"interrupted\": %s, \"sent\": %" PRIu64 ", \"answered\": %" PRIu64
            ", \"ok\": %" PRIu64 ", \"achieved_rps\": %.1f, \"errors\": %" PRIu64
            ", \"errors_by_kind\": {",
            fl->devices, fl->rate, offered, fl->seconds, fl->ramp_s + fl->settle_s,
            fl->interrupted ? "true" : "false", fl->sent, fl->answered, fl->ok, achieved, errs);
    for (int k = 0; k < ERR_KINDS; k++)
        fprintf(j, "%s\"%s\": %" PRIu64, k ? ", " : "", err_names[k], fl->errors[k]);
    fprintf(j, "}, \"status_counts\": {");
    for (int s = 0, first = 1; s < 600; s++)
        if (fl->status_counts[s]) {
            fprintf(j, "%s\"%d\": %" PRIu64, first ? "" : ", ", s, fl->status_counts[s]);
            first = 0;
        }
    fprintf(j,
            "}, \"connects\": %" PRIu64 ", \"late_sends\": %" PRIu64 ", \"skipped_sends\": %" PRIu64
            ", \"p50_ms\": %.3f, \"p90_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f, "
            "\"wire_p50_ms\": %.3f, \"wire_p99_ms\": %.3f, \"lag_p50_ms\": %.3f, "
            "\"lag_p99_ms\": %.3f, \"lag_max_ms\": %.3f, \"generator_cpu_cores\": %.3f",
            fl->connects, fl->late_sends, fl->skipped_sends, ms(hist_quantile(&fl->latency, 0.5)),
            ms(hist_quantile(&fl->latency, 0.9)), ms(hist_quantile(&fl->latency, 0.99)),
            ms(fl->latency.max), ms(hist_quantile(&fl->wire, 0.5)),
            ms(hist_quantile(&fl->wire, 0.99)), ms(hist_quantile(&fl->lag, 0.5)),
            ms(hist_quantile(&fl->lag, 0.99)), ms(fl->lag.max), self_cpu_s / fl->seconds);
    if (fl->pid > 0 && !isnan(srv_cpu_s))
        fprintf(j,
                ", \"server\": {\"pid\": %d, \"rss_before_kib\": %" PRIu64
                ", \"rss_peak_kib\": %" PRIu64 ", \"rss_end_kib\": %" PRIu64
                ", \"hwm_kib\": %" PRIu64 ", \"cpu_cores\": %.3f, \"cpu_us_per_req\": %.2f}",
                fl->pid, fl->srv_start.rss_kib, fl->rss_peak_kib, b->rss_kib, b->hwm_kib,
                srv_cpu_s / fl->seconds,
                srv_cpu_s * 1e6 / (double)(fl->answered ? fl->answered : 1));
    fprintf(j, "}\n");
    if (j != stdout)
        fclose(j);
}

/* The command line, as a table: each option sets one field of fleet_t. */
typedef enum opt_type { OPT_STR, OPT_UINT, OPT_INT, OPT_DOUBLE, OPT_BOOL } opt_type_t;

typedef struct fleet_opt {
    const char *name;
    opt_type_t type;
    size_t off;
    const char *help;
} fleet_opt_t;

#define OFF(f) offsetof(fleet_t, f)
static const fleet_opt_t fleet_opts[] = {
    {"url", OPT_STR, OFF(url), "where to POST: http://HOST:PORT/PATH (required)"},
    {"keys", OPT_STR, OFF(keys_file), "API keys, one per line, sent as Authorization: Bearer"},
    {"per-key", OPT_UINT, OFF(per_key), "devices sharing one key"},
    {"devices", OPT_UINT, OFF(devices), "devices, one keep-alive connection each"},
    {"rate", OPT_DOUBLE, OFF(rate), "requests per second per device"},
    {"jitter", OPT_DOUBLE, OFF(jitter), "each interval drawn within +-this fraction of 1/rate"},
    {"ramp", OPT_DOUBLE, OFF(ramp_s), "seconds over which the connections open"},
    {"settle", OPT_DOUBLE, OFF(settle_s), "seconds after the ramp before measuring"},
    {"seconds", OPT_DOUBLE, OFF(seconds), "measured seconds"},
    {"expect", OPT_INT, OFF(expect), "the status that counts as success"},
    {"timeout-ms", OPT_INT, OFF(timeout_ms), "connect and answer deadline"},
    {"reconnect-ms", OPT_INT, OFF(reconnect_ms), "pause before a failed device reconnects"},
    {"source", OPT_STR, OFF(source), "local address to connect from (\"\": any)"},
    {"pid", OPT_INT, OFF(pid), "server process whose VmRSS/VmHWM and CPU to sample"},
    {"json", OPT_STR, OFF(json_path), "also write the results as JSON here (- for stdout)"},
    {"seed", OPT_UINT, OFF(seed), "random seed (0: from the clock)"},
    {"quiet", OPT_BOOL, OFF(quiet), "no progress lines and no summary on stderr"},
};
#define NOPTS (sizeof(fleet_opts) / sizeof(fleet_opts[0]))

static void usage(FILE *f, const fleet_t *defaults)
{
    fprintf(f, "usage: sb-bench-fleet --url http://HOST:PORT/PATH [options]\n\n"
               "A fleet of devices, one keep-alive connection each, each POSTing one JSON reading\n"
               "(sensor fleet-NNNNN) at a paced rate. Reports errors, latency from each request's\n"
               "due time, the achieved rate, and with --pid the server's memory and CPU.\n\n");
    for (size_t i = 0; i < NOPTS; i++) {
        const fleet_opt_t *o = &fleet_opts[i];
        const char *p = (const char *)defaults + o->off;
        char def[64] = "";

        switch (o->type) {
        case OPT_STR:
            if (*(const char *const *)p)
                snprintf(def, sizeof(def), " (%s)", *(const char *const *)p);
            break;
        case OPT_UINT:
            snprintf(def, sizeof(def), " (%u)", *(const unsigned *)p);
            break;
        case OPT_INT:
            snprintf(def, sizeof(def), " (%d)", *(const int *)p);
            break;
        case OPT_DOUBLE:
            snprintf(def, sizeof(def), " (%g)", *(const double *)p);
            break;
        case OPT_BOOL:
            break;
        }
        fprintf(f, "  --%-14s %s%s\n", o->name, o->help, def);
    }
    fprintf(f, "\nExit status: 0 no errors, 1 errors or failure, 2 usage error.\n");
}

/* Stores @arg into the field option @o names; -EINVAL when it is not a number of that type. */
static int fleet_opt_set(fleet_t *fl, const fleet_opt_t *o, const char *arg)
{
    char *p = (char *)fl + o->off, *end = NULL;

    errno = 0;
    switch (o->type) {
    case OPT_STR:
        *(const char **)p = arg;
        return 0;
    case OPT_BOOL:
        *(bool *)p = true;
        return 0;
    case OPT_UINT: {
        unsigned long v = strtoul(arg, &end, 10);
        if (*arg == '-' || v > UINT32_MAX)
            return -EINVAL;
        *(unsigned *)p = (unsigned)v;
        break;
    }
    case OPT_INT: {
        long v = strtol(arg, &end, 10);
        if (v < INT32_MIN || v > INT32_MAX)
            return -EINVAL;
        *(int *)p = (int)v;
        break;
    }
    case OPT_DOUBLE:
        *(double *)p = strtod(arg, &end);
        break;
    }
    return errno || end == arg || *end ? -EINVAL : 0;
}

static int fleet_args_parse(fleet_t *fl, int argc, char **argv)
{
    struct option lopts[NOPTS + 2];
    int c;

    for (size_t i = 0; i < NOPTS; i++)
        lopts[i] = (struct option){fleet_opts[i].name,
                                   fleet_opts[i].type == OPT_BOOL ? no_argument : required_argument,
                                   NULL, 256 + (int)i};
    lopts[NOPTS] = (struct option){"help", no_argument, NULL, 'h'};
    lopts[NOPTS + 1] = (struct option){NULL, 0, NULL, 0};
    while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
        if (c == 'h') {
            usage(stdout, fl);
            exit(0);
        }
        if (c < 256) {
            usage(stderr, fl);
            return -EINVAL;
        }
        if (fleet_opt_set(fl, &fleet_opts[c - 256], optarg) < 0) {
            fprintf(stderr, "sb-bench-fleet: --%s: not a valid value: %s\n",
                    fleet_opts[c - 256].name, optarg);
            return -EINVAL;
        }
    }
    if (optind != argc || !fl->url) {
        fprintf(stderr, "sb-bench-fleet: --url is required and nothing else is positional "
                        "(--help lists the options)\n");
        return -EINVAL;
    }
    if (fl->devices < 1 || fl->devices > 1000000 || fl->per_key < 1 || !(fl->rate > 0) ||
        fl->jitter < 0 || fl->jitter >= 1 || fl->ramp_s < 0 || fl->settle_s < 0 ||
        !(fl->seconds > 0) || fl->expect < 100 || fl->expect > 599 || fl->timeout_ms < 1 ||
        fl->reconnect_ms < 0) {
        fprintf(stderr, "sb-bench-fleet: a setting is out of range (--help lists them)\n");
        return -EINVAL;
    }
    return 0;
}

int main(int argc, char **argv)
{
    fleet_t fl = {.devices = 5000,
                  .per_key = 100,
                  .rate = 2,
                  .jitter = 0.2,
                  .ramp_s = 10,
                  .settle_s = 2,
                  .seconds = 60,
                  .expect = 202,
                  .timeout_ms = 10000,
                  .reconnect_ms = 1000,
                  .source = "127.0.0.2"};
    struct timeval one_s = {1, 0};
    int rc = 1;

    if (fleet_args_parse(&fl, argc, argv) < 0)
        return 2;
    if (fleet_url_parse(&fl) < 0 || addr_resolve(fl.host, fl.port, &fl.addr, &fl.addr_len) < 0) {
        fprintf(stderr, "sb-bench-fleet: --url must be http://HOST:PORT/PATH with an IPv4 host\n");
        return 2;
    }
    if (*fl.source && addr_resolve(fl.source, "0", &fl.src, &fl.src_len) < 0) {
        fprintf(stderr, "sb-bench-fleet: --source %s is not an IPv4 address\n", fl.source);
        return 2;
    }
    if (fl.keys_file) {
        int r = fleet_keys_load(&fl);
        size_t need = (fl.devices + fl.per_key - 1) / fl.per_key;
        if (r < 0) {
            fprintf(stderr, "sb-bench-fleet: cannot read %s: %s\n", fl.keys_file, strerror(-r));
            goto out;
        }
        if (fl.nkeys < need) {
            fprintf(stderr,
                    "sb-bench-fleet: %u devices at %u per key need %zu keys; %s holds %zu\n",
                    fl.devices, fl.per_key, need, fl.keys_file, fl.nkeys);
            goto out;
        }
    }
    if (fleet_nofile_raise(fl.devices + 64) < 0)
        goto out;
    signal(SIGPIPE, SIG_IGN);
    fl.interval_us = (uint64_t)(1e6 / fl.rate);
    fl.rng = fl.seed ? fl.seed : now_us() ^ ((uint64_t)getpid() << 32);
    /* Without it, epoll's millisecond timeouts make every send up to a millisecond late. */
    struct event_config *cfg = event_config_new();
    if (cfg)
        event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    fl.base = cfg ? event_base_new_with_config(cfg) : NULL;
    event_config_free(cfg);
    fl.devs = calloc(fl.devices, sizeof(*fl.devs));
    fl.tick = fl.base ? event_new(fl.base, -1, EV_PERSIST, fleet_tick, &fl) : NULL;
    fl.sigint = fl.base ? evsignal_new(fl.base, SIGINT, fleet_signal, &fl) : NULL;
    fl.sigterm = fl.base ? evsignal_new(fl.base, SIGTERM, fleet_signal, &fl) : NULL;
    if (!fl.devs || !fl.tick || !fl.sigint || !fl.sigterm) {
        fprintf(stderr, "sb-bench-fleet: out of memory\n");
        goto out;
    }
    if (fl.pid > 0 && !(fl.srv_start = server_sample(fl.pid)).ok) {
        fprintf(stderr, "sb-bench-fleet: cannot read /proc/%d (is --pid right?)\n", fl.pid);
        goto out;
    }
    fl.t0 = fl.last_tick = now_us();
    fl.meas_start = fl.t0 + (uint64_t)((fl.ramp_s + fl.settle_s) * 1e6);
    fl.meas_end = fl.meas_start + (uint64_t)(fl.seconds * 1e6);
    /* After the window: answers get their full deadline, then the run ends regardless. */
    fl.stop_deadline = fl.meas_end + fl.interval_us * 2 + (uint64_t)fl.timeout_ms * 1000u;
    for (unsigned i = 0; i < fl.devices; i++) {
        device_t *d = &fl.devs[i];
        d->fl = &fl;
        d->idx = i;
        d->value = 20 + 4 * (fleet_random(&fl) - 0.5);
        if (!(d->timer = evtimer_new(fl.base, dev_timer, d))) {
            fprintf(stderr, "sb-bench-fleet: out of memory\n");
            goto out;
        }
        timer_at(d, fl.t0 + (uint64_t)(fl.ramp_s * 1e6 * i / fl.devices));
    }
    event_add(fl.tick, &one_s);
    struct timeval to_start = {.tv_sec = (time_t)((fl.meas_start - fl.t0) / 1000000u),
                               .tv_usec = (suseconds_t)((fl.meas_start - fl.t0) % 1000000u)};
    struct timeval to_end = {.tv_sec = (time_t)((fl.meas_end - fl.t0) / 1000000u),
                             .tv_usec = (suseconds_t)((fl.meas_end - fl.t0) % 1000000u)};
    if (event_base_once(fl.base, -1, EV_TIMEOUT, fleet_mark_start, &fl, &to_start) < 0 ||
        event_base_once(fl.base, -1, EV_TIMEOUT, fleet_mark_end, &fl, &to_end) < 0) {
        fprintf(stderr, "sb-bench-fleet: out of memory\n");
        goto out;
    }
    event_add(fl.sigint, NULL);
    event_add(fl.sigterm, NULL);
    event_base_dispatch(fl.base);
    if (!fl.marked_end)
        fleet_mark(&fl, true);
    if (!fl.marked_start) {
        fl.srv_meas_start = fl.srv_end;
        fl.self_start = fl.self_end;
    }
    /* Anything still outstanding when the run ended never got its answer. */
    for (unsigned i = 0; i < fl.devices; i++)
        if (fl.devs[i].state == DEV_WAITING)
            fleet_error(&fl, ERR_TIMEOUT, 0);
    fleet_report(&fl);
    rc = fl.interrupted || fleet_errors(&fl) > 0 || fl.ok == 0 ? 1 : 0;
out:
    for (unsigned i = 0; fl.devs && i < fl.devices; i++) {
        if (fl.devs[i].bev)
            bufferevent_free(fl.devs[i].bev);
        if (fl.devs[i].timer)
            event_free(fl.devs[i].timer);
    }
    free(fl.devs);
    if (fl.tick)
        event_free(fl.tick);
    if (fl.sigint)
        event_free(fl.sigint);
    if (fl.sigterm)
        event_free(fl.sigterm);
    if (fl.base)
        event_base_free(fl.base);
    for (size_t i = 0; i < fl.nkeys; i++) {
        explicit_bzero(fl.keys[i], strlen(fl.keys[i]));
        free(fl.keys[i]);
    }
    free(fl.keys);
    free(fl.path);
    return rc;
}
