/* qmoe-graph.c - the command-line entry: dispatch to tools/cmd_*.c. */
#include "qg_cli.h"

#include <stdio.h>
#include <string.h>

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *usage;
} command;

static const command COMMANDS[] = {
    {"run", qg_cmd_run, "run [MODEL] [-p TEXT | -f FILE] [-n N] [--chat] [-i] [--system TEXT] [--no-think] [--temp T --top-k K --top-p P --min-p M --repeat-penalty R --seed S] [-c CTX] [-t N] [--profile TRACE.json]"},
    {"tokenize", qg_cmd_tokenize, "tokenize MODEL TEXT [--no-parse-special]"},
    {"eval", qg_cmd_eval, "eval MODEL --tokens 1,2,3 --logits OUT.bin [--backend cpu] [-t N]"},
    {"dump", qg_cmd_dump, "dump MODEL [--format text|dot|json] [--phase decode|prefill] [--no-fuse]"},
    {"info", qg_cmd_info, "info MODEL"},
    {"bench", qg_cmd_bench, "bench MODEL [-p 512] [-n 128] [-r 5] [-t N] [-o md|json] [--profile TRACE.json]"},
    {"profile", qg_cmd_profile, "profile MODEL [-p 512] [-n 64] [--backend X] [-o TRACE.json]"},
    {"synth", qg_cmd_synth, "synth OUT.gguf --preset tiny|30b-a3b|235b-a22b|... --ftype f32|f16|bf16|q8_0|q4_0|q4_k_m|q5_k_m|q6_k [--seed S]"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: qmoe-graph COMMAND ...\n");
    for (size_t i = 0; i < QG_ARRAY_LEN(COMMANDS); i++) fprintf(f, "  qmoe-graph %s\n", COMMANDS[i].usage);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? QG_ERR_ARG : 0;
    }
    for (size_t i = 0; i < QG_ARRAY_LEN(COMMANDS); i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) return COMMANDS[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "qmoe-graph: unknown command '%s' (try --help)\n", argv[1]);
    return QG_ERR_ARG;
}
