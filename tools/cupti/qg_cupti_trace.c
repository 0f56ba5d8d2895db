/*
 * qg_cupti_trace.c - a preload library that records every CUDA kernel a
 * process runs, with its GPU start and end times, through CUPTI's activity
 * API (GPU machine only; tools/trace-decode.sh builds and uses it).
 *
 *   QG_TRACE_OUT=file.csv LD_PRELOAD=libqg_cupti_trace.so qmoe-graph bench ...
 *
 * writes one line per kernel: start_ns,end_ns,graph_id,name.  Kernels run
 * as nodes of a CUDA Graph are recorded one by one, at the times they ran
 * inside the graph (CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, which keeps
 * kernels concurrent), so the record shows the real decode step: each
 * kernel's duration and the gap or overlap (programmatic launch) between
 * consecutive kernels.  Measurement only; nothing of qmoe-graph links it.
 */
#include <cupti.h>

#include <stdio.h>
#include <stdlib.h>

#define TRACE_BUF (8u << 20)

/* The output file, opened at the first records (a process that runs no
 * kernel leaves no file behind); process-wide, as CUPTI's callbacks
 * carry no user pointer. */
static FILE *trace_file;

static FILE *trace_out(void) {
    if (!trace_file) {
        const char *p = getenv("QG_TRACE_OUT");
        trace_file = fopen(p && *p ? p : "qg-trace.csv", "w");
    }
    return trace_file;
}

/* CUPTI asks for a buffer to fill. */
static void CUPTIAPI buf_request(uint8_t **buf, size_t *size, size_t *max_records) {
    *buf = aligned_alloc(8, TRACE_BUF);
    *size = *buf ? TRACE_BUF : 0;
    *max_records = 0;
}

/* CUPTI hands back a filled buffer: one line per kernel record. */
static void CUPTIAPI buf_complete(CUcontext ctx, uint32_t stream, uint8_t *buf, size_t size,
                                  size_t valid) {
    (void)ctx;
    (void)stream;
    (void)size;
    FILE *f = trace_out();
    CUpti_Activity *rec = NULL;
    size_t n = 0, nk = 0;
    while (cuptiActivityGetNextRecord(buf, valid, &rec) == CUPTI_SUCCESS) {
        n++;
        if (rec->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
        nk++;
        const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)rec;
        if (f)
            fprintf(f, "%llu,%llu,%u,%s\n", (unsigned long long)k->start,
                    (unsigned long long)k->end, k->graphId, k->name);
    }
    size_t dropped = 0;
    cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped);
    if (getenv("QG_TRACE_VERBOSE"))
        fprintf(stderr, "qg_cupti_trace: %zu bytes, %zu records, %zu kernels, %zu dropped\n",
                valid, n, nk, dropped);
    free(buf);
}

__attribute__((constructor)) static void trace_start(void) {
    CUptiResult r = cuptiActivityRegisterCallbacks(buf_request, buf_complete);
    if (r == CUPTI_SUCCESS) r = cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    /* buffers are handed back every 50 ms, not only at exit (the CUDA
     * context may be gone by the time the destructor runs) */
    if (r == CUPTI_SUCCESS) r = cuptiActivityFlushPeriod(50);
    if (r != CUPTI_SUCCESS) {
        const char *msg = NULL;
        cuptiGetResultString(r, &msg);
        fprintf(stderr, "qg_cupti_trace: CUPTI activity tracing could not start: %s\n",
                msg ? msg : "?");
    } else {
        fprintf(stderr, "qg_cupti_trace: recording kernels\n");
    }
}

__attribute__((destructor)) static void trace_stop(void) {
    cuptiActivityFlushAll(1);
    if (trace_file) fclose(trace_file);
    trace_file = NULL;
}
