/* svc_log.h: structured logging, one JSON object per line on stderr.
 *
 * {"ts":"2026-11-23T09:40:01.123Z","level":"info","service":"gateway","msg":"...",
 *  "request_id":"..."}
 *
 * The level is checked before any formatting happens (Redis serverLog), so a disabled debug line
 * costs one comparison. Each line is written with a single write(2) so that lines from several
 * threads never interleave. Libraries other than libs/svc do not log; they return errors.
 * Never pass a secret to these functions: API keys are logged by prefix only.
 */
#pragma once

#include <stdarg.h>

typedef enum svc_log_level {
    SVC_LOG_DEBUG = 0,
    SVC_LOG_INFO = 1,
    SVC_LOG_WARN = 2,
    SVC_LOG_ERROR = 3,
} svc_log_level_t;

extern int svc_log_min_level;

/** Sets the service name written on every line and the minimum level. @service is copied. */
void svc_log_init(const char *service, svc_log_level_t level);

/** Parses "debug", "info", "warn"/"warning", "error". 0, or -EINVAL. */
int svc_log_level_parse(const char *s, svc_log_level_t *ret_level);

/** Sets this thread's request id, written as "request_id" on its lines; NULL clears it.
 *  The string is copied (up to 64 bytes). */
void svc_log_set_request_id(const char *request_id);

/** Formats and writes one line. Use the svc_log() macro, which checks the level first. */
void svc_log_write(svc_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void svc_log_vwrite(svc_log_level_t level, const char *fmt, va_list ap);

/** Redirects output to @fd instead of stderr (tests). */
void svc_log_set_fd(int fd);

#define svc_log(level, ...)                      \
    do {                                         \
        if ((int)(level) >= svc_log_min_level)   \
            svc_log_write((level), __VA_ARGS__); \
    } while (0)

#define log_debug(...) svc_log(SVC_LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  svc_log(SVC_LOG_INFO, __VA_ARGS__)
#define log_warn(...)  svc_log(SVC_LOG_WARN, __VA_ARGS__)
#define log_error(...) svc_log(SVC_LOG_ERROR, __VA_ARGS__)
