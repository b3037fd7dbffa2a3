/* Tests for the pure pieces of libs/s3: archive keys, ListObjectsV2 parsing, error bodies, URI
 * encoding and the retry policy. The requests themselves are tested against S3Proxy by
 * tests/integration/test_s3_archiver.py. */
#include <errno.h>
#include <string.h>

#include <criterion/criterion.h>

#include "s3.h"
#include "s3_archive.h"

/* 2026-11-23T09:40:01.5Z */
#define TS_MS 1795426801500LL

Test(s3_archive, key_is_dated_by_the_first_record_in_utc)
{
    char key[S3_ARCHIVE_KEY_MAX];

    cr_assert_eq(s3_archive_key("archive", "sensor.readings.v1", 3, 1234, TS_MS, key, sizeof(key)),
                 0);
    cr_expect_str_eq(key, "archive/sensor.readings.v1/dt=2026-11-23/hour=09/"
                          "sensor.readings.v1+3+1234.json.gz");
}

Test(s3_archive, prefix_slashes_and_empty_prefix)
{
    char key[S3_ARCHIVE_KEY_MAX];

    cr_assert_eq(s3_archive_key("/a/b/", "t", 0, 0, TS_MS, key, sizeof(key)), 0);
    cr_expect_str_eq(key, "a/b/t/dt=2026-11-23/hour=09/t+0+0.json.gz");
    cr_assert_eq(s3_archive_key("", "t", 0, 7, TS_MS, key, sizeof(key)), 0);
    cr_expect_str_eq(key, "t/dt=2026-11-23/hour=09/t+0+7.json.gz");
    cr_assert_eq(s3_archive_topic_prefix(NULL, "t", key, sizeof(key)), 0);
    cr_expect_str_eq(key, "t/");
    cr_assert_eq(s3_archive_topic_prefix("x/", "t", key, sizeof(key)), 0);
    cr_expect_str_eq(key, "x/t/");
}

Test(s3_archive, record_without_timestamp_gets_a_fixed_hour)
{
    char a[S3_ARCHIVE_KEY_MAX], b[S3_ARCHIVE_KEY_MAX];

    cr_assert_eq(s3_archive_key("p", "t", 1, 5, -1, a, sizeof(a)), 0);
    cr_assert_eq(s3_archive_key("p", "t", 1, 5, -1, b, sizeof(b)), 0);
    cr_expect_str_eq(a, "p/t/dt=1970-01-01/hour=00/t+1+5.json.gz");
    cr_expect_str_eq(a, b);
}

Test(s3_archive, hour_boundary)
{
    char key[S3_ARCHIVE_KEY_MAX];
    int64_t midnight = 1795392000000LL; /* 2026-11-23T00:00:00Z */

    cr_assert_eq(s3_archive_key("p", "t", 0, 1, midnight - 1, key, sizeof(key)), 0);
    cr_expect(strstr(key, "/dt=2026-11-22/hour=23/"), "%s", key);
    cr_assert_eq(s3_archive_key("p", "t", 0, 1, midnight, key, sizeof(key)), 0);
    cr_expect(strstr(key, "/dt=2026-11-23/hour=00/"), "%s", key);
}

Test(s3_archive, key_too_long_is_refused)
{
    char key[32];

    cr_expect_eq(s3_archive_key("archive", "sensor.readings.v1", 0, 0, 0, key, sizeof(key)),
                 -ENAMETOOLONG);
}

Test(s3_archive, parse_round_trips)
{
    char key[S3_ARCHIVE_KEY_MAX], topic[256];
    int32_t partition;
    int64_t first;

    cr_assert_eq(
        s3_archive_key("x/y", "orders.events.v1", 11, 9000000000LL, TS_MS, key, sizeof(key)), 0);
    cr_assert_eq(s3_archive_key_parse(key, topic, sizeof(topic), &partition, &first), 0);
    cr_expect_str_eq(topic, "orders.events.v1");
    cr_expect_eq(partition, 11);
    cr_expect_eq(first, 9000000000LL);
}

