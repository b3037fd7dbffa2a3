/* Tests for bus_producer.c against librdkafka's mock cluster. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>

#include <event2/event.h>

#include "bus_producer.h"
#include "bus_test.h"

static mock_t mock;

static void setup(void)
{
    mock_start(&mock);
}

static void teardown(void)
{
    mock_stop(&mock);
}

TestSuite(bus_producer, .init = setup, .fini = teardown, .timeout = 30);

typedef struct loop_state {
    struct event_base *base;
    pthread_t loop_thread;
    int want, reports, ok, wrong_thread;
} loop_state_t;

static void on_loop_delivery(rd_kafka_resp_err_t err, int32_t partition, int64_t offset,
                             void *opaque)
{
    loop_state_t *s = opaque;

    (void)partition;
    (void)offset;
    s->reports++;
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR && offset >= 0)
        s->ok++;
    if (!pthread_equal(pthread_self(), s->loop_thread))
        s->wrong_thread++;
    if (s->reports == s->want)
        event_base_loopbreak(s->base);
}

Test(bus_producer, reports_arrive_in_the_loop_thread)
{
    test_conf_t tc;
    bus_producer_t *p;
    bus_notifier_t *n;
    loop_state_t s = {.want = 200, .loop_thread = pthread_self()};
    char errbuf[256], value[32];

    test_conf_init(&tc, "bootstrap.servers", mock.bootstraps, NULL);
    /* The producer first: it makes libevent thread-safe before the base exists. */
    cr_assert_eq(bus_producer_new(&tc.conf, &p, errbuf, sizeof(errbuf)), 0, "%s", errbuf);
    s.base = event_base_new();
    cr_assert_eq(bus_notifier_new(s.base, &n), 0);

    for (int i = 0; i < s.want; i++) {
        int len = snprintf(value, sizeof(value), "reading-%d", i);

        cr_assert_eq(bus_producer_produce(p, "readings", "k", 1, value, (size_t)len, NULL, 0, n,
                                          on_loop_delivery, &s),
                     0);
    }
    /* The loop has no other event; a timeout guards against reports that never come. */
    event_base_loopexit(s.base, &(struct timeval){20, 0});
    event_base_loop(s.base, EVLOOP_NO_EXIT_ON_EMPTY);

    cr_expect_eq(s.reports, s.want);
    cr_expect_eq(s.ok, s.want);
    cr_expect_eq(s.wrong_thread, 0);
    /* The count drops just after a report is handed to the loop, so it may lag a moment. */
    cr_expect(WAIT_UNTIL(bus_producer_outq_len(p) == 0, 5000));
    cr_expect(bus_producer_connected(p));

    bus_producer_free(p, 5000);
    bus_notifier_free(n);
    event_base_free(s.base);
}

typedef struct report {
    atomic_int count, ok, failed;
    atomic_int err;
    int32_t partition;
    int64_t offset;
} report_t;

static void on_delivery(rd_kafka_resp_err_t err, int32_t partition, int64_t offset, void *opaque)
{
    report_t *r = opaque;

    if (err) {
        atomic_store(&r->err, err);
        atomic_fetch_add(&r->failed, 1);
    } else {
        r->partition = partition;
        r->offset = offset;
        atomic_fetch_add(&r->ok, 1);
    }
    atomic_fetch_add(&r->count, 1);
}

Test(bus_producer, record_arrives_with_key_value_and_headers)
{
    const bus_header_t hdrs[] = {
        {"content-type", "application/json", 16},
        {"request-id", "r-42", 4},
    };
    const char *value = "{\"t\":21.5}";
    test_conf_t tc;
    bus_producer_t *p;
    report_t rep = {0};
    read_rec_t got[2];
    char errbuf[256];
    size_t n;

    mock_topic(&mock, "hdrs", 1);
    test_conf_init(&tc, "bootstrap.servers", mock.bootstraps, NULL);
    cr_assert_eq(bus_producer_new(&tc.conf, &p, errbuf, sizeof(errbuf)), 0, "%s", errbuf);
    cr_assert_eq(bus_producer_produce(p, "hdrs", "p1/s1", 5, value, strlen(value), hdrs, 2, NULL,
                                      on_delivery, &rep),
                 0);
    cr_assert_eq(bus_producer_flush(p, 10000), 0);
    cr_assert_eq(atomic_load(&rep.ok), 1, "delivery failed: %s",
                 rd_kafka_err2str(atomic_load(&rep.err)));

    n = topic_read(mock.bootstraps, "hdrs", 1, got, 2, 10000);
    cr_assert_eq(n, 1);
    cr_expect_eq(got[0].offset, rep.offset);
    cr_expect_str_eq(got[0].value, value);
    cr_expect_str_eq(read_rec_header(&got[0], "content-type"), "application/json");
    cr_expect_str_eq(read_rec_header(&got[0], "request-id"), "r-42");
    read_rec_free(got, n);
    bus_producer_free(p, 5000);
}

