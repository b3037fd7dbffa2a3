/* s3.c: the S3 client (see s3.h). One curl easy handle per client, reset before every attempt
 * (curl_easy_reset() keeps the connection cache, so requests reuse the keep-alive connection). */
#include "s3.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#define DEFAULT_REGION     "us-east-1"
#define DEFAULT_TIMEOUT_MS 30000
#define DEFAULT_CONNECT_MS 5000
#define DEFAULT_ATTEMPTS   4
#define DEFAULT_BASE_MS    200
#define DEFAULT_MAX_MS     5000
#define SHA256_EMPTY       "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define ERRMSG_SIZE        512
#ifndef LIST_MAX_KEYS
#define LIST_MAX_KEYS "1000" /* a test build may set a smaller page */
#endif

struct s3_client {
    char *endpoint; /* without a trailing '/' */
    char *region;
    char *bucket;
    char *bucket_enc;
    char *userpwd; /* "access:secret" */
    char sigv4[128];
    int timeout_ms, connect_timeout_ms;
    s3_retry_t retry_conf, retry;
    CURL *curl;
    uint32_t rand_state;
    char errmsg[ERRMSG_SIZE];
};

/* A growable byte buffer, always NUL-terminated once allocated. */
typedef struct s3_buf {
    char *data;
    size_t len, cap;
} s3_buf_t;

typedef struct s3_req {
    const char *method; /* GET, HEAD, PUT */
    const char *key;    /* NULL: the bucket itself */
    const char *query;  /* sorted and encoded, or NULL */
    const void *body;
    size_t body_len;
    const char *content_type;
    const s3_meta_t *meta;
    size_t nmeta;
} s3_req_t;

typedef struct s3_resp {
    long status;
    s3_buf_t body;
    s3_object_t *obj; /* HEAD: headers go here */
    int oom;
} s3_resp_t;

typedef struct s3_upload {
    const char *data;
    size_t len, pos;
} s3_upload_t;

/* ---- small helpers --------------------------------------------------------------------- */

