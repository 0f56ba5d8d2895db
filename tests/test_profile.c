/*
 * test_profile.c - the profile report, the Chrome trace and the bench
 * statistics / printers.
 *
 * Report: a hand-built decode graph and prefill graph get random events
 * (fresh seeded durations, token counts, executors per case); the test
 * rolls them up itself (by op, by layer, by (node, tid)) in its own code and
 * parses the printed tables back (from an open_memstream buffer).  Every
 * printed number must equal the test's own value within half a unit of the
 * printed last digit (plus 1e-9 relative for the formatting of doubles).
 * Drops: a full profile prints the drop count and tables of only the kept
 * events.
 *
 * Trace: python3's json module parses the file (and a bracket-balance
 * check in C runs too); every "X" event is compared with the recorded one:
 * name (bytes, including quotes, backslashes, control characters, UTF-8 and
 * an invalid byte that must come back as U+FFFD), cat, tid, ts relative to
 * the earliest event and dur (to 0.0005 µs + 1e-12 relative, the %.3f
 * rounding), args; "M" events name each executor.  A path in a missing
 * directory and a path that is a directory fail with QG_ERR_IO naming the
 * path and leave no file behind; a poisoned existing file is fully replaced.
 *
 * Bench: mean / sample sd / median against the test's own float64 (long
 * double accumulation, sort of a copy) computations and hand-computed
 * small cases, inputs unchanged; the markdown header and rows against
 * llama-bench's layout written out by hand; JSON parsed by python3.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "graph/qg_graph.h"
#include "graph/qg_profile.h"

/* tools/ is the CLI and is not part of the library the tests link, so the
 * bench helpers are compiled into this test directly. */
#include "../tools/qg_bench_report.c"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static int rng_int(uint64_t *s, int lo, int hi) { /* [lo, hi] */
    return lo + (int)(rng_next(s) % (uint64_t)(hi - lo + 1));
}

/* |got - want| within half a printed unit `unit` (plus relative slack). */
static void check_printed(double got, double want, double unit, const char *what,
                          const char *row) {
    double tol = 0.5 * unit + 1e-9 * fabs(want);
    if (isnan(got) || fabs(got - want) > tol)
        fail_msg("%s of %s: printed %.6f, expected %.6f (tol %.2g)", what, row, got,
                 want, tol);
}

/* Split a NUL-terminated buffer into lines in place; returns the count. */
static int split_lines(char *buf, char **lines, int max) {
    int n = 0;
    char *p = buf;
    while (*p && n < max) {
        lines[n++] = p;
        char *e = strchr(p, '\n');
        if (!e) break;
        *e = '\0';
        p = e + 1;
    }
    return n;
}

/* Index of the first line at or after `from` (and before `to`) that starts
 * with prefix, or -1. */
static int find_line(char **lines, int from, int to, const char *prefix) {
    for (int i = from; i < to; i++)
        if (strncmp(lines[i], prefix, strlen(prefix)) == 0) return i;
    return -1;
}

/* ---- a small hand-built graph ------------------------------------------- */

#define E 2048 /* n_embd */
#define V 4096 /* n_vocab */
#define M 1024 /* matmul rows */
#define NL 4   /* layers */

/* embed (layer -1); per layer: rmsnorm, matmul, add; rmsnorm and lm_head
 * (layer -1).  All f32; weights have no data (only the cost model reads
 * them). */
