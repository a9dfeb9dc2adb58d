/* server/main.c -- the dragond executable: dispatches the subcommands.
 *
 *   dragond [serve] [flags]   the daemon (server/serve.c)
 *   dragond train ...         foreground training (server/cli_train.c)
 *   dragond generate ...      foreground cached generation
 *   dragond eval ...          loss of a checkpoint on a text file
 *   dragond export ...        safetensors / burnpack export of a checkpoint
 *   dragond bench ...         engine benchmarks (JSON lines for bench/run_bench.sh)
 *
 * Exit codes (every subcommand): 0 success, 1 runtime failure (data, checkpoint, device),
 * 2 usage or configuration error, 3 training stopped on a non-finite loss, 130 interrupted.
 * Thread affinity: main thread. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "serve.h"

#ifndef DG_VERSION
#define DG_VERSION "0.1.0"
#endif

static void usage(FILE *f) {
    fprintf(f,
            "dragond %s -- train and serve the Dragon (BDH) language model\n"
            "\n"
            "usage: dragond [serve] [--config FILE] [--listen HOST:PORT] [--data-dir DIR] ...\n"
            "       dragond train    --config FILE --data FILE [--steps N] [--out DIR] ...\n"
            "       dragond generate --checkpoint CKPT --prompt TEXT [--max-tokens N] ...\n"
            "       dragond eval     --checkpoint CKPT --data FILE\n"
            "       dragond export   --checkpoint CKPT --format safetensors|burnpack --out FILE\n"
            "       dragond bench    train|decode [...]\n"
            "\n"
            "Run 'dragond COMMAND --help' for a command's flags.\n"
            "Exit codes: 0 ok, 1 runtime failure, 2 usage/config error, 3 non-finite loss,\n"
            "130 interrupted.\n",
            DG_VERSION);
}

/* OpenBLAS picks its kernels when it is loaded. The Debian build (0.3.21) does not know
 * recent Xeons (Sapphire Rapids) and falls back to its slowest (SSE3 "Prescott") kernels, about
 * 8x slower for sgemm. When the user has not chosen, dragond re-executes itself once with
 * OPENBLAS_CORETYPE set from the CPU's own flags: SkylakeX (AVX-512 F/BW/DQ/VL) or Haswell
 * (AVX2 + FMA). DRAGOND_NO_BLAS_PIN=1 turns this off. */
static void pin_openblas_kernels(char **argv) {
    if (getenv("OPENBLAS_CORETYPE") || getenv("DRAGOND_NO_BLAS_PIN")) return;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return;
    bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    setenv("OPENBLAS_CORETYPE", avx512 ? "SkylakeX" : "Haswell", 1);
    char self[4096];                /* exec the real path, so the process keeps its name */
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return;
    self[n] = 0;
    execv(self, argv);              /* returns only on failure: then carry on as we are */
}

int main(int argc, char **argv) {
    pin_openblas_kernels(argv);
    if (argc < 2) return dg_serve_main(argc, argv);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("dragond %s\n", DG_VERSION);
        return 0;
    }
    if (cmd[0] == '-') return dg_serve_main(argc, argv);   /* `dragond --listen ...` */
    /* argv for a subcommand keeps argv[0] = program name, drops the command word */
    int sargc = argc - 1;
    char **sargv = argv + 1;
    sargv[0] = argv[0];
    if (!strcmp(cmd, "serve")) return dg_serve_main(sargc, sargv);
    if (!strcmp(cmd, "train")) return dg_cli_train(sargc, sargv);
    if (!strcmp(cmd, "generate")) return dg_cli_generate(sargc, sargv);
    if (!strcmp(cmd, "eval")) return dg_cli_eval(sargc, sargv);
    if (!strcmp(cmd, "export")) return dg_cli_export(sargc, sargv);
    if (!strcmp(cmd, "bench")) return dg_cli_bench(sargc, sargv);
    fprintf(stderr, "dragond: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
