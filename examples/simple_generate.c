/*
 * simple_generate.c - the public API in one page: load a model, prefill a
 * prompt, sample, and stream the text.
 *
 *   simple_generate MODEL.gguf "prompt" [n_tokens]
 *
 * Greedy decoding, CPU executor, all cores.
 */
#include "qmoe_graph.h"

#include "frontends/qg_sampler.h"
#include "frontends/qg_tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT [N]\n", argv[0]);
        return 2;
    }
    int n_gen = argc > 3 ? atoi(argv[3]) : 32;
    qg_error err = {0};

    /* 1. the model: mapped, validated, every tensor checked */
    qg_model *model = qg_model_load(argv[1], &err);
    if (!model) goto fail;
    qg_tokenizer *tok = qg_tokenizer_from_gguf(model->gguf, &err);
    if (!tok) goto fail;

    /* 2. a context: executors, static graphs, KV cache */
    qg_ctx_params cp = qg_ctx_default_params();
    cp.n_ctx = 512;
    qg_ctx *ctx = qg_ctx_new(model, &cp, &err);
    if (!ctx) goto fail;

    /* 3. prefill the prompt */
    int32_t ids[512];
    int n = qg_tokenizer_encode(tok, argv[2], strlen(argv[2]), false, ids, 512 - n_gen, &err);
    if (n <= 0 || n > 512 - n_gen) {
        if (n >= 0) fprintf(stderr, "prompt too long or empty\n");
        goto fail;
    }
    if (qg_ctx_decode(ctx, ids, n, NULL, &err)) goto fail;

    /* 4. sample and stream whole UTF-8 characters */
    qg_sampler_params sp = qg_sampler_default_params();
    sp.temp = 0; /* greedy */
    qg_sampler *smp = qg_sampler_new(&sp, (int32_t)model->hp.n_vocab, &err);
    qg_detok_stream ds;
    if (!smp || qg_detok_stream_init(&ds, tok, false, &err)) goto fail;
    for (int i = 0; i < n_gen; i++) {
        int32_t t = qg_sampler_sample(smp, qg_ctx_logits(ctx));
        if (qg_tokenizer_is_eog(tok, t)) break;
        const char *piece;
        size_t len;
        if (qg_detok_stream_push(&ds, t, &piece, &len, &err)) goto fail;
        fwrite(piece, 1, len, stdout);
        printf("[%d]", t); /* the ids too, so tests can compare */
        fflush(stdout);
        if (qg_ctx_decode(ctx, &t, 1, NULL, &err)) goto fail;
    }
    printf("\n");
    qg_detok_stream_free(&ds);
    qg_sampler_free(smp);
    qg_ctx_free(ctx);
    qg_tokenizer_free(tok);
    qg_model_free(model);
    return 0;
fail:
    fprintf(stderr, "error: %s\n", err.msg);
    return 1;
}
