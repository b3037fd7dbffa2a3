/* contract_time.c: the contract's RFC 3339 timestamps, parsed and formatted without the C
 * library's time zone machinery (timegm and friends depend on TZ and locale; this does not). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>

#include "contract.h"

#define US_PER_SEC  INT64_C(1000000)
#define SEC_PER_DAY INT64_C(86400)

/* Reads exactly @n ASCII digits. Not isdigit(): that one follows the locale. */
static bool read_digits(const char *s, int n, int *ret)
{
    int v = 0;

    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *ret = v;
    return true;
}

static bool is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int y, int m)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

    return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int *ret_y, int *ret_m, int *ret_d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int d = (int)(doy - (153 * mp + 2) / 5 + 1);
    int m = (int)(mp < 10 ? mp + 3 : mp - 9);

    *ret_y = (int)(yoe + era * 400 + (m <= 2));
    *ret_m = m;
    *ret_d = d;
}

int contract_parse_rfc3339(const char *s, int64_t *ret_us)
{
    int y, mo, d, h, mi, sec, oh = 0, om = 0, sign = 0;
    int64_t frac_us = 0;
    const char *p;

    /* "YYYY-MM-DDTHH:MM:SS": every separator at its fixed place. */
    if (!read_digits(s, 4, &y) || s[4] != '-' || !read_digits(s + 5, 2, &mo) || s[7] != '-' ||
        !read_digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') ||
        !read_digits(s + 11, 2, &h) || s[13] != ':' || !read_digits(s + 14, 2, &mi) ||
        s[16] != ':' || !read_digits(s + 17, 2, &sec))
        return -EINVAL;
    if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59)
        return -EINVAL;

    p = s + 19;
    if (*p == '.') {
        int n = 0;

        /* Up to 9 digits; digits past the microsecond are checked, then dropped (truncation
         * never moves a time into the next second, day or year). */
        for (p++; *p >= '0' && *p <= '9'; p++, n++)
            if (n < 6)
                frac_us = frac_us * 10 + (*p - '0');
        if (n < 1 || n > 9)
            return -EINVAL;
        for (; n < 6; n++)
            frac_us *= 10;
    }

    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        sign = *p == '+' ? 1 : -1;
        if (!read_digits(p + 1, 2, &oh) || p[3] != ':' || !read_digits(p + 4, 2, &om) || oh > 23 ||
            om > 59)
            return -EINVAL;
        p += 6;
    } else {
        return -EINVAL;
    }
    if (*p != '\0')
        return -EINVAL;

    /* Local years 2000-2099; in UTC also the day either side, so that any valid local time
     * rewritten in UTC by contract_format_rfc3339() is still valid. */
    if (y < 2000 || y > 2099) {
        bool edge = (y == 1999 && mo == 12 && d == 31) || (y == 2100 && mo == 1 && d == 1);
        if (!edge || sign != 0)
            return -EINVAL;
    }

    int64_t secs = days_from_civil(y, mo, d) * SEC_PER_DAY + h * 3600 + mi * 60 + sec -
                   sign * (oh * 3600 + om * 60);
    if (ret_us)
        *ret_us = secs * US_PER_SEC + frac_us;
    return 0;
}

void contract_format_rfc3339(int64_t us, char *buf, size_t size)
{
    /* Floor division, so times before 1970 format correctly too. */
    int64_t secs = us / US_PER_SEC, frac = us % US_PER_SEC;
    if (frac < 0) {
        frac += US_PER_SEC;
        secs--;
    }
    int64_t days = secs / SEC_PER_DAY, sod = secs % SEC_PER_DAY;
    if (sod < 0) {
        sod += SEC_PER_DAY;
        days--;
    }
    int y, m, d;
    civil_from_days(days, &y, &m, &d);

    snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%06" PRId64 "Z", y, m, d, (int)(sod / 3600),
             (int)(sod / 60 % 60), (int)(sod % 60), frac);
}
