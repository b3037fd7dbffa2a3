/* cache_agg.c: the dashboard aggregates' layout and the exactly-once writer (see cache_agg.h). */
#include "cache_agg.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHUNK_OPS      2048 /* operations per script call */
#define ITEM_OPS_MAX   5    /* operations one item can make (an anomaly: total + 4 checks) */
#define MAP_SLOTS      4096 /* a power of two, twice CHUNK_OPS */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

/* ---- Keys and formats ------------------------------------------------------------------------ */

static int key_printf(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int key_printf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n < 0 || (size_t)n >= size ? -ENOBUFS : n;
}

int cache_agg_key_rpm(char *buf, size_t size, const char *project_id, int64_t minute)
{
    return key_printf(buf, size, "sb:rpm:%s:%" PRId64, project_id, minute);
}

int cache_agg_key_sensor(char *buf, size_t size, const char *project_id, const char *sensor_id)
{
    return key_printf(buf, size, "sb:sensor:%s:%s", project_id, sensor_id);
}

int cache_agg_key_sensors(char *buf, size_t size, const char *project_id)
{
    return key_printf(buf, size, "sb:sensors:%s", project_id);
}

int cache_agg_key_anomalies(char *buf, size_t size, const char *project_id)
{
    return key_printf(buf, size, "sb:anomalies:%s", project_id);
}

int cache_agg_key_orders(char *buf, size_t size, const char *org_id)
{
    return key_printf(buf, size, "sb:orders:%s", org_id);
}

int cache_agg_key_offsets(char *buf, size_t size, const char *consumer)
{
    return key_printf(buf, size, "sb:agg:offset:%s", consumer);
}

int64_t cache_agg_minute(int64_t ts_us)
{
    int64_t m = ts_us / 60000000;
    return ts_us % 60000000 < 0 ? m - 1 : m;
}

int64_t cache_agg_rpm_expireat(int64_t minute)
{
    return (minute + 1) * 60 + CACHE_AGG_RPM_TTL_S;
}

void cache_agg_format_double(double v, char buf[CACHE_AGG_NUM_MAX])
{
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, CACHE_AGG_NUM_MAX, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    /* %g switches to an exponent when it is >= the precision: 30 at one digit is "3e+01".
     * Integers below 1e17 read better in full, and stay exact. */
    const char *e = strchr(buf, 'e');
    if (e && e[1] == '+') {
        int x = atoi(e + 2);
        if (x < 17)
            snprintf(buf, CACHE_AGG_NUM_MAX, "%.*g", x + 1, v);
    }
}

void cache_agg_format_ts(int64_t ts_us, char buf[CACHE_AGG_NUM_MAX])
{
    int64_t s = ts_us / 1000000, us = ts_us % 1000000;
    if (us < 0) {
        us += 1000000;
        s--;
    }
    time_t t = (time_t)s;
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(buf, CACHE_AGG_NUM_MAX, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)us);
}

