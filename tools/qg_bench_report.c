/*
 * qg_bench_report.c - bench statistics and llama-bench style printers.
 */
#include "qg_bench_report.h"

#include <math.h>
#include <string.h>

double qg_bench_mean(const double *x, int n) {
    if (n <= 0) return NAN;
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i];
    return s / n;
}

/* Two-pass sample standard deviation (divisor n - 1). */
double qg_bench_stddev(const double *x, int n) {
    if (n < 2) return 0.0;
    double m = qg_bench_mean(x, n), s = 0;
    for (int i = 0; i < n; i++) s += (x[i] - m) * (x[i] - m);
    return sqrt(s / (n - 1));
}

/* The k-th smallest (0-based) of x[0..n) without copying or reordering:
 * x[i] is it when fewer than k+1 elements are below it and more than k
 * are at or below it.  O(n^2), which is nothing for a handful of
 * repetitions.  NaN if no element qualifies (NaNs in x). */
static double kth_smallest(const double *x, int n, int k) {
    for (int i = 0; i < n; i++) {
        int lt = 0, le = 0;
        for (int j = 0; j < n; j++) {
            lt += x[j] < x[i];
            le += x[j] <= x[i];
        }
        if (lt <= k && k < le) return x[i];
    }
    return NAN;
}

double qg_bench_median(const double *x, int n) {
    if (n <= 0) return NAN;
    if (n % 2) return kth_smallest(x, n, n / 2);
    return 0.5 * (kth_smallest(x, n, n / 2 - 1) + kth_smallest(x, n, n / 2));
}

char *qg_bench_test_name(const qg_bench_row *r, char *buf, size_t size) {
    if (size == 0) return buf;
    int len;
    if (r->n_prompt > 0 && r->n_gen == 0)
        len = snprintf(buf, size, "pp%d", r->n_prompt);
    else if (r->n_gen > 0 && r->n_prompt == 0)
        len = snprintf(buf, size, "tg%d", r->n_gen);
    else
        len = snprintf(buf, size, "pp%d+tg%d", r->n_prompt, r->n_gen);
    if (r->n_depth > 0 && len >= 0 && (size_t)len < size)
        snprintf(buf + len, size - (size_t)len, " @ d%d", r->n_depth);
    return buf;
}

/* Columns of the table: llama-bench's widths; negative = left-aligned. */
static const struct {
    const char *name;
    int width;
} md_cols[] = {
    {"model", -30}, {"size", 10},    {"params", 10}, {"backend", -10},
    {"threads", 7}, {"test", 15},    {"t/s", 20},
};

/* Terminal columns of a UTF-8 string (one per code point). */
static int utf8_width(const char *s) {
    int w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80) w++;
    return w;
}

/* " value |" with value padded to |width| columns (UTF-8 aware). */
static void md_cell(FILE *f, const char *s, int width) {
    int w = width < 0 ? -width : width, pad = w - utf8_width(s);
    fputc(' ', f);
    if (width > 0)
        for (int i = 0; i < pad; i++) fputc(' ', f);
    fputs(s, f);
    if (width < 0)
        for (int i = 0; i < pad; i++) fputc(' ', f);
    fputs(" |", f);
}

void qg_bench_print_md_header(FILE *f) {
    fputc('|', f);
    for (size_t c = 0; c < sizeof md_cols / sizeof md_cols[0]; c++)
        md_cell(f, md_cols[c].name, md_cols[c].width);
    fputs("\n|", f);
    for (size_t c = 0; c < sizeof md_cols / sizeof md_cols[0]; c++) {
        int w = md_cols[c].width < 0 ? -md_cols[c].width : md_cols[c].width;
        fputc(' ', f);
        for (int i = 0; i < w - 1; i++) fputc('-', f);
        fputs(md_cols[c].width > 0 ? ": |" : "- |", f);
    }
    fputc('\n', f);
}

