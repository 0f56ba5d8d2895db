/*
 * test_threadpool.c - the persistent worker pool.
 *
 * Checks: every worker runs each job exactly once with the right (ith, nth);
 * barriers order phases (phase 2 reads every worker's phase-1 writes, over
 * many barrier rounds in one job); many jobs in a row (the spin path) and
 * jobs after a pause long enough for the workers to sleep (the condvar
 * path); n = 1; create/free cycles.  Run under ASan/TSan to check races and
 * leaks.  Also prints the mean per-job overhead (informational).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "exec/cpu/qg_threadpool.h"
#include "graph/qg_base.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAXW 8

typedef struct count_job {
    atomic_int runs[MAXW]; /* (MAXW) times worker ith ran this job */
    atomic_int bad_nth;
    int nth_expect;
} count_job;

static void count_fn(void *arg, int ith, int nth) {
    count_job *j = arg;
    if (nth != j->nth_expect || ith < 0 || ith >= nth)
        atomic_fetch_add(&j->bad_nth, 1);
    else
        atomic_fetch_add(&j->runs[ith], 1);
}

/* Each job runs once on every worker, n in 1..5, many jobs in a row. */
static void test_each_worker_once(void **state) {
    (void)state;
    for (int n = 1; n <= 5; n++) {
        qg_threadpool *tp = qg_threadpool_new(n);
        assert_non_null(tp);
        assert_int_equal(qg_threadpool_size(tp), n);
        for (int rep = 0; rep < 2000; rep++) {
            count_job j;
            memset(&j, 0, sizeof(j));
            j.nth_expect = n;
            qg_threadpool_run(tp, count_fn, &j);
            assert_int_equal(atomic_load(&j.bad_nth), 0);
            for (int i = 0; i < MAXW; i++)
                assert_int_equal(atomic_load(&j.runs[i]), i < n ? 1 : 0);
        }
        qg_threadpool_free(tp);
    }
}

/* Phases separated by barriers: in round r each worker writes its slot
 * (plain, non-atomic stores), barrier, each reads every slot and checks
 * them, barrier (so nobody overwrites before all have read). */
typedef struct phase_job {
    qg_threadpool *tp;
    int rounds;
    uint64_t slot[MAXW];   /* (nth) written in phase 1 */
    uint64_t sums[MAXW];   /* (nth) what each worker saw, per round sum */
    int errors[MAXW];      /* (nth) mismatches seen by worker ith */
} phase_job;

static uint64_t phase_value(int round, int w) {
    return (uint64_t)round * 1000003u + (uint64_t)w * 7919u + 1u;
}

static void phase_fn(void *arg, int ith, int nth) {
    phase_job *j = arg;
    for (int r = 0; r < j->rounds; r++) {
        j->slot[ith] = phase_value(r, ith);
        qg_threadpool_barrier(j->tp);
        for (int w = 0; w < nth; w++) {
            if (j->slot[w] != phase_value(r, w)) j->errors[ith]++;
            j->sums[ith] += j->slot[w];
        }
        qg_threadpool_barrier(j->tp);
    }
}

static void test_barrier_phases(void **state) {
    (void)state;
    for (int n = 1; n <= 4; n++) {
        qg_threadpool *tp = qg_threadpool_new(n);
        assert_non_null(tp);
        for (int rep = 0; rep < 20; rep++) {
            phase_job j;
            memset(&j, 0, sizeof(j));
            j.tp = tp;
            j.rounds = 200;
            qg_threadpool_run(tp, phase_fn, &j);
            uint64_t expect = 0;
            for (int r = 0; r < j.rounds; r++)
                for (int w = 0; w < n; w++) expect += phase_value(r, w);
            for (int w = 0; w < n; w++) {
                assert_int_equal(j.errors[w], 0);
                assert_true(j.sums[w] == expect);
            }
        }
        qg_threadpool_free(tp);
    }
}

/* A reduction through a shared array: phase 1 fills disjoint ranges,
 * barrier, phase 2 each worker sums a different disjoint range of the whole
 * array; the caller checks the total (exercises visibility of bulk data). */
typedef struct reduce_job {
    qg_threadpool *tp;
    int len;
    int32_t *data;    /* (len) */
    int64_t part[MAXW];
} reduce_job;

