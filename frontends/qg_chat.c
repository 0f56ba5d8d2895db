/*
 * qg_chat.c - Qwen3's chat template written out in C (see qg_chat.h for
 * the rules; the comments below quote the template lines they implement).
 */
#include "qg_chat.h"

#include <stdlib.h>
#include <string.h>

/* A byte range of a NUL-terminated content: p[0 .. n). */
typedef struct qg_chat_str {
    const char *p;
    size_t n;
} qg_chat_str;

/* The output: bytes go to out only when out != NULL (the second pass);
 * len always counts them. */
typedef struct qg_chat_writer {
    char *out;
    size_t len;
} qg_chat_writer;

static void qg_chat_put(qg_chat_writer *w, const char *p, size_t n) {
    if (w->out && n) memcpy(w->out + w->len, p, n);
    w->len += n;
}

static void qg_chat_puts(qg_chat_writer *w, const char *s) {
    qg_chat_put(w, s, strlen(s));
}

static void qg_chat_put_str(qg_chat_writer *w, qg_chat_str s) {
    qg_chat_put(w, s.p, s.n);
}

static qg_chat_str qg_chat_cstr(const char *s) {
    return (qg_chat_str){s, strlen(s)};
}

/* Offset of the first occurrence of pat in s, or -1. */
static ptrdiff_t qg_chat_find_first(qg_chat_str s, const char *pat) {
    const size_t m = strlen(pat);
    for (size_t i = 0; i + m <= s.n; i++)
        if (memcmp(s.p + i, pat, m) == 0) return (ptrdiff_t)i;
    return -1;
}

/* Offset of the last occurrence of pat in s, or -1.  (For "<think>" and
 * "</think>", which cannot overlap themselves, this is also where Python's
 * s.split(pat)[-1] begins, minus the pattern.) */
static ptrdiff_t qg_chat_find_last(qg_chat_str s, const char *pat) {
    const size_t m = strlen(pat);
    if (m > s.n) return -1;
    for (size_t i = s.n - m + 1; i-- > 0;)
        if (memcmp(s.p + i, pat, m) == 0) return (ptrdiff_t)i;
    return -1;
}

static bool qg_chat_starts_with(qg_chat_str s, const char *pat) {
    const size_t m = strlen(pat);
    return m <= s.n && memcmp(s.p, pat, m) == 0;
}

static bool qg_chat_ends_with(qg_chat_str s, const char *pat) {
    const size_t m = strlen(pat);
    return m <= s.n && memcmp(s.p + s.n - m, pat, m) == 0;
}

/* Python's s.lstrip('\n') and s.rstrip('\n'). */
static qg_chat_str qg_chat_lstrip_nl(qg_chat_str s) {
    while (s.n && s.p[0] == '\n') s.p++, s.n--;
    return s;
}

static qg_chat_str qg_chat_rstrip_nl(qg_chat_str s) {
    while (s.n && s.p[s.n - 1] == '\n') s.n--;
    return s;
}

/* s.split(pat)[0] and s.split(pat)[-1]. */
static qg_chat_str qg_chat_before_first(qg_chat_str s, const char *pat) {
    const ptrdiff_t i = qg_chat_find_first(s, pat);
    return i < 0 ? s : (qg_chat_str){s.p, (size_t)i};
}

static qg_chat_str qg_chat_after_last(qg_chat_str s, const char *pat) {
    const ptrdiff_t i = qg_chat_find_last(s, pat);
    if (i < 0) return s;
    const size_t skip = (size_t)i + strlen(pat);
    return (qg_chat_str){s.p + skip, s.n - skip};
}

static bool qg_chat_is(const char *role, const char *name) {
    return strcmp(role, name) == 0;
}

/* QG_OK when every message has a known role and non-NULL strings. */
static qg_status qg_chat_check(const qg_chat_msg *msgs, int n, qg_error *err) {
    if (n <= 0 || !msgs)
        return qg_error_set(err, QG_ERR_ARG, "chat: no messages (n = %d)", n);
    for (int i = 0; i < n; i++) {
        const char *role = msgs[i].role;
        if (!role) return qg_error_set(err, QG_ERR_ARG, "chat: message %d: role is NULL", i);
        if (!qg_chat_is(role, "system") && !qg_chat_is(role, "user") &&
            !qg_chat_is(role, "assistant") && !qg_chat_is(role, "tool"))
            return qg_error_set(err, QG_ERR_ARG,
                                "chat: message %d: role '%.64s' is not system, user, "
                                "assistant or tool", i, role);
        if (!msgs[i].content)
            return qg_error_set(err, QG_ERR_ARG, "chat: message %d (%s): content is NULL",
                                i, role);
    }
    return QG_OK;
}

/* The index of the last user query:
 *   {%- for message in messages[::-1] %} ... {%- if ns.multi_step_tool and
 *   message.role == "user" and not(message.content.startswith(
 *   '<tool_response>') and message.content.endswith('</tool_response>')) %}
 * defaulting to messages|length - 1. */
static int qg_chat_last_query(const qg_chat_msg *msgs, int n) {
    for (int i = n - 1; i >= 0; i--) {
        if (!qg_chat_is(msgs[i].role, "user")) continue;
        const qg_chat_str c = qg_chat_cstr(msgs[i].content);
        if (!(qg_chat_starts_with(c, "<tool_response>") &&
              qg_chat_ends_with(c, "</tool_response>")))
            return i;
    }
    return n - 1;
}

