/*
 * qg_cli.h - the qmoe-graph command line: one file per command.
 *
 * Every command takes (argc, argv) with argv[0] the command name, prints a
 * one-line error to stderr on bad input and returns a qg_status (the process
 * exit code, 1..123); 0 on success.
 */
#ifndef QG_CLI_H
#define QG_CLI_H

#include "../include/qmoe_graph.h"

int qg_cmd_eval(int argc, char **argv);
int qg_cmd_dump(int argc, char **argv);
int qg_cmd_info(int argc, char **argv);
int qg_cmd_bench(int argc, char **argv);
int qg_cmd_profile(int argc, char **argv);
int qg_cmd_synth(int argc, char **argv);
int qg_cmd_run(int argc, char **argv);
int qg_cmd_tokenize(int argc, char **argv);

/* Shared flag parsing for the commands that make a context. */
typedef struct qg_cli_common {
    const char *model;
    qg_ctx_params ctx;
} qg_cli_common;

/* If argv[*i] is a common flag (-t, -c, -b, --backend, --kv-type,
 * --no-fuse, --n-cpu-moe, --cpu-moe, --vk-device/--device), consume it
 * (and its value) and return 1; return 0 if it is not one; return -1 after
 * printing an error for a bad value. */
int qg_cli_common_flag(qg_cli_common *c, int argc, char **argv, int *i);

/* Parse an int flag value; prints "<flag>: '<v>' is not an integer in
 * [lo, hi]" and returns false on failure. */
bool qg_cli_int(const char *flag, const char *v, long lo, long hi, long *out);

/* Print "qmoe-graph: <msg>" and return err->code (never 0). */
int qg_cli_fail(const qg_error *err);

/* Path of the embedded default model, made on first use (synthetic,
 * random weights; see tools/qg_default_model.c). */
qg_status qg_default_model_path(char *out, size_t n, qg_error *err);

/* Load the model for inference: files of 1 GiB or more are read through
 * once (page cache warm-up) with a progress line on stderr. */
qg_model *qg_cli_load_model(const char *path, qg_error *err);

#endif