Test(bus_producer, full_queue_is_enobufs_and_every_record_is_reported_once)
{
    test_conf_t tc;
    bus_producer_t *p;
    report_t rep = {0};
    char errbuf[256];
    int r = 0, enqueued = 0;

    /* Nothing listens on port 1, so records stay in the local queue. */
    test_conf_init(&tc, "bootstrap.servers", "127.0.0.1:1", "queue.buffering.max.messages", "5",
                   NULL);
    cr_assert_eq(bus_producer_new(&tc.conf, &p, errbuf, sizeof(errbuf)), 0, "%s", errbuf);
    while (enqueued < 100 && (r = bus_producer_produce(p, "t", NULL, 0, "v", 1, NULL, 0, NULL,
                                                       on_delivery, &rep)) == 0)
        enqueued++;
    cr_expect_eq(r, -ENOBUFS);
    cr_expect_eq(enqueued, 5);
    cr_expect_eq(bus_producer_outq_len(p), 5);
    cr_expect_not(bus_producer_connected(p));

    bus_producer_free(p, 100);
    cr_expect_eq(atomic_load(&rep.count), enqueued);
    cr_expect_eq(atomic_load(&rep.ok), 0);
}

Test(bus_producer, unreachable_broker_reports_an_error_never_success)
{
    test_conf_t tc;
    bus_producer_t *p;
    report_t rep = {0};
    char errbuf[256];

    test_conf_init(&tc, "bootstrap.servers", "127.0.0.1:1", "message.timeout.ms", "500", NULL);
    cr_assert_eq(bus_producer_new(&tc.conf, &p, errbuf, sizeof(errbuf)), 0, "%s", errbuf);
    cr_assert_eq(bus_producer_produce(p, "t", NULL, 0, "v", 1, NULL, 0, NULL, on_delivery, &rep),
                 0);
    cr_assert(WAIT_UNTIL(atomic_load(&rep.count) == 1, 10000));
    cr_expect_eq(atomic_load(&rep.ok), 0);
    cr_expect_eq(atomic_load(&rep.err), RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, "got %s",
                 rd_kafka_err2str(atomic_load(&rep.err)));
    cr_expect_eq(bus_producer_flush(p, 0), 0);
    bus_producer_free(p, 0);
    cr_expect_eq(atomic_load(&rep.count), 1);
}

Test(bus_producer, bad_setting_is_named_in_the_error)
{
    test_conf_t tc;
    bus_producer_t *p = NULL;
    char errbuf[256] = "";

    test_conf_init(&tc, "linger.ms", "soon", NULL);
    cr_expect_eq(bus_producer_new(&tc.conf, &p, errbuf, sizeof(errbuf)), -EINVAL);
    cr_expect_null(p);
    cr_expect(strstr(errbuf, "kafka.linger.ms"), "errbuf: %s", errbuf);
}

Test(bus_producer, connects_and_refuses_a_record_without_topic)
{
    test_conf_t tc;
    bus_producer_t *p;
    char errbuf[256];

    test_conf_init(&tc, "bootstrap.servers", mock.bootstraps, NULL);
    cr_assert_eq(bus_producer_new(&tc.conf, &p, errbuf, sizeof(errbuf)), 0, "%s", errbuf);
    cr_expect_eq(bus_producer_produce(p, NULL, NULL, 0, "v", 1, NULL, 0, NULL, on_delivery, NULL),
                 -EINVAL);
    cr_expect(WAIT_UNTIL(bus_producer_connected(p), 10000));
    bus_producer_free(p, 1000);
}

Test(bus_producer, fatal_error_makes_produce_fail_with_eio)
{
    test_conf_t tc;
    bus_producer_t *p;
    report_t rep = {0};
    char errbuf[256];

    test_conf_init(&tc, "bootstrap.servers", mock.bootstraps, NULL);
    cr_assert_eq(bus_producer_new(&tc.conf, &p, errbuf, sizeof(errbuf)), 0, "%s", errbuf);
    cr_assert_eq(rd_kafka_test_fatal_error(bus_producer_handle(p),
                                           RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                           "test-injected"),
                 0);
    cr_expect_eq(bus_producer_produce(p, "t", NULL, 0, "v", 1, NULL, 0, NULL, on_delivery, &rep),
                 -EIO);
    bus_producer_free(p, 1000);
    cr_expect_eq(atomic_load(&rep.count), 0);
}
