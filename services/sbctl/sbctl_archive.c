/* sbctl archive verify: checks the S3 archive that sb-s3-archiver writes (docs/archive.md).
 *
 * Lists the objects of each topic, reads the offset range each covers from its metadata (HEAD,
 * no download), and reports per partition the ranges covered, the overlaps (records archived
 * twice, harmless) and the gaps (records missing, a failure). When Kafka answers, the range that
 * must be covered is [log start offset, the archiver group's committed offset): the archiver
 * commits an offset only after everything below it was uploaded.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "s3.h"
#include "s3_archive.h"
#include "sbctl.h"

#define AV_KAFKA_TIMEOUT_MS 5000
#define AV_MAX_TOPICS       64

static const char *const av_default_topics[] = {"sensor.readings.v1", "orders.events.v1"};

typedef struct av_obj {
    char *key;
    int64_t first, last, records;
} av_obj_t;

typedef struct av_range {
    int64_t from, to;
    const char *before, *after; /* the objects on either side (gap) or involved (overlap) */
} av_range_t;

typedef struct av_ranges {
    av_range_t *v;
    size_t n;
} av_ranges_t;

typedef struct av_part {
    int32_t partition;
    av_obj_t *objs;
    size_t nobjs;
    bool in_kafka;
    int64_t log_start, high, committed; /* committed < 0: none */
} av_part_t;

typedef struct av_topic {
    char *name;
    av_part_t *parts;
    size_t nparts;
} av_topic_t;

typedef struct av {
    s3_client_t *s3;
    const char *prefix;
    char base[S3_ARCHIVE_KEY_MAX]; /* "<prefix>/", or "" without a prefix */
    const char *group;
    bool json;
    rd_kafka_t *rk; /* NULL when Kafka is not reachable */
    av_topic_t topics[AV_MAX_TOPICS];
    size_t ntopics;
    size_t objects, gaps, overlaps, errors;
    json_t *out;
} av_t;

static int av_usage(FILE *f)
{
    fprintf(f,
            "Usage: sbctl archive verify [--topic T]... [--prefix P] [--group G] [--json]\n"
            "\n"
            "Checks the S3 archive written by sb-s3-archiver. For every topic (default: the\n"
            "archived topics and any other topic found under the prefix) and partition, prints\n"
            "the offset ranges the objects cover, the overlaps (records archived twice, which\n"
            "is harmless) and the gaps (records missing). When Kafka answers, everything from\n"
            "the partition's log start offset up to the archiver group's committed offset must\n"
            "be covered. Exits 1 when there is a gap or an object it cannot read.\n"
            "\n"
            "  --topic T    check topic T only (repeatable)\n"
            "  --prefix P   key prefix (default SB_S3_PREFIX, else \"archive\")\n"
            "  --group G    the archiver's consumer group (default sb-s3-archiver)\n"
            "  --json       one JSON document instead of the table\n"
            "\n"
            "Environment (or the stack file): SB_S3_ENDPOINT, SB_S3_REGION (default us-east-1),\n"
            "SB_S3_ACCESS_KEY, SB_S3_SECRET_KEY (or SB_S3_SECRET_KEY_FILE), SB_S3_BUCKET,\n"
            "SB_KAFKA_BOOTSTRAP (default 127.0.0.1:9092).\n");
    return f == stdout ? SBCTL_OK : SBCTL_USAGE;
}

/* ---- collecting ------------------------------------------------------------------------------ */

static av_topic_t *av_topic_add(av_t *av, const char *name)
{
    for (size_t i = 0; i < av->ntopics; i++)
        if (strcmp(av->topics[i].name, name) == 0)
            return &av->topics[i];
    if (av->ntopics == AV_MAX_TOPICS)
        return NULL;
    av->topics[av->ntopics].name = strdup(name);
    if (!av->topics[av->ntopics].name)
        return NULL;
    return &av->topics[av->ntopics++];
}

static av_part_t *av_part_get(av_topic_t *t, int32_t partition)
{
    av_part_t *parts;

    for (size_t i = 0; i < t->nparts; i++)
        if (t->parts[i].partition == partition)
            return &t->parts[i];
    if (!(parts = realloc(t->parts, (t->nparts + 1) * sizeof(*parts))))
        return NULL;
    t->parts = parts;
    memset(&parts[t->nparts], 0, sizeof(*parts));
    parts[t->nparts].partition = partition;
    parts[t->nparts].committed = -1;
    return &parts[t->nparts++];
}

