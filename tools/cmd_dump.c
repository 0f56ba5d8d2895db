/* cmd_dump.c - `qmoe-graph dump`: the scheduled graph, node by node, with
 * shapes, dtypes, bytes, FLOPs, executor and partition; text, dot or json. */
#include "qg_cli.h"

#include <stdio.h>
#include <string.h>

/* "[2048, 512] f32" */
static void fmt_tensor(char *buf, size_t n, const qg_tensor *t) {
    int k = snprintf(buf, n, "[");
    for (int d = 0; d < t->n_dims; d++)
        k += snprintf(buf + k, n - (size_t)k, "%s%lld", d ? ", " : "", (long long)t->ne[d]);
    snprintf(buf + k, n - (size_t)k, "] %s", qg_dtype_name(t->type));
}

static const char *role_name(qg_role r) {
    static const char *const names[] = {"weight", "act", "kv", "input", "output"};
    return names[r];
}

static void dump_text(FILE *f, const qg_ctx *ctx, const qg_graph *g) {
    int T = g->n_tok_max;
    fprintf(f, "# %s graph: %d nodes, %d partitions, n_tok_max %d, n_ctx %d%s\n",
            g->phase == QG_PHASE_DECODE ? "decode" : "prefill", g->n_nodes, g->n_parts, T,
            g->n_ctx, g->fused ? ", fused" : ", unfused");
    fprintf(f, "# bytes and FLOPs per step at n_tok %d, n_kv %d\n", T, T);
    fprintf(f, "%5s  %-13s %-26s %5s  %-6s %4s %12s %12s\n", "node", "op", "name", "layer", "exec",
            "part", "bytes", "flops");
    double tb = 0, tf = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n = &g->nodes[i];
        double b = qg_node_bytes(g, n, T, T), fl = qg_node_flops(g, n, T, T);
        tb += b;
        tf += fl;
        char layer[8];
        snprintf(layer, sizeof layer, "%d", n->layer);
        fprintf(f, "%5d  %-13s %-26s %5s  %-6s %4d %12.0f %12.0f\n", i, qg_op_name(n->op), n->name,
                n->layer < 0 ? "-" : layer, qg_ctx_exec_name(ctx, n->exec), n->partition, b, fl);
        for (int k = 0; k < n->n_in + n->n_out; k++) {
            int tid = k < n->n_in ? n->in[k] : n->out[k - n->n_in];
            const qg_tensor *t = &g->tensors[tid];
            char s[128];
            fmt_tensor(s, sizeof s, t);
            fprintf(f, "         %s %-34s %-28s %s\n", k < n->n_in ? "in " : "out", t->name, s,
                    role_name(t->role));
        }
    }
    fprintf(f, "# total: %.3f GB moved, %.3f GFLOP per step\n", tb / 1e9, tf / 1e9);
    for (int p = 0; p < g->n_parts; p++)
        fprintf(f, "# partition %d: %s, nodes %d..%d%s\n", p, qg_ctx_exec_name(ctx, g->parts[p].exec),
                g->parts[p].first, g->parts[p].first + g->parts[p].n - 1,
                g->nodes[g->parts[p].first].op == QG_OP_COPY ? " (copy)" : "");
    for (int e = 0; e < g->n_exec; e++)
        fprintf(f, "# arena %s: activations %.2f MiB, kv cache %.2f MiB\n", qg_ctx_exec_name(ctx, e),
                g->act_bytes[e] / 1048576.0, g->kv_bytes[e] / 1048576.0);
}

static void dump_dot(FILE *f, const qg_ctx *ctx, const qg_graph *g) {
    fprintf(f, "digraph qmoe {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n");
    for (int p = 0; p < g->n_parts; p++) {
        fprintf(f, "  subgraph cluster_p%d {\n    label=\"partition %d (%s)\";\n", p, p,
                qg_ctx_exec_name(ctx, g->parts[p].exec));
        for (int i = g->parts[p].first; i < g->parts[p].first + g->parts[p].n; i++)
            fprintf(f, "    n%d [label=\"%s\\n%s\"];\n", i, g->nodes[i].name, qg_op_name(g->nodes[i].op));
        fprintf(f, "  }\n");
    }
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n = &g->nodes[i];
        for (int k = 0; k < n->n_in; k++) {
            const qg_tensor *t = &g->tensors[n->in[k]];
            if (t->producer >= 0) {
                char s[128];
                fmt_tensor(s, sizeof s, t);
                fprintf(f, "  n%d -> n%d [label=\"%s\"];\n", t->producer, i, s);
            }
        }
    }
    fprintf(f, "}\n");
}

