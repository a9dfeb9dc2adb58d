/* server/main.c -- the dragond executable (temporary: daemon only while the CLI lands). */
#include "serve.h"
int main(int argc, char **argv) { return dg_serve_main(argc, argv); }
