/* RFC 3339 parsing and formatting of the contract's `ts`. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>

#include "contract.h"

#define US INT64_C(1000000)

static int64_t parse_ok(const char *s)
{
    int64_t us = -1;

    cr_assert_eq(contract_parse_rfc3339(s, &us), 0, "'%s' rejected", s);
    return us;
}

/* The C library's timegm() as an independent oracle for the calendar arithmetic. */
static int64_t oracle_us(int y, int mo, int d, int h, int mi, int s)
{
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = s};
    return (int64_t)timegm(&tm) * US;
}

Test(contract_time, every_day_of_the_century_matches_timegm)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    char s[40];
    int days = 0;

    for (int y = 2000; y <= 2099; y++) {
        bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        for (int mo = 1; mo <= 12; mo++) {
            int last = mdays[mo - 1] + (mo == 2 && leap);
            for (int d = 1; d <= last + 1; d++) {
                int h = (y + d) % 24, mi = (mo * 7 + d) % 60, sec = (y * 13 + d) % 60;
                snprintf(s, sizeof(s), "%04d-%02d-%02dT%02d:%02d:%02dZ", y, mo, d, h, mi, sec);
                if (d > last) {
                    cr_expect_eq(contract_parse_rfc3339(s, NULL), -EINVAL, "'%s' accepted", s);
                    continue;
                }
                cr_expect_eq(parse_ok(s), oracle_us(y, mo, d, h, mi, sec), "%s", s);
                days++;
            }
        }
    }
    cr_expect_eq(days, 36525, "a century has 36525 days, counted %d", days);
}

Test(contract_time, fractions_offsets_and_case)
{
    int64_t base = oracle_us(2026, 11, 23, 9, 40, 1);

    cr_expect_eq(parse_ok("2026-11-23T09:40:01.5Z"), base + 500000);
    cr_expect_eq(parse_ok("2026-11-23t09:40:01.5z"), base + 500000);
    cr_expect_eq(parse_ok("2026-11-23T09:40:01.000001Z"), base + 1);
    /* Digits past the microsecond are truncated, never rounded up into the next second. */
    cr_expect_eq(parse_ok("2026-11-23T09:40:01.999999999Z"), base + 999999);
    cr_expect_eq(parse_ok("2026-11-23T09:40:01.1234567Z"), base + 123456);
    cr_expect_eq(parse_ok("2026-11-23T10:40:01+01:00"), base);
    cr_expect_eq(parse_ok("2026-11-23T04:10:01-05:30"), base);
    cr_expect_eq(parse_ok("2026-11-23T09:40:01-00:00"), base);
    cr_expect_eq(parse_ok("2026-11-24T09:39:01+23:59"), base);
}

Test(contract_time, century_edges)
{
    cr_expect_eq(parse_ok("2000-01-01T00:00:00+01:00"), oracle_us(1999, 12, 31, 23, 0, 0));
    cr_expect_eq(parse_ok("1999-12-31T23:00:00Z"), oracle_us(1999, 12, 31, 23, 0, 0));
    cr_expect_eq(parse_ok("1999-12-31T00:00:00Z"), oracle_us(1999, 12, 31, 0, 0, 0));
    cr_expect_eq(parse_ok("2099-12-31T23:59:59-23:59"), oracle_us(2100, 1, 1, 23, 58, 59));
    cr_expect_eq(parse_ok("2100-01-01T23:59:59.999999Z"),
                 oracle_us(2100, 1, 1, 23, 59, 59) + 999999);
}

Test(contract_time, rejects)
{
    static const char *const bad[] = {
        "",
        "2026-11-23",
        "2026-11-23T09:40:01",             /* no offset */
        "2026-11-23 09:40:01Z",            /* space instead of T */
        "2026-11-23T09:40Z",               /* no seconds */
        "2026-1-23T09:40:01Z",             /* one-digit month */
        "2026-00-23T09:40:01Z",            /* month 0 */
        "2026-13-01T09:40:01Z",            /* month 13 */
        "2026-11-00T09:40:01Z",            /* day 0 */
        "2026-11-31T09:40:01Z",            /* November has 30 days */
        "2023-02-29T09:40:01Z",            /* not a leap year */
        "2026-11-23T24:00:00Z",            /* hour 24 */
        "2026-11-23T09:60:01Z",            /* minute 60 */
        "2016-12-31T23:59:60Z",            /* leap second: the referee has none */
        "2026-11-23T09:40:01.Z",           /* empty fraction */
        "2026-11-23T09:40:01.1234567890Z", /* 10 digits */
        "2026-11-23T09:40:01,5Z",          /* comma */
        "2026-11-23T09:40:01+24:00",       /* offset hour 24 */
        "2026-11-23T09:40:01+01:60",       /* offset minute 60 */
        "2026-11-23T09:40:01+0100",        /* offset without colon */
        "2026-11-23T09:40:01+01",          /* offset without minutes */
        "2026-11-23T09:40:01Zjunk",
        "2026-11-23T09:40:01Z\n",
        " 2026-11-23T09:40:01Z",
        "1999-12-30T23:00:00Z",      /* before the century and its UTC edge day */
        "1999-12-31T23:00:00+00:00", /* the edge days only in UTC */
        "2100-01-02T00:00:00Z",
        "2100-01-01T00:00:00-01:00",
        "0000-01-01T00:00:00Z",
        "+2026-11-23T09:40:01Z",
        "２026-11-23T09:40:01Z", /* a full-width digit */
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect_eq(contract_parse_rfc3339(bad[i], NULL), -EINVAL, "'%s' accepted", bad[i]);
}

Test(contract_time, format)
{
    char buf[40];

    contract_format_rfc3339(0, buf, sizeof(buf));
    cr_expect_str_eq(buf, "1970-01-01T00:00:00.000000Z");
    contract_format_rfc3339(-1, buf, sizeof(buf));
    cr_expect_str_eq(buf, "1969-12-31T23:59:59.999999Z");
    contract_format_rfc3339(oracle_us(2024, 2, 29, 23, 59, 59) + 7, buf, sizeof(buf));
    cr_expect_str_eq(buf, "2024-02-29T23:59:59.000007Z");
    contract_format_rfc3339(oracle_us(2100, 1, 1, 0, 0, 0), buf, sizeof(buf));
    cr_expect_str_eq(buf, "2100-01-01T00:00:00.000000Z");
    /* A short buffer is cut, still NUL-terminated. */
    contract_format_rfc3339(0, buf, 5);
    cr_expect_str_eq(buf, "1970");
}

Test(contract_time, format_then_parse_is_the_identity)
{
    char buf[40];

    /* A spread of instants over the whole accepted range, odd microseconds included. */
    int64_t lo = oracle_us(1999, 12, 31, 0, 0, 0), hi = oracle_us(2100, 1, 2, 0, 0, 0);
    int64_t step = (hi - lo) / 10007;
    for (int64_t us = lo; us < hi; us += step) {
        contract_format_rfc3339(us, buf, sizeof(buf));
        cr_expect_eq(parse_ok(buf), us, "%s", buf);
    }
}
