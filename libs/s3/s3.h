/* s3.h: a small S3 client: PUT, GET, HEAD, ListObjectsV2 and CreateBucket on one bucket.
 *
 * Requests go path-style to the endpoint (http://host:port/<bucket>/<key>), so S3Proxy, MinIO and
 * AWS itself are reached the same way. libcurl signs them with AWS Signature Version 4
 * (CURLOPT_AWS_SIGV4); the client adds what libcurl 7.88 leaves out: `x-amz-content-sha256` with
 * the payload's real SHA-256 (S3 refuses a request without it), a query string already sorted
 * and percent-encoded (libcurl signs the query as given), and keys percent-encoded in the path
 * ('+' would otherwise be read as a space, '=' as a separator).
 *
 * Failed attempts are repeated with exponential backoff when they may succeed later (connection
 * errors, timeouts, 5xx, 429 and S3's SlowDown/RequestTimeout/InternalError); an answer such as
 * 403 or 404 is returned at once. A client is not thread-safe: use one per thread.
 *
 * Errors: functions return 0 or a negative errno and keep a one-line description, with S3's
 * error code when it sent one, for s3_errmsg():
 *   -ENOENT        no such key or bucket (NoSuchKey, NoSuchBucket, a 404 HEAD)
 *   -EACCES        refused (403: AccessDenied, SignatureDoesNotMatch, InvalidAccessKeyId, ...)
 *   -EEXIST        CreateBucket on a bucket that exists (BucketAlreadyOwnedByYou/Exists)
 *   -EINVAL        the request was refused as invalid (other 4xx)
 *   -ECONNREFUSED, -ETIMEDOUT, -EHOSTUNREACH: the endpoint could not be reached
 *   -EIO           5xx after the last attempt, or a reply that is not S3's
 *   -ENOMEM
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct s3_client s3_client_t;

/** How failed attempts are repeated: attempt n+1 waits about base_ms * 2^(n-1), at most max_ms. */
typedef struct s3_retry {
    int max_attempts; /* >= 1; 0 means the default, 4 */
    int base_ms;      /* 0: 200 */
    int max_ms;       /* 0: 5000 */
} s3_retry_t;

typedef struct s3_conf {
    const char *endpoint;   /* "http://127.0.0.1:9000", required */
    const char *region;     /* NULL: "us-east-1" */
    const char *access_key; /* required */
    const char *secret_key; /* required */
    const char *bucket;     /* required */
    int timeout_ms;         /* one attempt, 0: 30000 */
    int connect_timeout_ms; /* 0: 5000 */
    s3_retry_t retry;
} s3_conf_t;

/** A user metadata entry, sent and received as the header `x-amz-meta-<name>`. */
typedef struct s3_meta {
    const char *name; /* lower-case: "last-offset" */
    const char *value;
} s3_meta_t;

/** What HEAD and LIST tell about an object. Strings owned by the struct; see s3_object_clear(). */
typedef struct s3_object {
    char *key;
    int64_t size;
    char *etag;
    char *last_modified;
    s3_meta_t *meta; /* HEAD only: the x-amz-meta-* headers, names lower-cased */
    size_t nmeta;
} s3_object_t;

/** Frees what @obj holds and zeroes it. Accepts NULL. */
void s3_object_clear(s3_object_t *obj);

/** The value of metadata @name in @obj, or NULL. */
const char *s3_object_meta(const s3_object_t *obj, const char *name);

/**
 * Creates a client. @conf is copied (strings too). 0, or -EINVAL with the reason in @errbuf when a
 * required setting is missing or the endpoint is not an http(s) URL, -ENOMEM.
 */
int s3_client_new(const s3_conf_t *conf, s3_client_t **ret_client, char *errbuf, size_t errsize);

/** Frees the client. Accepts NULL. */
void s3_client_free(s3_client_t *s3);

/** The description of the last failure ("PUT archive/x.gz: 403 AccessDenied: ..."). */
const char *s3_errmsg(const s3_client_t *s3);