static qg_graph *build_graph(qg_phase ph, int T) {
    qg_graph *g = qg_graph_new(ph, T, 256);
    assert_non_null(g);
    int64_t ne_tok[1] = {T}, ne_emb[2] = {E, V}, ne_x[2] = {E, T};
    int64_t ne_w[1] = {E}, ne_mw[2] = {E, M}, ne_my[2] = {M, T}, ne_lg[2] = {V, T};
    int tok = qg_graph_add_tensor(g, "tokens", QG_I32, QG_ROLE_INPUT, -1, 1, ne_tok, NULL);
    int emb = qg_graph_add_tensor(g, "token_embd.weight", QG_F32, QG_ROLE_WEIGHT, -1, 2, ne_emb, NULL);
    int x = qg_graph_add_tensor(g, "x0", QG_F32, QG_ROLE_ACT, -1, 2, ne_x, NULL);
    int in[2] = {emb, tok};
    qg_graph_add_node(g, QG_OP_EMBED, "embed", -1, in, 2, &x, 1, NULL);
    for (int l = 0; l < NL; l++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.norm.weight", l);
        int w = qg_graph_add_tensor(g, name, QG_F32, QG_ROLE_WEIGHT, l, 1, ne_w, NULL);
        snprintf(name, sizeof name, "blk.%d.mm.weight", l);
        int mw = qg_graph_add_tensor(g, name, QG_F32, QG_ROLE_WEIGHT, l, 2, ne_mw, NULL);
        int xn = qg_graph_add_tensor(g, "xn", QG_F32, QG_ROLE_ACT, l, 2, ne_x, NULL);
        int y = qg_graph_add_tensor(g, "y", QG_F32, QG_ROLE_ACT, l, 2, ne_my, NULL);
        int x2 = qg_graph_add_tensor(g, "x2", QG_F32, QG_ROLE_ACT, l, 2, ne_x, NULL);
        qg_op_params p = {.eps = 1e-6f};
        int a[2] = {x, w};
        snprintf(name, sizeof name, "blk.%d.norm", l);
        qg_graph_add_node(g, QG_OP_RMSNORM, name, l, a, 2, &xn, 1, &p);
        int b[2] = {mw, xn};
        snprintf(name, sizeof name, "blk.%d.mm", l);
        qg_graph_add_node(g, QG_OP_MATMUL, name, l, b, 2, &y, 1, NULL);
        int c[2] = {x, xn};
        snprintf(name, sizeof name, "blk.%d.add", l);
        qg_graph_add_node(g, QG_OP_ADD, name, l, c, 2, &x2, 1, NULL);
        x = x2;
    }
    int wn = qg_graph_add_tensor(g, "output_norm.weight", QG_F32, QG_ROLE_WEIGHT, -1, 1, ne_w, NULL);
    int ow = qg_graph_add_tensor(g, "output.weight", QG_F32, QG_ROLE_WEIGHT, -1, 2, ne_emb, NULL);
    int xn = qg_graph_add_tensor(g, "xn_out", QG_F32, QG_ROLE_ACT, -1, 2, ne_x, NULL);
    int lg = qg_graph_add_tensor(g, "logits", QG_F32, QG_ROLE_OUTPUT, -1, 2, ne_lg, NULL);
    qg_op_params p = {.eps = 1e-6f};
    int a[2] = {x, wn};
    qg_graph_add_node(g, QG_OP_RMSNORM, "output_norm", -1, a, 2, &xn, 1, &p);
    int b[2] = {xn, ow};
    qg_graph_add_node(g, QG_OP_LM_HEAD, "lm_head", -1, b, 2, &lg, 1, NULL);
    return g;
}

/* Record n random events alternating over the two graphs in runs; each
 * executor (tid 0..1) has its own clock so events on one tid never
 * overlap.  Durations are random in [1, 300] µs at ns resolution, so the
 * rates (MB to tens of MB per node) are in the 0.1..10^4 GB/s range. */
static void fill_events(qg_profile *p, qg_graph *gd, qg_graph *gp, int n,
                        uint64_t *seed) {
    uint64_t clock[2] = {1000000000ull + rng_next(seed) % 1000, 1000000000ull};
    for (int i = 0; i < n; i++) {
        qg_graph *g = (i / 7) % 3 == 2 ? gp : gd;
        int node = rng_int(seed, 0, g->n_nodes - 1);
        int tid = rng_int(seed, 0, 1);
        int n_tok = rng_int(seed, 1, g->n_tok_max);
        int n_kv = rng_int(seed, n_tok, 256);
        uint64_t t0 = clock[tid] + (uint64_t)rng_int(seed, 0, 5000);
        uint64_t t1 = t0 + (uint64_t)rng_int(seed, 1000, 300000);
        clock[tid] = t1;
        qg_profile_add(p, g, node, n_tok, n_kv, tid, t0, t1);
    }
}

/* ---- the report ---------------------------------------------------------- */

typedef struct ref_agg {
    double ns, bytes, flops;
    long calls;
} ref_agg;

typedef struct ref_node {
    const qg_graph *g;
    int node, tid;
    ref_agg a;
} ref_node;

static int cmp_ref_node(const void *pa, const void *pb) {
    const ref_node *a = pa, *b = pb;
    if (a->a.ns != b->a.ns) return a->a.ns > b->a.ns ? -1 : 1;
    int c = strcmp(a->g->nodes[a->node].name, b->g->nodes[b->node].name);
    if (c) return c;
    return a->tid - b->tid;
}

/* Check the section of phase ph in the printed report (lines[0..n)) against
 * the test's own roll-up of the first n_ev events of p. */