void qg_bench_print_md_row(FILE *f, const qg_bench_row *r) {
    char cell[7][160];
    const char *base = strrchr(r->model, '/');
    snprintf(cell[0], sizeof cell[0], "%s", base ? base + 1 : r->model);
    if (r->size_bytes < (uint64_t)1 << 30)
        snprintf(cell[1], sizeof cell[1], "%.2f MiB", (double)r->size_bytes / (1 << 20));
    else
        snprintf(cell[1], sizeof cell[1], "%.2f GiB", (double)r->size_bytes / (1 << 30));
    if (r->n_params < 1000000000ull)
        snprintf(cell[2], sizeof cell[2], "%.2f M", (double)r->n_params / 1e6);
    else
        snprintf(cell[2], sizeof cell[2], "%.2f B", (double)r->n_params / 1e9);
    snprintf(cell[3], sizeof cell[3], "%s", r->backend);
    snprintf(cell[4], sizeof cell[4], "%d", r->n_threads);
    qg_bench_test_name(r, cell[5], sizeof cell[5]);
    snprintf(cell[6], sizeof cell[6], "%.2f ± %.2f",
             qg_bench_mean(r->samples_ts, r->n_samples),
             qg_bench_stddev(r->samples_ts, r->n_samples));
    fputc('|', f);
    for (int c = 0; c < 7; c++) md_cell(f, cell[c], md_cols[c].width);
    fputc('\n', f);
}

void qg_bench_print_md(FILE *f, const qg_bench_row *rows, int n) {
    qg_bench_print_md_header(f);
    for (int i = 0; i < n; i++) qg_bench_print_md_row(f, &rows[i]);
}

/* s as a JSON string literal: quotes, backslashes and control characters
 * escaped; other bytes as they are (paths and names are UTF-8). */
static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *u = (const unsigned char *)s; *u; u++) {
        if (*u == '"' || *u == '\\')
            fprintf(f, "\\%c", *u);
        else if (*u < 0x20)
            fprintf(f, "\\u%04x", *u);
        else
            fputc(*u, f);
    }
    fputc('"', f);
}

/* A throughput as JSON: %.6f, or null when not finite. */
static void json_num(FILE *f, double x) {
    if (isfinite(x))
        fprintf(f, "%.6f", x);
    else
        fputs("null", f);
}

void qg_bench_print_json(FILE *f, const qg_bench_row *rows, int n) {
    fputs("[", f);
    for (int i = 0; i < n; i++) {
        const qg_bench_row *r = &rows[i];
        char test[64];
        fputs(i ? ",\n  {\n" : "\n  {\n", f);
        fputs("    \"model_filename\": ", f);
        json_str(f, r->model);
        fprintf(f, ",\n    \"model_size\": %llu,\n    \"model_n_params\": %llu,\n",
                (unsigned long long)r->size_bytes, (unsigned long long)r->n_params);
        fputs("    \"backends\": ", f);
        json_str(f, r->backend);
        fprintf(f, ",\n    \"n_threads\": %d,\n    \"n_prompt\": %d,\n"
                   "    \"n_gen\": %d,\n    \"n_depth\": %d,\n    \"test\": ",
                r->n_threads, r->n_prompt, r->n_gen, r->n_depth);
        json_str(f, qg_bench_test_name(r, test, sizeof test));
        fputs(",\n    \"samples_ts\": [", f);
        for (int s = 0; s < r->n_samples; s++) {
            if (s) fputs(", ", f);
            json_num(f, r->samples_ts[s]);
        }
        fputs("],\n    \"avg_ts\": ", f);
        json_num(f, qg_bench_mean(r->samples_ts, r->n_samples));
        fputs(",\n    \"stddev_ts\": ", f);
        json_num(f, qg_bench_stddev(r->samples_ts, r->n_samples));
        fputs(",\n    \"median_ts\": ", f);
        json_num(f, qg_bench_median(r->samples_ts, r->n_samples));
        fputs("\n  }", f);
    }
    fputs(n ? "\n]\n" : "]\n", f);
}
