/* sb-bench-baseline: the benchmark's floor. A bare libevent evhttp server that answers every
 * request with 200 and a tiny JSON body, using the same threading model as sb-gateway (one event
 * loop per thread, each with its own SO_REUSEPORT listening socket on the same port). Whatever
 * the gateway costs above this is the price of authentication, validation and Kafka.
 *
 * usage: sb-bench-baseline PORT [THREADS]
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>

static void on_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evbuffer_add(out, "{\"ok\":true}", 11);
    evhttp_send_reply(req, 200, "OK", NULL);
}

static int listen_reuseport(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 || listen(fd, 4096) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

static void *loop_main(void *arg)
{
    int port = *(int *)arg;
    struct event_base *base = event_base_new();
    struct evhttp *http = base ? evhttp_new(base) : NULL;
    int fd = listen_reuseport(port);
    if (!http || fd < 0 || evhttp_accept_socket(http, fd) != 0) {
        fprintf(stderr, "sb-bench-baseline: cannot listen on 127.0.0.1:%d: %s\n", port,
                fd < 0 ? strerror(-fd) : "evhttp setup failed");
        exit(1);
    }
    evhttp_set_gencb(http, on_request, NULL);
    event_base_dispatch(base);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: sb-bench-baseline PORT [THREADS]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    long threads = argc > 2 ? atol(argv[2]) : sysconf(_SC_NPROCESSORS_ONLN);
    if (port <= 0 || port > 65535 || threads < 1 || threads > 256) {
        fprintf(stderr, "sb-bench-baseline: bad port or thread count\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    pthread_t tids[256];
    for (long i = 0; i < threads; i++)
        pthread_create(&tids[i], NULL, loop_main, &port);
    fprintf(stderr, "sb-bench-baseline: listening on 127.0.0.1:%d with %ld threads\n", port,
            threads);
    for (long i = 0; i < threads; i++)
        pthread_join(tids[i], NULL);
    return 0;
}
