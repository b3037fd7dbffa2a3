/* svc_util.h: small helpers every program needs once. */
#pragma once

#include <stddef.h>
#include <stdint.h>

/** Milliseconds from CLOCK_MONOTONIC. */
int64_t svc_now_ms(void);
/** Microseconds since the Unix epoch from CLOCK_REALTIME. */
int64_t svc_wall_us(void);

/** Writes a random (version 4) UUID, lower-case, into @out (37 bytes with the NUL).
 *  Uses the kernel CSPRNG (getrandom). 0 or -errno. */
int svc_uuid4(char out[37]);

/** Fills @buf with @len random bytes from the kernel CSPRNG. 0 or -errno. */
int svc_random_bytes(void *buf, size_t len);

/** Parses "host:port" or ":port" or "port". Host defaults to 127.0.0.1. 0 or -EINVAL. */
int svc_parse_hostport(const char *s, char *ret_host, size_t hostsize, int *ret_port);

/** The CPUs this process may really use: the affinity mask, capped by a cgroup v2 CPU quota
 *  (/sys/fs/cgroup/cpu.max) when there is one, as in a container with a CPU limit. At least 1. */
int svc_cpu_count(void);
