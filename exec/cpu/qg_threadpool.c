/*
 * qg_threadpool.c - the persistent worker pool (see qg_threadpool.h).
 *
 * Dispatch.  The caller publishes (fn, arg) and then bumps an atomic job
 * generation counter.  Idle workers spin on that counter with a CPU pause
 * for a short while (QG_TP_SPIN_NS) after their last job, then go to sleep
 * on a condition variable.  The caller takes the mutex and broadcasts only
 * when at least one worker is asleep, so back-to-back jobs (decode runs
 * ~1000 nodes per token) cost one atomic store plus the completion wait.
 *
 * The lost-wakeup argument: a sleeper increments n_sleeping (seq_cst) and
 * then re-reads the generation under the mutex before waiting; the caller
 * stores the generation (seq_cst) and then reads n_sleeping.  In the single
 * total order of seq_cst operations either the caller sees the sleeper (and
 * broadcasts under the mutex, which cannot slip in between the sleeper's
 * check and its wait) or the sleeper sees the new generation.
 *
 * Completion.  Each helper thread adds one to n_done when its part is
 * finished; the caller (worker 0) runs its own part and then waits for
 * n_done == n-1, spinning and then yielding.  n_done is reset before the
 * next generation is published, when nobody can be touching it.
 *
 * Barrier.  A counter plus a generation word, the "sense" of the classic
 * sense-reversing barrier: each arriving worker reads the barrier
 * generation, then increments the counter; the last one resets the counter
 * and publishes generation+1 (release), which frees the others (acquire).
 * Waiters spin with a pause, then yield the CPU (the machine may have fewer
 * cores than workers).
 */
#include "qg_threadpool.h"

#include "../../graph/qg_base.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QG_TP_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define QG_TP_PAUSE() __asm__ __volatile__("yield")
#else
#define QG_TP_PAUSE() ((void)0)
#endif

/* How long an idle worker spins for the next job before sleeping. */
#define QG_TP_SPIN_NS 200000ull
/* Pauses between clock reads / before a waiter starts yielding. */
#define QG_TP_SPIN_CHECK 64
#define QG_TP_SPIN_BEFORE_YIELD 4096

/* Keep the hot words on their own cache lines. */
#define QG_TP_LINE 64

typedef struct qg_worker {
    qg_threadpool *tp;
    int ith;
    pthread_t thread;
} qg_worker;

struct qg_threadpool {
    int n; /* workers, including the caller */
    qg_worker *workers; /* (n); [0] is the caller, no thread */

    /* the job, written by the caller before gen is bumped */
    qg_task_fn fn;
    void *arg;

    _Alignas(QG_TP_LINE) atomic_uint gen; /* job generation */
    atomic_int stop;
    _Alignas(QG_TP_LINE) atomic_int n_done; /* helpers finished this job */
    _Alignas(QG_TP_LINE) atomic_int n_sleeping;
    _Alignas(QG_TP_LINE) atomic_int bar_count;
    _Alignas(QG_TP_LINE) atomic_uint bar_gen;

    pthread_mutex_t mu;
    pthread_cond_t cv;
};

/* Wait (spin, then sleep) until the job generation differs from `seen`.
 * Returns the new generation. */
static unsigned tp_wait_job(qg_threadpool *tp, unsigned seen) {
    uint64_t t0 = 0;
    for (unsigned i = 1;; i++) {
        unsigned g = atomic_load_explicit(&tp->gen, memory_order_acquire);
        if (g != seen) return g;
        QG_TP_PAUSE();
        if (i % QG_TP_SPIN_CHECK == 0) {
            uint64_t t = qg_time_ns();
            if (t0 == 0) t0 = t;
            else if (t - t0 > QG_TP_SPIN_NS) break;
        }
    }
    pthread_mutex_lock(&tp->mu);
    atomic_fetch_add(&tp->n_sleeping, 1); /* seq_cst: see file comment */
    unsigned g;
    while ((g = atomic_load(&tp->gen)) == seen)
        pthread_cond_wait(&tp->cv, &tp->mu);
    atomic_fetch_sub(&tp->n_sleeping, 1);
    pthread_mutex_unlock(&tp->mu);
    return g;
}

static void *tp_worker_main(void *p) {
    qg_worker *w = p;
    qg_threadpool *tp = w->tp;
    unsigned seen = 0; /* the generation at creation */
    for (;;) {
        seen = tp_wait_job(tp, seen);
        if (atomic_load_explicit(&tp->stop, memory_order_acquire)) break;
        tp->fn(tp->arg, w->ith, tp->n);
        atomic_fetch_add_explicit(&tp->n_done, 1, memory_order_release);
    }
    return NULL;
}

