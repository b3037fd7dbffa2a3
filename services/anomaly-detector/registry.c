/* registry.c: registered sensors and per-type thresholds from PostgreSQL (see registry.h). */
#include "registry.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS_MIN 256

typedef struct reg_entry reg_entry_t;
struct reg_entry {
    reg_entry_t *next;
    uint64_t hash;
    registry_sensor_t s;
    size_t project_len, sensor_len;
    char key[]; /* project '\0' sensor '\0' */
};

struct registry {
    reg_entry_t **buckets;
    size_t nbuckets, count;
};

static uint64_t key_hash(const char *project, size_t plen, const char *sensor, size_t slen)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i <= plen; i++)
        h = (h ^ (unsigned char)project[i]) * 0x100000001b3ULL;
    for (size_t i = 0; i < slen; i++)
        h = (h ^ (unsigned char)sensor[i]) * 0x100000001b3ULL;
    return h;
}

int registry_new(registry_t **ret_reg)
{
    registry_t *reg = calloc(1, sizeof(*reg));
    if (!reg)
        return -ENOMEM;
    reg->nbuckets = BUCKETS_MIN;
    if (!(reg->buckets = calloc(reg->nbuckets, sizeof(*reg->buckets)))) {
        free(reg);
        return -ENOMEM;
    }
    *ret_reg = reg;
    return 0;
}

static void registry_clear(registry_t *reg)
{
    for (size_t i = 0; i < reg->nbuckets; i++)
        for (reg_entry_t *e = reg->buckets[i], *next; e; e = next) {
            next = e->next;
            free(e);
        }
    memset(reg->buckets, 0, reg->nbuckets * sizeof(*reg->buckets));
    reg->count = 0;
}

void registry_free(registry_t *reg)
{
    if (!reg)
        return;
    registry_clear(reg);
    free(reg->buckets);
    free(reg);
}

size_t registry_count(const registry_t *reg)
{
    return reg->count;
}

static reg_entry_t *entry_find(const registry_t *reg, const char *project, const char *sensor,
                               uint64_t *ret_hash)
{
    size_t plen = strlen(project), slen = strlen(sensor);
    uint64_t h = key_hash(project, plen, sensor, slen);
    if (ret_hash)
        *ret_hash = h;
    for (reg_entry_t *e = reg->buckets[h & (reg->nbuckets - 1)]; e; e = e->next)
        if (e->hash == h && e->project_len == plen && e->sensor_len == slen &&
            !memcmp(e->key, project, plen) && !memcmp(e->key + plen + 1, sensor, slen))
            return e;
    return NULL;
}

const registry_sensor_t *registry_get(const registry_t *reg, const char *project,
                                      const char *sensor)
{
    reg_entry_t *e = entry_find(reg, project, sensor, NULL);
    return e ? &e->s : NULL;
}

