/*
 * tools/kernels/fastmodel.cu - a benchmark model in seconds: the tensor
 * table, types and metadata of `qmoe-graph synth PRESET --ftype TYPE`
 * (qg_synth_plan_new, the byte-level vocabulary), but the quantized
 * weights are random valid blocks instead of quantized samples, so no
 * quantizer runs.
 *
 *   lab_fastmodel OUT.gguf [PRESET [FTYPE [THREADS]]]   (30b-a3b q4_k_m)
 *
 * Why: `synth` quantizes every weight (about 7000 CPU-seconds for the 17
 * GiB 30b-a3b Q4_K_M file); a GPU lease cannot spend that.  Speed depends
 * on shapes, types and how the router spreads tokens, not on the exact
 * weights, so benchmarks may use this file (docs/BENCHMARKS.md says which
 * file each number used).  Values: F32/F16/BF16 tensors follow the synth
 * distribution (mean, std per tensor, an Irwin-Hall(4) variate); Q4_K
 * blocks get random scale/min codes and nibbles with d = std/257, dmin =
 * 7.5 d (mean about 0, std about `std`); Q6_K random codes with d =
 * std/1370; other block types are quantized from generated values.  The
 * router's logits keep the synth spread (std 3), so routing is decisive
 * as in the synth file.
 */
#include "lab_common.cuh"

extern "C" {
#include "../../frontends/qg_gguf.h"
#include "../../frontends/qg_synth.h"
}

#include <thread>

/* Irwin-Hall(4) standard variate from one 64-bit word. */
static inline float ih4(uint64_t u) {
    const int s = (int)(u & 0xFFFF) + (int)((u >> 16) & 0xFFFF) + (int)((u >> 32) & 0xFFFF) +
                  (int)(u >> 48) - 131070;
    return (float)s * 1.7320508f / 65536.0f;
}

/* Bytes [b0, b1) of tensor t (whole rows) into dst. */
static void gen_range(const qg_synth_tensor *t, uint64_t key, int64_t r0, int64_t r1, uint8_t *dst) {
    const int64_t n = t->ne[0];
    const size_t rb = qg_dtype_row_bytes(t->type, n);
    uint8_t *out = dst + (size_t)r0 * rb;
    if (t->type == QG_Q4_K || t->type == QG_Q6_K) {
        uint64_t s = lab_mix(key ^ (uint64_t)r0 * 0x9e3779b97f4a7c15ull);
        for (size_t i = 0; i < (size_t)(r1 - r0) * rb; i += 8) {
            s += 0x9e3779b97f4a7c15ull;
            const uint64_t v = lab_mix(s);
            memcpy(out + i, &v, QG_MIN((size_t)8, (size_t)(r1 - r0) * rb - i));
        }
        const int bs = qg_dtype_get((uint32_t)t->type)->type_size;
        const uint16_t d = qg_f32_to_f16(t->type == QG_Q4_K ? t->std / 257.0f : t->std / 1370.0f);
        const uint16_t dm = qg_f32_to_f16(7.5f * t->std / 257.0f);
        for (int64_t r = r0; r < r1; r++)
            for (int64_t b = 0; b < n / 256; b++) {
                lab_block_scales(t->type, dst + (size_t)r * rb + (size_t)b * bs, d, dm);
            }
        return;
    }
    std::vector<float> row((size_t)n);
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t i = 0; i < n; i++)
            row[(size_t)i] = t->mean + t->std * ih4(lab_mix(key + (uint64_t)(r * n + i) * 0x9e3779b97f4a7c15ull));
        uint8_t *o = dst + (size_t)r * rb;
        if (t->type == QG_F32) memcpy(o, row.data(), (size_t)n * 4);
        else if (t->type == QG_F16 || t->type == QG_BF16)
            for (int64_t i = 0; i < n; i++) {
                const uint16_t h = t->type == QG_F16 ? qg_f32_to_f16(row[(size_t)i]) : qg_f32_to_bf16(row[(size_t)i]);
                memcpy(o + 2 * i, &h, 2);
            }
        else qg_quantize_row(t->type, row.data(), o, n);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: lab_fastmodel OUT.gguf [PRESET [FTYPE [THREADS]]]\n");
        return 2;
    }
    const char *path = argv[1];
    const char *preset = argc > 2 ? argv[2] : "30b-a3b";
    const char *ftype = argc > 3 ? argv[3] : "q4_k_m";
    int nt = argc > 4 ? atoi(argv[4]) : (int)std::thread::hardware_concurrency();
    if (nt < 1) nt = 1;
    qg_error err = {};
    const qg_synth_preset *p = qg_synth_preset_find(preset);
    if (!p) {
        fprintf(stderr, "unknown preset %s\n", preset);
        return 2;
    }
    qg_synth_opts o;
    qg_synth_opts_init(&o);
    o.preset = preset;
    o.ftype = ftype;
    o.vocab_mode = QG_SYNTH_VOCAB_BYTES;
    qg_synth_vocab v;
    memset(&v, 0, sizeof v);
    qg_synth_plan *pl = NULL;
    if (qg_synth_vocab_for(p, &o, &v, &err) ||
        qg_synth_plan_new(p, ftype, (int)v.n_tokens, &pl, &err)) {
        fprintf(stderr, "lab_fastmodel: %s\n", err.msg);
        return 1;
    }
    const uint64_t t0 = qg_time_ns();
    qg_gguf_writer *w = qg_gguf_writer_new(32);
    char key[128], name[160];