static void check_phase_section(char **lines, int n, const qg_profile *p,
                                size_t n_ev, const qg_graph *g) {
    const char *ph = g->phase == QG_PHASE_DECODE ? "decode" : "prefill";
    ref_agg ops[QG_OP_COUNT] = {{0}}, layers[NL + 1] = {{0}};
    ref_node *keys = calloc((size_t)g->n_nodes * 2, sizeof *keys); /* (node, tid) */
    assert_non_null(keys);
    double total = 0;
    long count = 0;
    for (size_t i = 0; i < n_ev; i++) {
        const qg_profile_event *e = &p->ev[i];
        if (e->g != g) continue;
        const qg_node *nd = &g->nodes[e->node];
        double ns = (double)(e->t1_ns - e->t0_ns);
        double by = qg_node_bytes(g, nd, e->n_tok, e->n_kv);
        double fl = qg_node_flops(g, nd, e->n_tok, e->n_kv);
        ref_agg *r[3] = {&ops[nd->op], &layers[nd->layer + 1],
                         &keys[e->node * 2 + e->tid].a};
        for (int k = 0; k < 3; k++) {
            r[k]->ns += ns;
            r[k]->bytes += by;
            r[k]->flops += fl;
            r[k]->calls++;
        }
        keys[e->node * 2 + e->tid].g = g;
        keys[e->node * 2 + e->tid].node = e->node;
        keys[e->node * 2 + e->tid].tid = e->tid;
        total += ns;
        count++;
    }
    assert_true(count > 0);

    char head[64];
    snprintf(head, sizeof head, "== %s:", ph);
    int s = find_line(lines, 0, n, head);
    if (s < 0) fail_msg("no section '%s'", head);
    int s_end = find_line(lines, s + 1, n, "== ");
    if (s_end < 0) s_end = n;
    long got_ev;
    double got_total;
    char fmt[96];
    snprintf(fmt, sizeof fmt, "== %s: %%ld events, %%lf", ph);
    assert_int_equal(sscanf(lines[s], fmt, &got_ev, &got_total), 2);
    assert_int_equal(got_ev, count);
    check_printed(got_total, total / 1e3, 0.1, "total µs", lines[s]);

    /* By op: every op with calls exactly once, numbers as computed. */
    int o0 = find_line(lines, s, s_end, "by op:");
    assert_true(o0 > 0);
    bool seen[QG_OP_COUNT] = {false};
    double pct_sum = 0;
    int i;
    for (i = o0 + 2; i < s_end && lines[i][0]; i++) {
        char name[64];
        long calls;
        double us, per, pc, gbs, gfs;
        if (sscanf(lines[i], " %63s %ld %lf %lf %lf %lf %lf", name, &calls, &us, &per,
                   &pc, &gbs, &gfs) != 7)
            fail_msg("bad op row: '%s'", lines[i]);
        int op = -1;
        for (int o = 0; o < QG_OP_COUNT; o++)
            if (strcmp(qg_op_name((qg_op)o), name) == 0) op = o;
        assert_true(op >= 0);
        assert_false(seen[op]);
        seen[op] = true;
        const ref_agg *r = &ops[op];
        assert_int_equal(calls, r->calls);
        check_printed(us, r->ns / 1e3, 0.1, "µs", lines[i]);
        check_printed(per, r->ns / 1e3 / (double)r->calls, 0.1, "µs/call", lines[i]);
        check_printed(pc, 100.0 * r->ns / total, 0.1, "%", lines[i]);
        check_printed(gbs, r->bytes / r->ns, 0.01, "GB/s", lines[i]);
        check_printed(gfs, r->flops / r->ns, 0.01, "GFLOP/s", lines[i]);
        pct_sum += pc;
    }
    for (int o = 0; o < QG_OP_COUNT; o++) assert_int_equal(seen[o], ops[o].calls > 0);
    /* the rounded percentages add up to 100 within their rounding */
    assert_true(fabs(pct_sum - 100.0) <= 0.05 * QG_OP_COUNT + 1e-9);

    /* By layer: "-" is layer -1. */
    int l0 = find_line(lines, i, s_end, "by layer:");
    assert_true(l0 > 0);
    bool lseen[NL + 1] = {false};
    for (i = l0 + 2; i < s_end && lines[i][0]; i++) {
        char name[16];
        long calls;
        double us, pc, gbs;
        if (sscanf(lines[i], " %15s %ld %lf %lf %lf", name, &calls, &us, &pc, &gbs) != 5)
            fail_msg("bad layer row: '%s'", lines[i]);
        int l = strcmp(name, "-") == 0 ? -1 : atoi(name);
        assert_true(l >= -1 && l < NL);
        assert_false(lseen[l + 1]);
        lseen[l + 1] = true;
        const ref_agg *r = &layers[l + 1];
        assert_int_equal(calls, r->calls);
        check_printed(us, r->ns / 1e3, 0.1, "µs", lines[i]);
        check_printed(pc, 100.0 * r->ns / total, 0.1, "%", lines[i]);
        check_printed(gbs, r->bytes / r->ns, 0.01, "GB/s", lines[i]);
    }
    for (int l = 0; l <= NL; l++) assert_int_equal(lseen[l], layers[l].calls > 0);

    /* Top nodes: the test's own ordering of (node, tid) by total time. */
    int n_keys = 0;
    for (int k = 0; k < g->n_nodes * 2; k++)
        if (keys[k].a.calls) keys[n_keys++] = keys[k];
    qsort(keys, (size_t)n_keys, sizeof *keys, cmp_ref_node);
    int n_top = n_keys < 10 ? n_keys : 10;
    int t0 = find_line(lines, i, s_end, "top ");
    assert_true(t0 > 0);
    int got_top = -1;
    assert_int_equal(sscanf(lines[t0], "top %d nodes:", &got_top), 1);
    assert_int_equal(got_top, n_top);
    for (int k = 0; k < n_top; k++) {
        const char *row = lines[t0 + 2 + k];
        char name[64], op[32];
        int tid;
        long calls;
        double us, pc, gbs;
        if (sscanf(row, " %63s %31s %d %ld %lf %lf %lf", name, op, &tid, &calls, &us,
                   &pc, &gbs) != 7)
            fail_msg("bad node row: '%s'", row);
        const ref_node *r = &keys[k];
        assert_string_equal(name, g->nodes[r->node].name);
        assert_string_equal(op, qg_op_name(g->nodes[r->node].op));
        assert_int_equal(tid, r->tid);
        assert_int_equal(calls, r->a.calls);
        check_printed(us, r->a.ns / 1e3, 0.1, "µs", row);
        check_printed(pc, 100.0 * r->a.ns / total, 0.1, "%", row);
        check_printed(gbs, r->a.bytes / r->a.ns, 0.01, "GB/s", row);
    }
    int after = t0 + 2 + n_top;
    assert_true(after >= s_end || lines[after][0] == '\0');
    free(keys);
}

