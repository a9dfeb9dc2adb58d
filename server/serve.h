/* server/serve.h -- the entry point of the daemon (`dragond` and `dragond serve`).
 *
 * dg_serve_main parses the serve flags (argv excludes the subcommand word; argv[0] is the
 * program name), loads config/dragond.json, opens the data directory and SQLite, starts the
 * engine thread and runs the libuv loop until SIGTERM/SIGINT has drained everything.
 * Returns the process exit status (0 after a clean drain, 1 for a start-up error, 2 for bad
 * flags). Not here: the other subcommands (server/main.c, server/cli*.c).
 * Thread affinity: call from the main thread; it becomes the loop thread. */
#ifndef DG_SERVE_H
#define DG_SERVE_H

int dg_serve_main(int argc, char **argv);

#endif