static int64_t now_ms(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- The rebuild lock ------------------------------------------------------------------------ */

static cache_script_t lock_refresh_script = {
    .source = "if redis.call('GET', KEYS[1]) == ARGV[1] then "
              "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"};
static cache_script_t unlock_script = {.source = "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                                                 "return redis.call('DEL', KEYS[1]) end return 0"};

int cache_agg_lock(cache_t *cache, const char *token, unsigned ttl_ms)
{
    char ttl[16];
    redisReply *reply = NULL;
    snprintf(ttl, sizeof(ttl), "%u", ttl_ms);
    const char *argv[] = {"SET", CACHE_AGG_LOCK_KEY, token, "NX", "PX", ttl};
    int r = cache_command(cache, 6, argv, NULL, &reply);
    if (r < 0)
        return r;
    r = reply->type == REDIS_REPLY_NIL ? -EBUSY : 0;
    freeReplyObject(reply);
    return r;
}

static int lock_script(cache_t *cache, cache_script_t *script, const char *token, unsigned ttl_ms)
{
    char ttl[16];
    redisReply *reply = NULL;
    snprintf(ttl, sizeof(ttl), "%u", ttl_ms);
    const char *argv[] = {CACHE_AGG_LOCK_KEY, token, ttl};
    int r = cache_script_run(cache, script, 1, 3, argv, NULL, &reply);
    if (r < 0)
        return r;
    r = reply->type == REDIS_REPLY_INTEGER && reply->integer == 1 ? 0 : -ENOLCK;
    freeReplyObject(reply);
    return r;
}

int cache_agg_lock_refresh(cache_t *cache, const char *token, unsigned ttl_ms)
{
    return lock_script(cache, &lock_refresh_script, token, ttl_ms);
}

int cache_agg_unlock(cache_t *cache, const char *token)
{
    return lock_script(cache, &unlock_script, token, 0);
}

/* ---- The apply script ------------------------------------------------------------------------ */

/* KEYS: the offsets hash, the rebuild lock, then one key per operation.
 * ARGV: "<topic>:<partition>", first offset, last offset, then the operations:
 *   c <key#> <n> <expireat>                               INCRBY + EXPIREAT (per-minute counter)
 *   h <key#> <field> <n>                                  HINCRBY
 *   s <key#> <member>                                     SADD
 *   m <key#> <n> <min> <max> <last_ts> <last_value>       a sensor's hash
 * Replies {status, n}: {"ok", gap} applied, where gap counts the offsets between the last
 * applied one and @first; {"applied", cur} nothing to do; {"partial", cur} the chunk overlaps
 * what was applied (nothing done: resend from cur + 1); {"paused", 0} a rebuild runs.
 * Every key's type is checked before anything is written, because Redis does not undo the
 * writes of a script that fails halfway. Times compare by their digits (fixed-width RFC 3339):
 * Lua compares strings with strcoll(), which may ignore punctuation but not digits. */
static cache_script_t apply_script = {
    .source =
        "local off, lock, field = KEYS[1], KEYS[2], ARGV[1]\n"
        "local first, last = tonumber(ARGV[2]), tonumber(ARGV[3])\n"
        "if redis.call('EXISTS', lock) == 1 then return {'paused', 0} end\n"
        "local cur = redis.call('HGET', off, field)\n"
        "local gap = 0\n"
        "if cur then\n"
        "  cur = tonumber(cur)\n"
        "  if cur >= last then return {'applied', cur} end\n"
        "  if cur >= first then return {'partial', cur} end\n"
        "  gap = first - cur - 1\n"
        "end\n"
        "local want = {c = 'string', h = 'hash', s = 'set', m = 'hash'}\n"
        "local width = {c = 4, h = 4, s = 3, m = 7}\n"
        "local i = 4\n"
        "while i <= #ARGV do\n"
        "  local w = width[ARGV[i]]\n"
        "  if not w then return redis.error_reply('ERR sb aggregates: bad operation') end\n"
        "  local key = KEYS[tonumber(ARGV[i + 1])]\n"
        "  local t = redis.call('TYPE', key).ok\n"
        "  if t ~= 'none' and t ~= want[ARGV[i]] then\n"
        "    return redis.error_reply('WRONGTYPE sb aggregates: ' .. key .. ' holds a ' .. t)\n"
        "  end\n"
        "  i = i + w\n"
        "end\n"
        "local function digits(s) return (string.gsub(s, '%D', '')) end\n"
        "i = 4\n"
        "while i <= #ARGV do\n"
        "  local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]\n"
        "  if op == 'c' then\n"
        "    redis.call('INCRBY', key, ARGV[i + 2])\n"
        "    redis.call('EXPIREAT', key, ARGV[i + 3])\n"
        "  elseif op == 'h' then\n"
        "    redis.call('HINCRBY', key, ARGV[i + 2], ARGV[i + 3])\n"
        "  elseif op == 's' then\n"
        "    redis.call('SADD', key, ARGV[i + 2])\n"
        "  else\n"
        "    local h = redis.call('HMGET', key, 'min', 'max', 'last_ts', 'last_value')\n"
        "    redis.call('HINCRBY', key, 'count', ARGV[i + 2])\n"
        "    local set = {}\n"
        "    if not h[1] or tonumber(ARGV[i + 3]) < tonumber(h[1]) then\n"
        "      set[#set + 1] = 'min'; set[#set + 1] = ARGV[i + 3]\n"
        "    end\n"
        "    if not h[2] or tonumber(ARGV[i + 4]) > tonumber(h[2]) then\n"
        "      set[#set + 1] = 'max'; set[#set + 1] = ARGV[i + 4]\n"
        "    end\n"
        "    local newer = not h[3] or not h[4]\n"
        "    if not newer then\n"
        "      local a, b = digits(ARGV[i + 5]), digits(h[3])\n"
        "      newer = #a > #b or (#a == #b and a > b) or\n"
        "              (a == b and tonumber(ARGV[i + 6]) > tonumber(h[4]))\n"
        "    end\n"
        "    if newer then\n"
        "      set[#set + 1] = 'last_ts'; set[#set + 1] = ARGV[i + 5]\n"
        "      set[#set + 1] = 'last_value'; set[#set + 1] = ARGV[i + 6]\n"
        "    end\n"
        "    if #set > 0 then redis.call('HSET', key, unpack(set)) end\n"
        "  end\n"
        "  i = i + width[op]\n"
        "end\n"
        "redis.call('HSET', off, field, ARGV[3])\n"
        "return {'ok', gap}\n"};

/* ---- The writer ------------------------------------------------------------------------------ */

/* One aggregated operation of a chunk. */
typedef struct agg_op {
    char op;        /* 'c', 'h', 's', 'm'; 0 for a free slot */
    char opname[2]; /* the same as a string */
    uint64_t hash;
    char key[CACHE_AGG_KEY_MAX];
    char member[CACHE_AGG_NAME_MAX + 1]; /* 'h': the field; 's': the member */
    int64_t n, expireat, last_ts_us;
    double min, max, last_value;
    char idx[16], a[CACHE_AGG_NUM_MAX], b[CACHE_AGG_NUM_MAX], c[CACHE_AGG_NUM_MAX],
        d[CACHE_AGG_NUM_MAX], e[CACHE_AGG_NUM_MAX];
} agg_op_t;

typedef struct agg_part {
    char *topic;
    int32_t partition;
    char field[300]; /* "<topic>:<partition>" */
    bool pending;    /* offsets [first, last] are to be applied */
    int64_t first, last;
    cache_agg_item_t *items; /* items[head, n) wait, ascending offsets */
    size_t head, n, cap;
} agg_part_t;

struct cache_agg_writer {
    cache_t *cache;
    char offsets_key[CACHE_AGG_KEY_MAX];
    size_t max_items, npending;
    agg_part_t *parts;
    size_t nparts, partscap;
    cache_agg_stats_t stats;
    int64_t retry_at_ms; /* monotonic; 0 when not backing off */
    int backoff_ms, last_error;

    agg_op_t *slots; /* MAP_SLOTS */
    int order[CHUNK_OPS];
    int nops;
    const char **argv;
    size_t *argvlen;
};

int cache_agg_writer_new(cache_t *cache, const char *consumer, size_t max_items,
                         cache_agg_writer_t **ret_writer)
{
    cache_agg_writer_t *w = NULL;
    size_t nargs = 2 + CHUNK_OPS + 3 + 7 * CHUNK_OPS;

    if (!cache || !consumer || !*consumer || max_items == 0 || !ret_writer)
        return -EINVAL;
    w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->cache = cache;
    w->max_items = max_items;
    if (cache_agg_key_offsets(w->offsets_key, sizeof(w->offsets_key), consumer) < 0) {
        free(w);
        return -EINVAL;
    }
    w->slots = calloc(MAP_SLOTS, sizeof(*w->slots));
    w->argv = calloc(nargs, sizeof(*w->argv));
    w->argvlen = calloc(nargs, sizeof(*w->argvlen));
    if (!w->slots || !w->argv || !w->argvlen) {
        cache_agg_writer_free(w);
        return -ENOMEM;
    }
    *ret_writer = w;
    return 0;
}

void cache_agg_writer_free(cache_agg_writer_t *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->nparts; i++) {
        free(w->parts[i].topic);
        free(w->parts[i].items);
    }
    free(w->parts);
    free(w->slots);
    free(w->argv);
    free(w->argvlen);
    free(w);
}

const cache_agg_stats_t *cache_agg_writer_stats(const cache_agg_writer_t *w)
{
    return &w->stats;
}

size_t cache_agg_writer_pending(const cache_agg_writer_t *w)
{
    return w->npending;
}

bool cache_agg_writer_idle(const cache_agg_writer_t *w)
{
    for (size_t i = 0; i < w->nparts; i++)
        if (w->parts[i].pending)
            return false;
    return true;
}

static agg_part_t *part_find(cache_agg_writer_t *w, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < w->nparts; i++)
        if (w->parts[i].partition == partition && !strcmp(w->parts[i].topic, topic))
            return &w->parts[i];
    return NULL;
}