static void reduce_fn(void *arg, int ith, int nth) {
    reduce_job *j = arg;
    int a = (int)((int64_t)j->len * ith / nth);
    int b = (int)((int64_t)j->len * (ith + 1) / nth);
    for (int i = a; i < b; i++) j->data[i] = i * 3 + 1;
    qg_threadpool_barrier(j->tp);
    /* read the range of the "next" worker so the data crosses threads */
    int o = (ith + 1) % nth;
    a = (int)((int64_t)j->len * o / nth);
    b = (int)((int64_t)j->len * (o + 1) / nth);
    int64_t s = 0;
    for (int i = a; i < b; i++) s += j->data[i];
    j->part[o] = s;
}

static void test_barrier_bulk(void **state) {
    (void)state;
    const int len = 100003;
    int32_t *data = malloc(sizeof(int32_t) * (size_t)len);
    assert_non_null(data);
    for (int n = 1; n <= 4; n++) {
        qg_threadpool *tp = qg_threadpool_new(n);
        assert_non_null(tp);
        for (int rep = 0; rep < 50; rep++) {
            memset(data, 0xff, sizeof(int32_t) * (size_t)len);
            reduce_job j;
            memset(&j, 0, sizeof(j));
            j.tp = tp;
            j.len = len;
            j.data = data;
            qg_threadpool_run(tp, reduce_fn, &j);
            int64_t tot = 0;
            for (int w = 0; w < n; w++) tot += j.part[w];
            int64_t expect = 3 * ((int64_t)len * (len - 1) / 2) + len;
            assert_true(tot == expect);
        }
        qg_threadpool_free(tp);
    }
    free(data);
}

/* Jobs separated by pauses longer than the spin window, so workers are
 * asleep on the condition variable when the job is published. */
static void test_sleep_wakeup(void **state) {
    (void)state;
    qg_threadpool *tp = qg_threadpool_new(3);
    assert_non_null(tp);
    for (int rep = 0; rep < 10; rep++) {
        struct timespec ts = {0, 3 * 1000 * 1000}; /* 3 ms */
        nanosleep(&ts, NULL);
        count_job j;
        memset(&j, 0, sizeof(j));
        j.nth_expect = 3;
        qg_threadpool_run(tp, count_fn, &j);
        assert_int_equal(atomic_load(&j.bad_nth), 0);
        for (int i = 0; i < 3; i++) assert_int_equal(atomic_load(&j.runs[i]), 1);
    }
    qg_threadpool_free(tp);
}

/* Create and free many pools, some without ever running a job, some freed
 * right after a job while workers still spin. */
static void test_create_free(void **state) {
    (void)state;
    for (int rep = 0; rep < 50; rep++) {
        qg_threadpool *tp = qg_threadpool_new(1 + rep % 4);
        assert_non_null(tp);
        if (rep % 2) {
            count_job j;
            memset(&j, 0, sizeof(j));
            j.nth_expect = 1 + rep % 4;
            qg_threadpool_run(tp, count_fn, &j);
            assert_int_equal(atomic_load(&j.bad_nth), 0);
        }
        qg_threadpool_free(tp);
    }
    assert_null(qg_threadpool_new(0));
    qg_threadpool_free(NULL);
}

static void tick_fn(void *arg, int ith, int nth) {
    (void)ith; (void)nth;
    atomic_fetch_add_explicit((atomic_int *)arg, 1, memory_order_relaxed);
}

/* Mean cost of a near-empty job with 2 workers: printed, not asserted
 * (timings on a shared 2-core machine are too noisy); the job count is. */
static void test_overhead_report(void **state) {
    (void)state;
    qg_threadpool *tp = qg_threadpool_new(2);
    assert_non_null(tp);
    const int reps = 20000;
    atomic_int ticks;
    atomic_init(&ticks, 0);
    for (int i = 0; i < 1000; i++) qg_threadpool_run(tp, tick_fn, &ticks);
    uint64_t t0 = qg_time_ns();
    for (int i = 0; i < reps; i++) qg_threadpool_run(tp, tick_fn, &ticks);
    uint64_t t1 = qg_time_ns();
    assert_int_equal(atomic_load(&ticks), 2 * (reps + 1000));
    printf("threadpool: %.2f us per empty job (2 workers)\n",
           (double)(t1 - t0) / reps / 1000.0);
    qg_threadpool_free(tp);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_worker_once),
        cmocka_unit_test(test_barrier_phases),
        cmocka_unit_test(test_barrier_bulk),
        cmocka_unit_test(test_sleep_wakeup),
        cmocka_unit_test(test_create_free),
        cmocka_unit_test(test_overhead_report),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
