/* body.c: request bodies of POST /sensors/data, decoded and validated before anything is
 * produced. A batch is all or nothing: one bad record rejects the request, and the answer names
 * every bad record so that a device can fix them all in one round trip. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gateway.h"

/* Compares the media type (before any ';' parameters, surrounding blanks ignored) with @want. */
static bool media_type_is(const char *content_type, const char *want)
{
    const char *s = content_type, *end;
    size_t n = strlen(want);

    while (*s == ' ' || *s == '\t')
        s++;
    end = s + strcspn(s, ";");
    while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    return (size_t)(end - s) == n && strncasecmp(s, want, n) == 0;
}

int gw_body_format(const char *content_type, gw_body_format_t *ret_format, gw_problem_t *problem)
{
    /* A client that sends no Content-Type at all almost always means JSON; curl's default
     * (application/x-www-form-urlencoded) is refused below, with the accepted types named. */
    if (!content_type || content_type[strspn(content_type, " \t")] == '\0' ||
        media_type_is(content_type, "application/json")) {
        *ret_format = GW_BODY_JSON;
        return 0;
    }
    if (media_type_is(content_type, "application/x-ndjson")) {
        *ret_format = GW_BODY_NDJSON;
        return 0;
    }
    gw_problem_set(problem, 415, "unsupported-media-type",
                   "Content-Type must be application/json (one reading or an array of readings) "
                   "or application/x-ndjson (one reading per line)");
    return -EPROTONOSUPPORT;
}

static bool blank(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return false;
    return true;
}

static void too_many(gw_problem_t *problem, size_t max_batch)
{
    gw_problem_set(problem, 413, "batch-too-large",
                   "a request may carry at most %zu readings; split the batch", max_batch);
}

static int decode_json(gw_batch_t *batch, const char *buf, size_t len, size_t max_batch,
                       gw_problem_t *problem)
{
    json_error_t jerr;
    json_t *root = json_loadb(buf, len, CONTRACT_JSON_DECODE_FLAGS, &jerr);

    if (!root) {
        gw_problem_set(problem, 400, "malformed-json", "invalid JSON at line %d, column %d: %s",
                       jerr.line, jerr.column, jerr.text);
        return -EINVAL;
    }
    if (!json_is_array(root)) {
        /* One document. With JSON_DECODE_ANY a scalar gets here too, and the validator answers
         * "must be an object" for it. */
        batch->docs = json_array();
        if (!batch->docs || json_array_append_new(batch->docs, root) < 0) {
            json_decref(batch->docs);
            batch->docs = NULL;
            return -ENOMEM;
        }
        batch->single = true;
        return 0;
    }
    batch->docs = root;
    if (json_array_size(root) > max_batch) {
        too_many(problem, max_batch);
        return -EINVAL;
    }
    return 0;
}

static int decode_ndjson(gw_batch_t *batch, const char *buf, size_t len, size_t max_batch,
                         gw_problem_t *problem)
{
    const char *end = buf + len;
    size_t lineno = 0;

    batch->docs = json_array();
    if (!batch->docs)
        return -ENOMEM;
    for (const char *line = buf; line < end;) {
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        size_t n = (size_t)((nl ? nl : end) - line);
        json_error_t jerr;
        json_t *doc;

        lineno++;
        if (!blank(line, n)) {
            if (json_array_size(batch->docs) == max_batch) {
                too_many(problem, max_batch);
                return -EINVAL;
            }
            doc = json_loadb(line, n, CONTRACT_JSON_DECODE_FLAGS, &jerr);
            if (!doc) {
                gw_problem_set(problem, 400, "malformed-json",
                               "invalid JSON on line %zu, column %d: %s", lineno, jerr.column,
                               jerr.text);
                return -EINVAL;
            }
            if (json_array_append_new(batch->docs, doc) < 0)
                return -ENOMEM;
        }
        line += n + 1;
    }
    return 0;
}

/* Validates every document, collecting up to GW_MAX_ERRORS violations. */
static int validate(gw_batch_t *batch, gw_problem_t *problem)
{
    size_t n = json_array_size(batch->docs), invalid = 0;
    json_t *errors = NULL;
    char first[300] = "";

    batch->readings = calloc(n, sizeof(*batch->readings));
    errors = json_array();
    if (!batch->readings || !errors)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        contract_error_t cerr;
        char pointer[160];
        json_t *e;

        if (contract_reading_validate(json_array_get(batch->docs, i), &batch->readings[i], &cerr) ==
            0)
            continue;
        if (invalid++ >= GW_MAX_ERRORS)
            continue;
        if (invalid == 1)
            snprintf(first, sizeof(first), "%s: %s", cerr.pointer[0] ? cerr.pointer : "(root)",
                     cerr.reason);
        /* The pointer addresses the request body: a bare object is the root, an array (and
         * an NDJSON stream, read as one) holds record i at /i. */
        if (batch->single)
            snprintf(pointer, sizeof(pointer), "%s", cerr.pointer);
        else
            snprintf(pointer, sizeof(pointer), "/%zu%s", i, cerr.pointer);
        e = json_pack("{s:I, s:s, s:s}", "index", (json_int_t)i, "pointer", pointer, "reason",
                      cerr.reason);
        if (!e || json_array_append_new(errors, e) < 0)
            goto nomem;
    }
    if (invalid == 0) {
        json_decref(errors);
        batch->n = n;
        return 0;
    }
    if (n == 1)
        gw_problem_set(problem, 422, "invalid-reading",
                       "the reading does not match sensor_reading.v1 (%s); nothing was accepted",
                       first);
    else
        gw_problem_set(problem, 422, "invalid-reading",
                       "%zu of %zu readings do not match sensor_reading.v1%s; nothing was "
                       "accepted",
                       invalid, n, invalid > GW_MAX_ERRORS ? " (the first 100 are listed)" : "");
    problem->errors = errors;
    return -EINVAL;
nomem:
    json_decref(errors);
    return -ENOMEM;
}

int gw_batch_parse(gw_batch_t *batch, const char *buf, size_t len, gw_body_format_t format,
                   size_t max_batch, gw_problem_t *problem)
{
    int r;

    memset(batch, 0, sizeof(*batch));
    if (blank(buf, len)) {
        gw_problem_set(problem, 400, "malformed-json",
                       "the request body is empty: send a JSON reading, an array of readings "
                       "or NDJSON");
        return -EINVAL;
    }
    r = format == GW_BODY_NDJSON ? decode_ndjson(batch, buf, len, max_batch, problem)
                                 : decode_json(batch, buf, len, max_batch, problem);
    if (r < 0)
        goto fail;
    if (json_array_size(batch->docs) == 0) {
        gw_problem_set(problem, 422, "invalid-body", "the request holds no readings");
        r = -EINVAL;
        goto fail;
    }
    r = validate(batch, problem);
    if (r < 0)
        goto fail;
    return 0;
fail:
    gw_batch_clear(batch);
    return r;
}

void gw_batch_clear(gw_batch_t *batch)
{
    json_decref(batch->docs);
    free(batch->readings);
    memset(batch, 0, sizeof(*batch));
}
