/*
 * qg_base.h - the few things every module of qmoe-graph needs.
 *
 * Status codes, the error record that carries a one-line message naming the
 * file / tensor / key / value at fault, and the two bug-catching macros.
 *
 * Conventions (see ../shared/DESIGN.md):
 *   - Input and resource failures return a qg_status (or NULL) and fill a
 *     qg_error when one is passed (it may be NULL).  Nothing else changes.
 *   - Bugs are caught by QG_ASSERT / QG_ABORT, which print file:line and abort.
 *   - Only the CLI calls exit(); the exit code is the qg_status value (1..123).
 */
#ifndef QG_BASE_H
#define QG_BASE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum qg_status {
    QG_OK = 0,
    QG_ERR_ARG = 2,         /* bad command-line argument or API argument   */
    QG_ERR_IO = 3,          /* file missing, unreadable, a directory, ...  */
    QG_ERR_FORMAT = 4,      /* malformed GGUF: magic, counts, offsets, ... */
    QG_ERR_MODEL = 5,       /* well-formed GGUF that is not a usable model */
    QG_ERR_UNSUPPORTED = 6, /* architecture / tensor type we do not run    */
    QG_ERR_NOMEM = 7,       /* allocation failed / does not fit            */
    QG_ERR_BACKEND = 8,     /* executor unavailable or failed              */
    QG_ERR_RANGE = 9,       /* token id / position / context out of range  */
} qg_status;

/* One error: a status and a one-line message (no trailing newline). */
typedef struct qg_error {
    qg_status code;
    char msg[512];
} qg_error;

/* Fill *err (if err != NULL) with code and a printf-style message.
 * Returns code, so callers can write `return qg_error_set(err, ...)`. */
qg_status qg_error_set(qg_error *err, qg_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefix an existing message with "<prefix>: " (e.g. the file name). */
void qg_error_prefix(qg_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Print "file:line: <msg>" to stderr and abort().  For bugs only. */
_Noreturn void qg_abort_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define QG_ABORT(...) qg_abort_at(__FILE__, __LINE__, __VA_ARGS__)
#define QG_ASSERT(cond)                                                     \
    do {                                                                    \
        if (!(cond)) qg_abort_at(__FILE__, __LINE__, "assert: %s", #cond);  \
    } while (0)

#define QG_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define QG_MIN(a, b) ((a) < (b) ? (a) : (b))
#define QG_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Round x up to a multiple of align (align a power of two). */
static inline size_t qg_align_up(size_t x, size_t align) {
    return (x + align - 1) & ~(align - 1);
}

/* Debug channels: QG_DEBUG=sched,cuda,... in the environment.  Reads the
 * environment each call (cheap; never on the per-token path). */
bool qg_debug_enabled(const char *channel);

/* Monotonic clock in nanoseconds. */
uint64_t qg_time_ns(void);

/* fp16 / bf16 <-> fp32 conversion (scalar, exact round-to-nearest-even). */
float qg_f16_to_f32(uint16_t h);
uint16_t qg_f32_to_f16(float f);
float qg_bf16_to_f32(uint16_t h);
uint16_t qg_f32_to_bf16(float f);

#endif
