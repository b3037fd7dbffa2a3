/* Tests for svc_util: UUIDs, random bytes, clocks and host:port parsing. */
#include <sched.h>
#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "svc_util.h"

static int hexval(char c)
{
    return isdigit((unsigned char)c) ? c - '0' : c - 'a' + 10;
}

Test(svc_util, uuid4_has_the_canonical_form_and_version_bits)
{
    for (int n = 0; n < 1000; n++) {
        char id[37];

        memset(id, 'X', sizeof(id));
        cr_assert_eq(svc_uuid4(id), 0);
        cr_assert_eq(strlen(id), 36, "%s", id);
        for (int i = 0; i < 36; i++) {
            if (i == 8 || i == 13 || i == 18 || i == 23)
                cr_assert_eq(id[i], '-', "%s", id);
            else
                cr_assert(isxdigit((unsigned char)id[i]) && !isupper((unsigned char)id[i]), "%s",
                          id);
        }
        cr_assert_eq(id[14], '4', "version nibble in %s", id);
        cr_assert_eq(hexval(id[19]) & 0xc, 0x8, "variant bits in %s", id);
    }
}

static int cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

Test(svc_util, uuid4_values_are_unique)
{
    enum { N = 10000 };
    char(*ids)[37] = malloc(N * sizeof(*ids));

    cr_assert_not_null(ids);
    for (int i = 0; i < N; i++)
        cr_assert_eq(svc_uuid4(ids[i]), 0);
    qsort(ids, N, sizeof(*ids), cmp);
    for (int i = 1; i < N; i++)
        cr_assert_str_neq(ids[i - 1], ids[i]);
    free(ids);
}

Test(svc_util, random_bytes_fill_the_whole_buffer)
{
    unsigned char a[4096], b[4096];
    int seen[256] = {0}, distinct = 0;

    memset(a, 0, sizeof(a));
    cr_assert_eq(svc_random_bytes(a, sizeof(a)), 0);
    cr_assert_eq(svc_random_bytes(b, sizeof(b)), 0);
    cr_assert_neq(memcmp(a, b, sizeof(a)), 0);
    for (size_t i = 0; i < sizeof(a); i++)
        distinct += !seen[a[i]]++;
    /* 4096 random bytes miss any given value with probability ~1e-7. */
    cr_assert_eq(distinct, 256);
}

Test(svc_util, clocks_move_forward)
{
    int64_t m0 = svc_now_ms(), w0 = svc_wall_us();

    cr_assert_gt(w0, 1700000000LL * 1000000); /* after 2023: a real epoch time in microseconds */
    cr_assert_geq(svc_now_ms(), m0);
    cr_assert_geq(svc_wall_us(), w0);
}

Test(svc_util, hostport_accepts_the_documented_forms)
{
    char host[64];
    int port = -1;

    cr_assert_eq(svc_parse_hostport("0.0.0.0:8080", host, sizeof(host), &port), 0);
    cr_assert_str_eq(host, "0.0.0.0");
    cr_assert_eq(port, 8080);
    cr_assert_eq(svc_parse_hostport(":9100", host, sizeof(host), &port), 0);
    cr_assert_str_eq(host, "127.0.0.1");
    cr_assert_eq(port, 9100);
    cr_assert_eq(svc_parse_hostport("9200", host, sizeof(host), &port), 0);
    cr_assert_str_eq(host, "127.0.0.1");
    cr_assert_eq(port, 9200);
    cr_assert_eq(svc_parse_hostport("localhost:0", host, sizeof(host), &port), 0);
    cr_assert_str_eq(host, "localhost");
    cr_assert_eq(port, 0);
    cr_assert_eq(svc_parse_hostport("[::1]:65535", host, sizeof(host), &port), 0);
    cr_assert_str_eq(host, "::1");
    cr_assert_eq(port, 65535);
}

Test(svc_util, hostport_rejects_malformed_input)
{
    const char *bad[] = {"",         "host:", "host:abc", "host:-1", "host:65536", "host:80x",
                         "::1:8080", "[::1]", "[::1]80",  ":",       "a:+80",      "h: 80"};
    char host[64] = "unchanged";
    int port = 42;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(svc_parse_hostport(bad[i], host, sizeof(host), &port), -EINVAL, "'%s'",
                     bad[i]);
    cr_assert_eq(svc_parse_hostport(NULL, host, sizeof(host), &port), -EINVAL);
    cr_assert_str_eq(host, "unchanged");
    cr_assert_eq(port, 42);
    /* A host that does not fit the caller's buffer is an error, never a silent cut. */
    cr_assert_eq(svc_parse_hostport("averyveryverylonghostname:80", host, 8, &port), -EINVAL);
}

Test(svc_util, cpu_count_follows_the_affinity_mask)
{
    cpu_set_t all, one;

    cr_assert_eq(sched_getaffinity(0, sizeof(all), &all), 0);
    int n = svc_cpu_count();
    cr_assert(n >= 1 && n <= CPU_COUNT(&all), "svc_cpu_count() = %d, affinity has %d", n,
              CPU_COUNT(&all));

    /* Pinned to one CPU (as taskset or a cpuset would), the count says one. */
    CPU_ZERO(&one);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (CPU_ISSET(cpu, &all)) {
            CPU_SET(cpu, &one);
            break;
        }
    }
    cr_assert_eq(sched_setaffinity(0, sizeof(one), &one), 0);
    cr_assert_eq(svc_cpu_count(), 1);
    sched_setaffinity(0, sizeof(all), &all);
}