static void json_tensor(FILE *f, const qg_graph *g, int tid) {
    const qg_tensor *t = &g->tensors[tid];
    fprintf(f, "{\"name\":\"%s\",\"type\":\"%s\",\"role\":\"%s\",\"shape\":[", t->name,
            qg_dtype_name(t->type), role_name(t->role));
    for (int d = 0; d < t->n_dims; d++) fprintf(f, "%s%lld", d ? "," : "", (long long)t->ne[d]);
    fprintf(f, "],\"bytes\":%zu}", t->nbytes);
}

static void dump_json(FILE *f, const qg_ctx *ctx, const qg_graph *g) {
    int T = g->n_tok_max;
    fprintf(f, "{\"phase\":\"%s\",\"n_tok_max\":%d,\"n_ctx\":%d,\"fused\":%s,\"nodes\":[\n",
            g->phase == QG_PHASE_DECODE ? "decode" : "prefill", T, g->n_ctx, g->fused ? "true" : "false");
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n = &g->nodes[i];
        fprintf(f, "  {\"index\":%d,\"op\":\"%s\",\"name\":\"%s\",\"layer\":%d,\"exec\":\"%s\","
                   "\"partition\":%d,\"bytes\":%.0f,\"flops\":%.0f,\"inputs\":[",
                i, qg_op_name(n->op), n->name, n->layer, qg_ctx_exec_name(ctx, n->exec), n->partition,
                qg_node_bytes(g, n, T, T), qg_node_flops(g, n, T, T));
        for (int k = 0; k < n->n_in; k++) {
            if (k) fputc(',', f);
            json_tensor(f, g, n->in[k]);
        }
        fprintf(f, "],\"outputs\":[");
        for (int k = 0; k < n->n_out; k++) {
            if (k) fputc(',', f);
            json_tensor(f, g, n->out[k]);
        }
        fprintf(f, "]}%s\n", i + 1 < g->n_nodes ? "," : "");
    }
    fprintf(f, "],\"partitions\":[");
    for (int p = 0; p < g->n_parts; p++)
        fprintf(f, "%s{\"exec\":\"%s\",\"first\":%d,\"n\":%d}", p ? "," : "",
                qg_ctx_exec_name(ctx, g->parts[p].exec), g->parts[p].first, g->parts[p].n);
    fprintf(f, "]}\n");
}

int qg_cmd_dump(int argc, char **argv) {
    qg_cli_common c = {.ctx = qg_ctx_default_params()};
    const char *format = "text", *phase = "decode";
    for (int i = 1; i < argc; i++) {
        int r = qg_cli_common_flag(&c, argc, argv, &i);
        if (r < 0) return QG_ERR_ARG;
        if (r) continue;
        if (!strcmp(argv[i], "--format") && i + 1 < argc) format = argv[++i];
        else if (!strcmp(argv[i], "--phase") && i + 1 < argc) phase = argv[++i];
        else if (argv[i][0] != '-' && !c.model) c.model = argv[i];
        else {
            fprintf(stderr, "qmoe-graph dump: unexpected argument '%s'\n", argv[i]);
            return QG_ERR_ARG;
        }
    }
    if (!c.model) {
        fprintf(stderr, "usage: qmoe-graph dump MODEL [--format text|dot|json] [--phase decode|prefill] [--no-fuse]\n");
        return QG_ERR_ARG;
    }
    if (strcmp(format, "text") && strcmp(format, "dot") && strcmp(format, "json")) {
        fprintf(stderr, "qmoe-graph dump: --format '%s' is not text, dot or json\n", format);
        return QG_ERR_ARG;
    }
    if (strcmp(phase, "decode") && strcmp(phase, "prefill")) {
        fprintf(stderr, "qmoe-graph dump: --phase '%s' is not decode or prefill\n", phase);
        return QG_ERR_ARG;
    }
    qg_error err = {0};
    qg_model *m = qg_model_load(c.model, &err); /* no prefault: reads metadata only */
    if (!m) return qg_cli_fail(&err);
    c.ctx.plan_only = true;
    qg_ctx *ctx = qg_ctx_new(m, &c.ctx, &err);
    if (!ctx) {
        qg_model_free(m);
        return qg_cli_fail(&err);
    }
    const qg_graph *g = qg_ctx_graph(ctx, !strcmp(phase, "decode") ? QG_PHASE_DECODE : QG_PHASE_PREFILL);
    if (!strcmp(format, "text")) dump_text(stdout, ctx, g);
    else if (!strcmp(format, "dot")) dump_dot(stdout, ctx, g);
    else dump_json(stdout, ctx, g);
    qg_ctx_free(ctx);
    qg_model_free(m);
    return 0;
}
