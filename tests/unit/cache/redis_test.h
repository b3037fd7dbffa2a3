/* redis_test.h: a private redis-server for the libs/cache tests, started and killed by the test
 * process (it dies with it: PR_SET_PDEATHSIG). */
#pragma once

#include <criterion/criterion.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

typedef struct server {
    pid_t pid;
    int port;
    char url[128];
} server_t;

static inline long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static inline int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
              getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static inline bool server_pings(int port)
{
    struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", port, tv);
    bool ok = false;
    if (rc && !rc->err) {
        redisReply *r = redisCommand(rc, "PING");
        /* PONG, or NOAUTH from a server with a password: either way it answers. */
        ok = r && (r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_ERROR);
        if (r)
            freeReplyObject(r);
    }
    redisFree(rc);
    return ok;
}

/* Starts redis-server on @port (0: a free one), plus @extra arguments, and waits for PING. */
static inline void server_start(server_t *s, int port, const char *extra1, const char *extra2)
{
    s->port = port ? port : free_port();
    snprintf(s->url, sizeof(s->url), "redis://127.0.0.1:%d/0", s->port);
    char portbuf[16];
    snprintf(portbuf, sizeof(portbuf), "%d", s->port);

    s->pid = fork();
    cr_assert(s->pid >= 0);
    if (s->pid == 0) {
        /* The server must not outlive a crashed test. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        freopen("/dev/null", "w", stdout);
        execlp("redis-server", "redis-server", "--port", portbuf, "--bind", "127.0.0.1", "--save",
               "", "--appendonly", "no", "--daemonize", "no", extra1, extra2, (char *)NULL);
        _exit(127);
    }
    long long deadline = now_ms() + 10000;
    while (!server_pings(s->port)) {
        int st;
        cr_assert(waitpid(s->pid, &st, WNOHANG) == 0, "redis-server exited (port %d taken?)",
                  s->port);
        cr_assert(now_ms() < deadline, "redis-server on port %d did not answer PING in 10 s",
                  s->port);
        usleep(10000);
    }
}

static inline void server_kill(server_t *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGCONT);
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
    }
    s->pid = 0;
}
