/* sbctl topics: creates the project's Kafka topics and lists what the cluster has. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "sbctl.h"

#define SBCTL_KAFKA_TIMEOUT_MS 15000

/* The project's topics. Data topics get the configured partition count; dead-letter topics carry
 * little traffic and need no order, so they get at most 3. */
static const struct {
    const char *name;
    bool dlq;
} sbctl_topics[] = {
    {"sensor.readings.v1", false},     {"orders.v1", false},
    {"orders.events.v1", false},       {"anomalies.v1", false},
    {"dlq.sensor-ingest.v1", true},    {"dlq.order-processor.v1", true},
    {"dlq.anomaly-detector.v1", true}, {"dlq.s3-archiver.v1", true},
};
#define SBCTL_NTOPICS (sizeof(sbctl_topics) / sizeof(sbctl_topics[0]))

/* Dead-letter records wait for a human: keep them for 30 days whatever the broker default. */
#define SBCTL_DLQ_RETENTION_MS "2592000000"

typedef struct sbctl_kafka {
    rd_kafka_t *rk;
    char last_error[512];
} sbctl_kafka_t;

static int topics_usage(FILE *f)
{
    fprintf(f, "Usage: sbctl topics create [--partitions N] [--replication R]\n"
               "       sbctl topics list\n"
               "\n"
               "create  creates sensor.readings.v1, orders.v1, orders.events.v1, anomalies.v1\n"
               "        with N partitions (default SB_TOPIC_PARTITIONS, else 6) and the\n"
               "        dead-letter topics dlq.{sensor-ingest,order-processor,anomaly-detector,\n"
               "        s3-archiver}.v1 with min(N, 3) partitions and 30 days retention.\n"
               "        R defaults to SB_TOPIC_REPLICATION, else the broker's default; with\n"
               "        R >= 3, min.insync.replicas=2. Existing topics are left as they are.\n"
               "list    every non-internal topic with its partition count and the sum of its\n"
               "        partitions' high watermarks (records ever written).\n"
               "\n"
               "Kafka: SB_KAFKA_BOOTSTRAP (default 127.0.0.1:9092).\n");
    return f == stdout ? SBCTL_OK : SBCTL_USAGE;
}

/* librdkafka logs from its own threads; the last error is shown if the command fails. */
static void kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    (void)level;
    (void)fac;
    (void)buf;
}

static void kafka_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    sbctl_kafka_t *k = opaque;
    (void)rk;
    (void)err;
    snprintf(k->last_error, sizeof(k->last_error), "%s", reason);
}

static int kafka_open(sbctl_kafka_t *k)
{
    const char *bootstrap = sbctl_setting("SB_KAFKA_BOOTSTRAP");
    char err[512];
    if (!bootstrap)
        bootstrap = "127.0.0.1:9092";

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, err, sizeof(err)) !=
        RD_KAFKA_CONF_OK) {
        sbctl_err("SB_KAFKA_BOOTSTRAP: %s", err);
        rd_kafka_conf_destroy(conf);
        return -EINVAL;
    }
    rd_kafka_conf_set_log_cb(conf, kafka_log);
    rd_kafka_conf_set_error_cb(conf, kafka_error);
    rd_kafka_conf_set_opaque(conf, k);
    k->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (!k->rk) {
        sbctl_err("cannot create a Kafka client: %s", err);
        rd_kafka_conf_destroy(conf);
        return -EINVAL;
    }
    return 0;
}

static void kafka_fail(sbctl_kafka_t *k, const char *what, rd_kafka_resp_err_t err)
{
    rd_kafka_poll(k->rk, 0); /* serves error_cb */
    sbctl_err("%s: %s (bootstrap %s)%s%s", what, rd_kafka_err2str(err),
              sbctl_setting("SB_KAFKA_BOOTSTRAP") ? sbctl_setting("SB_KAFKA_BOOTSTRAP")
                                                  : "127.0.0.1:9092",
              k->last_error[0] ? "; last error: " : "", k->last_error);
}