/* One assistant message i (last_query as above). */
static void qg_chat_put_assistant(qg_chat_writer *w, const qg_chat_msg *m,
                                  int i, int n, int last_query) {
    qg_chat_str content = qg_chat_cstr(m->content);
    qg_chat_str reasoning = {"", 0};
    if (m->reasoning_content) {
        reasoning = qg_chat_cstr(m->reasoning_content);
    } else if (qg_chat_find_first(content, "</think>") >= 0) {
        /* content.split('</think>')[0].rstrip('\n').split('<think>')[-1]
         *        .lstrip('\n') */
        qg_chat_str r = qg_chat_rstrip_nl(qg_chat_before_first(content, "</think>"));
        reasoning = qg_chat_lstrip_nl(qg_chat_after_last(r, "<think>"));
        /* content.split('</think>')[-1].lstrip('\n') */
        content = qg_chat_lstrip_nl(qg_chat_after_last(content, "</think>"));
    }
    const bool last = i == n - 1;
    if (i > last_query && (last || reasoning.n > 0)) {
        qg_chat_puts(w, "<|im_start|>assistant\n<think>\n");
        qg_chat_put_str(w, qg_chat_rstrip_nl(qg_chat_lstrip_nl(reasoning)));
        qg_chat_puts(w, "\n</think>\n\n");
        qg_chat_put_str(w, qg_chat_lstrip_nl(content));
    } else {
        qg_chat_puts(w, "<|im_start|>assistant\n");
        qg_chat_put_str(w, content);
    }
    qg_chat_puts(w, "<|im_end|>\n");
}

/* The whole template over valid messages. */
static void qg_chat_put_all(qg_chat_writer *w, const qg_chat_msg *msgs, int n,
                            bool add_generation_prompt, bool enable_thinking) {
    /* {%- if messages[0].role == 'system' %} */
    if (qg_chat_is(msgs[0].role, "system")) {
        qg_chat_puts(w, "<|im_start|>system\n");
        qg_chat_puts(w, msgs[0].content);
        qg_chat_puts(w, "<|im_end|>\n");
    }
    const int last_query = qg_chat_last_query(msgs, n);
    for (int i = 0; i < n; i++) {
        const qg_chat_msg *m = &msgs[i];
        if (qg_chat_is(m->role, "user") || (qg_chat_is(m->role, "system") && i > 0)) {
            qg_chat_puts(w, "<|im_start|>");
            qg_chat_puts(w, m->role);
            qg_chat_puts(w, "\n");
            qg_chat_puts(w, m->content);
            qg_chat_puts(w, "<|im_end|>\n");
        } else if (qg_chat_is(m->role, "assistant")) {
            qg_chat_put_assistant(w, m, i, n, last_query);
        } else if (qg_chat_is(m->role, "tool")) {
            /* consecutive tool messages share one user turn */
            if (i == 0 || !qg_chat_is(msgs[i - 1].role, "tool"))
                qg_chat_puts(w, "<|im_start|>user");
            qg_chat_puts(w, "\n<tool_response>\n");
            qg_chat_puts(w, m->content);
            qg_chat_puts(w, "\n</tool_response>");
            if (i == n - 1 || !qg_chat_is(msgs[i + 1].role, "tool"))
                qg_chat_puts(w, "<|im_end|>\n");
        }
        /* the first system message was written above */
    }
    if (add_generation_prompt) {
        qg_chat_puts(w, "<|im_start|>assistant\n");
        if (!enable_thinking) qg_chat_puts(w, "<think>\n\n</think>\n\n");
    }
}

qg_status qg_chat_render(const qg_chat_msg *msgs, int n,
                         bool add_generation_prompt, bool enable_thinking,
                         char *out, size_t cap, size_t *len, qg_error *err) {
    QG_ASSERT(len != NULL);
    QG_ASSERT(out != NULL || cap == 0);
    const qg_status st = qg_chat_check(msgs, n, err);
    if (st != QG_OK) return st;
    qg_chat_writer w = {NULL, 0}; /* pass 1: measure */
    qg_chat_put_all(&w, msgs, n, add_generation_prompt, enable_thinking);
    *len = w.len;
    if (!out) return QG_OK;
    if (cap < w.len + 1)
        return qg_error_set(err, QG_ERR_RANGE,
                            "chat: rendered prompt needs %zu bytes (with the NUL), "
                            "buffer has %zu", w.len + 1, cap);
    w = (qg_chat_writer){out, 0}; /* pass 2: write */
    qg_chat_put_all(&w, msgs, n, add_generation_prompt, enable_thinking);
    QG_ASSERT(w.len == *len);
    out[w.len] = '\0';
    return QG_OK;
}

char *qg_chat_render_alloc(const qg_chat_msg *msgs, int n,
                           bool add_generation_prompt, bool enable_thinking,
                           size_t *len, qg_error *err) {
    size_t need = 0;
    if (qg_chat_render(msgs, n, add_generation_prompt, enable_thinking, NULL, 0,
                       &need, err) != QG_OK)
        return NULL;
    char *s = malloc(need + 1);
    if (!s) {
        qg_error_set(err, QG_ERR_NOMEM, "chat: out of memory for a %zu-byte prompt", need);
        return NULL;
    }
    const qg_status st = qg_chat_render(msgs, n, add_generation_prompt,
                                        enable_thinking, s, need + 1, &need, err);
    QG_ASSERT(st == QG_OK); /* measured just above */
    if (len) *len = need;
    return s;
}