/* A common prefix "<prefix>/<topic>/" names a topic. */
static int av_found_topic(void *opaque, const s3_object_t *obj, const char *prefix)
{
    av_t *av = opaque;
    size_t blen = strlen(av->base), plen;
    char name[256];

    (void)obj;
    if (!prefix)
        return 0;
    plen = strlen(prefix);
    if (plen <= blen + 1 || strncmp(prefix, av->base, blen) != 0 || plen - blen - 1 >= sizeof(name))
        return 0;
    snprintf(name, sizeof(name), "%.*s", (int)(plen - blen - 1), prefix + blen);
    return av_topic_add(av, name) ? 0 : -ENOMEM;
}

typedef struct av_list_ctx {
    av_t *av;
    av_topic_t *topic;
} av_list_ctx_t;

static int av_found_object(void *opaque, const s3_object_t *obj, const char *prefix)
{
    av_list_ctx_t *ctx = opaque;
    char topic[256];
    int32_t partition;
    int64_t first;
    av_part_t *p;
    av_obj_t *objs;

    (void)prefix;
    if (!obj)
        return 0;
    if (s3_archive_key_parse(obj->key, topic, sizeof(topic), &partition, &first) < 0 ||
        strcmp(topic, ctx->topic->name) != 0) {
        fprintf(stderr, "sbctl: note: %s is not an archive object, ignored\n", obj->key);
        return 0;
    }
    if (!(p = av_part_get(ctx->topic, partition)) ||
        !(objs = realloc(p->objs, (p->nobjs + 1) * sizeof(*objs))))
        return -ENOMEM;
    p->objs = objs;
    objs[p->nobjs] = (av_obj_t){.key = strdup(obj->key), .first = first, .last = -1};
    if (!objs[p->nobjs].key)
        return -ENOMEM;
    p->nobjs++;
    return 0;
}

/* The range of each object, from its metadata. */
static int av_objects_read(av_t *av, av_topic_t *t)
{
    for (size_t i = 0; i < t->nparts; i++) {
        for (size_t j = 0; j < t->parts[i].nobjs; j++) {
            av_obj_t *o = &t->parts[i].objs[j];
            const char *last, *records;
            s3_object_t meta;
            int r = s3_head(av->s3, o->key, &meta);

            if (r == -ENOENT) {
                o->last = -2; /* deleted since the listing */
                continue;
            }
            if (r < 0) {
                sbctl_err("%s", s3_errmsg(av->s3));
                return r;
            }
            last = s3_object_meta(&meta, S3_ARCHIVE_META_LAST);
            records = s3_object_meta(&meta, S3_ARCHIVE_META_RECORDS);
            if (last && *last)
                o->last = strtoll(last, NULL, 10);
            o->records = records ? strtoll(records, NULL, 10) : -1;
            s3_object_clear(&meta);
            if (o->last < o->first) {
                sbctl_err("%s: no valid x-amz-meta-" S3_ARCHIVE_META_LAST
                          " (not written by sb-s3-archiver?): its range is unknown",
                          o->key);
                av->errors++;
                o->last = -2;
            }
        }
    }
    return 0;
}

/* ---- Kafka ------------------------------------------------------------------------------------
 */

static void av_kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    (void)level;
    (void)fac;
    (void)buf;
}

static void av_kafka_open(av_t *av)
{
    const char *bootstrap = sbctl_setting("SB_KAFKA_BOOTSTRAP");
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_resp_err_t err;
    char errstr[512];

    if (!bootstrap)
        bootstrap = "127.0.0.1:9092";
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "group.id", av->group, errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof(errstr))) {
        fprintf(stderr, "sbctl: note: Kafka settings: %s; committed offsets not compared\n",
                errstr);
        rd_kafka_conf_destroy(conf);
        return;
    }
    rd_kafka_conf_set_log_cb(conf, av_kafka_log);
    av->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    if (!av->rk) {
        rd_kafka_conf_destroy(conf);
        fprintf(stderr, "sbctl: note: no Kafka client (%s); committed offsets not compared\n",
                errstr);
        return;
    }
    err = rd_kafka_metadata(av->rk, 1, NULL, &md, AV_KAFKA_TIMEOUT_MS);
    if (err) {
        fprintf(stderr,
                "sbctl: note: Kafka at %s does not answer (%s): the log start and committed "
                "offsets are not compared, only the objects with each other\n",
                bootstrap, rd_kafka_err2str(err));
        rd_kafka_destroy(av->rk);
        av->rk = NULL;
        return;
    }
    rd_kafka_metadata_destroy(md);
}