static int part_get(cache_agg_writer_t *w, const char *topic, int32_t partition,
                    agg_part_t **ret_part)
{
    agg_part_t *p = part_find(w, topic, partition);
    if (p) {
        *ret_part = p;
        return 0;
    }
    if (w->nparts == w->partscap) {
        size_t cap = w->partscap ? 2 * w->partscap : 8;
        agg_part_t *v = realloc(w->parts, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        w->parts = v;
        w->partscap = cap;
    }
    p = &w->parts[w->nparts];
    *p = (agg_part_t){.partition = partition};
    if (key_printf(p->field, sizeof(p->field), "%s:%" PRId32, topic, partition) < 0)
        return -EINVAL;
    if (!(p->topic = strdup(topic)))
        return -ENOMEM;
    w->nparts++;
    *ret_part = p;
    return 0;
}

/* Forgets a partition's pending items and range. */
static void part_clear(cache_agg_writer_t *w, agg_part_t *p)
{
    size_t left = p->n - p->head;
    w->stats.dropped += left;
    w->npending -= left;
    p->head = p->n = 0;
    p->pending = false;
}

void cache_agg_writer_drop(cache_agg_writer_t *w, const char *topic, int32_t partition)
{
    agg_part_t *p = part_find(w, topic, partition);
    if (p)
        part_clear(w, p);
}

int cache_agg_writer_add(cache_agg_writer_t *w, const char *topic, int32_t partition, int64_t first,
                         int64_t last, const cache_agg_item_t *items, size_t n)
{
    agg_part_t *p;
    size_t skip = 0;
    int r;

    if (!w || !topic || first < 0 || last < first || (n && !items))
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (items[i].offset < first || items[i].offset > last ||
            (i && items[i].offset <= items[i - 1].offset) ||
            (items[i].kind == CACHE_AGG_READING && !isfinite(items[i].value)))
            return -EINVAL;
    if ((r = part_get(w, topic, partition, &p)) < 0)
        return r;

    if (p->pending) {
        if (last <= p->last)
            return 0; /* a replay of what waits already */
        while (skip < n && items[skip].offset <= p->last)
            skip++;
    }
    n -= skip;
    items += skip;
    if (w->npending + n > w->max_items)
        for (size_t i = 0; i < w->nparts; i++)
            part_clear(w, &w->parts[i]);

    if (p->head > 0 && p->n + n > p->cap) { /* reuse the applied prefix's room first */
        memmove(p->items, p->items + p->head, (p->n - p->head) * sizeof(*p->items));
        p->n -= p->head;
        p->head = 0;
    }
    if (p->n + n > p->cap) {
        size_t cap = p->cap ? p->cap : 64;
        while (cap < p->n + n)
            cap *= 2;
        cache_agg_item_t *v = realloc(p->items, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        p->items = v;
        p->cap = cap;
    }
    if (n > 0)
        memcpy(p->items + p->n, items, n * sizeof(*items));
    p->n += n;
    w->npending += n;
    if (!p->pending) {
        p->pending = true;
        p->first = first;
    }
    p->last = last;
    return 0;
}

/* --- chunks --- */

static uint64_t op_hash(char op, const char *key, const char *member)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ (unsigned char)op;
    for (const char *s = key; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    h = (h ^ 0x1f) * 0x100000001b3ULL;
    for (const char *s = member; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

static void chunk_reset(cache_agg_writer_t *w)
{
    for (int i = 0; i < w->nops; i++)
        w->slots[w->order[i]].op = 0;
    w->nops = 0;
}

/* The operation (@op, @key, @member), created when new. */
static agg_op_t *chunk_op(cache_agg_writer_t *w, char op, const char *key, const char *member)
{
    uint64_t h = op_hash(op, key, member);
    size_t i = h & (MAP_SLOTS - 1);
    for (;; i = (i + 1) & (MAP_SLOTS - 1)) {
        agg_op_t *o = &w->slots[i];
        if (!o->op) {
            o->op = op;
            o->hash = h;
            snprintf(o->key, sizeof(o->key), "%s", key);
            snprintf(o->member, sizeof(o->member), "%s", member);
            o->n = 0;
            w->order[w->nops++] = (int)i;
            return o;
        }
        if (o->hash == h && o->op == op && !strcmp(o->key, key) && !strcmp(o->member, member))
            return o;
    }
}

static void chunk_item(cache_agg_writer_t *w, const cache_agg_item_t *it, int64_t now_s)
{
    char key[CACHE_AGG_KEY_MAX];
    agg_op_t *o;

    if (it->kind == CACHE_AGG_ANOMALY) {
        if (cache_agg_key_anomalies(key, sizeof(key), it->project_id) < 0)
            return;
        chunk_op(w, 'h', key, "total")->n++;
        char checks[CACHE_AGG_NAME_MAX + 1], *save = NULL;
        snprintf(checks, sizeof(checks), "%s", it->name);
        int k = 0;
        for (char *c = strtok_r(checks, ",", &save); c && k < ITEM_OPS_MAX - 1;
             c = strtok_r(NULL, ",", &save), k++)
            chunk_op(w, 'h', key, c)->n++;
        return;
    }

    int64_t minute = cache_agg_minute(it->ts_us), expireat = cache_agg_rpm_expireat(minute);
    if (expireat > now_s && cache_agg_key_rpm(key, sizeof(key), it->project_id, minute) > 0) {
        o = chunk_op(w, 'c', key, "");
        o->n++;
        o->expireat = expireat;
    }
    if (cache_agg_key_sensor(key, sizeof(key), it->project_id, it->name) > 0) {
        o = chunk_op(w, 'm', key, "");
        if (o->n++ == 0) {
            o->min = o->max = o->last_value = it->value;
            o->last_ts_us = it->ts_us;
        } else {
            o->min = fmin(o->min, it->value);
            o->max = fmax(o->max, it->value);
            if (it->ts_us > o->last_ts_us ||
                (it->ts_us == o->last_ts_us && it->value > o->last_value)) {
                o->last_ts_us = it->ts_us;
                o->last_value = it->value;
            }
        }
    }
    if (cache_agg_key_sensors(key, sizeof(key), it->project_id) > 0)
        chunk_op(w, 's', key, it->name);
}

static void arg(cache_agg_writer_t *w, int *argc, const char *s)
{
    w->argv[*argc] = s;
    w->argvlen[*argc] = strlen(s);
    (*argc)++;
}

/* Lays the chunk out as the script's KEYS and ARGV; returns argc, with @nkeys set. */
static int chunk_args(cache_agg_writer_t *w, const agg_part_t *p, char *first, char *last,
                      int *ret_nkeys)
{
    int argc = 0;
    arg(w, &argc, w->offsets_key);
    arg(w, &argc, CACHE_AGG_LOCK_KEY);
    for (int i = 0; i < w->nops; i++)
        arg(w, &argc, w->slots[w->order[i]].key);
    *ret_nkeys = argc;
    arg(w, &argc, p->field);
    arg(w, &argc, first);
    arg(w, &argc, last);
    for (int i = 0; i < w->nops; i++) {
        agg_op_t *o = &w->slots[w->order[i]];
        o->opname[0] = o->op;
        o->opname[1] = '\0';
        snprintf(o->idx, sizeof(o->idx), "%d", i + 3);
        arg(w, &argc, o->opname);
        arg(w, &argc, o->idx);
        switch (o->op) {
        case 'c':
            snprintf(o->a, sizeof(o->a), "%" PRId64, o->n);
            snprintf(o->b, sizeof(o->b), "%" PRId64, o->expireat);
            arg(w, &argc, o->a);
            arg(w, &argc, o->b);
            break;
        case 'h':
            snprintf(o->a, sizeof(o->a), "%" PRId64, o->n);
            arg(w, &argc, o->member);
            arg(w, &argc, o->a);
            break;
        case 's':
            arg(w, &argc, o->member);
            break;
        default:
            snprintf(o->a, sizeof(o->a), "%" PRId64, o->n);
            cache_agg_format_double(o->min, o->b);
            cache_agg_format_double(o->max, o->c);
            cache_agg_format_ts(o->last_ts_us, o->d);
            cache_agg_format_double(o->last_value, o->e);
            arg(w, &argc, o->a);
            arg(w, &argc, o->b);
            arg(w, &argc, o->c);
            arg(w, &argc, o->d);
            arg(w, &argc, o->e);
            break;
        }
    }
    return argc;
}

/* Drops the items of @p up to offset @upto, which Redis has (or will never get). */
static size_t part_consume(cache_agg_writer_t *w, agg_part_t *p, int64_t upto)
{
    size_t k = 0;
    while (p->head < p->n && p->items[p->head].offset <= upto) {
        p->head++;
        k++;
    }
    w->npending -= k;
    if (upto >= p->last) {
        p->pending = false;
        p->head = p->n = 0;
    } else {
        p->first = upto + 1;
    }
    return k;
}

/* Sends one chunk of @p. 0 when progress was made, -EBUSY, or a cache errno. */
static int part_flush_chunk(cache_agg_writer_t *w, agg_part_t *p, int64_t now_s)
{
    char first[24], last[24];
    redisReply *reply = NULL;
    size_t j = p->head;
    int64_t chunk_last;
    int nkeys, argc, r;

    chunk_reset(w);
    while (j < p->n && w->nops + ITEM_OPS_MAX <= CHUNK_OPS)
        chunk_item(w, &p->items[j++], now_s);
    chunk_last = j < p->n ? p->items[j].offset - 1 : p->last;
    snprintf(first, sizeof(first), "%" PRId64, p->first);
    snprintf(last, sizeof(last), "%" PRId64, chunk_last);
    argc = chunk_args(w, p, first, last, &nkeys);

    r = cache_script_run(w->cache, &apply_script, nkeys, argc, w->argv, w->argvlen, &reply);
    if (r == -EINVAL) { /* refused for its content: give the chunk up, keep the rest going */
        w->stats.dropped += part_consume(w, p, chunk_last);
        return r;
    }
    if (r < 0)
        return r;
    w->stats.calls++;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_INTEGER) {
        freeReplyObject(reply);
        w->stats.dropped += part_consume(w, p, chunk_last);
        return -EINVAL;
    }
    const char *status = reply->element[0]->str;
    long long n = reply->element[1]->integer;
    if (!strcmp(status, "ok")) {
        w->stats.gap_offsets += (uint64_t)n;
        w->stats.applied += part_consume(w, p, chunk_last);
    } else if (!strcmp(status, "applied") || !strcmp(status, "partial")) {
        /* Redis has everything up to cur: all of the chunk ("applied"), or a part of it
         * ("partial"), in which case what lies beyond is sent again. */
        w->stats.skipped += part_consume(w, p, n);
    } else {
        r = -EBUSY;
    }
    freeReplyObject(reply);
    return r;
}

int cache_agg_writer_flush(cache_agg_writer_t *w)
{
    int64_t now = now_ms(CLOCK_MONOTONIC), now_s = now_ms(CLOCK_REALTIME) / 1000;
    int r = 0, refused = 0;

    if (w->retry_at_ms && now < w->retry_at_ms)
        return w->last_error;
    for (size_t i = 0; i < w->nparts && r >= 0; i++) {
        agg_part_t *p = &w->parts[i];
        while (p->pending && (r = part_flush_chunk(w, p, now_s)) != -EBUSY) {
            if (r == -EINVAL) {
                refused = r;
                r = 0;
            } else if (r < 0) {
                break;
            }
        }
    }
    if (r < 0 && r != -EBUSY) {
        w->backoff_ms = w->backoff_ms ? w->backoff_ms * 2 : BACKOFF_MIN_MS;
        if (w->backoff_ms > BACKOFF_MAX_MS)
            w->backoff_ms = BACKOFF_MAX_MS;
        w->retry_at_ms = now_ms(CLOCK_MONOTONIC) + w->backoff_ms;
        w->last_error = r;
        return r;
    }
    w->retry_at_ms = 0;
    w->backoff_ms = 0;
    return r < 0 ? r : refused;
}
