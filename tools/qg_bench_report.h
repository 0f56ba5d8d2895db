/*
 * qg_bench_report.h - statistics and output of the CLI's `bench` command.
 *
 * One qg_bench_row is one test (pp512, tg128, tg128 @ d4096, ...) of one
 * configuration, with its repetitions' throughputs in tokens per second.
 * The printers mirror llama-bench, so results can be compared side by side:
 *
 *   | model                          |       size |     params | backend    | threads |            test |                  t/s |
 *   | ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: |
 *   | Qwen3-30B-A3B-Q4_K_M.gguf      |  17.28 GiB |    30.53 B | cpu        |      16 |           pp512 |        123.45 ± 1.23 |
 *
 * and JSON: an array of objects with llama-bench's field names plus
 * "median_ts".  Sizes: GiB (MiB below 1 GiB); params: B (1e9), M below.
 *
 * None of these functions modify their inputs; none allocate.
 */
#ifndef QG_BENCH_REPORT_H
#define QG_BENCH_REPORT_H

#include <stdint.h>
#include <stdio.h>

typedef struct qg_bench_row {
    const char *model;    /* model file path; the table shows its base name */
    uint64_t size_bytes;  /* bytes of the model's tensors */
    uint64_t n_params;    /* parameter count */
    const char *backend;  /* "cpu", "cuda", ... */
    int n_threads;
    int n_prompt;         /* tokens prefilled per repetition (pp), or 0 */
    int n_gen;            /* tokens generated per repetition (tg), or 0 */
    int n_depth;          /* KV rows filled before the timed part, or 0 */
    const double *samples_ts; /* (n_samples) tokens/s, one per repetition;
                                 caller-owned */
    int n_samples;
} qg_bench_row;

/* Statistics over x[0..n).  mean and median of n == 0 are NaN; the sample
 * standard deviation (divisor n-1) of n < 2 is 0. */
double qg_bench_mean(const double *x, int n);
double qg_bench_stddev(const double *x, int n);
double qg_bench_median(const double *x, int n);

/* The test name as llama-bench writes it: "pp512", "tg128", "pp512+tg128",
 * with " @ d4096" appended when n_depth > 0.  Writes at most size bytes
 * (always NUL-terminated when size > 0) and returns buf. */
char *qg_bench_test_name(const qg_bench_row *r, char *buf, size_t size);

/* Markdown table: header and separator lines, then one line per row.
 * print_md = print_md_header + print_md_row for each row; the split lets
 * the CLI print each row as soon as its test finishes. */
void qg_bench_print_md_header(FILE *f);
void qg_bench_print_md_row(FILE *f, const qg_bench_row *r);
void qg_bench_print_md(FILE *f, const qg_bench_row *rows, int n);

/* JSON: "[", one object per row, "]" and a newline.  Fields:
 * model_filename, model_size, model_n_params, backends, n_threads,
 * n_prompt, n_gen, n_depth, test, samples_ts, avg_ts, stddev_ts,
 * median_ts (non-finite numbers are written as null). */
void qg_bench_print_json(FILE *f, const qg_bench_row *rows, int n);

#endif