/* Print the report of p into a fresh buffer. */
static char *report_to_string(const qg_profile *p) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    qg_profile_report(p, f);
    assert_int_equal(fclose(f), 0);
    return buf;
}

/* Both phases in one profile, several seeds and sizes. */
static void test_report_numbers(void **state) {
    (void)state;
    for (int c = 0; c < 4; c++) {
        uint64_t seed = 0x5EED0000ull + (uint64_t)c * 7919;
        qg_graph *gd = build_graph(QG_PHASE_DECODE, 1);
        qg_graph *gp = build_graph(QG_PHASE_PREFILL, 32);
        int n = 50 + 300 * c;
        qg_profile *p = qg_profile_new((size_t)n);
        assert_non_null(p);
        p->exec_names[0] = "cpu";
        p->exec_names[1] = "cuda";
        fill_events(p, gd, gp, n, &seed);
        assert_int_equal(p->n, (size_t)n);
        assert_int_equal(p->dropped, 0);

        char *buf = report_to_string(p);
        assert_null(strstr(buf, "dropped"));
        assert_non_null(strstr(buf, "0=cpu"));
        assert_non_null(strstr(buf, "1=cuda"));
        char *lines[4096];
        int nl = split_lines(buf, lines, 4096);
        /* decode comes before prefill */
        int sd = find_line(lines, 0, nl, "== decode:");
        int sp = find_line(lines, 0, nl, "== prefill:");
        assert_true(sd >= 0 && sp > sd);
        check_phase_section(lines, nl, p, p->n, gd);
        check_phase_section(lines + sp, nl - sp, p, p->n, gp);
        free(buf);

        /* reset forgets everything */
        qg_profile_reset(p);
        assert_int_equal(p->n, 0);
        buf = report_to_string(p);
        assert_null(strstr(buf, "=="));
        free(buf);

        qg_profile_free(p);
        qg_graph_free(gd);
        qg_graph_free(gp);
    }
}

/* A full profile counts drops, prints them, and reports only what it kept;
 * a single-phase profile prints one section. */
static void test_report_dropped(void **state) {
    (void)state;
    uint64_t seed = 0xD50Bull;
    qg_graph *gd = build_graph(QG_PHASE_DECODE, 1);
    qg_graph *gp = build_graph(QG_PHASE_PREFILL, 16);
    int cap = 5 + (int)(rng_next(&seed) % 5), extra = 3 + (int)(rng_next(&seed) % 9);
    qg_profile *p = qg_profile_new((size_t)cap);
    assert_non_null(p);
    /* only decode events: seed the first ones from gd alone */
    fill_events(p, gd, gd, cap + extra, &seed);
    assert_int_equal(p->n, (size_t)cap);
    assert_int_equal(p->dropped, (size_t)extra);
    char *buf = report_to_string(p);
    char want[64];
    snprintf(want, sizeof want, "dropped: %d events", extra);
    assert_non_null(strstr(buf, want));
    assert_null(strstr(buf, "== prefill"));
    char *lines[512];
    int nl = split_lines(buf, lines, 512);
    check_phase_section(lines, nl, p, p->n, gd);
    free(buf);
    qg_profile_free(p);

    /* a zero-capacity profile drops everything and still reports */
    p = qg_profile_new(0);
    assert_non_null(p);
    qg_profile_add(p, gd, 0, 1, 1, 0, 10, 20);
    assert_int_equal(p->dropped, 1);
    buf = report_to_string(p);
    assert_non_null(strstr(buf, "dropped: 1 events"));
    free(buf);
    qg_profile_free(p);
    qg_graph_free(gd);
    qg_graph_free(gp);
}

/* ---- the trace ----------------------------------------------------------- */

