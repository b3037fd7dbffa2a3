/* keys.c: API key lookups by prefix, and the cache in front of them.
 *
 * The cache holds what the database said (including "no such key") for key_cache_ttl_ms, so a
 * device posting every second costs one query per TTL, and a flood of requests with an unknown
 * prefix costs one query per prefix and TTL. It never holds a verdict: the secret is checked
 * against the cached hash on every request, and expiry against the clock. A revoked key stops
 * working within one TTL.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "svc_log.h"
#include "svc_util.h"

typedef struct keycache_entry {
    struct keycache_entry *next;
    char prefix[GW_KEYCACHE_KEY_MAX + 1];
    int64_t stamp_ms;
    int64_t touched_ms; /* when gw_key_touch() last sent last_used_at; kept across refreshes */
    gw_key_t key;
} keycache_entry_t;

struct gw_keycache {
    pthread_mutex_t lock;
    int64_t ttl_ms;
    int64_t stale_ms; /* how long past the TTL an entry may serve while the database is down */
    size_t max_entries, count, nbuckets;
    keycache_entry_t **buckets;
};

int gw_keycache_new(int64_t ttl_ms, int64_t stale_ms, size_t max_entries, gw_keycache_t **ret_cache)
{
    gw_keycache_t *c = calloc(1, sizeof(*c));

    if (!c)
        return -ENOMEM;
    c->ttl_ms = ttl_ms;
    c->stale_ms = stale_ms;
    c->max_entries = max_entries;
    for (c->nbuckets = 64; c->nbuckets < max_entries / 2 && c->nbuckets < (1u << 20);)
        c->nbuckets *= 2;
    c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
    if (!c->buckets) {
        free(c);
        return -ENOMEM;
    }
    pthread_mutex_init(&c->lock, NULL);
    *ret_cache = c;
    return 0;
}

void gw_keycache_free(gw_keycache_t *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nbuckets; i++)
        for (keycache_entry_t *e = c->buckets[i], *next; e; e = next) {
            next = e->next;
            free(e);
        }
    pthread_mutex_destroy(&c->lock);
    free(c->buckets);
    free(c);
}