/* Publish a new generation and wake sleepers if there are any. */
static void tp_publish(qg_threadpool *tp) {
    atomic_fetch_add(&tp->gen, 1); /* seq_cst, release for fn/arg */
    if (atomic_load(&tp->n_sleeping) > 0) {
        pthread_mutex_lock(&tp->mu);
        pthread_cond_broadcast(&tp->cv);
        pthread_mutex_unlock(&tp->mu);
    }
}

/* Create a pool of n_threads workers (the caller is worker 0, so
 * n_threads-1 threads are started).  NULL if n_threads < 1 or a thread or
 * allocation fails; nothing is left running then. */
qg_threadpool *qg_threadpool_new(int n_threads) {
    if (n_threads < 1) return NULL;
    qg_threadpool *tp = aligned_alloc(QG_TP_LINE,
                                      qg_align_up(sizeof(*tp), QG_TP_LINE));
    if (!tp) return NULL;
    tp->n = n_threads;
    tp->fn = NULL;
    tp->arg = NULL;
    atomic_init(&tp->gen, 0);
    atomic_init(&tp->stop, 0);
    atomic_init(&tp->n_done, 0);
    atomic_init(&tp->n_sleeping, 0);
    atomic_init(&tp->bar_count, 0);
    atomic_init(&tp->bar_gen, 0);
    tp->workers = calloc((size_t)n_threads, sizeof(qg_worker));
    if (!tp->workers) {
        free(tp);
        return NULL;
    }
    if (pthread_mutex_init(&tp->mu, NULL) != 0) {
        free(tp->workers);
        free(tp);
        return NULL;
    }
    if (pthread_cond_init(&tp->cv, NULL) != 0) {
        pthread_mutex_destroy(&tp->mu);
        free(tp->workers);
        free(tp);
        return NULL;
    }
    int started = 1;
    for (int i = 0; i < n_threads; i++) {
        tp->workers[i].tp = tp;
        tp->workers[i].ith = i;
    }
    for (int i = 1; i < n_threads; i++) {
        if (pthread_create(&tp->workers[i].thread, NULL, tp_worker_main,
                           &tp->workers[i]) != 0)
            break;
        started++;
    }
    if (started < n_threads) {
        tp->n = started; /* free() joins exactly the started threads */
        qg_threadpool_free(tp);
        return NULL;
    }
    return tp;
}

/* Stop and join the helper threads, then release everything.  Must not be
 * called while a job is running.  NULL is a no-op. */
void qg_threadpool_free(qg_threadpool *tp) {
    if (!tp) return;
    atomic_store_explicit(&tp->stop, 1, memory_order_release);
    tp_publish(tp);
    for (int i = 1; i < tp->n; i++) pthread_join(tp->workers[i].thread, NULL);
    pthread_cond_destroy(&tp->cv);
    pthread_mutex_destroy(&tp->mu);
    free(tp->workers);
    free(tp);
}

int qg_threadpool_size(const qg_threadpool *tp) { return tp->n; }

/* Run fn on all workers; the caller runs ith 0.  Not reentrant: one job at
 * a time, from one calling thread. */
void qg_threadpool_run(qg_threadpool *tp, qg_task_fn fn, void *arg) {
    if (tp->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    tp->fn = fn;
    tp->arg = arg;
    atomic_store_explicit(&tp->n_done, 0, memory_order_relaxed);
    tp_publish(tp);
    fn(arg, 0, tp->n);
    const int want = tp->n - 1;
    for (unsigned i = 0;
         atomic_load_explicit(&tp->n_done, memory_order_acquire) != want;
         i++) {
        if (i < QG_TP_SPIN_BEFORE_YIELD) QG_TP_PAUSE();
        else sched_yield();
    }
}

/* Every worker of the running job waits until all nth have arrived.  All
 * writes made before the barrier by any worker are visible after it. */
void qg_threadpool_barrier(qg_threadpool *tp) {
    if (tp->n == 1) return;
    unsigned g = atomic_load_explicit(&tp->bar_gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&tp->bar_count, 1, memory_order_acq_rel) ==
        tp->n - 1) {
        atomic_store_explicit(&tp->bar_count, 0, memory_order_relaxed);
        atomic_store_explicit(&tp->bar_gen, g + 1, memory_order_release);
        return;
    }
    for (unsigned i = 0;
         atomic_load_explicit(&tp->bar_gen, memory_order_acquire) == g; i++) {
        if (i < QG_TP_SPIN_BEFORE_YIELD) QG_TP_PAUSE();
        else sched_yield();
    }
}
