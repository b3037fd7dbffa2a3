/* pwpool.c: argon2id off the event loops.
 *
 * One argon2id hash or verification (19 MiB, 2 passes) takes tens of milliseconds of CPU. Run on
 * an event-loop thread it would stall every other request of that loop, so the loops hand the
 * work to a few worker threads (password_workers) and get the result back as an event: each job
 * carries an event made on the submitting loop's base, and the worker activates it with
 * event_active() when done (thread-safe because main() calls evthread_use_pthreads()). The
 * callback then runs on the loop's own thread, where the request lives. The queue is bounded so
 * that a flood of sign-ins is answered 503 instead of piling up memory and latency.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "auth_password.h"
#include "gateway.h"

typedef struct pw_job {
    struct pw_job *next;
    struct event *ev;
    char *password; /* wiped before it is freed */
    char *phc;      /* verify: the stored hash; hash: NULL, then the result */
    bool verify;
    int rc;
    gw_pwpool_cb cb;
    void *opaque;
} pw_job_t;

struct gw_pwpool {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pw_job_t *head, *tail;
    size_t queued, max_queue;
    bool stopping;
    pthread_t *threads;
    size_t nthreads;
};

static void job_free(pw_job_t *job)
{
    if (job->password) {
        explicit_bzero(job->password, strlen(job->password));
        free(job->password);
    }
    free(job->phc);
    if (job->ev)
        event_free(job->ev);
    free(job);
}

/* On the loop's thread. */
static void job_done(evutil_socket_t fd, short what, void *arg)
{
    pw_job_t *job = arg;
    char *phc = job->verify ? NULL : job->phc;

    (void)fd;
    (void)what;
    if (!job->verify)
        job->phc = NULL;
    job->cb(job->rc, job->rc == 0 ? phc : NULL, job->opaque);
    if (job->rc != 0)
        free(phc);
    job_free(job);
}

static void *worker(void *arg)
{
    gw_pwpool_t *pool = arg;

    pthread_mutex_lock(&pool->lock);
    for (;;) {
        pw_job_t *job;

        while (!pool->head && !pool->stopping)
            pthread_cond_wait(&pool->wake, &pool->lock);
        if (pool->stopping)
            break;
        job = pool->head;
        pool->head = job->next;
        if (!pool->head)
            pool->tail = NULL;
        pool->queued--;
        pthread_mutex_unlock(&pool->lock);

        if (job->verify) {
            job->rc = auth_password_verify(job->phc, job->password);
        } else {
            char *phc = NULL;

            job->rc = auth_password_hash(NULL, job->password, &phc);
            job->phc = phc;
        }
        explicit_bzero(job->password, strlen(job->password));
        event_active(job->ev, 0, 0);

        pthread_mutex_lock(&pool->lock);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

int gw_pwpool_new(size_t nworkers, size_t max_queue, gw_pwpool_t **ret_pool)
{
    gw_pwpool_t *pool;
    int rc;

    if (nworkers == 0 || nworkers > 64 || max_queue == 0)
        return -EINVAL;
    pool = calloc(1, sizeof(*pool));
    if (!pool)
        return -ENOMEM;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pool->max_queue = max_queue;
    pool->threads = calloc(nworkers, sizeof(*pool->threads));
    if (!pool->threads) {
        rc = -ENOMEM;
        goto fail;
    }
    for (; pool->nthreads < nworkers; pool->nthreads++) {
        rc = pthread_create(&pool->threads[pool->nthreads], NULL, worker, pool);
        if (rc != 0) {
            rc = -rc;
            goto fail;
        }
    }
    *ret_pool = pool;
    return 0;
fail:
    gw_pwpool_free(pool);
    return rc;
}

void gw_pwpool_free(gw_pwpool_t *pool)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->lock);
    pool->stopping = true;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (size_t i = 0; i < pool->nthreads; i++)
        pthread_join(pool->threads[i], NULL);
    /* Jobs nobody ran still owe their loop a callback, which frees what waits on them. */
    while (pool->head) {
        pw_job_t *job = pool->head;

        pool->head = job->next;
        job->rc = -ECANCELED;
        event_active(job->ev, 0, 0);
    }
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->lock);
    free(pool->threads);
    free(pool);
}

int gw_pwpool_submit(gw_pwpool_t *pool, struct event_base *base, const char *password,
                     const char *phc, gw_pwpool_cb cb, void *opaque)
{
    pw_job_t *job = calloc(1, sizeof(*job));

    if (!job)
        return -ENOMEM;
    job->verify = phc != NULL;
    job->cb = cb;
    job->opaque = opaque;
    job->password = strdup(password);
    job->phc = phc ? strdup(phc) : NULL;
    job->ev = event_new(base, -1, 0, job_done, job);
    if (!job->password || (phc && !job->phc) || !job->ev) {
        job_free(job);
        return -ENOMEM;
    }
    pthread_mutex_lock(&pool->lock);
    if (pool->queued >= pool->max_queue || pool->stopping) {
        pthread_mutex_unlock(&pool->lock);
        job_free(job);
        return -EAGAIN;
    }
    if (pool->tail)
        pool->tail->next = job;
    else
        pool->head = job;
    pool->tail = job;
    pool->queued++;
    pthread_cond_signal(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    return 0;
}