/* Doubles the table when the load passes 1; a failed grow only makes chains longer. */
static void buckets_grow(registry_t *reg)
{
    size_t n = reg->nbuckets * 2;
    reg_entry_t **b = calloc(n, sizeof(*b));
    if (!b)
        return;
    for (size_t i = 0; i < reg->nbuckets; i++)
        for (reg_entry_t *e = reg->buckets[i], *next; e; e = next) {
            next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    free(reg->buckets);
    reg->buckets = b;
    reg->nbuckets = n;
}

int registry_put(registry_t *reg, const char *project, const char *sensor, const char *type,
                 double min, double max)
{
    uint64_t h;
    reg_entry_t *e = entry_find(reg, project, sensor, &h);

    if (type && strlen(type) > REGISTRY_TYPE_MAX)
        return -EINVAL;
    if (!e) {
        size_t plen = strlen(project), slen = strlen(sensor);
        if (!(e = calloc(1, sizeof(*e) + plen + slen + 2)))
            return -ENOMEM;
        e->hash = h;
        e->project_len = plen;
        e->sensor_len = slen;
        memcpy(e->key, project, plen + 1);
        memcpy(e->key + plen + 1, sensor, slen + 1);
        if (reg->count >= reg->nbuckets)
            buckets_grow(reg);
        e->next = reg->buckets[h & (reg->nbuckets - 1)];
        reg->buckets[h & (reg->nbuckets - 1)] = e;
        reg->count++;
    }
    e->s.registered = type != NULL;
    snprintf(e->s.type, sizeof(e->s.type), "%s", type ? type : "");
    /* An infinite limit (PostgreSQL allows it) is no limit. */
    e->s.min = type && isfinite(min) ? min : NAN;
    e->s.max = type && isfinite(max) ? max : NAN;
    return 0;
}

static double pg_double(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NAN : strtod(PQgetvalue(res, row, col), NULL);
}

/* Enters the rows (project_id, id, type, min_value, max_value) of @res. */
static int put_rows(registry_t *reg, const PGresult *res)
{
    for (int i = 0; i < PQntuples(res); i++) {
        int r = registry_put(reg, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                             PQgetvalue(res, i, 2), pg_double(res, i, 3), pg_double(res, i, 4));
        if (r < 0)
            return r;
    }
    return 0;
}

int registry_load(registry_t *reg, db_t *db)
{
    registry_t *fresh = NULL;
    PGresult *res = NULL;
    int r;

    if ((r = db_exec(db, NULL,
                     "SELECT project_id::text, id, type, min_value, max_value FROM sensors", 0,
                     NULL, &res)) < 0)
        return r;
    if ((r = registry_new(&fresh)) < 0 || (r = put_rows(fresh, res)) < 0)
        goto done;
    /* Swap the contents, so that the caller's pointer stays valid. */
    registry_t old = *reg;
    *reg = *fresh;
    *fresh = old;

done:
    registry_free(fresh);
    PQclear(res);
    return r;
}

/* A PostgreSQL array literal of double-quoted text elements, built up element by element. */
typedef struct pg_array {
    char *buf;
    size_t len, cap;
} pg_array_t;

static int pg_array_add(pg_array_t *a, const char *s)
{
    size_t need = a->len + 2 * strlen(s) + 6; /* '{' or ',', quotes, '}', NUL */
    if (need > a->cap) {
        size_t cap = a->cap ? a->cap : 1024;
        while (cap < need)
            cap *= 2;
        char *b = realloc(a->buf, cap);
        if (!b)
            return -ENOMEM;
        a->buf = b;
        a->cap = cap;
    }
    char *w = a->buf + a->len;
    *w++ = a->len ? ',' : '{';
    *w++ = '"';
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            *w++ = '\\';
        *w++ = *s;
    }
    *w++ = '"';
    a->len = (size_t)(w - a->buf);
    memcpy(w, "}", 2); /* always a complete literal; the next element overwrites the brace */
    return 0;
}

int registry_fetch(registry_t *reg, db_t *db, const char *const *projects,
                   const char *const *sensors, size_t n)
{
    pg_array_t pa = {0}, sa = {0};
    PGresult *res = NULL;
    int r = 0;

    if (n == 0)
        return 0;
    for (size_t i = 0; i < n && r == 0; i++)
        if (pg_array_add(&pa, projects[i]) < 0 || pg_array_add(&sa, sensors[i]) < 0)
            r = -ENOMEM;
    if (r < 0)
        goto done;

    const char *params[] = {pa.buf, sa.buf};
    r = db_exec(db, NULL,
                "SELECT s.project_id::text, s.id, s.type, s.min_value, s.max_value FROM sensors s "
                "JOIN unnest($1::uuid[], $2::text[]) AS k(project_id, id) "
                "ON s.project_id = k.project_id AND s.id = k.id",
                2, params, &res);
    if (r < 0)
        goto done;
    /* Negative entries first, then the registered ones overwrite theirs. */
    for (size_t i = 0; i < n && r == 0; i++)
        if (!registry_get(reg, projects[i], sensors[i]))
            r = registry_put(reg, projects[i], sensors[i], NULL, NAN, NAN);
    if (r == 0)
        r = put_rows(reg, res);

done:
    PQclear(res);
    free(pa.buf);
    free(sa.buf);
    return r;
}

/* ---- Thresholds ------------------------------------------------------------------------------ */

void registry_thresholds_clear(registry_thresholds_t *t)
{
    for (size_t i = 0; t->types && i < t->conf.ntypes; i++)
        free((char *)t->types[i].type);
    free(t->types);
    *t = (registry_thresholds_t){0};
}

static bool type_conf_equal(const detector_type_conf_t *a, const detector_type_conf_t *b)
{
    return a->alpha == b->alpha && a->z == b->z && a->warmup == b->warmup &&
           a->max_rate == b->max_rate && a->min_stddev == b->min_stddev;
}

bool registry_thresholds_equal(const registry_thresholds_t *a, const registry_thresholds_t *b)
{
    if (!type_conf_equal(&a->conf.defaults, &b->conf.defaults) || a->conf.ntypes != b->conf.ntypes)
        return false;
    for (size_t i = 0; i < a->conf.ntypes; i++) /* both are sorted by type */
        if (strcmp(a->types[i].type, b->types[i].type) ||
            !type_conf_equal(&a->types[i], &b->types[i]))
            return false;
    return true;
}

/* True when the detector accepts @tc. */
static bool type_conf_accepted(const detector_type_conf_t *tc)
{
    detector_config_t conf;
    detector_t *det = NULL;
    detector_config_init(&conf);
    conf.defaults = *tc;
    if (detector_new(&conf, &det) < 0)
        return false;
    detector_free(det);
    return true;
}