static int topics_create(sbctl_kafka_t *k, int partitions, int replication)
{
    rd_kafka_NewTopic_t *nts[SBCTL_NTOPICS] = {0};
    rd_kafka_AdminOptions_t *opts = NULL;
    rd_kafka_queue_t *q = NULL;
    rd_kafka_event_t *ev = NULL;
    char err[512];
    int status = SBCTL_FAIL;

    for (size_t i = 0; i < SBCTL_NTOPICS; i++) {
        int p = sbctl_topics[i].dlq ? (partitions < 3 ? partitions : 3) : partitions;
        nts[i] = rd_kafka_NewTopic_new(sbctl_topics[i].name, p, replication, err, sizeof(err));
        if (!nts[i]) {
            sbctl_err("%s: %s", sbctl_topics[i].name, err);
            goto out;
        }
        if (sbctl_topics[i].dlq)
            rd_kafka_NewTopic_set_config(nts[i], "retention.ms", SBCTL_DLQ_RETENTION_MS);
        /* With three copies, acks=all should mean at least two of them. */
        if (replication >= 3)
            rd_kafka_NewTopic_set_config(nts[i], "min.insync.replicas", "2");
    }
    opts = rd_kafka_AdminOptions_new(k->rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(opts, SBCTL_KAFKA_TIMEOUT_MS, err, sizeof(err));
    rd_kafka_AdminOptions_set_operation_timeout(opts, SBCTL_KAFKA_TIMEOUT_MS, err, sizeof(err));
    q = rd_kafka_queue_new(k->rk);
    rd_kafka_CreateTopics(k->rk, nts, SBCTL_NTOPICS, opts, q);
    ev = rd_kafka_queue_poll(q, SBCTL_KAFKA_TIMEOUT_MS + 5000);
    if (!ev || rd_kafka_event_error(ev)) {
        kafka_fail(k, "creating topics failed",
                   ev ? rd_kafka_event_error(ev) : RD_KAFKA_RESP_ERR__TIMED_OUT);
        goto out;
    }

    size_t n = 0;
    const rd_kafka_topic_result_t **res =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
    status = SBCTL_OK;
    for (size_t i = 0; i < n; i++) {
        rd_kafka_resp_err_t e = rd_kafka_topic_result_error(res[i]);
        const char *name = rd_kafka_topic_result_name(res[i]);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
            printf("created %s\n", name);
        } else if (e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
            printf("exists  %s\n", name);
        } else {
            const char *msg = rd_kafka_topic_result_error_string(res[i]);
            sbctl_err("cannot create %s: %s", name, msg ? msg : rd_kafka_err2str(e));
            status = SBCTL_FAIL;
        }
    }

out:
    if (ev)
        rd_kafka_event_destroy(ev);
    if (q)
        rd_kafka_queue_destroy(q);
    if (opts)
        rd_kafka_AdminOptions_destroy(opts);
    for (size_t i = 0; i < SBCTL_NTOPICS; i++)
        if (nts[i])
            rd_kafka_NewTopic_destroy(nts[i]);
    return status;
}

static int topic_cmp(const void *a, const void *b)
{
    const rd_kafka_metadata_topic_t *x = a, *y = b;
    return strcmp(x->topic, y->topic);
}

/* A partition created a moment ago may not have a leader yet (or this client's metadata may not
 * know it): such errors pass within seconds, so they are retried for a while. */
static rd_kafka_resp_err_t watermarks(sbctl_kafka_t *k, const char *topic, int32_t partition,
                                      int64_t *lo, int64_t *hi)
{
    rd_kafka_resp_err_t e;
    for (int attempt = 0;; attempt++) {
        e = rd_kafka_query_watermark_offsets(k->rk, topic, partition, lo, hi,
                                             SBCTL_KAFKA_TIMEOUT_MS);
        bool transient = e == RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION ||
                         e == RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE ||
                         e == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
        if (!transient || attempt == 50)
            return e;
        nanosleep(&(struct timespec){.tv_nsec = 200 * 1000 * 1000}, NULL);
    }
}