Test(s3_archive, parse_refuses_what_the_archiver_never_writes)
{
    static const char *const bad[] = {
        "p/t/dt=2026-11-23/hour=09/t+1+2.json",             /* extension */
        "p/t/dt=2026-11-23/hour=09/u+1+2.json.gz",          /* topic differs from the folder */
        "p/t/dt=2026-11-23/hour=9/t+1+2.json.gz",           /* hour */
        "p/t/dt=2026-1-23/hour=09/t+1+2.json.gz",           /* date */
        "p/t/dt=2026-11-23/hour=09/t+x+2.json.gz",          /* partition */
        "p/t/dt=2026-11-23/hour=09/t+1+.json.gz",           /* offset */
        "p/t/dt=2026-11-23/hour=09/t+1+-2.json.gz",         /* negative */
        "dt=2026-11-23/hour=09/t+1+2.json.gz",              /* no topic folder */
        "p/t/dt=2026-11-23/hour=09/t+1+2.json.gz/extra",    /* deeper */
        "p/t/dt=2026-11-23/hour=09/t+99999999999+2.json.gz" /* partition range */
    };
    char topic[64];
    int32_t partition;
    int64_t first;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect_eq(s3_archive_key_parse(bad[i], topic, sizeof(topic), &partition, &first),
                     -EINVAL, "%s", bad[i]);
    /* No prefix at all is fine. */
    cr_expect_eq(s3_archive_key_parse("t/dt=2026-11-23/hour=09/t+1+2.json.gz", topic, sizeof(topic),
                                      &partition, &first),
                 0);
}

/* ---- ListObjectsV2 ---------------------------------------------------------------------- */

static const char list_page1[] =
    "<?xml version='1.0' encoding='UTF-8'?><ListBucketResult "
    "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>b</Name><Prefix>a/</Prefix>"
    "<KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><ContinuationToken/><StartAfter/>"
    "<IsTruncated>true</IsTruncated><NextContinuationToken>a/k2 0 1&amp;x=y</NextContinuationToken>"
    "<Contents><Key>a/t+0+1.json.gz</Key><LastModified>2026-11-23T12:31:09Z</LastModified>"
    "<ETag>&quot;5eb63bbbe01eeed093cb22bb8f5acdc3&quot;</ETag><Size>11</Size>"
    "<StorageClass>STANDARD</StorageClass></Contents>"
    "<Contents><Key>a/&lt;odd&gt; &#233;&#x4e2d;</Key><Size>0</Size></Contents>"
    "<CommonPrefixes><Prefix>a/x/</Prefix></CommonPrefixes>"
    "<CommonPrefixes><Prefix>a/y/</Prefix></CommonPrefixes></ListBucketResult>";

Test(s3_list, parses_objects_prefixes_and_the_continuation_token)
{
    s3_list_page_t page;

    cr_assert_eq(s3_list_parse(list_page1, strlen(list_page1), &page), 0);
    cr_assert_eq(page.nobjects, 2);
    cr_expect_str_eq(page.objects[0].key, "a/t+0+1.json.gz");
    cr_expect_eq(page.objects[0].size, 11);
    cr_expect_str_eq(page.objects[0].etag, "\"5eb63bbbe01eeed093cb22bb8f5acdc3\"");
    cr_expect_str_eq(page.objects[0].last_modified, "2026-11-23T12:31:09Z");
    cr_expect_str_eq(page.objects[1].key, "a/<odd> \xc3\xa9\xe4\xb8\xad");
    cr_expect_eq(page.objects[1].size, 0);
    cr_assert_eq(page.nprefixes, 2);
    cr_expect_str_eq(page.prefixes[0], "a/x/");
    cr_expect_str_eq(page.prefixes[1], "a/y/");
    cr_expect(page.truncated);
    cr_expect_str_eq(page.next_token, "a/k2 0 1&x=y");
    s3_list_page_clear(&page);
    cr_expect_eq(page.nobjects, 0);
}