int registry_thresholds_load(db_t *db, const detector_config_t *fallback,
                             registry_thresholds_t *ret, char *errbuf, size_t errsize)
{
    registry_thresholds_t t = {.conf = *fallback};
    PGresult *res = NULL;
    int r;

    t.conf.types = NULL;
    t.conf.ntypes = 0;
    if ((r = db_exec(db, NULL,
                     "SELECT sensor_type, z_threshold, warmup, alpha, max_rate, min_stddev FROM "
                     "detector_thresholds ORDER BY sensor_type COLLATE \"C\"",
                     0, NULL, &res)) < 0)
        return r;
    int rows = PQntuples(res);
    if (rows > 0 && !(t.types = calloc((size_t)rows, sizeof(*t.types)))) {
        r = -ENOMEM;
        goto fail;
    }
    t.conf.types = t.types;
    for (int i = 0; i < rows; i++) {
        const char *type = PQgetvalue(res, i, 0);
        long long warmup = strtoll(PQgetvalue(res, i, 2), NULL, 10);
        detector_type_conf_t tc = {
            .z = strtod(PQgetvalue(res, i, 1), NULL),
            .warmup = warmup < 0 || warmup > UINT32_MAX ? 0 : (uint32_t)warmup,
            .alpha = strtod(PQgetvalue(res, i, 3), NULL),
            .max_rate = strtod(PQgetvalue(res, i, 4), NULL),
            .min_stddev = strtod(PQgetvalue(res, i, 5), NULL),
        };
        if (!type_conf_accepted(&tc)) {
            snprintf(errbuf, errsize, "detector_thresholds row '%s' is out of range", type);
            r = -EINVAL;
            goto fail;
        }
        if (!strcmp(type, "default")) {
            t.conf.defaults = tc;
            t.has_default = true;
            continue;
        }
        if (!(tc.type = strdup(type))) {
            r = -ENOMEM;
            goto fail;
        }
        t.types[t.conf.ntypes++] = tc;
    }
    PQclear(res);
    *ret = t;
    return 0;

fail:
    PQclear(res);
    registry_thresholds_clear(&t);
    return r;
}

/* ---- Snapshots ------------------------------------------------------------------------------- */

int registry_snapshot_save(db_t *db, const char *consumer, const char *topic, int32_t partition,
                           int64_t next_offset, const detector_t *det)
{
    char part[16], offset[24], count[24];
    json_t *doc = NULL;
    char *text = NULL;
    int r = -ENOMEM;

    if (detector_snapshot(det, &doc) < 0 || !(text = json_dumps(doc, JSON_COMPACT)))
        goto done;
    snprintf(part, sizeof(part), "%d", (int)partition);
    snprintf(offset, sizeof(offset), "%lld", (long long)next_offset);
    snprintf(count, sizeof(count), "%zu", detector_sensor_count(det));
    const char *params[] = {consumer, topic, part, offset, count, text};
    r = db_exec(db, NULL,
                "INSERT INTO detector_snapshots (consumer, topic, kafka_partition, next_offset, "
                "sensors, state) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (consumer, topic, "
                "kafka_partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, sensors = "
                "EXCLUDED.sensors, state = EXCLUDED.state, taken_at = now()",
                6, params, NULL);
done:
    free(text);
    json_decref(doc);
    return r;
}

int registry_snapshot_load(db_t *db, const char *consumer, const char *topic, int32_t partition,
                           int64_t max_age_s, detector_t *det, int64_t *ret_next_offset,
                           size_t *ret_count, int64_t *ret_age_s)
{
    char part[16], max_age[24];
    PGresult *res = NULL;
    json_t *doc = NULL;
    int r;

    snprintf(part, sizeof(part), "%d", (int)partition);
    snprintf(max_age, sizeof(max_age), "%lld", (long long)max_age_s);
    const char *params[] = {consumer, topic, part, max_age};
    if ((r = db_exec(db, NULL,
                     "SELECT next_offset, state, round(extract(epoch FROM now() - taken_at)) FROM "
                     "detector_snapshots WHERE consumer = $1 AND topic = $2 AND kafka_partition = "
                     "$3 AND taken_at > now() - make_interval(secs => $4)",
                     4, params, &res)) < 0)
        return r;
    r = 0;
    if (PQntuples(res) == 0)
        goto done;
    doc = json_loads(PQgetvalue(res, 0, 1), 0, NULL);
    r = -EBADMSG;
    if (!doc || detector_restore(det, doc, ret_count) < 0) {
        detector_forget_all(det);
        goto done;
    }
    *ret_next_offset = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    *ret_age_s = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    r = 1;
done:
    json_decref(doc);
    PQclear(res);
    return r;
}
