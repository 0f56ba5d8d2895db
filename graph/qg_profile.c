/*
 * qg_profile.c - profile storage, the text report and the Chrome trace.
 *
 * Recording (qg_profile_add, inline in the header) only appends to the
 * preallocated event array.  Everything else here runs after the fact:
 * the report allocates its scratch once per call, the trace writer streams
 * straight to a temporary file that is renamed into place.
 *
 * Times: an event lasts t1_ns - t0_ns.  "total" in a section is the sum of
 * the durations of its events (busy time summed over executors; overlapping
 * events on different executors both count), and every % is of that sum.
 * Rates use the cost model: GB/s = sum of qg_node_bytes / time (1 GB =
 * 1e9 bytes), GFLOP/s = sum of qg_node_flops / time, both evaluated with
 * each event's own (n_tok, n_kv).
 */
#include "qg_profile.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

qg_profile *qg_profile_new(size_t cap) {
    qg_profile *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    /* (cap) events; at least one element so a zero cap is not a NULL. */
    p->ev = malloc((cap ? cap : 1) * sizeof *p->ev);
    if (!p->ev) {
        free(p);
        return NULL;
    }
    p->cap = cap;
    return p;
}

void qg_profile_free(qg_profile *p) {
    if (!p) return;
    free(p->ev);
    free(p);
}

/* Forget the recorded events and the drop count; keeps cap and the
 * executor names. */
void qg_profile_reset(qg_profile *p) {
    p->n = 0;
    p->dropped = 0;
}

/* ---- shared helpers ------------------------------------------------------ */

/* The node an event refers to; a bad index is a recorder bug. */
static const qg_node *event_node(const qg_profile_event *e) {
    QG_ASSERT(e->g != NULL);
    QG_ASSERT(e->node >= 0 && e->node < e->g->n_nodes);
    return &e->g->nodes[e->node];
}

static uint64_t event_ns(const qg_profile_event *e) {
    QG_ASSERT(e->t1_ns >= e->t0_ns);
    return e->t1_ns - e->t0_ns;
}

static const char *phase_name(qg_phase ph) {
    return ph == QG_PHASE_DECODE ? "decode" : "prefill";
}

/* x bytes (or flops) over ns nanoseconds, in G per second. */
static double rate_g(double x, uint64_t ns) {
    return ns ? x / (double)ns : 0.0;
}

static double pct(uint64_t ns, uint64_t total) {
    return total ? 100.0 * (double)ns / (double)total : 0.0;
}

/* Number of terminal columns a UTF-8 string takes (one per code point). */
static int utf8_width(const char *s) {
    int w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80) w++;
    return w;
}

/* Print s left-aligned in a field of `width` columns (UTF-8 aware). */
static void put_left(FILE *f, const char *s, int width) {
    fputs(s, f);
    for (int i = utf8_width(s); i < width; i++) fputc(' ', f);
}

/* Print s right-aligned in a field of `width` columns (UTF-8 aware). */
static void put_right(FILE *f, const char *s, int width) {
    for (int i = utf8_width(s); i < width; i++) fputc(' ', f);
    fputs(s, f);
}

/* ---- the report ---------------------------------------------------------- */

/* One row of a roll-up. */
typedef struct agg {
    uint64_t ns;
    double bytes, flops;
    long calls;
} agg;

/* One (graph, node, executor) key of the top-nodes table. */
typedef struct node_agg {
    uintptr_t g;
    const qg_graph *graph;
    int node, tid;
    agg a;
} node_agg;

static int cmp_node_key(const void *pa, const void *pb) {
    const node_agg *a = pa, *b = pb;
    if (a->g != b->g) return a->g < b->g ? -1 : 1;
    if (a->node != b->node) return a->node < b->node ? -1 : 1;
    if (a->tid != b->tid) return a->tid < b->tid ? -1 : 1;
    return 0;
}

/* Descending time; ties by name then tid so the order is deterministic. */
static int cmp_node_time(const void *pa, const void *pb) {
    const node_agg *a = pa, *b = pb;
    if (a->a.ns != b->a.ns) return a->a.ns > b->a.ns ? -1 : 1;
    int c = strcmp(a->graph->nodes[a->node].name, b->graph->nodes[b->node].name);
    if (c) return c;
    return (a->tid > b->tid) - (a->tid < b->tid);
}