/* The log start, high watermark and committed offset of every partition of @t. */
static int av_kafka_read(av_t *av, av_topic_t *t)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_partition_list_t *list = NULL;
    rd_kafka_resp_err_t err;
    int r = 0;

    if (!av->rk)
        return 0;
    err = rd_kafka_metadata(av->rk, 1, NULL, &md, AV_KAFKA_TIMEOUT_MS);
    if (err) {
        sbctl_err("Kafka metadata: %s", rd_kafka_err2str(err));
        return -EIO;
    }
    for (int i = 0; i < md->topic_cnt; i++) {
        const struct rd_kafka_metadata_topic *mt = &md->topics[i];

        if (strcmp(mt->topic, t->name) != 0 || mt->err)
            continue;
        list = rd_kafka_topic_partition_list_new(mt->partition_cnt);
        for (int j = 0; list && j < mt->partition_cnt; j++) {
            av_part_t *p = av_part_get(t, mt->partitions[j].id);

            if (!p) {
                r = -ENOMEM;
                goto out;
            }
            err = rd_kafka_query_watermark_offsets(av->rk, t->name, p->partition, &p->log_start,
                                                   &p->high, AV_KAFKA_TIMEOUT_MS);
            if (err) {
                sbctl_err("%s [%" PRId32 "]: watermarks: %s", t->name, p->partition,
                          rd_kafka_err2str(err));
                r = -EIO;
                goto out;
            }
            p->in_kafka = true;
            rd_kafka_topic_partition_list_add(list, t->name, p->partition);
        }
    }
    if (list && list->cnt > 0) {
        err = rd_kafka_committed(av->rk, list, AV_KAFKA_TIMEOUT_MS);
        if (err) {
            sbctl_err("committed offsets of group %s: %s", av->group, rd_kafka_err2str(err));
            r = -EIO;
            goto out;
        }
        for (int j = 0; j < list->cnt; j++) {
            av_part_t *p = av_part_get(t, list->elems[j].partition);

            if (p && !list->elems[j].err && list->elems[j].offset >= 0)
                p->committed = list->elems[j].offset;
        }
    }
out:
    if (list)
        rd_kafka_topic_partition_list_destroy(list);
    rd_kafka_metadata_destroy(md);
    return r;
}

/* ---- analysis ---------------------------------------------------------------------------------
 */

static int av_obj_cmp(const void *a, const void *b)
{
    const av_obj_t *x = a, *y = b;

    if (x->first != y->first)
        return x->first < y->first ? -1 : 1;
    return x->last > y->last ? -1 : x->last < y->last; /* the longest first */
}

static int av_part_cmp(const void *a, const void *b)
{
    const av_part_t *x = a, *y = b;

    return (x->partition > y->partition) - (x->partition < y->partition);
}

static int ranges_add(av_ranges_t *r, int64_t from, int64_t to, const char *before,
                      const char *after)
{
    av_range_t *v = realloc(r->v, (r->n + 1) * sizeof(*v));

    if (!v)
        return -ENOMEM;
    r->v = v;
    r->v[r->n++] = (av_range_t){from, to, before, after};
    return 0;
}