/** Sets the attempts of the following calls (NULL: the configured policy). @retry is copied. */
void s3_client_set_retry(s3_client_t *s3, const s3_retry_t *retry);

/**
 * Uploads @len bytes of @data (borrowed) as @key, with Content-Type @content_type (NULL:
 * application/octet-stream) and @nmeta metadata entries. Replaces an object of the same key.
 */
int s3_put(s3_client_t *s3, const char *key, const void *data, size_t len, const char *content_type,
           const s3_meta_t *meta, size_t nmeta);

/** Downloads @key. On success *@ret_data is a malloc'd buffer (NUL-terminated, the terminator
 *  not counted in *@ret_len) the caller frees. */
int s3_get(s3_client_t *s3, const char *key, char **ret_data, size_t *ret_len);

/** HEAD @key: size, ETag and metadata into @ret_obj (cleared first; free with s3_object_clear()).
 */
int s3_head(s3_client_t *s3, const char *key, s3_object_t *ret_obj);

/** 0 when the bucket exists and the credentials may use it; -ENOENT when it does not exist. */
int s3_bucket_head(s3_client_t *s3);

/** CreateBucket (in the client's region). -EEXIST when it exists already. */
int s3_bucket_create(s3_client_t *s3);

/** Creates the bucket unless it exists. */
int s3_bucket_ensure(s3_client_t *s3);

/**
 * Called for each object (@obj, @prefix NULL) and, with a delimiter, each common prefix (@obj
 * NULL). Both borrowed, valid during the call. A non-zero return stops the listing, and
 * s3_list() returns it.
 */
typedef int (*s3_list_fn)(void *opaque, const s3_object_t *obj, const char *prefix);

/** Lists the keys under @prefix (NULL or "" for all) in key order, following continuation
 *  tokens page after page. @delimiter (NULL for none) groups keys into common prefixes. */
int s3_list(s3_client_t *s3, const char *prefix, const char *delimiter, s3_list_fn fn,
            void *opaque);

/* ---- pure pieces, exposed for tests ----------------------------------------------------- */

/** One page of a ListObjectsV2 answer. Owned by the struct; free with s3_list_page_clear(). */
typedef struct s3_list_page {
    s3_object_t *objects;
    size_t nobjects;
    char **prefixes; /* CommonPrefixes */
    size_t nprefixes;
    bool truncated;
    char *next_token; /* NextContinuationToken, NULL when not truncated */
} s3_list_page_t;

/** Parses a ListBucketResult document (XML entities decoded). 0, -EINVAL (not a
 *  ListBucketResult, or truncated without a token), -ENOMEM. */
int s3_list_parse(const char *xml, size_t len, s3_list_page_t *ret_page);

void s3_list_page_clear(s3_list_page_t *page);

/** Extracts S3's <Error><Code> and <Message> from an error body into the buffers ("" when
 *  absent). */
void s3_error_parse(const char *xml, size_t len, char *code, size_t codesize, char *message,
                    size_t msgsize);

/**
 * Percent-encodes @s as S3 and SigV4 expect: every byte but A-Z a-z 0-9 - _ . ~ becomes %XX
 * (upper-case hex); '/' is kept when @keep_slash (a key in a path), encoded otherwise (a query
 * value). Returns a malloc'd string, or NULL.
 */
char *s3_uri_encode(const char *s, bool keep_slash);

/** Whether an attempt that ended with HTTP @status (0: no answer, a transport error) and S3
 *  error @code (may be NULL or "") is worth repeating. */
bool s3_retry_should(long status, const char *code);

/**
 * The wait before attempt @attempt + 1, after attempt @attempt (>= 1) failed: half of
 * min(base * 2^(attempt-1), max) plus @random modulo the other half ("equal jitter", so that
 * clients that failed together do not retry together).
 */
int s3_retry_delay_ms(const s3_retry_t *retry, int attempt, uint32_t random);