static void agg_add(agg *a, uint64_t ns, double bytes, double flops) {
    a->ns += ns;
    a->bytes += bytes;
    a->flops += flops;
    a->calls++;
}

#define QG_PROFILE_TOP 10

/* Print the three tables of one phase.  `nodes` is scratch for p->n
 * entries, `layers` for n_layers entries (index = layer + 1). */
static void report_phase(const qg_profile *p, FILE *f, qg_phase ph,
                         node_agg *nodes, agg *layers, int n_layers) {
    agg ops[QG_OP_COUNT];
    memset(ops, 0, sizeof ops);
    memset(layers, 0, (size_t)n_layers * sizeof *layers);
    uint64_t total = 0;
    size_t n_ev = 0, n_nodes = 0;

    for (size_t i = 0; i < p->n; i++) {
        const qg_profile_event *e = &p->ev[i];
        if (e->g->phase != ph) continue;
        const qg_node *nd = event_node(e);
        uint64_t ns = event_ns(e);
        double bytes = qg_node_bytes(e->g, nd, e->n_tok, e->n_kv);
        double flops = qg_node_flops(e->g, nd, e->n_tok, e->n_kv);
        QG_ASSERT((unsigned)nd->op < QG_OP_COUNT);
        QG_ASSERT(nd->layer >= -1 && nd->layer + 1 < n_layers);
        agg_add(&ops[nd->op], ns, bytes, flops);
        agg_add(&layers[nd->layer + 1], ns, bytes, flops);
        node_agg *k = &nodes[n_nodes++];
        k->g = (uintptr_t)e->g;
        k->graph = e->g;
        k->node = e->node;
        k->tid = e->tid;
        memset(&k->a, 0, sizeof k->a);
        agg_add(&k->a, ns, bytes, flops);
        total += ns;
        n_ev++;
    }
    if (n_ev == 0) return;

    /* Merge equal (graph, node, tid) keys, then order by time. */
    qsort(nodes, n_nodes, sizeof *nodes, cmp_node_key);
    size_t m = 0;
    for (size_t i = 0; i < n_nodes; i++) {
        if (m > 0 && cmp_node_key(&nodes[m - 1], &nodes[i]) == 0) {
            agg *a = &nodes[m - 1].a;
            a->ns += nodes[i].a.ns;
            a->bytes += nodes[i].a.bytes;
            a->flops += nodes[i].a.flops;
            a->calls += nodes[i].a.calls;
        } else {
            nodes[m++] = nodes[i];
        }
    }
    n_nodes = m;
    qsort(nodes, n_nodes, sizeof *nodes, cmp_node_time);

    fprintf(f, "\n== %s: %zu events, %.1f µs total ==\n", phase_name(ph), n_ev,
            (double)total / 1e3);

    /* By op. */
    int w_op = 2;
    for (int o = 0; o < QG_OP_COUNT; o++)
        if (ops[o].calls) w_op = QG_MAX(w_op, (int)strlen(qg_op_name((qg_op)o)));
    fprintf(f, "by op:\n  ");
    put_left(f, "op", w_op);
    fputc(' ', f);
    put_right(f, "calls", 8);
    put_right(f, "total µs", 13);
    put_right(f, "µs/call", 11);
    put_right(f, "%", 7);
    put_right(f, "GB/s", 10);
    put_right(f, "GFLOP/s", 10);
    fputc('\n', f);
    for (int o = 0; o < QG_OP_COUNT; o++) {
        const agg *a = &ops[o];
        if (!a->calls) continue;
        fputs("  ", f);
        put_left(f, qg_op_name((qg_op)o), w_op);
        fprintf(f, " %8ld %12.1f %10.1f %6.1f %9.2f %9.2f\n", a->calls,
                (double)a->ns / 1e3, (double)a->ns / 1e3 / (double)a->calls,
                pct(a->ns, total), rate_g(a->bytes, a->ns),
                rate_g(a->flops, a->ns));
    }

    /* By layer. */
    fprintf(f, "\nby layer:\n  ");
    put_right(f, "layer", 5);
    put_right(f, "calls", 9);
    put_right(f, "total µs", 13);
    put_right(f, "%", 7);
    put_right(f, "GB/s", 10);
    fputc('\n', f);
    for (int l = 0; l < n_layers; l++) {
        const agg *a = &layers[l];
        if (!a->calls) continue;
        char name[16];
        if (l == 0)
            snprintf(name, sizeof name, "-");
        else
            snprintf(name, sizeof name, "%d", l - 1);
        fprintf(f, "  %5s %8ld %12.1f %6.1f %9.2f\n", name, a->calls,
                (double)a->ns / 1e3, pct(a->ns, total),
                rate_g(a->bytes, a->ns));
    }

    /* Top nodes. */
    size_t n_top = QG_MIN(n_nodes, (size_t)QG_PROFILE_TOP);
    int w_name = 4, w_nop = 2;
    for (size_t i = 0; i < n_top; i++) {
        const qg_node *nd = &nodes[i].graph->nodes[nodes[i].node];
        w_name = QG_MAX(w_name, (int)strlen(nd->name));
        w_nop = QG_MAX(w_nop, (int)strlen(qg_op_name(nd->op)));
    }
    fprintf(f, "\ntop %zu nodes:\n  ", n_top);
    put_left(f, "node", w_name);
    fputc(' ', f);
    put_left(f, "op", w_nop);
    put_right(f, "tid", 4);
    put_right(f, "calls", 9);
    put_right(f, "total µs", 13);
    put_right(f, "%", 7);
    put_right(f, "GB/s", 10);
    fputc('\n', f);
    for (size_t i = 0; i < n_top; i++) {
        const node_agg *k = &nodes[i];
        const qg_node *nd = &k->graph->nodes[k->node];
        fputs("  ", f);
        put_left(f, nd->name, w_name);
        fputc(' ', f);
        put_left(f, qg_op_name(nd->op), w_nop);
        fprintf(f, " %3d %8ld %12.1f %6.1f %9.2f\n", k->tid, k->a.calls,
                (double)k->a.ns / 1e3, pct(k->a.ns, total),
                rate_g(k->a.bytes, k->a.ns));
    }
}

