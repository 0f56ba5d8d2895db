/* qg_cli_common.c - flag parsing and helpers shared by the commands. */
#include "qg_cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

bool qg_cli_int(const char *flag, const char *v, long lo, long hi, long *out) {
    char *end = NULL;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "qmoe-graph: %s: '%s' is not an integer in [%ld, %ld]\n", flag,
                v ? v : "(missing)", lo, hi);
        return false;
    }
    *out = x;
    return true;
}

int qg_cli_fail(const qg_error *err) {
    fprintf(stderr, "qmoe-graph: %s\n", err->msg[0] ? err->msg : "error");
    return err->code ? (int)err->code : 1;
}

int qg_cli_common_flag(qg_cli_common *c, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    const char *v = *i + 1 < argc ? argv[*i + 1] : NULL;
    long x;
#define TAKE_INT(lo, hi, dst)                                   \
    do {                                                        \
        if (!qg_cli_int(a, v, lo, hi, &x)) return -1;           \
        (dst) = (int)x;                                         \
        (*i)++;                                                 \
        return 1;                                               \
    } while (0)
    if (!strcmp(a, "-t") || !strcmp(a, "--threads")) TAKE_INT(1, 1024, c->ctx.n_threads);
    if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) TAKE_INT(16, 1 << 22, c->ctx.n_ctx);
    if (!strcmp(a, "-b") || !strcmp(a, "--batch-size")) TAKE_INT(1, 1 << 16, c->ctx.n_batch);
    if (!strcmp(a, "--n-cpu-moe")) TAKE_INT(0, 1 << 20, c->ctx.n_cpu_moe);
    if (!strcmp(a, "--device") || !strcmp(a, "--vk-device")) TAKE_INT(0, 64, c->ctx.device);
    if (!strcmp(a, "--cpu-moe")) { c->ctx.n_cpu_moe = 1 << 20; return 1; }
    if (!strcmp(a, "--no-fuse")) { c->ctx.no_fuse = true; return 1; }
    if (!strcmp(a, "--backend")) {
        if (!v) { fprintf(stderr, "qmoe-graph: --backend needs a value (cpu, cuda, vulkan)\n"); return -1; }
        c->ctx.backend = v;
        (*i)++;
        return 1;
    }
    if (!strcmp(a, "--kv-type") || !strcmp(a, "-ctk")) {
        if (v && !strcmp(v, "f16")) c->ctx.kv_type = QG_F16;
        else if (v && !strcmp(v, "f32")) c->ctx.kv_type = QG_F32;
        else { fprintf(stderr, "qmoe-graph: %s: '%s' is not f16 or f32\n", a, v ? v : "(missing)"); return -1; }
        (*i)++;
        return 1;
    }
#undef TAKE_INT
    return 0;
}

/* Touch every page of the mapped file so the first step does not stall
 * on page faults, with a progress line on stderr (large files only). */
static void prefault(const qg_model *m, const char *path) {
    const qg_gguf *g = m->gguf;
    madvise((void *)(uintptr_t)g->map, g->size, MADV_WILLNEED);
    volatile uint8_t sink = 0;
    int last = -1;
    const size_t step = 4096, chunk = (size_t)64 << 20;
    for (size_t off = 0; off < g->size; off += chunk) {
        size_t end = off + chunk < g->size ? off + chunk : g->size;
        for (size_t p = off; p < end; p += step) sink ^= g->map[p];
        int pct = (int)(100.0 * end / g->size);
        if (pct / 5 != last / 5 || end == g->size) {
            fprintf(stderr, "\rloading %s: %3d%% (%.1f / %.1f GiB)", path, pct, end / 1073741824.0,
                    g->size / 1073741824.0);
            last = pct;
        }
    }
    (void)sink;
    fputc('\n', stderr);
}

qg_model *qg_cli_load_model(const char *path, qg_error *err) {
    uint64_t t0 = qg_time_ns();
    qg_model *m = qg_model_load(path, err);
    if (m && m->gguf->size >= ((uint64_t)1 << 30)) prefault(m, path);
    if (m && qg_debug_enabled("load"))
        fprintf(stderr, "loaded %s in %.1f ms\n", path, (qg_time_ns() - t0) / 1e6);
    return m;
}
