/* Tests for svc_lifecycle: signals set the stop flag and make the self-pipe readable. Criterion
 * runs every test in a process of its own, so each one starts from a fresh state. */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include "svc_lifecycle.h"

static bool readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};

    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

Test(svc_lifecycle, sigterm_sets_the_flag_and_wakes_the_pipe)
{
    cr_assert_eq(svc_stop_fd(), -1);
    cr_assert_eq(svc_lifecycle_init(), 0);
    cr_assert_eq(svc_lifecycle_init(), 0, "init is idempotent");
    cr_assert_geq(svc_stop_fd(), 0);
    cr_assert_not(svc_stopping());
    cr_assert_not(readable(svc_stop_fd()));

    raise(SIGTERM);
    cr_assert(svc_stopping());
    cr_assert(readable(svc_stop_fd()));
    cr_assert(readable(svc_stop_fd()), "the pipe is never drained, so it stays readable");
}

Test(svc_lifecycle, request_stop_before_init_still_wakes_the_pipe)
{
    svc_request_stop();
    cr_assert(svc_stopping());
    cr_assert_eq(svc_lifecycle_init(), 0);
    cr_assert(readable(svc_stop_fd()));
}

Test(svc_lifecycle, first_sigint_asks_for_a_clean_stop)
{
    cr_assert_eq(svc_lifecycle_init(), 0);
    raise(SIGINT);
    cr_assert(svc_stopping());
    cr_assert(readable(svc_stop_fd()));
}

Test(svc_lifecycle, second_sigint_exits_at_once, .exit_code = 130)
{
    cr_assert_eq(svc_lifecycle_init(), 0);
    raise(SIGINT);
    raise(SIGINT);
    cr_assert_fail("a second SIGINT must exit with status 130");
}

Test(svc_lifecycle, sigpipe_is_ignored)
{
    int fds[2];

    cr_assert_eq(svc_lifecycle_init(), 0);
    cr_assert_eq(pipe(fds), 0);
    close(fds[0]);
    cr_assert_eq(write(fds[1], "x", 1), -1);
    cr_assert_eq(errno, EPIPE);
    close(fds[1]);
}