/* Covered ranges, overlaps and gaps of one partition. */
static int av_analyse(const av_part_t *p, av_ranges_t *covered, av_ranges_t *overlaps,
                      av_ranges_t *gaps)
{
    const av_obj_t *reach = NULL; /* the object that reaches furthest so far */
    int64_t need_from = p->in_kafka ? p->log_start : -1;
    int64_t need_to = p->in_kafka && p->committed >= 0 ? p->committed - 1 : -1;
    int r = 0;

    for (size_t i = 0; i < p->nobjs && r == 0; i++) {
        const av_obj_t *o = &p->objs[i];

        if (o->last < o->first)
            continue; /* unreadable, reported already */
        if (!reach) {
            if (need_to >= need_from && need_from >= 0 && o->first > need_from)
                r = ranges_add(gaps, need_from, o->first - 1 < need_to ? o->first - 1 : need_to,
                               NULL, o->key);
            if (r == 0)
                r = ranges_add(covered, o->first, o->last, NULL, NULL);
            reach = o;
            continue;
        }
        if (o->first <= reach->last) {
            r = ranges_add(overlaps, o->first, o->last < reach->last ? o->last : reach->last,
                           reach->key, o->key);
        } else if (o->first > reach->last + 1) {
            r = ranges_add(gaps, reach->last + 1, o->first - 1, reach->key, o->key);
            if (r == 0)
                r = ranges_add(covered, o->first, o->last, NULL, NULL);
        }
        if (r == 0 && o->last > reach->last) {
            reach = o;
            covered->v[covered->n - 1].to = o->last;
        }
    }
    if (r == 0 && need_to >= 0 && need_to >= need_from) {
        if (!reach)
            r = ranges_add(gaps, need_from, need_to, NULL, NULL);
        else if (reach->last < need_to)
            r = ranges_add(gaps, reach->last + 1, need_to, reach->key, NULL);
    }
    return r;
}

/* ---- output ------------------------------------------------------------------------------------
 */

static void av_print_ranges(const av_ranges_t *rs, char *buf, size_t size)
{
    size_t n = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < rs->n && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%" PRId64 "-%" PRId64, i ? "," : "",
                              rs->v[i].from, rs->v[i].to);
    if (rs->n == 0)
        snprintf(buf, size, "-");
}

static json_t *av_json_ranges(const av_ranges_t *rs, bool keys)
{
    json_t *a = json_array();

    for (size_t i = 0; a && i < rs->n; i++) {
        json_t *o =
            json_pack("{sIsI}", "from", (json_int_t)rs->v[i].from, "to", (json_int_t)rs->v[i].to);

        if (o && keys) {
            json_object_set_new(o, "before",
                                rs->v[i].before ? json_string(rs->v[i].before) : json_null());
            json_object_set_new(o, "after",
                                rs->v[i].after ? json_string(rs->v[i].after) : json_null());
        }
        json_array_append_new(a, o);
    }
    return a;
}

static void av_offset_text(int64_t v, bool known, char *buf, size_t size)
{
    if (known && v >= 0)
        snprintf(buf, size, "%" PRId64, v);
    else
        snprintf(buf, size, "-");
}

static int av_report_part(av_t *av, const av_topic_t *t, const av_part_t *p, json_t *jparts)
{
    av_ranges_t covered = {0}, overlaps = {0}, gaps = {0};
    int64_t records = 0;
    size_t nobjs = 0;
    int r = av_analyse(p, &covered, &overlaps, &gaps);

    if (r < 0)
        goto out;
    for (size_t i = 0; i < p->nobjs; i++)
        if (p->objs[i].last >= p->objs[i].first) {
            nobjs++;
            records += p->objs[i].records > 0 ? p->objs[i].records : 0;
        }
    av->objects += nobjs;
    av->gaps += gaps.n;
    av->overlaps += overlaps.n;
    if (av->json) {
        json_t *o =
            json_pack("{sisIsIso}", "partition", (int)p->partition, "objects", (json_int_t)nobjs,
                      "records", (json_int_t)records, "covered", av_json_ranges(&covered, false));

        if (!o) {
            r = -ENOMEM;
            goto out;
        }
        json_object_set_new(o, "gaps", av_json_ranges(&gaps, true));
        json_object_set_new(o, "overlaps", av_json_ranges(&overlaps, true));
        json_object_set_new(o, "log_start", p->in_kafka ? json_integer(p->log_start) : json_null());
        json_object_set_new(o, "high_watermark", p->in_kafka ? json_integer(p->high) : json_null());
        json_object_set_new(o, "committed",
                            p->committed >= 0 ? json_integer(p->committed) : json_null());
        json_array_append_new(jparts, o);
    } else {
        char cov[256], start[24], committed[24], high[24], label[300];

        av_print_ranges(&covered, cov, sizeof(cov));
        av_offset_text(p->log_start, p->in_kafka, start, sizeof(start));
        av_offset_text(p->committed, p->in_kafka, committed, sizeof(committed));
        av_offset_text(p->high, p->in_kafka, high, sizeof(high));
        snprintf(label, sizeof(label), "%s [%" PRId32 "]", t->name, p->partition);
        printf("%-28s %7zu  %-24s %9s %10s %10s  %s\n", label, nobjs, cov, start, committed, high,
               gaps.n       ? "GAP"
               : overlaps.n ? "ok (overlap)"
                            : "ok");
        for (size_t i = 0; i < gaps.n; i++)
            printf("  gap %s [%" PRId32 "] offsets %" PRId64 "-%" PRId64 " (%" PRId64
                   " missing)%s%s%s%s\n",
                   t->name, p->partition, gaps.v[i].from, gaps.v[i].to,
                   gaps.v[i].to - gaps.v[i].from + 1, gaps.v[i].before ? " after " : "",
                   gaps.v[i].before ? gaps.v[i].before : "",
                   gaps.v[i].after ? (gaps.v[i].before ? " and before " : " before ") : "",
                   gaps.v[i].after ? gaps.v[i].after
                                   : (gaps.v[i].before ? " (below the committed offset)" : ""));
        for (size_t i = 0; i < overlaps.n; i++)
            printf("  overlap %s [%" PRId32 "] offsets %" PRId64 "-%" PRId64
                   " archived twice: %s and %s\n",
                   t->name, p->partition, overlaps.v[i].from, overlaps.v[i].to,
                   overlaps.v[i].before, overlaps.v[i].after);
    }
out:
    free(covered.v);
    free(overlaps.v);
    free(gaps.v);
    return r;
}

