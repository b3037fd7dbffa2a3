/* svc_log.c: JSON lines on stderr, one write(2) per line. */
#include "svc_log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "svc_private.h"

/* A message is cut at this many bytes before escaping; the line buffer has room for the worst
 * case of escaping what remains after the fixed fields, so nothing can overflow. */
#define LOG_MSG_MAX  4096
#define LOG_LINE_MAX 8192
#define LOG_RID_MAX  64

int svc_log_min_level = SVC_LOG_INFO;

static atomic_int log_fd = 2;
static char log_service[128] = "\"service\":\"\",";
static _Thread_local char log_request_id[LOG_RID_MAX + 1];

static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* Valid UTF-8 sequence at @s (at most @len bytes): its length, or 0 when the bytes are not a
 * shortest-form encoding of a scalar value (no overlongs, no surrogates, nothing past U+10FFFF). */
static size_t utf8_len(const unsigned char *s, size_t len)
{
    unsigned char c = s[0];
    size_t n;
    unsigned lo = 0x80, hi = 0xbf;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4;
    else
        return 0;
    if (n > len)
        return 0;
    /* The second byte's range is narrower for a few lead bytes (Unicode Table 3-7). */
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return n;
}

bool svc_json_escape(char *dst, size_t cap, size_t *pos, const char *src, size_t len)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t p = *pos, i = 0;
    bool done = true;

    while (i < len) {
        unsigned char c = s[i];
        char esc[8];
        const char *out = esc;
        size_t n, used = 1;

        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c, n = 2;
        } else if (c == '\n') {
            out = "\\n", n = 2;
        } else if (c == '\r') {
            out = "\\r", n = 2;
        } else if (c == '\t') {
            out = "\\t", n = 2;
        } else if (c < 0x20) {
            n = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", c);
        } else if ((used = utf8_len(s + i, len - i)) == 0) {
            out = "\\ufffd", n = 6, used = 1;
        } else {
            out = src + i, n = used;
        }
        if (p + n >= cap) {
            done = false;
            break;
        }
        memcpy(dst + p, out, n);
        p += n;
        i += used;
    }
    *pos = p;
    return done;
}

void svc_log_init(const char *service, svc_log_level_t level)
{
    char buf[sizeof(log_service)];
    size_t pos;

    /* The service name is escaped once here instead of on every line. */
    memcpy(buf, "\"service\":\"", 11);
    pos = 11;
    svc_json_escape(buf, sizeof(buf) - 3, &pos, service ? service : "",
                    strlen(service ? service : ""));
    memcpy(buf + pos, "\",", 3);
    memcpy(log_service, buf, sizeof(buf));
    svc_log_min_level = (int)level;
}

int svc_log_level_parse(const char *s, svc_log_level_t *ret_level)
{
    static const struct {
        const char *name;
        svc_log_level_t level;
    } names[] = {{"debug", SVC_LOG_DEBUG},
                 {"info", SVC_LOG_INFO},
                 {"warn", SVC_LOG_WARN},
                 {"warning", SVC_LOG_WARN},
                 {"error", SVC_LOG_ERROR}};

    for (size_t i = 0; s && i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcasecmp(s, names[i].name) == 0) {
            *ret_level = names[i].level;
            return 0;
        }
    }
    return -EINVAL;
}

void svc_log_set_request_id(const char *request_id)
{
    if (!request_id) {
        log_request_id[0] = '\0';
        return;
    }
    snprintf(log_request_id, sizeof(log_request_id), "%s", request_id);
}

void svc_log_set_fd(int fd)
{
    atomic_store(&log_fd, fd);
}

void svc_log_write(svc_log_level_t level, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    svc_log_vwrite(level, fmt, ap);
    va_end(ap);
}

void svc_log_vwrite(svc_log_level_t level, const char *fmt, va_list ap)
{
    /* The tail after the message: the request id (each byte escapes to at most 6) and "}\n". */
    enum { TAIL_MAX = 16 + 6 * LOG_RID_MAX + 4 };
    char msg[LOG_MSG_MAX], line[LOG_LINE_MAX];
    struct timespec ts;
    struct tm tm;
    size_t pos;
    int n, saved_errno = errno; /* so that callers may log and then report errno */
    bool cut;

    if ((int)level < SVC_LOG_DEBUG || level > SVC_LOG_ERROR)
        level = SVC_LOG_ERROR;
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    if (n < 0)
        n = snprintf(msg, sizeof(msg), "(unformattable log message: %s)", fmt);
    cut = (size_t)n >= sizeof(msg);

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    pos = strftime(line, sizeof(line), "{\"ts\":\"%Y-%m-%dT%H:%M:%S", &tm);
    pos +=
        (size_t)snprintf(line + pos, sizeof(line) - pos, ".%03ldZ\",\"level\":\"%s\",%s\"msg\":\"",
                         ts.tv_nsec / 1000000, level_names[level], log_service);
    if (!svc_json_escape(line, sizeof(line) - TAIL_MAX - 3, &pos, msg, strlen(msg)) || cut) {
        memcpy(line + pos, "...", 3); /* shows the reader that the message was cut */
        pos += 3;
    }
    line[pos++] = '"';
    if (log_request_id[0]) {
        memcpy(line + pos, ",\"request_id\":\"", 15);
        pos += 15;
        svc_json_escape(line, sizeof(line) - 3, &pos, log_request_id, strlen(log_request_id));
        line[pos++] = '"';
    }
    line[pos++] = '}';
    line[pos++] = '\n';

    for (size_t off = 0; off < pos;) {
        ssize_t w = write(atomic_load(&log_fd), line + off, pos - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* nowhere left to report a failing log */
        off += (size_t)w;
    }
    errno = saved_errno;
}