static const char *CHECK_PY =
    "import json, sys\n"
    "d = json.load(open(sys.argv[1], encoding='utf-8'))\n"
    "assert set(d) == {'traceEvents'}\n"
    "for e in d['traceEvents']:\n"
    "    if e['ph'] == 'M':\n"
    "        print('M', e['name'], e['pid'], e['tid'], e['args']['name'].encode().hex() or '-')\n"
    "    elif e['ph'] == 'X':\n"
    "        a = e['args']\n"
    "        print('X', e['name'].encode().hex(), e['cat'], e['pid'], e['tid'],\n"
    "              repr(float(e['ts'])), repr(float(e['dur'])), a['layer'], a['n_tok'],\n"
    "              a['n_kv'], repr(float(a['bytes'])), repr(float(a['flops'])), a['phase'])\n"
    "    else:\n"
    "        sys.exit('unexpected ph ' + e['ph'])\n";

static void to_hex(const char *s, char *out) {
    for (; *s; s++, out += 2) sprintf(out, "%02x", (unsigned char)*s);
    *out = '\0';
}

/* Brackets and braces balance outside strings, strings are closed. */
static void check_balanced(const char *path) {
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int depth = 0, c;
    bool in_str = false, esc = false;
    while ((c = fgetc(f)) != EOF) {
        if (in_str) {
            if (esc) esc = false;
            else if (c == '\\') esc = true;
            else if (c == '"') in_str = false;
            else assert_true(c >= 0x20); /* raw control chars are invalid */
        } else if (c == '"') in_str = true;
        else if (c == '{' || c == '[') depth++;
        else if (c == '}' || c == ']') { depth--; assert_true(depth >= 0); }
    }
    fclose(f);
    assert_false(in_str);
    assert_int_equal(depth, 0);
}

static bool path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Run the python checker on path; returns its stdout (caller frees). */
static char *run_checker(const char *dir, const char *path) {
    char py[512], cmd[1200];
    snprintf(py, sizeof py, "%s/check.py", dir);
    FILE *f = fopen(py, "w");
    assert_non_null(f);
    fputs(CHECK_PY, f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "python3 '%s' '%s'", py, path);
    FILE *pp = popen(cmd, "r");
    assert_non_null(pp);
    char *out = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&out, &len);
    char chunk[4096];
    size_t k;
    while ((k = fread(chunk, 1, sizeof chunk, pp)) > 0) fwrite(chunk, 1, k, m);
    fclose(m);
    int st = pclose(pp);
    if (st != 0) fail_msg("python3 json check of %s failed (status %d)", path, st);
    return out;
}

