/* Tests for bus_consumer.c against librdkafka's mock cluster: retries, the dead-letter topic
 * and resuming from committed offsets. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>

#include "bus_consumer.h"
#include "bus_test.h"

#define PARTITIONS 3
#define MAX_RECS   1200

static mock_t mock;
static atomic_bool stop_flag;

static bool test_stopping(void)
{
    return atomic_load(&stop_flag);
}

static void setup(void)
{
    mock_start(&mock);
    atomic_store(&stop_flag, false);
}

static void teardown(void)
{
    mock_stop(&mock);
}

TestSuite(bus_consumer, .init = setup, .fini = teardown, .timeout = 60);

/* What the handler saw, shared with the test thread. */
typedef struct seen {
    pthread_mutex_t lock;
    int fail_first; /* fail this many batches with -EAGAIN */
    int calls, failures;
    int reject_every;   /* reject records whose number is a multiple of this (0: none) */
    int64_t min_offset; /* lowest offset handed to the handler */
    size_t done;        /* distinct records in successful batches */
    bool done_at[PARTITIONS][MAX_RECS];
    int retries_reported;
} seen_t;

static int handle_batch(void *opaque, bus_record_t *recs, size_t n)
{
    seen_t *s = opaque;
    int r = 0;

    pthread_mutex_lock(&s->lock);
    s->calls++;
    if (s->failures < s->fail_first) {
        s->failures++;
        r = -EAGAIN;
    }
    for (size_t i = 0; i < n; i++) {
        const bus_record_t *rec = &recs[i];
        int num = atoi((const char *)rec->value + 2); /* "v-<num>" */

        cr_assert(rec->partition >= 0 && rec->partition < PARTITIONS);
        cr_assert(rec->offset >= 0 && rec->offset < MAX_RECS);
        if (s->min_offset < 0 || rec->offset < s->min_offset)
            s->min_offset = rec->offset;
        if (r == 0 && s->reject_every && num % s->reject_every == 0)
            bus_record_reject(&recs[i], "bad reading %d", num);
        if (r == 0 && !s->done_at[rec->partition][rec->offset]) {
            s->done_at[rec->partition][rec->offset] = true;
            s->done++;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}

static void on_event(void *opaque, bus_event_t ev, long detail, const char *text)
{
    seen_t *s = opaque;

    (void)detail;
    (void)text;
    if (ev == BUS_EV_BATCH_RETRY) {
        pthread_mutex_lock(&s->lock);
        s->retries_reported++;
        pthread_mutex_unlock(&s->lock);
    }
}

static size_t seen_done(seen_t *s)
{
    size_t n;

    pthread_mutex_lock(&s->lock);
    n = s->done;
    pthread_mutex_unlock(&s->lock);
    return n;
}

static void seen_init(seen_t *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->lock, NULL);
    s->min_offset = -1;
}

static void count_failure(rd_kafka_resp_err_t err, int32_t partition, int64_t offset, void *opaque)
{
    (void)partition;
    (void)offset;
    if (err)
        atomic_fetch_add((atomic_int *)opaque, 1);
}

static void produce_range(const char *topic, int from, int to)
{
    atomic_int failed = 0;
    const bus_header_t hdr = {"content-type", "text/plain", 10};
    test_conf_t tc;
    bus_producer_t *p;
    char errbuf[256], key[16], value[32];

    test_conf_init(&tc, "bootstrap.servers", mock.bootstraps, NULL);
    cr_assert_eq(bus_producer_new(&tc.conf, &p, errbuf, sizeof(errbuf)), 0, "%s", errbuf);
    for (int i = from; i < to; i++) {
        int klen = snprintf(key, sizeof(key), "s%d", i % 7);
        int vlen = snprintf(value, sizeof(value), "v-%d", i);

        cr_assert_eq(bus_producer_produce(p, topic, key, (size_t)klen, value, (size_t)vlen, &hdr, 1,
                                          NULL, count_failure, &failed),
                     0);
    }
    cr_assert_eq(bus_producer_flush(p, 10000), 0);
    cr_assert_eq(atomic_load(&failed), 0);
    bus_producer_free(p, 0);
}

typedef struct runner {
    pthread_t thread;
    bus_consumer_t *c;
    int result;
} runner_t;

static void *run_main(void *arg)
{
    runner_t *rn = arg;

    rn->result = bus_consumer_run(rn->c, test_stopping);
    return NULL;
}

static void consumer_start(runner_t *rn, const char *group, seen_t *s)
{
    static const char *const topics[] = {"in", NULL};
    test_conf_t tc;
    char errbuf[256];

    /* The mock holds a rebalance that follows a LeaveGroup for session.timeout.ms - 1 s (real
     * Kafka does not wait): keep it short so that a second member joins quickly. */
    test_conf_init(&tc, "bootstrap.servers", mock.bootstraps, "session.timeout.ms", "3000", NULL);
    cr_assert_eq(bus_consumer_new(&tc.conf,
                                  &(bus_consumer_opts_t){
                                      .group_id = group,
                                      .topics = topics,
                                      .dlq_topic = "dlq.test.v1",
                                      .consumer_name = "test",
                                      .batch_max = 64,
                                      .batch_ms = 50,
                                      .handle_batch = handle_batch,
                                      .opaque = s,
                                  },
                                  &rn->c, errbuf, sizeof(errbuf)),
                 0, "%s", errbuf);
    bus_consumer_set_event_cb(rn->c, on_event, s);
    atomic_store(&stop_flag, false);
    cr_assert_eq(pthread_create(&rn->thread, NULL, run_main, rn), 0);
}

static void consumer_stop(runner_t *rn)
{
    atomic_store(&stop_flag, true);
    pthread_join(rn->thread, NULL);
    cr_expect_eq(rn->result, 0);
    bus_consumer_free(rn->c);
}

static void expect_committed_at_end(const char *group)
{
    for (int p = 0; p < PARTITIONS; p++) {
        int64_t end = high_watermark(mock.bootstraps, "in", p);

        cr_expect_eq(committed_offset(mock.bootstraps, group, "in", p), end,
                     "partition %d: committed offset is not the end (%" PRId64 ")", p, end);
    }
}

Test(bus_consumer, transient_failures_are_retried_without_losing_records)
{
    runner_t rn;
    seen_t s;

    seen_init(&s);
    s.fail_first = 2;
    mock_topic(&mock, "in", PARTITIONS);
    produce_range("in", 0, 1000);

    consumer_start(&rn, "g-retry", &s);
    cr_assert(WAIT_UNTIL(seen_done(&s) == 1000, 25000), "handled %zu of 1000", seen_done(&s));
    consumer_stop(&rn);

    cr_expect_eq(s.failures, 2);
    cr_expect_eq(s.retries_reported, 2);
    cr_expect_eq(s.done, 1000);
    expect_committed_at_end("g-retry");
}

Test(bus_consumer, rejected_records_go_to_the_dead_letter_topic)
{
    read_rec_t dlq[8];
    bool got[4] = {false};
    runner_t rn;
    seen_t s;
    size_t n;

    seen_init(&s);
    s.reject_every = 5;
    mock_topic(&mock, "in", PARTITIONS);
    mock_topic(&mock, "dlq.test.v1", 1);
    produce_range("in", 0, 20);

    consumer_start(&rn, "g-dlq", &s);
    cr_assert(WAIT_UNTIL(seen_done(&s) == 20, 20000), "handled %zu of 20", seen_done(&s));
    consumer_stop(&rn);
    expect_committed_at_end("g-dlq");

    /* Everything the topic holds, so that a duplicate would be seen. */
    n = topic_read(mock.bootstraps, "dlq.test.v1", 1, dlq, 8, 10000);
    cr_assert_eq(n, 4, "%zu records in the DLQ", n);
    for (size_t i = 0; i < n; i++) {
        int num = atoi(dlq[i].value + 2);
        char reason[64];

        cr_assert(strncmp(dlq[i].value, "v-", 2) == 0 && num % 5 == 0 && num < 20, "value %s",
                  dlq[i].value);
        cr_expect_not(got[num / 5], "%s twice", dlq[i].value);
        got[num / 5] = true;
        snprintf(reason, sizeof(reason), "bad reading %d", num);
        cr_expect_str_eq(read_rec_header(&dlq[i], "sb-dlq-reason"), reason);
        cr_expect_str_eq(read_rec_header(&dlq[i], "sb-dlq-topic"), "in");
        cr_expect_str_eq(read_rec_header(&dlq[i], "sb-dlq-consumer"), "test");
        cr_expect_str_eq(read_rec_header(&dlq[i], "content-type"), "text/plain");
        cr_expect_not_null(read_rec_header(&dlq[i], "sb-dlq-offset"));
        cr_expect_not_null(read_rec_header(&dlq[i], "sb-dlq-partition"));
    }
    read_rec_free(dlq, n);
}

Test(bus_consumer, new_member_resumes_after_committed_offsets)
{
    int64_t end[PARTITIONS];
    runner_t rn;
    seen_t s;

    seen_init(&s);
    mock_topic(&mock, "in", PARTITIONS);
    produce_range("in", 0, 100);
    consumer_start(&rn, "g-resume", &s);
    cr_assert(WAIT_UNTIL(seen_done(&s) == 100, 20000), "handled %zu of 100", seen_done(&s));
    consumer_stop(&rn);
    expect_committed_at_end("g-resume");
    for (int p = 0; p < PARTITIONS; p++)
        end[p] = high_watermark(mock.bootstraps, "in", p);

    produce_range("in", 100, 150);
    seen_init(&s);
    consumer_start(&rn, "g-resume", &s);
    cr_assert(WAIT_UNTIL(seen_done(&s) == 50, 20000), "handled %zu of 50", seen_done(&s));
    consumer_stop(&rn);

    /* Nothing below a partition's old end came again. */
    for (int p = 0; p < PARTITIONS; p++)
        for (int64_t o = 0; o < end[p]; o++)
            cr_expect_not(s.done_at[p][o], "partition %d offset %" PRId64 " delivered again", p, o);
    expect_committed_at_end("g-resume");
}

Test(bus_consumer, missing_options_are_refused_with_a_message)
{
    static const char *const topics[] = {"in", NULL};
    test_conf_t tc;
    bus_consumer_t *c = NULL;
    char errbuf[256] = "";

    test_conf_init(&tc, "bootstrap.servers", mock.bootstraps, "partition.assignment.strategy",
                   "cooperative-sticky", NULL);
    cr_expect_eq(bus_consumer_new(&tc.conf,
                                  &(bus_consumer_opts_t){.group_id = "g",
                                                         .topics = topics,
                                                         .dlq_topic = "dlq.t.v1",
                                                         .batch_max = 10,
                                                         .handle_batch = handle_batch},
                                  &c, errbuf, sizeof(errbuf)),
                 -EINVAL);
    cr_expect(strstr(errbuf, "partition.assignment.strategy"), "errbuf: %s", errbuf);
    cr_expect_eq(bus_consumer_new(&tc.conf,
                                  &(bus_consumer_opts_t){.group_id = "g", .topics = topics}, &c,
                                  errbuf, sizeof(errbuf)),
                 -EINVAL);
    cr_expect(strstr(errbuf, "required"), "errbuf: %s", errbuf);
    cr_expect_null(c);
}

static atomic_int ticks;

static void count_tick(void *opaque)
{
    (void)opaque;
    atomic_fetch_add(&ticks, 1);
}

Test(bus_consumer, tick_runs_while_no_records_arrive)
{
    static const char *const topics[] = {"in", NULL};
    test_conf_t tc;
    char errbuf[256];
    runner_t rn;
    seen_t s;

    seen_init(&s);
    atomic_store(&ticks, 0);
    test_conf_init(&tc, "bootstrap.servers", mock.bootstraps, NULL);
    cr_assert_eq(bus_consumer_new(&tc.conf,
                                  &(bus_consumer_opts_t){
                                      .group_id = "g-tick",
                                      .topics = topics,
                                      .dlq_topic = "dlq.test.v1",
                                      .consumer_name = "test",
                                      .batch_max = 64,
                                      .batch_ms = 50,
                                      .handle_batch = handle_batch,
                                      .on_tick = count_tick,
                                      .tick_ms = 50,
                                      .opaque = &s,
                                  },
                                  &rn.c, errbuf, sizeof(errbuf)),
                 0, "%s", errbuf);
    atomic_store(&stop_flag, false);
    cr_assert_eq(pthread_create(&rn.thread, NULL, run_main, &rn), 0);
    cr_assert(WAIT_UNTIL(atomic_load(&ticks) >= 3, 10000), "on_tick ran %d times",
              atomic_load(&ticks));
    consumer_stop(&rn);
    cr_assert_eq(seen_done(&s), 0, "no record was produced, none may be handled");
}

/* A daemon that stores offsets itself: partition 0 after each batch, partition 1 only when it
 * is revoked, partition 2 never. */
typedef struct manual {
    bus_consumer_t *c;
    atomic_int handled;
    atomic_int flushes;
    int64_t next[PARTITIONS];
} manual_t;

static int manual_batch(void *opaque, bus_record_t *recs, size_t n)
{
    manual_t *m = opaque;

    for (size_t i = 0; i < n; i++) {
        m->next[recs[i].partition] = recs[i].offset + 1;
        if (recs[i].partition == 0)
            cr_assert_eq(bus_consumer_offsets_store(m->c, recs[i].topic, 0, recs[i].offset + 1), 0);
    }
    atomic_fetch_add(&m->handled, (int)n);
    return 0;
}

static void manual_flush(void *opaque, const rd_kafka_topic_partition_list_t *parts)
{
    manual_t *m = opaque;

    for (int i = 0; i < parts->cnt; i++)
        if (parts->elems[i].partition == 1 && m->next[1] > 0)
            cr_expect_eq(bus_consumer_offsets_store(m->c, parts->elems[i].topic, 1, m->next[1]), 0);
    atomic_fetch_add(&m->flushes, 1);
}

Test(bus_consumer, manual_offsets_commit_only_what_the_daemon_stored)
{
    static const char *const topics[] = {"in", NULL};
    static manual_t m;
    test_conf_t tc;
    char errbuf[256];
    runner_t rn;

    memset(&m, 0, sizeof(m));
    mock_topic(&mock, "in", PARTITIONS);
    produce_range("in", 0, 100);
    for (int p = 0; p < PARTITIONS; p++)
        cr_assert_gt(high_watermark(mock.bootstraps, "in", p), 0, "partition %d is empty", p);

    test_conf_init(&tc, "bootstrap.servers", mock.bootstraps, NULL);
    cr_assert_eq(bus_consumer_new(&tc.conf,
                                  &(bus_consumer_opts_t){
                                      .group_id = "g-manual",
                                      .topics = topics,
                                      .dlq_topic = "dlq.test.v1",
                                      .batch_max = 16,
                                      .batch_ms = 20,
                                      .handle_batch = manual_batch,
                                      .manual_offsets = true,
                                      .on_revoke_flush = manual_flush,
                                      .opaque = &m,
                                  },
                                  &rn.c, errbuf, sizeof(errbuf)),
                 0, "%s", errbuf);
    m.c = rn.c;
    atomic_store(&stop_flag, false);
    cr_assert_eq(pthread_create(&rn.thread, NULL, run_main, &rn), 0);
    cr_assert(WAIT_UNTIL(atomic_load(&m.handled) == 100, 20000), "handled %d of 100",
              atomic_load(&m.handled));
    cr_expect_eq(atomic_load(&m.flushes), 0, "flushed before any revocation");
    consumer_stop(&rn);

    cr_expect_eq(atomic_load(&m.flushes), 1, "the close revokes once");
    for (int p = 0; p < 2; p++)
        cr_expect_eq(committed_offset(mock.bootstraps, "g-manual", "in", p),
                     high_watermark(mock.bootstraps, "in", p), "partition %d", p);
    cr_expect_eq(committed_offset(mock.bootstraps, "g-manual", "in", 2), RD_KAFKA_OFFSET_INVALID,
                 "a partition the daemon never stored must not be committed");
}