Test(s3_list, last_and_empty_pages)
{
    static const char last[] = "<ListBucketResult><IsTruncated>false</IsTruncated>"
                               "<Contents><Key>k</Key><Size>3</Size></Contents></ListBucketResult>";
    static const char empty[] = "<ListBucketResult><KeyCount>0</KeyCount>"
                                "<IsTruncated>false</IsTruncated></ListBucketResult>";
    s3_list_page_t page;

    cr_assert_eq(s3_list_parse(last, strlen(last), &page), 0);
    cr_expect_eq(page.nobjects, 1);
    cr_expect_not(page.truncated);
    cr_expect_null(page.next_token);
    s3_list_page_clear(&page);

    cr_assert_eq(s3_list_parse(empty, strlen(empty), &page), 0);
    cr_expect_eq(page.nobjects, 0);
    cr_expect_eq(page.nprefixes, 0);
    s3_list_page_clear(&page);
}

Test(s3_list, refuses_other_documents_and_truncation_without_a_token)
{
    static const char error[] = "<Error><Code>AccessDenied</Code></Error>";
    static const char no_token[] = "<ListBucketResult><IsTruncated>true</IsTruncated>"
                                   "<NextContinuationToken/></ListBucketResult>";
    static const char no_key[] = "<ListBucketResult><Contents><Size>1</Size></Contents>"
                                 "</ListBucketResult>";
    s3_list_page_t page;

    cr_expect_eq(s3_list_parse(error, strlen(error), &page), -EINVAL);
    cr_expect_eq(s3_list_parse(no_token, strlen(no_token), &page), -EINVAL);
    cr_expect_eq(s3_list_parse(no_key, strlen(no_key), &page), -EINVAL);
    cr_expect_eq(s3_list_parse("", 0, &page), -EINVAL);
}

Test(s3_list, tag_names_that_share_a_prefix_are_not_confused)
{
    /* <KeyCount> must not be read as <Key>, nor <Prefix> of the result as a common prefix. */
    static const char xml[] = "<ListBucketResult><Prefix>p/</Prefix><Contents><KeyCount>9"
                              "</KeyCount><Key>p/real</Key></Contents></ListBucketResult>";
    s3_list_page_t page;

    cr_assert_eq(s3_list_parse(xml, strlen(xml), &page), 0);
    cr_assert_eq(page.nobjects, 1);
    cr_expect_str_eq(page.objects[0].key, "p/real");
    cr_expect_eq(page.objects[0].size, -1);
    cr_expect_eq(page.nprefixes, 0);
    s3_list_page_clear(&page);
}

Test(s3_error, code_and_message)
{
    static const char xml[] =
        "<?xml version='1.0' encoding='UTF-8'?><Error><Code>SignatureDoesNotMatch</Code>"
        "<Message>The request signature we calculated does not match</Message>"
        "<RequestId>4442587FB7D0A2F9</RequestId></Error>";
    char code[64], message[128];

    s3_error_parse(xml, strlen(xml), code, sizeof(code), message, sizeof(message));
    cr_expect_str_eq(code, "SignatureDoesNotMatch");
    cr_expect_str_eq(message, "The request signature we calculated does not match");
    s3_error_parse(NULL, 0, code, sizeof(code), message, sizeof(message));
    cr_expect_str_eq(code, "");
    cr_expect_str_eq(message, "");
}

/* ---- URI encoding --------------------------------------------------------------------------- */

Test(s3_uri, encodes_all_but_unreserved)
{
    char *s = s3_uri_encode("archive/t/dt=2026-11-23/hour=09/t+1+2.json.gz", true);

    cr_expect_str_eq(s, "archive/t/dt%3D2026-11-23/hour%3D09/t%2B1%2B2.json.gz");
    free(s);
    s = s3_uri_encode("a/b c~_.-\xc3\xa9", false);
    cr_expect_str_eq(s, "a%2Fb%20c~_.-%C3%A9");
    free(s);
    s = s3_uri_encode("", false);
    cr_expect_str_eq(s, "");
    free(s);
}

/* ---- retry policy -----------------------------------------------------------------------------
 */

