/* s3_archive.c: archive object names (see s3_archive.h). */
#include "s3_archive.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* @prefix without slashes at either end: its start and length. */
static const char *prefix_trim(const char *prefix, size_t *ret_len)
{
    size_t n;

    if (!prefix)
        prefix = "";
    while (*prefix == '/')
        prefix++;
    n = strlen(prefix);
    while (n > 0 && prefix[n - 1] == '/')
        n--;
    *ret_len = n;
    return prefix;
}

int s3_archive_topic_prefix(const char *prefix, const char *topic, char *buf, size_t size)
{
    size_t plen;
    const char *p = prefix_trim(prefix, &plen);
    int n = snprintf(buf, size, "%.*s%s%s/", (int)plen, p, plen ? "/" : "", topic);

    return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

int s3_archive_key(const char *prefix, const char *topic, int32_t partition, int64_t first_offset,
                   int64_t ts_ms, char *buf, size_t size)
{
    time_t secs = (time_t)((ts_ms < 0 ? 0 : ts_ms) / 1000);
    size_t plen;
    const char *p = prefix_trim(prefix, &plen);
    struct tm tm;
    int n;

    gmtime_r(&secs, &tm);
    n = snprintf(buf, size,
                 "%.*s%s%s/dt=%04d-%02d-%02d/hour=%02d/%s+%" PRId32 "+%" PRId64 S3_ARCHIVE_EXT,
                 (int)plen, p, plen ? "/" : "", topic, tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                 tm.tm_hour, topic, partition, first_offset);
    return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

/* Whether [s, s+n) is all decimal digits (and not empty). */
static bool digits(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

int s3_archive_key_parse(const char *key, char *topic, size_t topic_size, int32_t *ret_partition,
                         int64_t *ret_first_offset)
{
    const char *parts[4]; /* starts of <topic>/, dt=, hour=, basename */
    const char *end = key + strlen(key), *base, *plus1, *plus2, *p;
    size_t ext = strlen(S3_ARCHIVE_EXT), tlen;
    int found = 0;
    long long partition, first;

    /* The last four path components, from the right. */
    p = end;
    while (found < 4) {
        const char *slash = p;

        while (slash > key && slash[-1] != '/')
            slash--;
        parts[3 - found++] = slash;
        if (slash == key)
            break;
        p = slash - 1;
    }
    if (found < 4)
        return -EINVAL;
    base = parts[3];
    if ((size_t)(end - base) <= ext || strcmp(end - ext, S3_ARCHIVE_EXT) != 0)
        return -EINVAL;
    /* <topic>/dt=YYYY-MM-DD/hour=HH/ */
    tlen = (size_t)(parts[1] - parts[0] - 1);
    if (tlen == 0 || parts[2] - parts[1] != 14 || strncmp(parts[1], "dt=", 3) != 0 ||
        !digits(parts[1] + 3, 4) || parts[1][7] != '-' || !digits(parts[1] + 8, 2) ||
        parts[1][10] != '-' || !digits(parts[1] + 11, 2) || parts[3] - parts[2] != 8 ||
        strncmp(parts[2], "hour=", 5) != 0 || !digits(parts[2] + 5, 2))
        return -EINVAL;
    /* <topic>+<partition>+<first offset>.json.gz, the topic the same as the folder's. */
    plus2 = memrchr(base, '+', (size_t)(end - ext - base));
    if (!plus2 || plus2 == base)
        return -EINVAL;
    plus1 = memrchr(base, '+', (size_t)(plus2 - base));
    if (!plus1 || (size_t)(plus1 - base) != tlen || strncmp(base, parts[0], tlen) != 0 ||
        !digits(plus1 + 1, (size_t)(plus2 - plus1 - 1)) ||
        !digits(plus2 + 1, (size_t)(end - ext - plus2 - 1)) || plus2 - plus1 - 1 > 10 ||
        end - ext - plus2 - 1 > 18)
        return -EINVAL;
    partition = strtoll(plus1 + 1, NULL, 10);
    first = strtoll(plus2 + 1, NULL, 10);
    if (partition > INT32_MAX || tlen >= topic_size)
        return -EINVAL;
    memcpy(topic, base, tlen);
    topic[tlen] = '\0';
    *ret_partition = (int32_t)partition;
    *ret_first_offset = first;
    return 0;
}
