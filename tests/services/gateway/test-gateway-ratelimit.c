/* Token buckets: a burst is granted, then one request per 1/rate seconds, per caller. */
#include <criterion/criterion.h>

#include "gateway.h"

Test(ratelimit, burst_then_refill)
{
    gw_ratelimit_t *rl;
    int64_t wait = 0;
    int granted = 0;

    cr_assert_eq(gw_ratelimit_new(&rl), 0);
    for (int i = 0; i < 10; i++)
        granted += gw_ratelimit_take(rl, "key:a", 2, 5, 1000, &wait) == 0;
    cr_expect_eq(granted, 5, "a full bucket grants its burst, got %d", granted);
    cr_expect_eq(gw_ratelimit_take(rl, "key:a", 2, 5, 1000, &wait), -EAGAIN);
    cr_expect_eq(wait, 500, "at 2/s the next token is 500 ms away, not %lld", (long long)wait);
    cr_expect_eq(gw_ratelimit_take(rl, "key:a", 2, 5, 1499, &wait), -EAGAIN);
    cr_expect_eq(gw_ratelimit_take(rl, "key:a", 2, 5, 1500, &wait), 0);
    /* Another caller has its own bucket. */
    cr_expect_eq(gw_ratelimit_take(rl, "user:b", 2, 5, 1500, &wait), 0);
    gw_ratelimit_free(rl);
}

Test(ratelimit, zero_rate_is_unlimited)
{
    gw_ratelimit_t *rl;
    int64_t wait;

    cr_assert_eq(gw_ratelimit_new(&rl), 0);
    for (int i = 0; i < 10000; i++)
        cr_assert_eq(gw_ratelimit_take(rl, "k", 0, 1, 0, &wait), 0);
    gw_ratelimit_free(rl);
}

Test(ratelimit, many_callers_are_swept_not_refused)
{
    gw_ratelimit_t *rl;
    int64_t wait;
    char key[32];

    cr_assert_eq(gw_ratelimit_new(&rl), 0);
    /* More callers than the table keeps: idle (full) buckets make room for new ones. */
    for (int i = 0; i < 300000; i++) {
        snprintf(key, sizeof(key), "key:%d", i);
        cr_assert_eq(gw_ratelimit_take(rl, key, 1000, 1, (int64_t)i * 2, &wait), 0);
    }
    gw_ratelimit_free(rl);
}
