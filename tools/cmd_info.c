/* cmd_info.c - `qmoe-graph info`: metadata, tensor types and sizes,
 * hyperparameters and the memory plan of a default context. */
#include "qg_cli.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void print_scalar(const qg_gguf_kv *kv) {
    switch (kv->type) {
    case QG_GGUF_FLOAT32: case QG_GGUF_FLOAT64: printf("%g", kv->v.f64); break;
    case QG_GGUF_INT8: case QG_GGUF_INT16: case QG_GGUF_INT32: case QG_GGUF_INT64:
        printf("%lld", (long long)kv->v.i64); break;
    case QG_GGUF_BOOL: printf("%s", kv->v.u64 ? "true" : "false"); break;
    case QG_GGUF_STRING: {
        uint64_t n = kv->str.len;
        printf("\"");
        for (uint64_t i = 0; i < n && i < 80; i++) {
            char ch = kv->str.ptr[i];
            if (ch == '\n') printf("\\n");
            else if ((unsigned char)ch < 32) printf("\\x%02x", (unsigned char)ch);
            else putchar(ch);
        }
        printf("\"%s", n > 80 ? "... (" : "");
        if (n > 80) printf("%llu bytes)", (unsigned long long)n);
        break;
    }
    default: printf("%llu", (unsigned long long)kv->v.u64); break;
    }
}

int qg_cmd_info(int argc, char **argv) {
    qg_cli_common c = {.ctx = qg_ctx_default_params()};
    for (int i = 1; i < argc; i++) {
        int r = qg_cli_common_flag(&c, argc, argv, &i);
        if (r < 0) return QG_ERR_ARG;
        if (r) continue;
        if (argv[i][0] != '-' && !c.model) c.model = argv[i];
        else {
            fprintf(stderr, "qmoe-graph info: unexpected argument '%s'\n", argv[i]);
            return QG_ERR_ARG;
        }
    }
    if (!c.model) {
        fprintf(stderr, "usage: qmoe-graph info MODEL\n");
        return QG_ERR_ARG;
    }
    qg_error err = {0};
    qg_model *m = qg_model_load(c.model, &err); /* no prefault: reads metadata only */
    if (!m) return qg_cli_fail(&err);
    const qg_gguf *g = m->gguf;
    printf("file: %s\nGGUF v%u, %.2f GiB, %llu metadata keys, %llu tensors, alignment %llu\n\n", g->path,
           g->version, g->size / 1073741824.0, (unsigned long long)g->n_kv,
           (unsigned long long)g->n_tensors, (unsigned long long)g->alignment);
    printf("metadata:\n");
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const qg_gguf_kv *kv = &g->kv[i];
        printf("  %-48.*s ", (int)kv->key.len, kv->key.ptr);
        if (kv->type == QG_GGUF_ARRAY) {
            printf("%s[%llu]", qg_gguf_type_name(kv->arr_type), (unsigned long long)kv->arr_n);
            if (kv->arr_type == QG_GGUF_STRING && kv->arr_n) {
                qg_str s = qg_gguf_arr_str(kv, 0);
                printf(" \"%.*s\", ...", (int)QG_MIN(s.len, 40), s.ptr);
            }
        } else {
            print_scalar(kv);
        }
        printf("\n");
    }
    /* tensors by dtype */
    uint64_t count[QG_DTYPE_COUNT] = {0}, bytes[QG_DTYPE_COUNT] = {0}, total = 0, params = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const qg_gguf_tensor *t = &g->tensors[i];
        count[t->type]++;
        bytes[t->type] += t->nbytes;
        total += t->nbytes;
        params += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
    }
    printf("\ntensors: %llu, %.3f B parameters, %.2f GiB\n", (unsigned long long)g->n_tensors,
           params / 1e9, total / 1073741824.0);
    for (int t = 0; t < QG_DTYPE_COUNT; t++)
        if (count[t])
            printf("  %-6s %6llu tensors %10.2f MiB\n", qg_dtype_name((qg_dtype)t),
                   (unsigned long long)count[t], bytes[t] / 1048576.0);
    const qg_hparams *hp = &m->hp;
    printf("\nhyperparameters: %s, %u layers, n_embd %u, %u heads (%u kv), head_dim %u, vocab %u,\n"
           "  rms_eps %g, rope_theta %g, context_length %u",
           hp->arch == QG_ARCH_QWEN3MOE ? "qwen3moe" : "qwen3", hp->n_layer, hp->n_embd, hp->n_head,
           hp->n_head_kv, hp->head_dim_k, hp->n_vocab, (double)hp->rms_eps, (double)hp->rope_theta,
           hp->n_ctx_train);
    if (hp->arch == QG_ARCH_QWEN3MOE)
        printf(",\n  %u experts, %u used, expert_ff %u\n", hp->n_expert, hp->n_expert_used, hp->n_ff_exp);
    else
        printf(", ff %u\n", hp->n_ff);
    printf("\ndevices:\n  cpu: %ld threads online\n", sysconf(_SC_NPROCESSORS_ONLN));
#ifdef QG_HAVE_CUDA
    qg_exec_cuda_describe(stdout);
#else
    printf("  cuda: not built\n");
#endif
#ifdef QG_HAVE_VULKAN
    qg_exec_vulkan_describe(stdout);
#else
    printf("  vulkan: not built\n");
#endif
    c.ctx.plan_only = true;
    qg_ctx *ctx = qg_ctx_new(m, &c.ctx, &err);
    if (!ctx) {
        qg_model_free(m);
        return qg_cli_fail(&err);
    }
    printf("\nmemory plan (n_ctx %d, n_batch %d, kv %s):\n", qg_ctx_n_ctx(ctx),
           qg_ctx_graph(ctx, QG_PHASE_PREFILL)->n_tok_max, qg_dtype_name(c.ctx.kv_type));
    printf("  %-24s %10.2f MiB\n", "weights (mapped)", total / 1048576.0);
    for (int ph = 0; ph < 2; ph++) {
        const qg_graph *gr = qg_ctx_graph(ctx, ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE);
        for (int e = 0; e < gr->n_exec; e++) {
            char label[64];
            if (ph == 0) {
                snprintf(label, sizeof label, "kv cache (%s)", qg_ctx_exec_name(ctx, e));
                printf("  %-24s %10.2f MiB\n", label, gr->kv_bytes[e] / 1048576.0);
            }
            snprintf(label, sizeof label, "%s arena (%s)", ph ? "prefill" : "decode", qg_ctx_exec_name(ctx, e));
            printf("  %-24s %10.2f MiB\n", label, gr->act_bytes[e] / 1048576.0);
        }
    }
    qg_ctx_free(ctx);
    qg_model_free(m);
    return 0;
}
