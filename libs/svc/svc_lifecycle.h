/* svc_lifecycle.h: signals and the stop flag.
 *
 * The handlers only set a flag and write one byte to a self-pipe (Redis sigShutdownHandler);
 * everything else happens in normal code that checks svc_stopping() or watches svc_stop_fd()
 * from its event loop. A second SIGINT exits at once with status 130. SIGPIPE is ignored.
 */
#pragma once

#include <stdbool.h>

/** Installs SIGINT/SIGTERM handlers and ignores SIGPIPE. Idempotent. 0 or -errno. */
int svc_lifecycle_init(void);

/** True once SIGINT or SIGTERM arrived, or svc_request_stop() was called. */
bool svc_stopping(void);

/** Requests a stop from code (same effect as SIGTERM). Async-signal-safe. */
void svc_request_stop(void);

/** Read end of the self-pipe: becomes readable when a stop is requested (never drained).
 *  Event loops add it with EV_READ to learn about the stop. -1 before svc_lifecycle_init(). */
int svc_stop_fd(void);