Test(s3_retry, which_failures_are_repeated)
{
    cr_expect(s3_retry_should(0, NULL), "connection error");
    cr_expect(s3_retry_should(500, "InternalError"));
    cr_expect(s3_retry_should(503, "SlowDown"));
    cr_expect(s3_retry_should(429, ""));
    cr_expect(s3_retry_should(400, "RequestTimeout"));
    cr_expect_not(s3_retry_should(403, "SignatureDoesNotMatch"));
    cr_expect_not(s3_retry_should(404, "NoSuchKey"));
    cr_expect_not(s3_retry_should(400, "InvalidArgument"));
    cr_expect_not(s3_retry_should(409, "BucketAlreadyOwnedByYou"));
}

Test(s3_retry, delays_grow_exponentially_within_bounds)
{
    s3_retry_t policy = {.max_attempts = 6, .base_ms = 100, .max_ms = 1000};
    int expect_cap[] = {100, 200, 400, 800, 1000, 1000};

    for (int attempt = 1; attempt <= 6; attempt++) {
        int cap = expect_cap[attempt - 1];

        /* Equal jitter: between half the capped delay and the capped delay, both reached. */
        cr_expect_eq(s3_retry_delay_ms(&policy, attempt, 0), cap / 2, "attempt %d", attempt);
        cr_expect_eq(s3_retry_delay_ms(&policy, attempt, (uint32_t)(cap - cap / 2)), cap,
                     "attempt %d", attempt);
        for (uint32_t rnd = 0; rnd < 5000; rnd += 37) {
            int d = s3_retry_delay_ms(&policy, attempt, rnd);

            cr_expect(d >= cap / 2 && d <= cap, "attempt %d: %d outside [%d, %d]", attempt, d,
                      cap / 2, cap);
        }
    }
}

Test(s3_retry, defaults_and_huge_attempt_numbers)
{
    s3_retry_t none = {0};

    cr_expect_eq(s3_retry_delay_ms(&none, 1, 0), 100, "default base 200 ms, half of it");
    cr_expect_eq(s3_retry_delay_ms(&none, 1000, 0), 2500, "default cap 5 s, half of it");
    cr_expect_eq(s3_retry_delay_ms(NULL, 1000, 2500), 5000);
}

Test(s3_client, missing_settings_are_refused_with_a_message)
{
    s3_client_t *s3 = NULL;
    char errbuf[256];

    cr_expect_eq(s3_client_new(&(s3_conf_t){.endpoint = "http://x", .bucket = "b"}, &s3, errbuf,
                               sizeof(errbuf)),
                 -EINVAL);
    cr_expect(strstr(errbuf, "secret key"), "%s", errbuf);
    cr_expect_eq(s3_client_new(&(s3_conf_t){.endpoint = "ftp://x",
                                            .bucket = "b",
                                            .access_key = "a",
                                            .secret_key = "s"},
                               &s3, errbuf, sizeof(errbuf)),
                 -EINVAL);
    cr_expect(strstr(errbuf, "ftp://x"), "%s", errbuf);
    cr_expect_null(s3);
}

Test(s3_client, unreachable_endpoint_fails_with_a_clear_message_after_retries)
{
    s3_client_t *s3 = NULL;
    s3_object_t obj;
    char errbuf[256];

    /* Port 1 on loopback refuses at once. */
    cr_assert_eq(s3_client_new(&(s3_conf_t){.endpoint = "http://127.0.0.1:1",
                                            .bucket = "b",
                                            .access_key = "a",
                                            .secret_key = "s",
                                            .retry = {.max_attempts = 3, .base_ms = 1}},
                               &s3, errbuf, sizeof(errbuf)),
                 0, "%s", errbuf);
    cr_expect_eq(s3_head(s3, "k", &obj), -ECONNREFUSED);
    cr_expect(strstr(s3_errmsg(s3), "HEAD b/k"), "%s", s3_errmsg(s3));
    cr_expect(strstr(s3_errmsg(s3), "attempt 3 of 3"), "%s", s3_errmsg(s3));
    s3_client_free(s3);
}