/* FNV-1a: prefixes are random base32, so anything cheap spreads them well. */
static size_t bucket_of(const gw_keycache_t *c, const char *prefix)
{
    uint32_t h = 2166136261u;

    for (const char *p = prefix; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return h & (c->nbuckets - 1);
}

static bool fresh(const gw_keycache_t *c, const keycache_entry_t *e, int64_t now_ms)
{
    return now_ms - e->stamp_ms < c->ttl_ms;
}

bool gw_keycache_get(gw_keycache_t *c, const char *prefix, int64_t now_ms, gw_key_t *ret_key)
{
    bool hit = false;

    pthread_mutex_lock(&c->lock);
    for (keycache_entry_t *e = c->buckets[bucket_of(c, prefix)]; e; e = e->next)
        if (strcmp(e->prefix, prefix) == 0) {
            hit = fresh(c, e, now_ms);
            if (hit)
                *ret_key = e->key;
            break;
        }
    pthread_mutex_unlock(&c->lock);
    return hit;
}

bool gw_keycache_get_stale(gw_keycache_t *c, const char *prefix, int64_t now_ms, int64_t max_age_ms,
                           gw_key_t *ret_key)
{
    bool hit = false;

    pthread_mutex_lock(&c->lock);
    for (keycache_entry_t *e = c->buckets[bucket_of(c, prefix)]; e; e = e->next)
        if (strcmp(e->prefix, prefix) == 0) {
            hit = now_ms - e->stamp_ms < max_age_ms;
            if (hit)
                *ret_key = e->key;
            break;
        }
    pthread_mutex_unlock(&c->lock);
    return hit;
}

/* Drops entries older than the TTL, except those still young enough to serve while the
 * database is unreachable (gw_keycache_get_stale()). */
static void sweep_locked(gw_keycache_t *c, int64_t now_ms)
{
    for (size_t i = 0; i < c->nbuckets; i++)
        for (keycache_entry_t **pe = &c->buckets[i]; *pe;) {
            keycache_entry_t *e = *pe;

            if (now_ms - e->stamp_ms < c->ttl_ms + c->stale_ms) {
                pe = &e->next;
                continue;
            }
            *pe = e->next;
            free(e);
            c->count--;
        }
}

void gw_keycache_put(gw_keycache_t *c, const char *prefix, const gw_key_t *key, int64_t now_ms)
{
    keycache_entry_t **head, *e;

    pthread_mutex_lock(&c->lock);
    head = &c->buckets[bucket_of(c, prefix)];
    for (e = *head; e; e = e->next)
        if (strcmp(e->prefix, prefix) == 0)
            break;
    if (!e) {
        if (c->count >= c->max_entries)
            sweep_locked(c, now_ms);
        /* Still full of fresh entries (a flood of distinct prefixes): serve this one uncached
         * rather than evict keys that real devices are using. */
        if (c->count >= c->max_entries || !(e = calloc(1, sizeof(*e))))
            goto out;
        snprintf(e->prefix, sizeof(e->prefix), "%s", prefix);
        e->next = *head;
        *head = e;
        c->count++;
    }
    e->key = *key;
    e->stamp_ms = now_ms;
out:
    pthread_mutex_unlock(&c->lock);
}

size_t gw_keycache_size(gw_keycache_t *c)
{
    size_t n;

    pthread_mutex_lock(&c->lock);
    n = c->count;
    pthread_mutex_unlock(&c->lock);
    return n;
}

unsigned gw_scopes_parse(const char *literal)
{
    static const struct {
        const char *name;
        unsigned bit;
    } scopes[] = {
        {"ingest", GW_SCOPE_INGEST}, {"orders", GW_SCOPE_ORDERS}, {"read", GW_SCOPE_READ}};
    unsigned bits = 0;
    const char *s = literal;

    /* The table's CHECK constraint limits elements to these bare words, so the literal never
     * holds quotes or escapes: "{ingest,read}". */
    if (*s == '{')
        s++;
    while (*s && *s != '}') {
        size_t n = strcspn(s, ",}");

        for (size_t i = 0; i < sizeof(scopes) / sizeof(scopes[0]); i++)
            if (strlen(scopes[i].name) == n && strncmp(s, scopes[i].name, n) == 0)
                bits |= scopes[i].bit;
        s += n;
        if (*s == ',')
            s++;
    }
    return bits;
}

#define KEY_LOOKUP "gw_key_lookup"

int gw_key_prepare(db_t *db)
{
    /* The gateway's role cannot read api_keys before it knows the caller's organization (RLS)
     * nor ever read secret_hash: sb_api_key_lookup() is the one SECURITY DEFINER door to it
     * (sql/0009_rls.sql). expires_us is epoch microseconds, so that expiry is checked against
     * the clock on every request, not only when the cache entry was filled. */
    return db_prepare(db, KEY_LOOKUP,
                      "SELECT secret_hash, org_id, project_id, scopes, revoked, expires_us, "
                      "rate_limit_per_s FROM sb_api_key_lookup($1)",
                      1);
}

int gw_key_fetch(db_t *db, const char *prefix, gw_key_t *ret_key)
{
    const char *params[] = {prefix};
    PGresult *res = NULL;
    int r;

    memset(ret_key, 0, sizeof(*ret_key));
    r = db_exec(db, KEY_LOOKUP, NULL, 1, params, &res);
    if (r < 0)
        return r;
    if (PQntuples(res) == 1) {
        ret_key->found = true;
        strncpy(ret_key->secret_hash, PQgetvalue(res, 0, 0), AUTH_KEY_HASH_HEX);
        strncpy(ret_key->org_id, PQgetvalue(res, 0, 1), sizeof(ret_key->org_id) - 1);
        strncpy(ret_key->project_id, PQgetvalue(res, 0, 2), sizeof(ret_key->project_id) - 1);
        ret_key->scopes = gw_scopes_parse(PQgetvalue(res, 0, 3));
        ret_key->revoked = PQgetvalue(res, 0, 4)[0] == 't';
        ret_key->expires_us =
            PQgetisnull(res, 0, 5) ? INT64_MAX : strtoll(PQgetvalue(res, 0, 5), NULL, 10);
        ret_key->rate_limit_per_s =
            PQgetisnull(res, 0, 6) ? 0 : strtoll(PQgetvalue(res, 0, 6), NULL, 10);
    }
    PQclear(res);
    return 0;
}

#define PROJECT_LOOKUP "gw_project_lookup"

int gw_project_prepare(db_t *db)
{
    /* Before the organization is known, like the key lookup (sql/0009_rls.sql). */
    return db_prepare(db, PROJECT_LOOKUP, "SELECT sb_project_org($1::uuid)", 1);
}

int gw_project_fetch(db_t *db, const char *project_id, gw_key_t *ret)
{
    const char *params[] = {project_id};
    PGresult *res = NULL;
    int r;

    memset(ret, 0, sizeof(*ret));
    r = db_exec(db, PROJECT_LOOKUP, NULL, 1, params, &res);
    if (r < 0)
        return r;
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
        ret->found = true;
        snprintf(ret->org_id, sizeof(ret->org_id), "%s", PQgetvalue(res, 0, 0));
        snprintf(ret->project_id, sizeof(ret->project_id), "%s", project_id);
    }
    PQclear(res);
    return 0;
}

/* ---- last_used_at ---------------------------------------------------------------------------- */

/* True when @prefix's cache entry was last touched @interval_ms ago or more (or never), and marks
 * it touched at @now_ms. False when it has no entry: a cache too full to hold the key skips the
 * update rather than sending one per request. */
static bool keycache_touch_due(gw_keycache_t *c, const char *prefix, int64_t now_ms,
                               int64_t interval_ms)
{
    bool due = false;

    pthread_mutex_lock(&c->lock);
    for (keycache_entry_t *e = c->buckets[bucket_of(c, prefix)]; e; e = e->next)
        if (strcmp(e->prefix, prefix) == 0) {
            due = e->touched_ms == 0 || now_ms - e->touched_ms >= interval_ms;
            if (due)
                e->touched_ms = now_ms;
            break;
        }
    pthread_mutex_unlock(&c->lock);
    return due;
}

static void key_touched(int err, PGresult *res, void *opaque)
{
    (void)opaque;
    if (err < 0 && err != -ECANCELED)
        log_warn("cannot record an API key's last use: %s",
                 res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : strerror(-err));
    PQclear(res);
}

/* The database keeps the minute-granularity too, so that every gateway process and loop together
 * write a key's row at most once a minute. */
#define KEY_TOUCH_SQL                                             \
    "UPDATE api_keys SET last_used_at = now() WHERE prefix = $1 " \
    "AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')"

void gw_key_touch(gw_loop_t *loop, const char *org_id, const char *prefix)
{
    const char *params[] = {prefix};
    int rc;

    if (!keycache_touch_due(loop->gw->keys, prefix, svc_now_ms(), GW_KEY_TOUCH_INTERVAL_MS))
        return;
    rc = db_pool_query_as(loop->pool, org_id, KEY_TOUCH_SQL, 1, params, key_touched, NULL,
                          GW_DB_TIMEOUT_MS);
    if (rc < 0)
        log_warn("cannot record an API key's last use: %s", strerror(-rc));
}
