/* svc_lifecycle.c: SIGINT/SIGTERM set a flag and wake event loops through a self-pipe. */
#include "svc_lifecycle.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t sigint_seen;
/* Written once by init, before any handler is installed; only read afterwards. */
static int stop_pipe[2] = {-1, -1};
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

static void stop_notify(void)
{
    int saved_errno = errno;

    stop_requested = 1;
    /* The byte is never read, so the read end stays readable for every loop that watches it.
     * The write end is non-blocking: a full pipe (after very many signals) is simply ignored. */
    if (stop_pipe[1] >= 0 && write(stop_pipe[1], "x", 1) < 0) {
        /* nothing useful to do inside a signal handler */
    }
    errno = saved_errno;
}

static void on_signal(int sig)
{
    if (sig == SIGINT) {
        if (sigint_seen)
            _exit(130); /* the operator pressed Ctrl-C twice: stop waiting for a clean shutdown */
        sigint_seen = 1;
    }
    stop_notify();
}

int svc_lifecycle_init(void)
{
    struct sigaction sa = {0};
    int r = 0;

    pthread_mutex_lock(&init_lock);
    if (stop_pipe[0] >= 0)
        goto out;
    if (pipe2(stop_pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
        r = -errno;
        goto out;
    }
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
        goto fail;
    sa.sa_handler = SIG_IGN;
    if (sigaction(SIGPIPE, &sa, NULL) < 0)
        goto fail;
    /* A stop requested from code before init must still wake the loops that watch the pipe. */
    if (stop_requested)
        stop_notify();
out:
    pthread_mutex_unlock(&init_lock);
    return r;
fail:
    r = -errno;
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    close(stop_pipe[0]);
    close(stop_pipe[1]);
    stop_pipe[0] = stop_pipe[1] = -1;
    pthread_mutex_unlock(&init_lock);
    return r;
}

bool svc_stopping(void)
{
    return stop_requested != 0;
}

void svc_request_stop(void)
{
    stop_notify();
}

int svc_stop_fd(void)
{
    return stop_pipe[0];
}
