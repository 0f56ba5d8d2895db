/*
 * qg_chat.h - render a conversation as the prompt text Qwen3 expects.
 *
 * The output is byte for byte what Qwen3's own Jinja chat template
 * (tokenizer.chat_template of the GGUF; the reference copy is the
 * "chat_template" field of Qwen3's tokenizer_config.json) produces for the
 * same messages, rendered the Hugging Face way (trim_blocks, lstrip_blocks).
 * It is written directly in C, not interpreted; tests/test_chat.c checks it
 * against jinja2 running the real template.
 *
 * What the template does, for plain text messages (no tools, no
 * tool_calls):
 *   - A first message with role "system" becomes
 *       <|im_start|>system\n{content}<|im_end|>\n
 *     and every later "system" or "user" message
 *       <|im_start|>{role}\n{content}<|im_end|>\n
 *   - A run of consecutive "tool" messages becomes one user turn:
 *       <|im_start|>user\n<tool_response>\n{c1}\n</tool_response>
 *       \n<tool_response>\n{c2}\n</tool_response><|im_end|>\n
 *   - The last "user query" is the last user message whose content is not
 *     wrapped as <tool_response>...</tool_response> (startswith and
 *     endswith); if there is none, it is the last message.
 *   - An "assistant" message: its reasoning is reasoning_content when
 *     given; otherwise, if the content contains "</think>", the reasoning
 *     is the text before the first "</think>" (trailing newlines removed),
 *     after its last "<think>" (leading newlines removed), and the content
 *     becomes the text after the last "</think>" (leading newlines removed).
 *     Assistant messages after the last user query are written with their
 *     reasoning when they are the final message or the reasoning is not
 *     empty:
 *       <|im_start|>assistant\n<think>\n{reasoning stripped of newlines at
 *       both ends}\n</think>\n\n{content without leading newlines}<|im_end|>\n
 *     and every other assistant message as
 *       <|im_start|>assistant\n{content}<|im_end|>\n
 *     so reasoning from earlier turns is dropped.
 *   - add_generation_prompt appends "<|im_start|>assistant\n", followed by
 *     "<think>\n\n</think>\n\n" when enable_thinking is false (thinking
 *     off: an empty reasoning block the model continues after).
 *     enable_thinking true renders as the template does when the variable
 *     is not given at all.
 * "Newlines" above means '\n' only, as in the template's Python
 * strip('\n') / lstrip('\n') / rstrip('\n').
 *
 * Differences from the template, on inputs it does not handle sensibly:
 * roles other than system / user / assistant / tool (the template drops
 * them silently) and an empty conversation (the template raises) are
 * refused with QG_ERR_ARG.  Contents are copied as bytes: special-token
 * text such as "<|im_end|>" inside a content is not escaped (neither does
 * the template); whoever tokenizes decides whether it is special.
 */
#ifndef QG_CHAT_H
#define QG_CHAT_H

#include "../graph/qg_base.h"

typedef struct qg_chat_msg {
    const char *role;    /* "system", "user", "assistant" or "tool" */
    const char *content; /* UTF-8 text, NUL-terminated, not NULL */
    /* assistant only, optional: the reasoning, as the template's
     * message.reasoning_content; NULL = not given (then it is taken from
     * <think>...</think> in content).  "" counts as given. */
    const char *reasoning_content;
} qg_chat_msg;

/* Renders msgs[0 .. n) into out (cap bytes), NUL-terminated, and sets
 * *len to the length of the text (without the NUL).
 *   - out == NULL and cap == 0: only measures; sets *len, returns QG_OK.
 *   - cap < *len + 1: returns QG_ERR_RANGE ("needs N bytes") with *len
 *     set to the length needed; nothing is written to out.
 *   - a bad message (NULL role/content, unknown role) or n <= 0: QG_ERR_ARG
 *     naming the message index and the value; *len is left unchanged. */
qg_status qg_chat_render(const qg_chat_msg *msgs, int n,
                         bool add_generation_prompt, bool enable_thinking,
                         char *out, size_t cap, size_t *len, qg_error *err);

/* As qg_chat_render, into a new malloc'd string (free() it), or NULL with
 * *err filled (QG_ERR_ARG as above, or QG_ERR_NOMEM).  len may be NULL. */
char *qg_chat_render_alloc(const qg_chat_msg *msgs, int n,
                           bool add_generation_prompt, bool enable_thinking,
                           size_t *len, qg_error *err);

#endif