static void test_trace(void **state) {
    (void)state;
    char dir[] = "/tmp/qg_test_profile_XXXXXX";
    assert_non_null(mkdtemp(dir));
    uint64_t seed = 0x7ACEull;
    qg_graph *gd = build_graph(QG_PHASE_DECODE, 1);
    qg_graph *gp = build_graph(QG_PHASE_PREFILL, 8);
    /* names a JSON writer must escape; the last has an invalid UTF-8 byte */
    snprintf(gd->nodes[1].name, QG_NAME_LEN, "q\"uo\\te\tctl\x01 µs");
    snprintf(gd->nodes[2].name, QG_NAME_LEN, "bad\xff" "byte");
    int n = 200;
    qg_profile *p = qg_profile_new((size_t)n);
    assert_non_null(p);
    p->exec_names[0] = "cpu";
    p->exec_names[2] = "vk\"0\"";
    fill_events(p, gd, gp, n - 2, &seed);
    /* make sure the escaped names are in it */
    qg_profile_add(p, gd, 1, 1, 3, 0, 2000000000ull, 2000001234ull);
    qg_profile_add(p, gd, 2, 1, 3, 1, 2000000000ull, 2000000777ull);

    char path[600];
    snprintf(path, sizeof path, "%s/trace.json", dir);
    /* poison: an existing file must be fully replaced */
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 100000; i++) fputc('X', f);
    fclose(f);

    qg_error err = {0};
    assert_int_equal(qg_profile_write_trace(p, path, &err), QG_OK);
    char tmp[640];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_false(path_exists(tmp));
    check_balanced(path);

    char *out = run_checker(dir, path);
    char *lines[1024];
    int nl = split_lines(out, lines, 1024);
    uint64_t t_first = UINT64_MAX;
    for (size_t i = 0; i < p->n; i++)
        if (p->ev[i].t0_ns < t_first) t_first = p->ev[i].t0_ns;
    int n_x = 0, n_thread = 0, n_process = 0;
    double min_ts = INFINITY;
    for (int i = 0; i < nl; i++) {
        if (lines[i][0] == 'M') {
            char kind[32], hex[128];
            int pid, tid;
            assert_int_equal(sscanf(lines[i], "M %31s %d %d %127s", kind, &pid, &tid, hex), 4);
            assert_int_equal(pid, 1);
            if (strcmp(kind, "process_name") == 0) {
                n_process++;
                continue;
            }
            assert_string_equal(kind, "thread_name");
            assert_true(tid >= 0 && tid < QG_MAX_EXEC && p->exec_names[tid]);
            char want[128];
            to_hex(p->exec_names[tid], want);
            assert_string_equal(hex, want);
            n_thread++;
            continue;
        }
        char hex[256], cat[32], phase[16];
        int pid, tid, layer, n_tok, n_kv;
        double ts, dur, bytes, flops;
        assert_int_equal(sscanf(lines[i], "X %255s %31s %d %d %lf %lf %d %d %d %lf %lf %15s",
                                hex, cat, &pid, &tid, &ts, &dur, &layer, &n_tok, &n_kv,
                                &bytes, &flops, phase),
                         12);
        assert_true((size_t)n_x < p->n);
        const qg_profile_event *e = &p->ev[n_x++]; /* events keep their order */
        const qg_node *nd = &e->g->nodes[e->node];
        char want[256];
        if (e->g == gd && e->node == 2)
            to_hex("bad\xef\xbf\xbd" "byte", want); /* U+FFFD */
        else
            to_hex(nd->name, want);
        assert_string_equal(hex, want);
        assert_string_equal(cat, qg_op_name(nd->op));
        assert_string_equal(phase, e->g->phase == QG_PHASE_DECODE ? "decode" : "prefill");
        assert_int_equal(pid, 1);
        assert_int_equal(tid, e->tid);
        assert_int_equal(layer, nd->layer);
        assert_int_equal(n_tok, e->n_tok);
        assert_int_equal(n_kv, e->n_kv);
        /* %.3f µs: within 0.0005 µs */
        check_printed(ts, (double)(e->t0_ns - t_first) / 1e3, 0.001, "ts", lines[i]);
        min_ts = ts < min_ts ? ts : min_ts;
        check_printed(dur, (double)(e->t1_ns - e->t0_ns) / 1e3, 0.001, "dur", lines[i]);
        /* %.0f: within 0.5 */
        check_printed(bytes, qg_node_bytes(e->g, nd, e->n_tok, e->n_kv), 1, "bytes", lines[i]);
        check_printed(flops, qg_node_flops(e->g, nd, e->n_tok, e->n_kv), 1, "flops", lines[i]);
    }
    assert_int_equal(n_x, (int)p->n);
    assert_int_equal(n_process, 1);
    assert_int_equal(n_thread, 2);
    assert_true(min_ts == 0.0); /* the earliest event is at ts 0 */
    free(out);

    /* Failure 1: the directory does not exist. */
    char bad[700], bad_tmp[720], bad_dir[660];
    snprintf(bad_dir, sizeof bad_dir, "%s/missing", dir);
    snprintf(bad, sizeof bad, "%s/trace.json", bad_dir);
    snprintf(bad_tmp, sizeof bad_tmp, "%s.tmp", bad);
    memset(&err, 0, sizeof err);
    assert_int_equal(qg_profile_write_trace(p, bad, &err), QG_ERR_IO);
    assert_int_equal(err.code, QG_ERR_IO);
    assert_non_null(strstr(err.msg, bad));
    assert_false(path_exists(bad));
    assert_false(path_exists(bad_tmp));
    assert_false(path_exists(bad_dir));
    /* NULL err is allowed */
    assert_int_equal(qg_profile_write_trace(p, bad, NULL), QG_ERR_IO);

    /* Failure 2: the path is a directory: the rename fails, the temporary
     * is removed and the directory is left as it was. */
    char adir[660], adir_tmp[680];
    snprintf(adir, sizeof adir, "%s/adir", dir);
    snprintf(adir_tmp, sizeof adir_tmp, "%s.tmp", adir);
    assert_int_equal(mkdir(adir, 0700), 0);
    memset(&err, 0, sizeof err);
    assert_int_equal(qg_profile_write_trace(p, adir, &err), QG_ERR_IO);
    assert_non_null(strstr(err.msg, adir));
    assert_false(path_exists(adir_tmp));
    struct stat st;
    assert_int_equal(stat(adir, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(rmdir(adir), 0);

    /* An empty profile is still a valid trace (metadata only). */
    qg_profile_reset(p);
    assert_int_equal(qg_profile_write_trace(p, path, &err), QG_OK);
    check_balanced(path);
    out = run_checker(dir, path);
    assert_null(strstr(out, "X "));
    assert_non_null(strstr(out, "thread_name"));
    free(out);

    qg_profile_free(p);
    qg_graph_free(gd);
    qg_graph_free(gp);
    char py[512];
    snprintf(py, sizeof py, "%s/check.py", dir);
    assert_int_equal(unlink(py), 0);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
}

/* ---- bench statistics and printers -------------------------------------- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Random samples (with repeats), odd and even n: mean / sd / median vs the
 * test's own long-double sums and sorted copy; inputs unchanged.
 * Tolerance: 1e-12 relative (different summation order only). */
static void test_bench_stats(void **state) {
    (void)state;
    for (int c = 0; c < 40; c++) {
        uint64_t seed = 0xBE7C4000ull + (uint64_t)c;
        int n = 1 + c % 13;
        double x[16], keep[16], sorted[16];
        for (int i = 0; i < n; i++)
            x[i] = (i > 0 && rng_next(&seed) % 4 == 0)
                       ? x[rng_int(&seed, 0, i - 1)] /* a repeat */
                       : 1.0 + (double)(rng_next(&seed) % 1000000) / 997.0;
        memcpy(keep, x, (size_t)n * sizeof *x);
        long double s = 0, ss = 0;
        for (int i = 0; i < n; i++) s += x[i];
        long double mean = s / n;
        for (int i = 0; i < n; i++) ss += (x[i] - mean) * (x[i] - mean);
        double sd = n > 1 ? sqrt((double)(ss / (n - 1))) : 0.0;
        memcpy(sorted, x, (size_t)n * sizeof *x);
        qsort(sorted, (size_t)n, sizeof *sorted, cmp_double);
        double med = n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;

        double got_mean = qg_bench_mean(x, n), got_sd = qg_bench_stddev(x, n);
        double got_med = qg_bench_median(x, n);
        assert_false(isnan(got_mean) || isnan(got_sd) || isnan(got_med));
        assert_true(fabs(got_mean - (double)mean) <= 1e-12 * (double)mean);
        assert_true(fabs(got_sd - sd) <= 1e-12 * (double)mean);
        assert_true(got_med == med);
        assert_memory_equal(x, keep, (size_t)n * sizeof *x);
    }
    /* by hand */
    const double a[3] = {3, 1, 2}, b[4] = {4, 1, 3, 2};
    const double w[8] = {2, 4, 4, 4, 5, 5, 7, 9}; /* mean 5, sum sq dev 32 */
    assert_true(qg_bench_median(a, 3) == 2.0);
    assert_true(qg_bench_median(b, 4) == 2.5);
    assert_true(qg_bench_mean(w, 8) == 5.0);
    assert_true(fabs(qg_bench_stddev(w, 8) - sqrt(32.0 / 7.0)) <= 1e-15);
    assert_true(qg_bench_median(w, 8) == 4.5);
    assert_true(qg_bench_stddev(a, 1) == 0.0);
    assert_true(isnan(qg_bench_mean(a, 0)));
    assert_true(isnan(qg_bench_median(a, 0)));
}

static void test_bench_names(void **state) {
    (void)state;
    char buf[64];
    qg_bench_row r = {.n_prompt = 512};
    assert_string_equal(qg_bench_test_name(&r, buf, sizeof buf), "pp512");
    r = (qg_bench_row){.n_gen = 128, .n_depth = 4096};
    assert_string_equal(qg_bench_test_name(&r, buf, sizeof buf), "tg128 @ d4096");
    r = (qg_bench_row){.n_prompt = 512, .n_gen = 128};
    assert_string_equal(qg_bench_test_name(&r, buf, sizeof buf), "pp512+tg128");
    /* truncation is NUL-terminated */
    r = (qg_bench_row){.n_gen = 128, .n_depth = 4096};
    memset(buf, 0x7F, sizeof buf);
    volatile size_t small = 4; /* not a constant: gcc would warn at -O3 */
    qg_bench_test_name(&r, buf, small);
    assert_string_equal(buf, "tg1");
}

/* The markdown layout of llama-bench (widths 30,10,10,10,7,15,20; text
 * columns left-aligned), written out by hand. */
static void test_bench_md(void **state) {
    (void)state;
    const double s1[3] = {100, 110, 120}; /* mean 110, sd 10 */
    const double s2[2] = {40.126, 40.126}; /* mean 40.126, sd 0 */
    qg_bench_row rows[2] = {
        {.model = "/models/Qwen3-30B-A3B-Q4_K_M.gguf",
         .size_bytes = 18790481920ull, /* 17.5 GiB */
         .n_params = 30532122624ull,
         .backend = "cpu", .n_threads = 16, .n_gen = 128, .n_depth = 4096,
         .samples_ts = s1, .n_samples = 3},
        {.model = "tiny.gguf",
         .size_bytes = 524288000ull, /* 500 MiB */
         .n_params = 600000000ull,
         .backend = "cuda", .n_threads = 4, .n_prompt = 512,
         .samples_ts = s2, .n_samples = 2},
    };
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    qg_bench_print_md(f, rows, 2);
    fclose(f);
    const char *want =
        "| model                          |       size |     params | backend    | threads |            test |                  t/s |\n"
        "| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: |\n"
        "| Qwen3-30B-A3B-Q4_K_M.gguf      |  17.50 GiB |    30.53 B | cpu        |      16 |   tg128 @ d4096 |       110.00 ± 10.00 |\n"
        "| tiny.gguf                      | 500.00 MiB |   600.00 M | cuda       |       4 |           pp512 |         40.13 ± 0.00 |\n";
    assert_string_equal(buf, want);
    free(buf);
}

/* JSON parsed by python3; fields and statistics as the test computes. */
static void test_bench_json(void **state) {
    (void)state;
    char dir[] = "/tmp/qg_test_bench_XXXXXX";
    assert_non_null(mkdtemp(dir));
    uint64_t seed = 0x15017ull;
    double s[2][5];
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < 5; i++) s[r][i] = 10.0 + (double)(rng_next(&seed) % 100000) / 1000.0;
    qg_bench_row rows[2] = {
        {.model = "dir/we\"ird\\name.gguf", .size_bytes = 123456789ull,
         .n_params = 987654321ull, .backend = "cpu", .n_threads = 2,
         .n_prompt = 64, .samples_ts = s[0], .n_samples = 5},
        {.model = "m.gguf", .size_bytes = 1ull << 33, .n_params = 3ull << 30,
         .backend = "vulkan", .n_threads = 8, .n_gen = 32, .n_depth = 512,
         .samples_ts = s[1], .n_samples = 4},
    };
    char path[600], py[600], cmd[1400];
    snprintf(path, sizeof path, "%s/bench.json", dir);
    snprintf(py, sizeof py, "%s/check.py", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    qg_bench_print_json(f, rows, 2);
    fclose(f);
    f = fopen(py, "w");
    assert_non_null(f);
    fputs("import json, sys\n"
          "for r in json.load(open(sys.argv[1])):\n"
          "    print(r['model_filename'].encode().hex(), r['model_size'], r['model_n_params'],\n"
          "          r['backends'], r['n_threads'], r['n_prompt'], r['n_gen'], r['n_depth'],\n"
          "          r['test'].replace(' ', '_'), len(r['samples_ts']), *map(repr, r['samples_ts']),\n"
          "          repr(r['avg_ts']), repr(r['stddev_ts']), repr(r['median_ts']))\n",
          f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "python3 '%s' '%s'", py, path);
    FILE *pp = popen(cmd, "r");
    assert_non_null(pp);
    char line[4096];
    for (int r = 0; r < 2; r++) {
        assert_non_null(fgets(line, sizeof line, pp));
        const qg_bench_row *w = &rows[r];
        char hex[256], want_hex[256], backend[32], test[64], want_test[64];
        unsigned long long size, params;
        int thr, np, ng, nd, ns, off;
        assert_int_equal(sscanf(line, "%255s %llu %llu %31s %d %d %d %d %63s %d%n", hex,
                                &size, &params, backend, &thr, &np, &ng, &nd, test,
                                &ns, &off),
                         10);
        to_hex(w->model, want_hex);
        assert_string_equal(hex, want_hex);
        assert_true(size == w->size_bytes && params == w->n_params);
        assert_string_equal(backend, w->backend);
        assert_true(thr == w->n_threads && np == w->n_prompt && ng == w->n_gen &&
                    nd == w->n_depth);
        qg_bench_test_name(w, want_test, sizeof want_test);
        for (char *c = want_test; *c; c++)
            if (*c == ' ') *c = '_';
        assert_string_equal(test, want_test);
        assert_int_equal(ns, w->n_samples);
        char *p = line + off;
        double v[8];
        for (int i = 0; i < ns + 3; i++) v[i] = strtod(p, &p);
        /* %.6f: within 5e-7 */
        for (int i = 0; i < ns; i++)
            check_printed(v[i], w->samples_ts[i], 1e-6, "sample", line);
        long double sum = 0, ss = 0;
        for (int i = 0; i < ns; i++) sum += w->samples_ts[i];
        double mean = (double)(sum / ns);
        for (int i = 0; i < ns; i++) ss += (w->samples_ts[i] - mean) * (w->samples_ts[i] - mean);
        double sorted[5];
        memcpy(sorted, w->samples_ts, (size_t)ns * sizeof *sorted);
        qsort(sorted, (size_t)ns, sizeof *sorted, cmp_double);
        double med = ns % 2 ? sorted[ns / 2] : (sorted[ns / 2 - 1] + sorted[ns / 2]) / 2;
        check_printed(v[ns], mean, 1e-6, "avg_ts", line);
        check_printed(v[ns + 1], sqrt((double)(ss / (ns - 1))), 1e-6, "stddev_ts", line);
        check_printed(v[ns + 2], med, 1e-6, "median_ts", line);
    }
    assert_null(fgets(line, sizeof line, pp));
    assert_int_equal(pclose(pp), 0);
    assert_int_equal(unlink(py), 0);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_report_numbers),
        cmocka_unit_test(test_report_dropped),
        cmocka_unit_test(test_trace),
        cmocka_unit_test(test_bench_stats),
        cmocka_unit_test(test_bench_names),
        cmocka_unit_test(test_bench_md),
        cmocka_unit_test(test_bench_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