static int av_topic_run(av_t *av, av_topic_t *t)
{
    char prefix[S3_ARCHIVE_KEY_MAX];
    av_list_ctx_t ctx = {av, t};
    json_t *jparts = NULL;
    int r;

    if (s3_archive_topic_prefix(av->prefix, t->name, prefix, sizeof(prefix)) < 0) {
        sbctl_err("--prefix is too long");
        return -ENAMETOOLONG;
    }
    if ((r = s3_list(av->s3, prefix, NULL, av_found_object, &ctx)) < 0) {
        if (r == -ENOMEM)
            sbctl_err("out of memory");
        else
            sbctl_err("%s", s3_errmsg(av->s3));
        return r;
    }
    if ((r = av_objects_read(av, t)) < 0 || (r = av_kafka_read(av, t)) < 0)
        return r;
    if (t->nparts > 0)
        qsort(t->parts, t->nparts, sizeof(*t->parts), av_part_cmp);
    else if (!av->json)
        printf("%-28s %7d  %s\n", t->name, 0,
               av->rk ? "no objects, and no such topic in Kafka" : "no objects");
    if (av->json) {
        json_t *jt = json_pack("{ss}", "topic", t->name);

        if (!jt || !(jparts = json_array()) || json_object_set_new(jt, "partitions", jparts) < 0 ||
            json_array_append_new(json_object_get(av->out, "topics"), jt) < 0)
            return -ENOMEM;
    }
    for (size_t i = 0; i < t->nparts && r == 0; i++) {
        if (t->parts[i].nobjs > 0)
            qsort(t->parts[i].objs, t->parts[i].nobjs, sizeof(av_obj_t), av_obj_cmp);
        r = av_report_part(av, t, &t->parts[i], jparts);
    }
    return r;
}

static int av_client_open(av_t *av)
{
    char *secret = sbctl_secret("SB_S3_SECRET_KEY", true, NULL);
    const char *endpoint = sbctl_setting("SB_S3_ENDPOINT"), *bucket = sbctl_setting("SB_S3_BUCKET");
    const char *access = sbctl_setting("SB_S3_ACCESS_KEY");
    char errbuf[512];
    int r;

    if (!secret)
        return -EINVAL;
    if (!endpoint || !bucket || !access) {
        sbctl_err("%s is not set", !endpoint ? "SB_S3_ENDPOINT"
                                   : !bucket ? "SB_S3_BUCKET"
                                             : "SB_S3_ACCESS_KEY");
        free(secret);
        return -EINVAL;
    }
    r = s3_client_new(&(s3_conf_t){.endpoint = endpoint,
                                   .region = sbctl_setting("SB_S3_REGION"),
                                   .bucket = bucket,
                                   .access_key = access,
                                   .secret_key = secret},
                      &av->s3, errbuf, sizeof(errbuf));
    free(secret);
    if (r < 0)
        sbctl_err("%s", errbuf);
    return r;
}

