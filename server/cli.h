/* server/cli.h -- the foreground subcommands of dragond (no HTTP): train, generate, eval,
 * export, bench. Each takes argv with argv[0] = program name and the command word removed,
 * and returns the process exit status (see server/main.c). Thread affinity: main thread. */
#ifndef DG_CLI_H
#define DG_CLI_H

int dg_cli_train(int argc, char **argv);
int dg_cli_generate(int argc, char **argv);
int dg_cli_eval(int argc, char **argv);
int dg_cli_export(int argc, char **argv);
int dg_cli_bench(int argc, char **argv);

#endif