static int topics_list(sbctl_kafka_t *k)
{
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(k->rk, 1, NULL, &md, SBCTL_KAFKA_TIMEOUT_MS);
    if (e) {
        kafka_fail(k, "cannot read cluster metadata", e);
        return SBCTL_FAIL;
    }

    rd_kafka_metadata_topic_t *topics = malloc(((size_t)md->topic_cnt + 1) * sizeof(*topics));
    if (!topics) {
        rd_kafka_metadata_destroy(md);
        return SBCTL_FAIL;
    }
    memcpy(topics, md->topics, (size_t)md->topic_cnt * sizeof(*topics));
    qsort(topics, (size_t)md->topic_cnt, sizeof(*topics), topic_cmp);

    int status = SBCTL_OK;
    printf("%-32s %10s %20s\n", "TOPIC", "PARTITIONS", "HIGH_WATERMARK_SUM");
    for (int i = 0; i < md->topic_cnt; i++) {
        const rd_kafka_metadata_topic_t *t = &topics[i];
        if (!strncmp(t->topic, "__", 2))
            continue; /* internal: __consumer_offsets, __transaction_state */
        if (t->err) {
            sbctl_err("%s: %s", t->topic, rd_kafka_err2str(t->err));
            status = SBCTL_FAIL;
            continue;
        }
        long long sum = 0;
        bool ok = true;
        for (int p = 0; p < t->partition_cnt && ok; p++) {
            int64_t lo, hi;
            e = watermarks(k, t->topic, t->partitions[p].id, &lo, &hi);
            if (e) {
                sbctl_err("%s [%d]: cannot read offsets: %s", t->topic, t->partitions[p].id,
                          rd_kafka_err2str(e));
                ok = false;
                status = SBCTL_FAIL;
            }
            sum += hi;
        }
        if (ok)
            printf("%-32s %10d %20lld\n", t->topic, t->partition_cnt, sum);
        else
            printf("%-32s %10d %20s\n", t->topic, t->partition_cnt, "?");
    }
    free(topics);
    rd_kafka_metadata_destroy(md);
    return status;
}

int sbctl_topics_run(int argc, char **argv)
{
    static const struct option opts[] = {{"partitions", required_argument, NULL, 'p'},
                                         {"replication", required_argument, NULL, 'r'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    const char *sub = argc > 1 ? argv[1] : NULL;
    const char *env_p = sbctl_setting("SB_TOPIC_PARTITIONS");
    const char *env_r = sbctl_setting("SB_TOPIC_REPLICATION");
    long partitions = 6, replication = -1;
    int c;

    if (!sub || !strcmp(sub, "--help") || !strcmp(sub, "-h"))
        return topics_usage(sub ? stdout : stderr);
    if (strcmp(sub, "create") != 0 && strcmp(sub, "list") != 0) {
        sbctl_err("unknown topics command '%s'", sub);
        return topics_usage(stderr);
    }
    if (env_p && sbctl_parse_int(env_p, 1, 10000, &partitions) < 0) {
        sbctl_err("SB_TOPIC_PARTITIONS must be a number of partitions, 1-10000");
        return SBCTL_FAIL;
    }
    if (env_r && sbctl_parse_int(env_r, -1, 32, &replication) < 0) {
        sbctl_err("SB_TOPIC_REPLICATION must be a replication factor, 1-32");
        return SBCTL_FAIL;
    }
    optind = 0;
    while ((c = getopt_long(argc - 1, argv + 1, "h", opts, NULL)) != -1) {
        if (c == 'h')
            return topics_usage(stdout);
        if (strcmp(sub, "create") != 0)
            return topics_usage(stderr);
        if (c == 'p' && sbctl_parse_int(optarg, 1, 10000, &partitions) < 0) {
            sbctl_err("--partitions must be 1-10000");
            return SBCTL_USAGE;
        }
        if (c == 'r' && sbctl_parse_int(optarg, 1, 32, &replication) < 0) {
            sbctl_err("--replication must be 1-32");
            return SBCTL_USAGE;
        }
        if (c == '?')
            return topics_usage(stderr);
    }
    if (optind < argc - 1)
        return topics_usage(stderr);

    sbctl_kafka_t k = {0};
    if (kafka_open(&k) < 0)
        return SBCTL_FAIL;
    int status = !strcmp(sub, "create") ? topics_create(&k, (int)partitions, (int)replication)
                                        : topics_list(&k);
    rd_kafka_destroy(k.rk);
    return status;
}