static int buf_append(s3_buf_t *b, const void *data, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        char *p;

        while (cap < b->len + len + 1)
            cap *= 2;
        if (!(p = realloc(b->data, cap)))
            return -ENOMEM;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

static void set_err(s3_client_t *s3, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_err(s3_client_t *s3, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(s3->errmsg, sizeof(s3->errmsg), fmt, ap);
    va_end(ap);
}

static uint32_t rand_next(s3_client_t *s3)
{
    uint32_t x = s3->rand_state;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return s3->rand_state = x ? x : 0x9e3779b9u;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static void sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
    for (unsigned int i = 0; i < mdlen && i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    out[64] = '\0';
}

char *s3_uri_encode(const char *s, bool keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = malloc(3 * n + 1), *o = out;

    if (!out)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~' ||
            (*p == '/' && keep_slash)) {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}

/* ---- XML: just enough for S3's flat answers ----------------------------------------------- */

/* Finds the next <tag>...</tag> (or <tag/>) in [p, end); the content in [*ret_start, *ret_end),
 * and *ret_next after the closing tag. S3 escapes '<' in text, so a plain search is exact. */
static bool xml_find(const char *p, const char *end, const char *tag, const char **ret_start,
                     const char **ret_end, const char **ret_next)
{
    size_t tlen = strlen(tag);

    while (p < end) {
        const char *lt = memchr(p, '<', (size_t)(end - p));
        const char *gt, *close;

        if (!lt || (size_t)(end - lt) < tlen + 2)
            return false;
        p = lt + 1;
        if (strncmp(p, tag, tlen) != 0)
            continue;
        gt = p + tlen;
        if (*gt == '/' && gt + 1 < end && gt[1] == '>') {
            *ret_start = *ret_end = gt;
            *ret_next = gt + 2;
            return true;
        }
        if (*gt != '>' && *gt != ' ')
            continue; /* a longer tag name sharing the prefix */
        gt = memchr(gt, '>', (size_t)(end - gt));
        if (!gt)
            return false;
        for (close = gt + 1; close < end; close++) {
            close = memchr(close, '<', (size_t)(end - close));
            if (!close)
                return false;
            if (close[1] == '/' && (size_t)(end - close) >= tlen + 3 &&
                strncmp(close + 2, tag, tlen) == 0 && close[2 + tlen] == '>') {
                *ret_start = gt + 1;
                *ret_end = close;
                *ret_next = close + tlen + 3;
                return true;
            }
        }
        return false;
    }
    return false;
}

static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* The text in [start, end) with XML entities decoded, malloc'd. An unknown entity is kept. */
static char *xml_text(const char *start, const char *end)
{
    static const struct {
        const char *name;
        char c;
    } named[] = {{"amp;", '&'}, {"lt;", '<'}, {"gt;", '>'}, {"quot;", '"'}, {"apos;", '\''}};
    char *out = malloc((size_t)(end - start) + 1), *o = out;

    if (!out)
        return NULL;
    for (const char *p = start; p < end;) {
        bool done = false;

        if (*p != '&') {
            *o++ = *p++;
            continue;
        }
        for (size_t i = 0; i < sizeof(named) / sizeof(named[0]) && !done; i++) {
            size_t n = strlen(named[i].name);

            if ((size_t)(end - p - 1) >= n && strncmp(p + 1, named[i].name, n) == 0) {
                *o++ = named[i].c;
                p += n + 1;
                done = true;
            }
        }
        if (!done && p + 2 < end && p[1] == '#') {
            const char *semi = memchr(p, ';', (size_t)(end - p));
            bool hexa = p[2] == 'x' || p[2] == 'X';
            char *stop = NULL;
            unsigned long cp = semi ? strtoul(p + (hexa ? 3 : 2), &stop, hexa ? 16 : 10) : 0;

            /* A character reference never writes more bytes than it took ("&#1;" is 4). */
            if (semi && stop == semi && cp > 0 && cp <= 0x10ffff) {
                o += utf8_put((uint32_t)cp, o);
                p = semi + 1;
                done = true;
            }
        }
        if (!done)
            *o++ = *p++;
    }
    *o = '\0';
    return out;
}

/* The decoded text of the first <tag> in [p, end), or NULL (absent or ENOMEM: *oom set). */
static char *xml_get(const char *p, const char *end, const char *tag, bool *oom)
{
    const char *s, *e, *next;
    char *text;

    if (!xml_find(p, end, tag, &s, &e, &next))
        return NULL;
    text = xml_text(s, e);
    if (!text)
        *oom = true;
    return text;
}

void s3_error_parse(const char *xml, size_t len, char *code, size_t codesize, char *message,
                    size_t msgsize)
{
    const char *end = xml + len;
    bool oom = false;
    char *c = xml ? xml_get(xml, end, "Code", &oom) : NULL;
    char *m = xml ? xml_get(xml, end, "Message", &oom) : NULL;

    snprintf(code, codesize, "%s", c ? c : "");
    snprintf(message, msgsize, "%s", m ? m : "");
    free(c);
    free(m);
}

void s3_object_clear(s3_object_t *obj)
{
    if (!obj)
        return;
    free(obj->key);
    free(obj->etag);
    free(obj->last_modified);
    for (size_t i = 0; i < obj->nmeta; i++) {
        free((char *)obj->meta[i].name);
        free((char *)obj->meta[i].value);
    }
    free(obj->meta);
    memset(obj, 0, sizeof(*obj));
}

const char *s3_object_meta(const s3_object_t *obj, const char *name)
{
    for (size_t i = 0; i < obj->nmeta; i++)
        if (strcasecmp(obj->meta[i].name, name) == 0)
            return obj->meta[i].value;
    return NULL;
}

void s3_list_page_clear(s3_list_page_t *page)
{
    if (!page)
        return;
    for (size_t i = 0; i < page->nobjects; i++)
        s3_object_clear(&page->objects[i]);
    free(page->objects);
    for (size_t i = 0; i < page->nprefixes; i++)
        free(page->prefixes[i]);
    free(page->prefixes);
    free(page->next_token);
    memset(page, 0, sizeof(*page));
}

static int list_parse_object(const char *s, const char *e, s3_object_t *obj)
{
    bool oom = false;
    char *size;

    obj->key = xml_get(s, e, "Key", &oom);
    obj->etag = xml_get(s, e, "ETag", &oom);
    obj->last_modified = xml_get(s, e, "LastModified", &oom);
    size = xml_get(s, e, "Size", &oom);
    obj->size = size ? strtoll(size, NULL, 10) : -1;
    free(size);
    if (oom)
        return -ENOMEM;
    return obj->key ? 0 : -EINVAL;
}

int s3_list_parse(const char *xml, size_t len, s3_list_page_t *page)
{
    const char *end = xml + len, *p, *s, *e, *next;
    bool oom = false;
    char *truncated;
    int r;

    memset(page, 0, sizeof(*page));
    if (!xml || !memmem(xml, len, "<ListBucketResult", 17))
        return -EINVAL;
    for (p = xml; xml_find(p, end, "Contents", &s, &e, &next); p = next) {
        s3_object_t *objs = realloc(page->objects, (page->nobjects + 1) * sizeof(*objs));

        if (!objs)
            goto oom;
        page->objects = objs;
        memset(&objs[page->nobjects], 0, sizeof(*objs));
        r = list_parse_object(s, e, &objs[page->nobjects]);
        page->nobjects++;
        if (r < 0)
            goto fail_r;
    }
    for (p = xml; xml_find(p, end, "CommonPrefixes", &s, &e, &next); p = next) {
        char **prefixes = realloc(page->prefixes, (page->nprefixes + 1) * sizeof(*prefixes));
        char *prefix;

        if (!prefixes)
            goto oom;
        page->prefixes = prefixes;
        if (!(prefix = xml_get(s, e, "Prefix", &oom))) {
            if (oom)
                goto oom;
            continue;
        }
        page->prefixes[page->nprefixes++] = prefix;
    }
    truncated = xml_get(xml, end, "IsTruncated", &oom);
    page->truncated = truncated && strcmp(truncated, "true") == 0;
    free(truncated);
    page->next_token = xml_get(xml, end, "NextContinuationToken", &oom);
    if (oom)
        goto oom;
    if (page->truncated && (!page->next_token || !*page->next_token)) {
        r = -EINVAL; /* no way to ask for the next page */
        goto fail_r;
    }
    return 0;
oom:
    r = -ENOMEM;
fail_r:
    s3_list_page_clear(page);
    return r;
}

/* ---- retry policy ------------------------------------------------------------------------- */

static s3_retry_t retry_resolve(const s3_retry_t *retry)
{
    s3_retry_t r = retry ? *retry : (s3_retry_t){0};

    if (r.max_attempts <= 0)
        r.max_attempts = DEFAULT_ATTEMPTS;
    if (r.base_ms <= 0)
        r.base_ms = DEFAULT_BASE_MS;
    if (r.max_ms <= 0)
        r.max_ms = DEFAULT_MAX_MS;
    if (r.max_ms < r.base_ms)
        r.max_ms = r.base_ms;
    return r;
}

bool s3_retry_should(long status, const char *code)
{
    if (status == 0 || status >= 500 || status == 429 || status == 408)
        return true;
    /* S3 also sends these with a 400 or 503. */
    return code &&
           (strcmp(code, "SlowDown") == 0 || strcmp(code, "RequestTimeout") == 0 ||
            strcmp(code, "InternalError") == 0 || strcmp(code, "RequestTimeTooSkewed") == 0);
}

int s3_retry_delay_ms(const s3_retry_t *retry, int attempt, uint32_t random)
{
    s3_retry_t r = retry_resolve(retry);
    int64_t d = r.base_ms;

    for (int i = 1; i < attempt && d < r.max_ms; i++)
        d *= 2;
    if (d > r.max_ms)
        d = r.max_ms;
    return (int)(d / 2 + (int64_t)(random % (uint32_t)(d - d / 2 + 1)));
}

/* ---- requests ----------------------------------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *opaque)
{
    s3_resp_t *resp = opaque;

    if (buf_append(&resp->body, data, size * nmemb) < 0) {
        resp->oom = 1;
        return 0;
    }
    return size * nmemb;
}

static size_t on_upload(char *dst, size_t size, size_t nmemb, void *opaque)
{
    s3_upload_t *up = opaque;
    size_t n = size * nmemb;

    if (n > up->len - up->pos)
        n = up->len - up->pos;
    memcpy(dst, up->data + up->pos, n);
    up->pos += n;
    return n;
}

static int on_seek(void *opaque, curl_off_t offset, int origin)
{
    s3_upload_t *up = opaque;

    if (origin != SEEK_SET || offset < 0 || (size_t)offset > up->len)
        return CURL_SEEKFUNC_CANTSEEK;
    up->pos = (size_t)offset;
    return CURL_SEEKFUNC_OK;
}

static char *header_value(const char *start, const char *end)
{
    while (start < end && (*start == ' ' || *start == '\t'))
        start++;
    while (end > start && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    return strndup(start, (size_t)(end - start));
}

static int obj_meta_add(s3_object_t *obj, const char *name, size_t nlen, const char *vs,
                        const char *ve)
{
    s3_meta_t *meta = realloc(obj->meta, (obj->nmeta + 1) * sizeof(*meta));
    char *n, *v;

    if (!meta)
        return -ENOMEM;
    obj->meta = meta;
    n = strndup(name, nlen);
    v = header_value(vs, ve);
    if (!n || !v) {
        free(n);
        free(v);
        return -ENOMEM;
    }
    for (char *c = n; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    obj->meta[obj->nmeta++] = (s3_meta_t){n, v};
    return 0;
}

/* Forgets the headers of an earlier response (a 100 Continue, a failed attempt); keeps the key. */
static void obj_reset(s3_object_t *obj)
{
    char *key = obj->key;

    obj->key = NULL;
    s3_object_clear(obj);
    obj->key = key;
    obj->size = -1;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *opaque)
{
    s3_resp_t *resp = opaque;
    size_t n = size * nmemb;
    const char *end = data + n, *colon = memchr(data, ':', n);
    s3_object_t *obj = resp->obj;
    size_t nlen;
    char **slot = NULL;

    if (!obj)
        return n;
    if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        obj_reset(obj);
        return n;
    }
    if (!colon)
        return n;
    nlen = (size_t)(colon - data);
    if (nlen == 4 && strncasecmp(data, "etag", 4) == 0) {
        slot = &obj->etag;
    } else if (nlen == 13 && strncasecmp(data, "last-modified", 13) == 0) {
        slot = &obj->last_modified;
    } else if (nlen == 14 && strncasecmp(data, "content-length", 14) == 0) {
        obj->size = strtoll(colon + 1, NULL, 10);
    } else if (nlen > 11 && strncasecmp(data, "x-amz-meta-", 11) == 0) {
        if (obj_meta_add(obj, data + 11, nlen - 11, colon + 1, end) < 0)
            resp->oom = 1;
    }
    if (slot) {
        free(*slot);
        if (!(*slot = header_value(colon + 1, end)))
            resp->oom = 1;
    }
    return n;
}

static int curl_errno(CURLcode code)
{
    switch (code) {
    case CURLE_COULDNT_CONNECT:
        return -ECONNREFUSED;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return -EHOSTUNREACH;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    default:
        return -EIO;
    }
}

/* Transport errors that no retry can fix (a malformed URL, an unsupported scheme). */
static bool curl_permanent(CURLcode code)
{
    return code == CURLE_URL_MALFORMAT || code == CURLE_UNSUPPORTED_PROTOCOL ||
           code == CURLE_NOT_BUILT_IN || code == CURLE_OUT_OF_MEMORY;
}

static int status_errno(long status, const char *code)
{
    if (status == 404)
        return -ENOENT;
    if (status == 403 || status == 401)
        return -EACCES;
    if (status == 409 &&
        (strcmp(code, "BucketAlreadyOwnedByYou") == 0 || strcmp(code, "BucketAlreadyExists") == 0))
        return -EEXIST;
    if (status >= 400 && status < 500)
        return -EINVAL;
    return -EIO;
}

static struct curl_slist *headers_build(const s3_req_t *req, char *hash)
{
    struct curl_slist *h = NULL, *t;
    char line[1024];

    snprintf(line, sizeof(line), "x-amz-content-sha256: %s", hash);
    if (!(h = curl_slist_append(NULL, line)))
        return NULL;
#define ADD(...)                                   \
    do {                                           \
        snprintf(line, sizeof(line), __VA_ARGS__); \
        if (!(t = curl_slist_append(h, line)))     \
            goto oom;                              \
        h = t;                                     \
    } while (0)
    if (strcmp(req->method, "PUT") == 0) {
        ADD("Content-Type: %s", req->content_type ? req->content_type : "application/octet-stream");
        ADD("Expect:"); /* no 100-continue round trip: the body is small and retried anyway */
    }
    for (size_t i = 0; i < req->nmeta; i++)
        ADD("x-amz-meta-%s: %s", req->meta[i].name, req->meta[i].value);
#undef ADD
    return h;
oom:
    curl_slist_free_all(h);
    return NULL;
}

static char *url_build(s3_client_t *s3, const s3_req_t *req)
{
    char *key = req->key ? s3_uri_encode(req->key, true) : NULL;
    char *url = NULL;

    if (req->key && !key)
        return NULL;
    if (asprintf(&url, "%s/%s%s%s%s%s", s3->endpoint, s3->bucket_enc, key ? "/" : "",
                 key ? key : "", req->query ? "?" : "", req->query ? req->query : "") < 0)
        url = NULL;
    free(key);
    return url;
}

/* What the request was, for messages: "PUT bucket/key". */
static void req_name(s3_client_t *s3, const s3_req_t *req, char *buf, size_t size)
{
    snprintf(buf, size, "%s %s%s%s", req->method, s3->bucket, req->key ? "/" : "",
             req->key ? req->key : "");
}

/* Runs one request with retries. On 2xx returns 0 with the answer in @resp (body and, for HEAD,
 * headers); otherwise a negative errno with s3->errmsg set. */
static int s3_request(s3_client_t *s3, const s3_req_t *req, s3_resp_t *resp)
{
    char hash[65], what[384], code[128] = "", message[256] = "", cerr[CURL_ERROR_SIZE];
    struct curl_slist *headers = NULL;
    char *url = NULL;
    int attempt, r = -EIO;

    if (req->body)
        sha256_hex(req->body, req->body_len, hash);
    else
        snprintf(hash, sizeof(hash), "%s", SHA256_EMPTY);
    req_name(s3, req, what, sizeof(what));
    url = url_build(s3, req);
    headers = headers_build(req, hash);
    if (!url || !headers) {
        set_err(s3, "%s: out of memory", what);
        r = -ENOMEM;
        goto out;
    }

    for (attempt = 1; attempt <= s3->retry.max_attempts; attempt++) {
        s3_upload_t up = {req->body, req->body_len, 0};
        CURLcode cc;

        if (attempt > 1)
            sleep_ms(s3_retry_delay_ms(&s3->retry, attempt - 1, rand_next(s3)));
        resp->body.len = 0;
        resp->status = 0;
        if (resp->obj)
            obj_reset(resp->obj);
        cerr[0] = '\0';
        curl_easy_reset(s3->curl);
        curl_easy_setopt(s3->curl, CURLOPT_URL, url);
        curl_easy_setopt(s3->curl, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(s3->curl, CURLOPT_AWS_SIGV4, s3->sigv4);
        curl_easy_setopt(s3->curl, CURLOPT_USERPWD, s3->userpwd);
        curl_easy_setopt(s3->curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(s3->curl, CURLOPT_TIMEOUT_MS, (long)s3->timeout_ms);
        curl_easy_setopt(s3->curl, CURLOPT_CONNECTTIMEOUT_MS, (long)s3->connect_timeout_ms);
        curl_easy_setopt(s3->curl, CURLOPT_ERRORBUFFER, cerr);
        curl_easy_setopt(s3->curl, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(s3->curl, CURLOPT_WRITEDATA, resp);
        curl_easy_setopt(s3->curl, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(s3->curl, CURLOPT_HEADERDATA, resp);
        if (strcmp(req->method, "HEAD") == 0) {
            curl_easy_setopt(s3->curl, CURLOPT_NOBODY, 1L);
        } else if (strcmp(req->method, "PUT") == 0) {
            curl_easy_setopt(s3->curl, CURLOPT_UPLOAD, 1L);
            curl_easy_setopt(s3->curl, CURLOPT_READFUNCTION, on_upload);
            curl_easy_setopt(s3->curl, CURLOPT_READDATA, &up);
            curl_easy_setopt(s3->curl, CURLOPT_SEEKFUNCTION, on_seek);
            curl_easy_setopt(s3->curl, CURLOPT_SEEKDATA, &up);
            curl_easy_setopt(s3->curl, CURLOPT_INFILESIZE_LARGE, (curl_off_t)req->body_len);
        }

        cc = curl_easy_perform(s3->curl);
        if (resp->oom) {
            set_err(s3, "%s: out of memory", what);
            r = -ENOMEM;
            goto out;
        }
        if (cc != CURLE_OK) {
            set_err(s3, "%s: %s: %s (attempt %d of %d)", what, s3->endpoint,
                    cerr[0] ? cerr : curl_easy_strerror(cc), attempt, s3->retry.max_attempts);
            r = curl_errno(cc);
            if (curl_permanent(cc))
                goto out;
            continue;
        }
        curl_easy_getinfo(s3->curl, CURLINFO_RESPONSE_CODE, &resp->status);
        if (resp->status >= 200 && resp->status < 300) {
            r = 0;
            goto out;
        }
        s3_error_parse(resp->body.data, resp->body.len, code, sizeof(code), message,
                       sizeof(message));
        if (!code[0] && resp->status == 404)
            snprintf(code, sizeof(code), "%s", req->key ? "NoSuchKey" : "NoSuchBucket");
        set_err(s3, "%s: HTTP %ld%s%s%s%s (attempt %d of %d)", what, resp->status,
                code[0] ? " " : "", code, message[0] ? ": " : "", message, attempt,
                s3->retry.max_attempts);
        r = status_errno(resp->status, code);
        if (!s3_retry_should(resp->status, code))
            goto out;
    }
out:
    curl_slist_free_all(headers);
    free(url);
    return r;
}

/* ---- public operations ---------------------------------------------------------------------- */

int s3_client_new(const s3_conf_t *conf, s3_client_t **ret_client, char *errbuf, size_t errsize)
{
    s3_client_t *s3;
    size_t n;

    if (!conf->endpoint || !*conf->endpoint || !conf->bucket || !*conf->bucket ||
        !conf->access_key || !*conf->access_key || !conf->secret_key || !*conf->secret_key) {
        snprintf(errbuf, errsize, "S3: endpoint, bucket, access key and secret key are required");
        return -EINVAL;
    }
    if (strncmp(conf->endpoint, "http://", 7) != 0 && strncmp(conf->endpoint, "https://", 8) != 0) {
        snprintf(errbuf, errsize, "S3 endpoint '%s' is not an http:// or https:// URL",
                 conf->endpoint);
        return -EINVAL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(s3 = calloc(1, sizeof(*s3)))) {
        snprintf(errbuf, errsize, "out of memory");
        return -ENOMEM;
    }
    s3->endpoint = strdup(conf->endpoint);
    s3->region = strdup(conf->region && *conf->region ? conf->region : DEFAULT_REGION);
    s3->bucket = strdup(conf->bucket);
    s3->bucket_enc = s3_uri_encode(conf->bucket, false);
    if (asprintf(&s3->userpwd, "%s:%s", conf->access_key, conf->secret_key) < 0)
        s3->userpwd = NULL;
    s3->curl = curl_easy_init();
    if (!s3->endpoint || !s3->region || !s3->bucket || !s3->bucket_enc || !s3->userpwd ||
        !s3->curl) {
        s3_client_free(s3);
        snprintf(errbuf, errsize, "out of memory");
        return -ENOMEM;
    }
    n = strlen(s3->endpoint);
    while (n > 0 && s3->endpoint[n - 1] == '/')
        s3->endpoint[--n] = '\0';
    snprintf(s3->sigv4, sizeof(s3->sigv4), "aws:amz:%s:s3", s3->region);
    s3->timeout_ms = conf->timeout_ms > 0 ? conf->timeout_ms : DEFAULT_TIMEOUT_MS;
    s3->connect_timeout_ms =
        conf->connect_timeout_ms > 0 ? conf->connect_timeout_ms : DEFAULT_CONNECT_MS;
    s3->retry_conf = s3->retry = retry_resolve(&conf->retry);
    s3->rand_state = (uint32_t)time(NULL) ^ ((uint32_t)getpid() << 16) ^ 0x5bd1e995u;
    *ret_client = s3;
    return 0;
}

void s3_client_free(s3_client_t *s3)
{
    if (!s3)
        return;
    if (s3->curl)
        curl_easy_cleanup(s3->curl);
    if (s3->userpwd) {
        explicit_bzero(s3->userpwd, strlen(s3->userpwd));
        free(s3->userpwd);
    }
    free(s3->endpoint);
    free(s3->region);
    free(s3->bucket);
    free(s3->bucket_enc);
    free(s3);
}

const char *s3_errmsg(const s3_client_t *s3)
{
    return s3->errmsg;
}

void s3_client_set_retry(s3_client_t *s3, const s3_retry_t *retry)
{
    s3->retry = retry ? retry_resolve(retry) : s3->retry_conf;
}

int s3_put(s3_client_t *s3, const char *key, const void *data, size_t len, const char *content_type,
           const s3_meta_t *meta, size_t nmeta)
{
    s3_resp_t resp = {0};
    int r = s3_request(s3,
                       &(s3_req_t){.method = "PUT",
                                   .key = key,
                                   .body = data ? data : "",
                                   .body_len = len,
                                   .content_type = content_type,
                                   .meta = meta,
                                   .nmeta = nmeta},
                       &resp);

    free(resp.body.data);
    return r;
}

int s3_get(s3_client_t *s3, const char *key, char **ret_data, size_t *ret_len)
{
    s3_resp_t resp = {0};
    int r = s3_request(s3, &(s3_req_t){.method = "GET", .key = key}, &resp);

    if (r == 0 && !resp.body.data && buf_append(&resp.body, "", 0) < 0)
        r = -ENOMEM;
    if (r < 0) {
        free(resp.body.data);
        return r;
    }
    *ret_data = resp.body.data;
    *ret_len = resp.body.len;
    return 0;
}

int s3_head(s3_client_t *s3, const char *key, s3_object_t *ret_obj)
{
    s3_resp_t resp = {0};
    int r;

    memset(ret_obj, 0, sizeof(*ret_obj));
    resp.obj = ret_obj;
    r = s3_request(s3, &(s3_req_t){.method = "HEAD", .key = key}, &resp);
    free(resp.body.data);
    if (r == 0 && !(ret_obj->key = strdup(key)))
        r = -ENOMEM;
    if (r < 0)
        s3_object_clear(ret_obj);
    return r;
}

int s3_bucket_head(s3_client_t *s3)
{
    s3_resp_t resp = {0};
    int r = s3_request(s3, &(s3_req_t){.method = "HEAD"}, &resp);

    free(resp.body.data);
    return r;
}

int s3_bucket_create(s3_client_t *s3)
{
    s3_resp_t resp = {0};
    char *body = NULL;
    int r;

    /* us-east-1 is the default location and must not be named (S3 refuses it). */
    if (strcmp(s3->region, DEFAULT_REGION) != 0 &&
        asprintf(&body,
                 "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                 "<LocationConstraint>%s</LocationConstraint></CreateBucketConfiguration>",
                 s3->region) < 0)
        return -ENOMEM;
    r = s3_request(s3,
                   &(s3_req_t){.method = "PUT",
                               .body = body ? body : "",
                               .body_len = body ? strlen(body) : 0,
                               .content_type = body ? "application/xml" : NULL},
                   &resp);
    free(resp.body.data);
    free(body);
    return r;
}

int s3_bucket_ensure(s3_client_t *s3)
{
    int r = s3_bucket_head(s3);

    if (r != -ENOENT)
        return r;
    r = s3_bucket_create(s3);
    return r == -EEXIST ? 0 : r; /* created meanwhile by someone else */
}

/* Appends "&name=value" (no '&' first) with @value percent-encoded. */
static int query_add(s3_buf_t *q, const char *name, const char *value)
{
    char *enc = s3_uri_encode(value, false);
    int r = -ENOMEM;

    if (enc && (q->len == 0 || buf_append(q, "&", 1) == 0) &&
        buf_append(q, name, strlen(name)) == 0 && buf_append(q, "=", 1) == 0 &&
        buf_append(q, enc, strlen(enc)) == 0)
        r = 0;
    free(enc);
    return r;
}

int s3_list(s3_client_t *s3, const char *prefix, const char *delimiter, s3_list_fn fn, void *opaque)
{
    s3_buf_t query = {0};
    char *token = NULL;
    int r;

    for (;;) {
        s3_resp_t resp = {0};
        s3_list_page_t page;

        /* libcurl 7.88 signs the query as written: parameters sorted by name, values encoded. */
        query.len = 0;
        r = -ENOMEM;
        if ((token && query_add(&query, "continuation-token", token) < 0) ||
            (delimiter && query_add(&query, "delimiter", delimiter) < 0) ||
            query_add(&query, "list-type", "2") < 0 ||
            query_add(&query, "max-keys", LIST_MAX_KEYS) < 0 ||
            query_add(&query, "prefix", prefix ? prefix : "") < 0) {
            set_err(s3, "LIST %s: out of memory", s3->bucket);
            goto out;
        }
        r = s3_request(s3, &(s3_req_t){.method = "GET", .query = query.data}, &resp);
        if (r < 0) {
            free(resp.body.data);
            goto out;
        }
        r = s3_list_parse(resp.body.data, resp.body.len, &page);
        free(resp.body.data);
        if (r < 0) {
            set_err(s3, "GET %s?%s: the answer is not a ListObjectsV2 result", s3->bucket,
                    query.data);
            r = r == -ENOMEM ? r : -EIO;
            goto out;
        }
        for (size_t i = 0; i < page.nobjects && r == 0; i++)
            r = fn(opaque, &page.objects[i], NULL);
        for (size_t i = 0; i < page.nprefixes && r == 0; i++)
            r = fn(opaque, NULL, page.prefixes[i]);
        free(token);
        token = page.truncated ? page.next_token : NULL;
        page.next_token = NULL;
        s3_list_page_clear(&page);
        if (r != 0 || !token)
            goto out;
    }
out:
    free(token);
    free(query.data);
    return r;
}
