/* svc_util.c: clocks, random ids and host:port parsing. */
#include "svc_util.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

int64_t svc_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t svc_wall_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int svc_random_bytes(void *buf, size_t len)
{
    unsigned char *p = buf;

    /* getrandom() may return fewer bytes than asked for large requests or when a signal
     * interrupts it; it never blocks once the pool is initialised at boot. */
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int svc_uuid4(char out[37])
{
    unsigned char b[16];
    int r = svc_random_bytes(b, sizeof(b));

    if (r < 0)
        return r;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant 10xx (RFC 4122) */
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
    return 0;
}

int svc_parse_hostport(const char *s, char *ret_host, size_t hostsize, int *ret_port)
{
    const char *host = "127.0.0.1", *port, *colon;
    size_t hostlen = strlen(host);
    char *end;
    long v;

    if (!s || !*s)
        return -EINVAL;
    if (s[0] == '[') {
        /* "[::1]:8080": an IPv6 address needs brackets because it contains colons. */
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return -EINVAL;
        host = s + 1;
        hostlen = (size_t)(close - host);
        port = close + 2;
    } else if ((colon = strrchr(s, ':'))) {
        if (memchr(s, ':', (size_t)(colon - s)))
            return -EINVAL; /* a bare IPv6 address is ambiguous */
        if (colon > s) {
            host = s;
            hostlen = (size_t)(colon - s);
        }
        port = colon + 1;
    } else {
        port = s;
    }
    if (hostlen == 0 || hostlen >= hostsize)
        return -EINVAL;
    if (*port < '0' || *port > '9')
        return -EINVAL;
    errno = 0;
    v = strtol(port, &end, 10);
    if (errno || *end || v < 0 || v > 65535)
        return -EINVAL;
    memcpy(ret_host, host, hostlen);
    ret_host[hostlen] = '\0';
    *ret_port = (int)v;
    return 0;
}

int svc_cpu_count(void)
{
    cpu_set_t set;
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        n = CPU_COUNT(&set);

    /* "max 100000" means no quota; "150000 100000" means 1.5 CPUs, rounded up. */
    FILE *f = fopen("/sys/fs/cgroup/cpu.max", "re");
    if (f) {
        char quota[32];
        long period;

        if (fscanf(f, "%31s %ld", quota, &period) == 2 && strcmp(quota, "max") != 0 && period > 0) {
            long q = strtol(quota, NULL, 10);
            long cpus = (q + period - 1) / period;

            if (cpus > 0 && cpus < n)
                n = cpus;
        }
        fclose(f);
    }
    return n > 0 ? (int)n : 1;
}
