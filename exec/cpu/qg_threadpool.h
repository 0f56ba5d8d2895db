/*
 * qg_threadpool.h - a persistent pool of worker threads.
 *
 * The calling thread is worker 0; n-1 threads are created once and spin
 * briefly, then sleep on a condition variable between jobs.  A job is one
 * function run by every worker with (ith, nth).  Inside a job, workers may
 * meet at qg_threadpool_barrier().  Nothing is allocated per job.
 */
#ifndef QG_THREADPOOL_H
#define QG_THREADPOOL_H

typedef struct qg_threadpool qg_threadpool;

typedef void (*qg_task_fn)(void *arg, int ith, int nth);

/* n_threads >= 1.  NULL on failure (thread creation). */
qg_threadpool *qg_threadpool_new(int n_threads);
void qg_threadpool_free(qg_threadpool *tp);
int qg_threadpool_size(const qg_threadpool *tp);
/* Run fn(arg, ith, nth) on every worker; returns when all are done. */
void qg_threadpool_run(qg_threadpool *tp, qg_task_fn fn, void *arg);
/* All nth workers of the current job wait here for each other. */
void qg_threadpool_barrier(qg_threadpool *tp);

#endif