#define K(suffix) (snprintf(key, sizeof key, "%s.%s", p->arch, suffix), key)
    qg_gguf_writer_set_str(w, "general.architecture", p->arch);
    qg_gguf_writer_set_str(w, "general.type", "model");
    snprintf(name, sizeof name, "qmoe-graph lab_fastmodel %s %s (random blocks)", p->name, ftype);
    qg_gguf_writer_set_str(w, "general.name", name);
    qg_gguf_writer_set_u32(w, "general.file_type", pl->ftype->llama_ftype);
    qg_gguf_writer_set_u32(w, "general.quantization_version", 2);
    qg_gguf_writer_set_u32(w, "general.alignment", 32);
    qg_gguf_writer_set_u32(w, K("block_count"), (uint32_t)p->n_layer);
    qg_gguf_writer_set_u32(w, K("context_length"), (uint32_t)p->n_ctx);
    qg_gguf_writer_set_u32(w, K("embedding_length"), (uint32_t)p->n_embd);
    qg_gguf_writer_set_u32(w, K("feed_forward_length"), (uint32_t)p->n_ff);
    qg_gguf_writer_set_u32(w, K("attention.head_count"), (uint32_t)p->n_head);
    qg_gguf_writer_set_u32(w, K("attention.head_count_kv"), (uint32_t)p->n_head_kv);
    qg_gguf_writer_set_u32(w, K("attention.key_length"), (uint32_t)p->head_dim);
    qg_gguf_writer_set_u32(w, K("attention.value_length"), (uint32_t)p->head_dim);
    qg_gguf_writer_set_f32(w, K("attention.layer_norm_rms_epsilon"), p->rms_eps);
    qg_gguf_writer_set_f32(w, K("rope.freq_base"), p->rope_freq_base);
    if (p->n_expert > 0) {
        qg_gguf_writer_set_u32(w, K("expert_count"), (uint32_t)p->n_expert);
        qg_gguf_writer_set_u32(w, K("expert_used_count"), (uint32_t)p->n_expert_used);
        qg_gguf_writer_set_u32(w, K("expert_feed_forward_length"), (uint32_t)p->n_ff_exp);
    }
#undef K
    qg_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    qg_gguf_writer_set_str(w, "tokenizer.ggml.pre", "qwen2");
    qg_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.tokens, v.n_tokens);
    qg_gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", v.types, v.n_tokens);
    qg_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v.merges, v.n_merges);
    qg_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v.eos_id);
    qg_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)v.pad_id);
    qg_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v.bos_id);
    qg_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", false);
    for (int i = 0; i < pl->n_tensors; i++)
        qg_gguf_writer_add_tensor(w, pl->tensors[i].name, pl->tensors[i].type, pl->tensors[i].n_dims,
                                  pl->tensors[i].ne);
    if (qg_gguf_writer_begin(w, path, &err)) {
        fprintf(stderr, "lab_fastmodel: %s\n", err.msg);
        return 1;
    }
    std::vector<uint8_t> buf;
    for (int i = 0; i < pl->n_tensors; i++) {
        const qg_synth_tensor *t = &pl->tensors[i];
        buf.resize(t->nbytes);
        const int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
        uint64_t key = 1469598103934665603ull;
        for (const char *c = t->name; *c; c++) key = (key ^ (uint8_t)*c) * 1099511628211ull;
        std::vector<std::thread> th;
        const int use = (int)QG_MIN((int64_t)nt, rows);
        for (int k = 0; k < use; k++)
            th.emplace_back(gen_range, t, key, rows * k / use, rows * (k + 1) / use, buf.data());
        for (auto &x : th) x.join();
        if (qg_gguf_writer_write_data(w, i, buf.data(), t->nbytes, &err)) {
            fprintf(stderr, "lab_fastmodel: %s\n", err.msg);
            return 1;
        }
    }
    if (qg_gguf_writer_finish(w, &err)) {
        fprintf(stderr, "lab_fastmodel: %s\n", err.msg);
        return 1;
    }
    printf("lab_fastmodel: wrote %s (%s %s, %.2f GiB of tensors, random blocks) in %.1f s\n", path,
           preset, ftype, pl->data_bytes / 1073741824.0, (qg_time_ns() - t0) / 1e9);
    qg_gguf_writer_free(w);
    qg_synth_plan_free(pl);
    qg_synth_vocab_free(&v);
    return 0;
}