static int av_verify(int argc, char **argv)
{
    static const struct option opts[] = {
        {"topic", required_argument, NULL, 't'}, {"prefix", required_argument, NULL, 'p'},
        {"group", required_argument, NULL, 'g'}, {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
    };
    av_t av = {.group = "sb-s3-archiver"};
    bool named = false;
    int c, r, status = SBCTL_FAIL;

    av.prefix = sbctl_setting("SB_S3_PREFIX");
    if (!av.prefix)
        av.prefix = "archive";
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 't':
            if (!av_topic_add(&av, optarg)) {
                sbctl_err("too many topics");
                return SBCTL_USAGE;
            }
            named = true;
            break;
        case 'p':
            av.prefix = optarg;
            break;
        case 'g':
            av.group = optarg;
            break;
        case 'j':
            av.json = true;
            break;
        case 'h':
            return av_usage(stdout);
        default:
            return av_usage(stderr);
        }
    }
    if (optind != argc) {
        sbctl_err("unexpected argument '%s'", argv[optind]);
        return av_usage(stderr);
    }
    /* "<prefix>//" for an empty topic: drop the last slash. */
    if (s3_archive_topic_prefix(av.prefix, "", av.base, sizeof(av.base)) < 0) {
        sbctl_err("--prefix is too long");
        return SBCTL_USAGE;
    }
    av.base[strlen(av.base) - 1] = '\0';
    if (av_client_open(&av) < 0)
        goto out;
    if (!named) {
        for (size_t i = 0; i < sizeof(av_default_topics) / sizeof(av_default_topics[0]); i++)
            av_topic_add(&av, av_default_topics[i]);
        if ((r = s3_list(av.s3, av.base, "/", av_found_topic, &av)) < 0) {
            sbctl_err("%s", r == -ENOMEM ? "out of memory" : s3_errmsg(av.s3));
            goto out;
        }
    }
    av_kafka_open(&av);
    if (av.json) {
        av.out = json_pack("{ss ss s[]}", "bucket", sbctl_setting("SB_S3_BUCKET"), "prefix",
                           av.prefix, "topics");
        json_object_set_new(av.out, "kafka", json_boolean(av.rk != NULL));
    } else {
        printf("%-28s %7s  %-24s %9s %10s %10s  %s\n", "TOPIC [PARTITION]", "OBJECTS", "COVERED",
               "LOG START", "COMMITTED", "END", "STATUS");
    }
    for (size_t i = 0; i < av.ntopics; i++)
        if (av_topic_run(&av, &av.topics[i]) < 0)
            goto out;
    if (av.json) {
        json_object_set_new(av.out, "objects", json_integer((json_int_t)av.objects));
        json_object_set_new(av.out, "gaps", json_integer((json_int_t)av.gaps));
        json_object_set_new(av.out, "overlaps", json_integer((json_int_t)av.overlaps));
        json_object_set_new(av.out, "errors", json_integer((json_int_t)av.errors));
        json_dumpf(av.out, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        putchar('\n');
    } else {
        printf("%zu objects in %zu topics: %zu gaps, %zu overlaps%s\n", av.objects, av.ntopics,
               av.gaps, av.overlaps,
               av.rk ? "" : " (Kafka not reachable: committed offsets not compared)");
    }
    if (av.gaps == 0 && av.errors == 0)
        status = SBCTL_OK;
    else if (av.gaps > 0)
        sbctl_err("the archive has %zu gaps", av.gaps);
out:
    json_decref(av.out);
    if (av.rk)
        rd_kafka_destroy(av.rk);
    s3_client_free(av.s3);
    for (size_t i = 0; i < av.ntopics; i++) {
        for (size_t j = 0; j < av.topics[i].nparts; j++) {
            for (size_t k = 0; k < av.topics[i].parts[j].nobjs; k++)
                free(av.topics[i].parts[j].objs[k].key);
            free(av.topics[i].parts[j].objs);
        }
        free(av.topics[i].parts);
        free(av.topics[i].name);
    }
    return status;
}

int sbctl_archive_run(int argc, char **argv)
{
    if (argc < 2)
        return av_usage(stderr);
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))
        return av_usage(stdout);
    if (!strcmp(argv[1], "verify"))
        return av_verify(argc - 1, argv + 1);
    sbctl_err("unknown archive command '%s' (see sbctl archive --help)", argv[1]);
    return SBCTL_USAGE;
}