/* Print, per phase present in the events (decode, then prefill), the
 * roll-up by op, the roll-up by layer and the top nodes; then the drop
 * count when nonzero.  Allocates scratch once (O(n) entries); if that
 * fails a one-line note is printed instead of the tables. */
void qg_profile_report(const qg_profile *p, FILE *f) {
    fprintf(f, "profile: %zu events", p->n);
    bool any_name = false;
    for (int t = 0; t < QG_MAX_EXEC; t++) any_name |= p->exec_names[t] != NULL;
    if (any_name) {
        fputs("; executors:", f);
        for (int t = 0; t < QG_MAX_EXEC; t++)
            if (p->exec_names[t]) fprintf(f, " %d=%s", t, p->exec_names[t]);
    }
    fputc('\n', f);
    if (p->dropped)
        fprintf(f, "dropped: %zu events (profile full at %zu); the tables omit them\n",
                p->dropped, p->cap);
    if (p->n == 0) return;

    int max_layer = -1;
    bool has_phase[2] = {false, false};
    for (size_t i = 0; i < p->n; i++) {
        const qg_node *nd = event_node(&p->ev[i]);
        max_layer = QG_MAX(max_layer, nd->layer);
        QG_ASSERT(p->ev[i].g->phase == QG_PHASE_DECODE ||
                  p->ev[i].g->phase == QG_PHASE_PREFILL);
        has_phase[p->ev[i].g->phase] = true;
    }
    int n_layers = max_layer + 2; /* index 0 is layer -1 */
    node_agg *nodes = malloc(p->n * sizeof *nodes);     /* (p->n) */
    agg *layers = malloc((size_t)n_layers * sizeof *layers); /* (n_layers) */
    if (!nodes || !layers) {
        fprintf(f, "profile: out of memory for the report (%zu events)\n", p->n);
        free(nodes);
        free(layers);
        return;
    }
    const qg_phase order[2] = {QG_PHASE_DECODE, QG_PHASE_PREFILL};
    for (int i = 0; i < 2; i++)
        if (has_phase[order[i]])
            report_phase(p, f, order[i], nodes, layers, n_layers);
    free(nodes);
    free(layers);
}

/* ---- the Chrome trace ---------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static int utf8_seq_len(const unsigned char *s) {
    unsigned c = s[0];
    int n;
    uint32_t cp;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) { n = 2; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { n = 3; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { n = 4; cp = c & 0x07; }
    else return 0;
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* Write s as a JSON string literal: quotes, backslashes and control
 * characters escaped, invalid UTF-8 bytes replaced by U+FFFD. */
static void json_put_str(FILE *f, const char *s) {
    const unsigned char *u = (const unsigned char *)s;
    fputc('"', f);
    while (*u) {
        unsigned c = *u;
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc((int)c, f);
            u++;
        } else if (c < 0x20) {
            switch (c) {
            case '\n': fputs("\\n", f); break;
            case '\r': fputs("\\r", f); break;
            case '\t': fputs("\\t", f); break;
            default: fprintf(f, "\\u%04x", c); break;
            }
            u++;
        } else {
            int n = utf8_seq_len(u);
            if (n == 0) {
                fputs("\\ufffd", f);
                u++;
            } else {
                fwrite(u, 1, (size_t)n, f);
                u += n;
            }
        }
    }
    fputc('"', f);
}

/* A cost-model number as JSON (null when not finite). */
static void json_put_num(FILE *f, double x) {
    if (isfinite(x))
        fprintf(f, "%.0f", x);
    else
        fputs("null", f);
}

/* Stream the whole JSON document to f; the caller checks ferror. */
static void trace_write_body(const qg_profile *p, FILE *f) {
    uint64_t t_first = UINT64_MAX;
    for (size_t i = 0; i < p->n; i++)
        t_first = QG_MIN(t_first, p->ev[i].t0_ns);

    fputs("{\"traceEvents\":[\n", f);
    fputs("{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":1,\"tid\":0,"
          "\"args\":{\"name\":\"qmoe-graph\"}}", f);
    for (int t = 0; t < QG_MAX_EXEC; t++) {
        if (!p->exec_names[t]) continue;
        fprintf(f, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":%d,"
                   "\"args\":{\"name\":", t);
        json_put_str(f, p->exec_names[t]);
        fputs("}}", f);
    }
    for (size_t i = 0; i < p->n; i++) {
        const qg_profile_event *e = &p->ev[i];
        const qg_node *nd = event_node(e);
        uint64_t ns = event_ns(e);
        fputs(",\n{\"name\":", f);
        json_put_str(f, nd->name);
        fputs(",\"cat\":", f);
        json_put_str(f, qg_op_name(nd->op));
        fprintf(f, ",\"ph\":\"X\",\"ts\":%.3f,\"dur\":%.3f,\"pid\":1,\"tid\":%d,"
                   "\"args\":{\"phase\":\"%s\",\"layer\":%d,\"n_tok\":%d,"
                   "\"n_kv\":%d,\"bytes\":",
                (double)(e->t0_ns - t_first) / 1e3, (double)ns / 1e3, e->tid,
                phase_name(e->g->phase), nd->layer, e->n_tok, e->n_kv);
        json_put_num(f, qg_node_bytes(e->g, nd, e->n_tok, e->n_kv));
        fputs(",\"flops\":", f);
        json_put_num(f, qg_node_flops(e->g, nd, e->n_tok, e->n_kv));
        fputs("}}", f);
    }
    fputs("\n]}\n", f);
}

/* Write "<path>.tmp", then rename it to path.  On any failure the
 * temporary is removed, path is untouched, and QG_ERR_IO (or
 * QG_ERR_NOMEM) names path and the reason. */
qg_status qg_profile_write_trace(const qg_profile *p, const char *path,
                                 qg_error *err) {
    size_t len = strlen(path);
    char *tmp = malloc(len + 5);
    if (!tmp)
        return qg_error_set(err, QG_ERR_NOMEM, "profile trace %s: out of memory",
                            path);
    memcpy(tmp, path, len);
    memcpy(tmp + len, ".tmp", 5);

    qg_status st = QG_OK;
    FILE *f = fopen(tmp, "w");
    if (!f) {
        st = qg_error_set(err, QG_ERR_IO, "profile trace %s: cannot create %s: %s",
                          path, tmp, strerror(errno));
        goto out;
    }
    errno = 0;
    trace_write_body(p, f);
    int werr = ferror(f) ? (errno ? errno : EIO) : 0;
    if (fclose(f) != 0 && !werr) werr = errno ? errno : EIO;
    if (werr) {
        remove(tmp);
        st = qg_error_set(err, QG_ERR_IO, "profile trace %s: write failed: %s",
                          path, strerror(werr));
        goto out;
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        st = qg_error_set(err, QG_ERR_IO, "profile trace %s: rename from %s failed: %s",
                          path, tmp, strerror(e));
        goto out;
    }
out:
    free(tmp);
    return st;
}
