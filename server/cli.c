/* server/cli.c -- the foreground subcommands: train, generate, eval, export, bench.
 *
 * They drive the same engine as the daemon (engine/train.h, engine/model.h) without HTTP, for
 * scripts and benchmarks (like llama-cli beside llama-server). Messages for people go to stderr;
 * stdout carries only the product (generated text, JSON results, progress lines of train).
 * Thread affinity: main thread. */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/ckpt.h"
#include "engine/model.h"
#include "engine/sample.h"
#include "engine/train.h"
#include "proto/config_json.h"
#include "proto/export.h"
#include "proto/tokenizer_json.h"

#define EX_OK 0
#define EX_FAIL 1
#define EX_USAGE 2
#define EX_NAN 3
#define EX_INT 130

static volatile sig_atomic_t g_interrupted;
static void on_sigint(int sig) { (void)sig; g_interrupted = 1; }

/* Unix time with its fraction, for metrics.jsonl. */
static double unix_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ------------------------------------------------------------------------------------------
// small helpers

static int mkdir_p(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(buf, 0755) && errno != EEXIST) return -1;
    return 0;
}

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The newest checkpoint of a run directory: DIR/ckpt/step-<n>.dck with the largest n. */
static int latest_ckpt(const char *dir, char *out, size_t n, int64_t *step_out) {
    char cdir[4096];
    snprintf(cdir, sizeof cdir, "%s/ckpt", dir);
    DIR *d = opendir(cdir);
    if (!d) return DG_ENOTFOUND;
    int64_t best = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        long long s;
        char tail[8];
        if (sscanf(e->d_name, "step-%lld.%7s", &s, tail) == 2 && !strcmp(tail, "dck") && s > best) best = s;
    }
    closedir(d);
    if (best < 0) return DG_ENOTFOUND;
    snprintf(out, n, "%s/step-%lld.dck", cdir, (long long)best);
    if (step_out) *step_out = best;
    return 0;
}

/* CKPT may be a .dck file or a run directory (its newest checkpoint). */
static int resolve_ckpt(const char *arg, char *out, size_t n) {
    if (is_dir(arg)) {
        if (latest_ckpt(arg, out, n, NULL)) {
            fprintf(stderr, "dragond: no checkpoint in %s/ckpt (expected step-<n>.dck files)\n", arg);
            return DG_ENOTFOUND;
        }
        return 0;
    }
    snprintf(out, n, "%s", arg);
    return 0;
}

/* Removes all but the newest keep checkpoints of a run directory. */
static void prune_ckpts(const char *dir, int keep) {
    char cdir[4096];
    snprintf(cdir, sizeof cdir, "%s/ckpt", dir);
    DIR *d = opendir(cdir);
    if (!d) return;
    int64_t steps[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096) {
        long long s;
        char tail[8];
        if (sscanf(e->d_name, "step-%lld.%7s", &s, tail) == 2 && !strcmp(tail, "dck")) steps[n++] = s;
    }
    closedir(d);
    for (int i = 0; i < n; i++) {          /* delete those with >= keep newer ones */
        int newer = 0;
        for (int j = 0; j < n; j++) newer += steps[j] > steps[i];
        if (newer >= keep) {
            char p[4200];
            snprintf(p, sizeof p, "%s/step-%lld.dck", cdir, (long long)steps[i]);
            unlink(p);
        }
    }
}

/* Reads a text file and encodes it with tok (fitting a char tokenizer when *tok is NULL). */
static int load_corpus(const char *path, dg_tok_kind kind, dg_tokenizer_t **tok, int32_t **ids,
                       size_t *n_ids) {
    char err[512];
    char *text;
    size_t n;
    int rc = dg_read_file(path, &text, &n, err, sizeof err);
    if (rc) { fprintf(stderr, "dragond: data: %s\n", err); return rc; }
    if (n == 0) {
        fprintf(stderr, "dragond: data: %s is empty; HINT: give a text file with some content\n", path);
        dg_free(text);
        return DG_EDATA;
    }
    if (!*tok) {
        rc = kind == DG_TOK_BYTE ? dg_tokenizer_byte(tok) : dg_tokenizer_fit_char(text, n, tok);
        if (rc) { fprintf(stderr, "dragond: tokenizer: %s\n", dg_strerror(rc)); dg_free(text); return rc; }
    }
    rc = dg_tokenizer_encode(*tok, text, n, false, ids, n_ids, err, sizeof err);
    dg_free(text);
    if (rc) fprintf(stderr, "dragond: data: %s\n", err);
    return rc;
}

static int64_t *load_offsets(const char *path, int64_t *n_out) {
    FILE *f = fopen(path, "r");
    if (!f) { fprintf(stderr, "dragond: cannot open offsets file %s: %s\n", path, strerror(errno)); return NULL; }
    int64_t cap = 1024, n = 0;
    int64_t *v = dg_malloc((size_t)cap * sizeof *v);
    long long x;
    while (fscanf(f, "%lld", &x) == 1) {
        if (n == cap) v = dg_realloc(v, (size_t)(cap *= 2) * sizeof *v);
        v[n++] = x;
    }
    fclose(f);
    *n_out = n;
    return v;
}

// ------------------------------------------------------------------------------------------
// train

static void train_usage(FILE *f) {
    fprintf(f,
            "usage: dragond train --config FILE --data FILE [options]\n"
            "       dragond train --resume DIR [--data FILE] [--steps N]\n"
            "\n"
            "Trains the model of a config file ({\"model\": ..., \"training\": ...}, e.g.\n"
            "config/models/base.json) on a text file, printing one progress line per log interval,\n"
            "evaluating on the validation split (last 10%%) every eval interval, and writing\n"
            "config.json, tokenizer.json, metrics.jsonl and ckpt/step-<n>.dck under --out.\n"
            "\n"
            "  --config FILE     model + training config (JSON)\n"
            "  --data FILE       training text (UTF-8 or bytes)\n"
            "  --steps N         optimizer steps (overrides training.max_steps/epochs)\n"
            "  --out DIR         run directory (default runs/run-<date>-<time>)\n"
            "  --seed S          seed (init, batches, dropout)\n"
            "  --backend NAME    cpu (default), ref, or cuda when built\n"
            "  --batch B         override training.batch_size\n"
            "  --block T         override training.block_size\n"
            "  --resume DIR      continue a run from its newest checkpoint\n"
            "  --device N        GPU index for --backend cuda (default 0)\n"
            "  --time-limit SEC  stop after SEC seconds of wall time (counted from the start of\n"
            "                    the command), with a final eval and checkpoint; exit status 0\n"
            "  --offsets FILE    fixed batch starts (benchmarks against a peer)\n"
            "  --quiet           no progress lines\n"
            "\n"
            "metrics.jsonl rows carry \"time\" (Unix seconds) and \"elapsed\" (seconds since the\n"
            "command started, data loading and model set-up included).\n");
}

int dg_cli_train(int argc, char **argv) {
    static const struct option opts[] = {
        {"config", 1, 0, 'c'}, {"data", 1, 0, 'd'}, {"steps", 1, 0, 's'}, {"out", 1, 0, 'o'},
        {"seed", 1, 0, 'S'},   {"backend", 1, 0, 'b'}, {"resume", 1, 0, 'r'}, {"batch", 1, 0, 'B'},
        {"block", 1, 0, 'T'},  {"offsets", 1, 0, 'O'}, {"quiet", 0, 0, 'q'}, {"help", 0, 0, 'h'},
        {"device", 1, 0, 'D'}, {"time-limit", 1, 0, 'L'}, {0, 0, 0, 0}};
    const char *config = NULL, *data = NULL, *out = NULL, *backend = "cpu", *resume = NULL;
    const char *offsets_path = NULL;
    long long steps = -1, seed = -1, batch = -1, block = -1;
    int quiet = 0, device = 0, c;
    double time_limit = 0;
    const double t_start = dg_now();
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:d:s:o:S:b:r:B:T:O:qhD:L:", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 'd': data = optarg; break;
        case 's': steps = atoll(optarg); break;
        case 'o': out = optarg; break;
        case 'S': seed = atoll(optarg); break;
        case 'b': backend = optarg; break;
        case 'r': resume = optarg; break;
        case 'B': batch = atoll(optarg); break;
        case 'T': block = atoll(optarg); break;
        case 'O': offsets_path = optarg; break;
        case 'q': quiet = 1; break;
        case 'D': device = atoi(optarg); break;
        case 'L': {
            char *end;
            time_limit = strtod(optarg, &end);
            if (*end || !(time_limit > 0)) {
                fprintf(stderr, "dragond train: --time-limit: expected seconds > 0 (got '%s')\n", optarg);
                return EX_USAGE;
            }
            break;
        }
        case 'h': train_usage(stdout); return EX_OK;
        default: train_usage(stderr); return EX_USAGE;
        }
    }
    if (optind < argc) { fprintf(stderr, "dragond train: unexpected argument '%s'\n", argv[optind]); return EX_USAGE; }
    if (!resume && (!config || !data)) {
        fprintf(stderr, "dragond train: --config and --data are required (or --resume DIR)\n");
        train_usage(stderr);
        return EX_USAGE;
    }
    char err[1024] = "", path[4200], ckpt_path[4200] = "";
    dg_model_config mc;
    dg_train_config tc;
    dg_tokenizer_t *tok = NULL;
    char outdir[4096];
    int rc;
    if (resume) {
        snprintf(outdir, sizeof outdir, "%s", resume);
        snprintf(path, sizeof path, "%s/config.json", resume);
        if (dg_config_load_file(config ? config : path, &mc, &tc, err, sizeof err)) {
            fprintf(stderr, "dragond train: %s\n", err);
            return EX_USAGE;
        }
        snprintf(path, sizeof path, "%s/tokenizer.json", resume);
        if (dg_tokenizer_load_json(path, &tok, err, sizeof err)) {
            fprintf(stderr, "dragond train: %s\n", err);
            return EX_FAIL;
        }
        if (latest_ckpt(resume, ckpt_path, sizeof ckpt_path, NULL)) {
            fprintf(stderr, "dragond train: no checkpoint to resume in %s/ckpt\n", resume);
            dg_tokenizer_free(tok);
            return EX_FAIL;
        }
        if (!data) {
            fprintf(stderr, "dragond train: --resume needs --data FILE (the same text)\n");
            dg_tokenizer_free(tok);
            return EX_USAGE;
        }
    } else {
        if (dg_config_load_file(config, &mc, &tc, err, sizeof err)) {
            fprintf(stderr, "dragond train: %s\n", err);
            return EX_USAGE;
        }
        if (out) snprintf(outdir, sizeof outdir, "%s", out);
        else {
            time_t now = time(NULL);
            struct tm tmv;
            gmtime_r(&now, &tmv);
            strftime(outdir, sizeof outdir, "runs/run-%Y%m%d-%H%M%S", &tmv);
        }
    }
    if (steps > 0) { tc.max_steps = steps; tc.epochs = 0; }
    if (seed >= 0) tc.seed = (uint64_t)seed;
    if (batch > 0) tc.batch_size = (int)batch;
    if (block > 0) tc.block_size = (int)block;
    if (steps == 0 || batch == 0 || block == 0) {
        fprintf(stderr, "dragond train: --steps, --batch and --block must be >= 1\n");
        dg_tokenizer_free(tok);
        return EX_USAGE;
    }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (load_corpus(data, tc.tokenizer, &tok, &ids, &n_ids)) { dg_tokenizer_free(tok); return EX_FAIL; }
    mc.vocab_size = dg_tokenizer_vocab(tok);
    if (dg_model_config_validate(&mc, err, sizeof err) || dg_train_config_validate(&tc, err, sizeof err)) {
        fprintf(stderr, "dragond train: config: %s\n", err);
        dg_free(ids);
        dg_tokenizer_free(tok);
        return EX_USAGE;
    }
    int64_t n_offsets = 0, *offsets = NULL;
    if (offsets_path && !(offsets = load_offsets(offsets_path, &n_offsets))) {
        dg_free(ids);
        dg_tokenizer_free(tok);
        return EX_USAGE;
    }
    /* run directory: config.json + tokenizer.json first, so a crash leaves a resumable run */
    snprintf(path, sizeof path, "%s/ckpt", outdir);
    if (mkdir_p(path)) {
        fprintf(stderr, "dragond train: cannot create %s: %s\n", path, strerror(errno));
        rc = EX_FAIL;
        goto out_early;
    }
    if (!resume) {
        json_t *cj = dg_config_to_json(&mc, &tc);
        char *txt = json_dumps(cj, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(cj);
        snprintf(path, sizeof path, "%s/config.json", outdir);
        rc = dg_write_atomic(path, txt, strlen(txt), err, sizeof err);
        free(txt);
        snprintf(path, sizeof path, "%s/tokenizer.json", outdir);
        if (!rc) rc = dg_tokenizer_save_json(path, tok, err, sizeof err);
        if (rc) { fprintf(stderr, "dragond train: %s\n", err); rc = EX_FAIL; goto out_early; }
    }
    dg_trainer_spec sp = {.backend = backend, .device = device, .model = mc, .train = tc,
                          .tokenizer = tok, .tokens = ids, .n_tokens = n_ids,
                          .resume_path = resume ? ckpt_path : NULL, .offsets = offsets,
                          .n_offsets = n_offsets};
    dg_trainer_t *tr;
    rc = dg_trainer_create(&sp, &tr, err, sizeof err);
    if (rc) {
        fprintf(stderr, "dragond train: %s\n", err);
        rc = (rc == DG_ECONFIG || rc == DG_EINVAL) ? EX_USAGE : EX_FAIL;
        goto out_early;
    }
    snprintf(path, sizeof path, "%s/metrics.jsonl", outdir);
    FILE *mf = fopen(path, "a");
    if (!mf) { fprintf(stderr, "dragond train: cannot open %s: %s\n", path, strerror(errno)); rc = EX_FAIL; goto out_tr; }
    if (!quiet)
        fprintf(stderr, "dragond train: %lld parameters, %lld train tokens, %lld steps, backend %s, run %s\n",
                (long long)dg_model_n_params(&mc), (long long)(n_ids * tc.train_frac),
                (long long)dg_trainer_total_steps(tr), backend, outdir);
    signal(SIGINT, on_sigint);
    signal(SIGTERM, on_sigint);
    const dg_train_config *ec = dg_trainer_config(tr);
    float last_val = NAN, last_loss = NAN;
    double tok_s_sum = 0;
    int64_t tok_s_n = 0;
    rc = EX_OK;
    while (!dg_trainer_done(tr)) {
        dg_step_info si;
        int r = dg_trainer_step(tr, &si);
        if (r == DG_ENAN) {
            fprintf(stderr, "dragond train: loss is not finite at step %lld; stopping (parameters of "
                    "the last good step are kept). HINT: lower lr or enable grad_clip\n",
                    (long long)dg_trainer_step_count(tr) + 1);
            rc = EX_NAN;
            break;
        }
        if (r) { fprintf(stderr, "dragond train: step failed: %s\n", dg_strerror(r)); rc = EX_FAIL; break; }
        last_loss = si.loss;
        if (si.step > 1) { tok_s_sum += si.tokens_per_s; tok_s_n++; }
        bool timed_out = time_limit > 0 && dg_now() - t_start >= time_limit;
        bool last = dg_trainer_done(tr) || timed_out;
        if (si.step % ec->log_interval == 0 || last || si.step == 1) {
            if (!quiet)
                printf("step %lld/%lld | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s\n",
                       (long long)si.step, (long long)si.total_steps, si.loss, si.lr, si.grad_norm,
                       si.tokens_per_s);
            fprintf(mf, "{\"step\":%lld,\"train_loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,"
                        "\"tokens_per_s\":%.1f,\"tokens_seen\":%lld,\"time\":%.3f,\"elapsed\":%.3f}\n",
                    (long long)si.step, si.loss, si.lr, si.grad_norm, si.tokens_per_s,
                    (long long)si.tokens_seen, unix_now(), dg_now() - t_start);
            fflush(mf);
            fflush(stdout);
        }
        if ((ec->eval_interval > 0 && si.step % ec->eval_interval == 0) || last) {
            int64_t nt;
            if (!dg_trainer_eval(tr, &last_val, &nt)) {
                if (!quiet) printf("eval step %lld | val_loss %.4f (%lld tokens)\n", (long long)si.step, last_val, (long long)nt);
                fprintf(mf, "{\"step\":%lld,\"val_loss\":%.6f,\"time\":%.3f,\"elapsed\":%.3f}\n",
                        (long long)si.step, last_val, unix_now(), dg_now() - t_start);
                fflush(mf);
                fflush(stdout);
            }
        }
        bool save = last || g_interrupted || (ec->ckpt_interval > 0 && si.step % ec->ckpt_interval == 0);
        if (save) {
            snprintf(path, sizeof path, "%s/ckpt/step-%lld.dck", outdir, (long long)si.step);
            if (dg_trainer_save(tr, path, err, sizeof err)) {
                fprintf(stderr, "dragond train: checkpoint failed: %s\n", err);
                rc = EX_FAIL;
                break;
            }
            prune_ckpts(outdir, ec->keep_checkpoints);
            if (!quiet) printf("checkpoint %s\n", path);
        }
        if (g_interrupted) { fprintf(stderr, "dragond train: interrupted; checkpoint written\n"); rc = EX_INT; break; }
        if (timed_out) {
            if (!quiet)
                fprintf(stderr, "dragond train: --time-limit %g s reached after step %lld of %lld\n",
                        time_limit, (long long)si.step, (long long)si.total_steps);
            break;
        }
    }
    fclose(mf);
    if (rc == EX_OK && !quiet)
        printf("done: step %lld | train_loss %.4f | val_loss %.4f | mean %.0f tok/s | %s\n",
               (long long)dg_trainer_step_count(tr), last_loss, last_val,
               tok_s_n ? tok_s_sum / tok_s_n : 0.0, outdir);
out_tr:
    dg_trainer_free(tr);
out_early:
    dg_free(offsets);
    dg_free(ids);
    dg_tokenizer_free(tok);
    return rc;
}

// ------------------------------------------------------------------------------------------
// loading a checkpoint for inference

typedef struct {
    dg_ckpt       ck;
    dg_backend_t *be;
    dg_model_t   *model;
} loaded;

static int load_model(const char *arg, const char *backend, int device, loaded *L) {
    char path[4200], err[1024];
    memset(L, 0, sizeof *L);
    if (resolve_ckpt(arg, path, sizeof path)) return EX_FAIL;
    int rc = dg_ckpt_read(path, false, &L->ck, err, sizeof err);
    if (rc) { fprintf(stderr, "dragond: %s\n", err); return EX_FAIL; }
    dg_backend_params bp = {.device = device};
    if ((rc = dg_backend_open(backend, &bp, &L->be))) {
        fprintf(stderr, "dragond: backend '%s': %s\n", backend, dg_strerror(rc));
        dg_ckpt_free(&L->ck);
        return EX_FAIL;
    }
    if ((rc = dg_model_create(L->be, &L->ck.model, &L->model)) || (rc = dg_model_set_params(L->model, L->ck.params))) {
        fprintf(stderr, "dragond: loading the model: %s\n", dg_strerror(rc));
        dg_model_free(L->model);
        dg_backend_close(L->be);
        dg_ckpt_free(&L->ck);
        return EX_FAIL;
    }
    return 0;
}

static void unload_model(loaded *L) {
    dg_model_free(L->model);
    dg_backend_close(L->be);
    dg_ckpt_free(&L->ck);
}

// ------------------------------------------------------------------------------------------
// generate

static void gen_usage(FILE *f) {
    fprintf(f,
            "usage: dragond generate --checkpoint CKPT --prompt TEXT [options]\n"
            "\n"
            "Prefills the prompt and streams generated text to stdout as it is produced (cached\n"
            "recurrent inference). CKPT is a .dck file or a run directory (its newest checkpoint).\n"
            "\n"
            "  --max-tokens N     tokens to generate (default 200)\n"
            "  --temperature T    0 = greedy (default 1.0)\n"
            "  --top-k K          0 = off (default 0)\n"
            "  --top-p P          1 = off (default 1)\n"
            "  --min-p P          0 = off (default 0)\n"
            "  --seed S           sampling seed (default 0)\n"
            "  --stop TEXT        stop when TEXT is generated (repeatable)\n"
            "  --backend NAME     cpu (default), ref, cuda\n"
            "  --ids              print token ids (one per line) instead of text\n");
}

int dg_cli_generate(int argc, char **argv) {
    static const struct option opts[] = {
        {"checkpoint", 1, 0, 'c'}, {"prompt", 1, 0, 'p'}, {"max-tokens", 1, 0, 'n'},
        {"temperature", 1, 0, 't'}, {"top-k", 1, 0, 'k'}, {"top-p", 1, 0, 'P'}, {"min-p", 1, 0, 'm'},
        {"seed", 1, 0, 'S'}, {"backend", 1, 0, 'b'}, {"stop", 1, 0, 'x'}, {"ids", 0, 0, 'i'},
        {"help", 0, 0, 'h'}, {"device", 1, 0, 'D'}, {0, 0, 0, 0}};
    const char *ckpt = NULL, *prompt = NULL, *backend = "cpu";
    const char *stops[16];
    int n_stops = 0, print_ids = 0, device = 0, c;
    long long max_tokens = 200;
    dg_sample_params sp;
    dg_sample_params_default(&sp);
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:p:n:t:k:P:m:S:b:x:ihD:", opts, NULL)) != -1) {
        switch (c) {
        case 'c': ckpt = optarg; break;
        case 'p': prompt = optarg; break;
        case 'n': max_tokens = atoll(optarg); break;
        case 't': sp.temperature = (float)atof(optarg); break;
        case 'k': sp.top_k = atoi(optarg); break;
        case 'P': sp.top_p = (float)atof(optarg); break;
        case 'm': sp.min_p = (float)atof(optarg); break;
        case 'S': sp.seed = (uint64_t)atoll(optarg); break;
        case 'b': backend = optarg; break;
        case 'x': if (n_stops < 16) stops[n_stops++] = optarg; break;
        case 'i': print_ids = 1; break;
        case 'D': device = atoi(optarg); break;
        case 'h': gen_usage(stdout); return EX_OK;
        default: gen_usage(stderr); return EX_USAGE;
        }
    }
    if (!ckpt || !prompt) { fprintf(stderr, "dragond generate: --checkpoint and --prompt are required\n"); gen_usage(stderr); return EX_USAGE; }
    char err[512];
    if (max_tokens < 0) { fprintf(stderr, "dragond generate: --max-tokens must be >= 0\n"); return EX_USAGE; }
    if (dg_sample_params_validate(&sp, err, sizeof err)) { fprintf(stderr, "dragond generate: %s\n", err); return EX_USAGE; }
    loaded L;
    if (load_model(ckpt, backend, device, &L)) return EX_FAIL;
    const dg_tokenizer_t *tok = L.ck.tokenizer;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = dg_tokenizer_encode(tok, prompt, strlen(prompt), true, &ids, &n_ids, err, sizeof err);
    if (rc) {
        fprintf(stderr, "dragond generate: prompt: %s\n", err);
        unload_model(&L);
        return EX_USAGE;
    }
    if (n_ids == 0) { fprintf(stderr, "dragond generate: the prompt is empty\n"); dg_free(ids); unload_model(&L); return EX_USAGE; }
    int V = L.ck.model.vocab_size;
    float *logits = dg_malloc((size_t)V * sizeof *logits);
    dg_state_t *st = NULL;
    dg_infer_t *ix = NULL;
    rc = dg_state_create(L.model, &st);
    if (!rc) rc = dg_infer_create(L.model, 1, 256, &ix);
    if (!rc) rc = dg_infer_prefill(ix, st, ids, (int)n_ids, logits);
    dg_sampler smp;
    dg_sampler_init(&smp, &sp);
    dg_utf8_stream us = {0};
    char piece[8], text[64];
    size_t cap = 4096, len = 0;        /* generated text, for stop strings */
    char *gen = dg_malloc(cap);
    gen[0] = 0;
    signal(SIGINT, on_sigint);
    int eos = dg_tokenizer_eos(tok);
    for (long long i = 0; !rc && i < max_tokens && !g_interrupted; i++) {
        int32_t t = dg_sampler_sample(&smp, logits, V);
        if (t == eos) break;
        if (print_ids) printf("%d\n", t);
        int np = dg_tokenizer_piece(tok, t, piece);
        if (np > 0) {
            int nt = dg_utf8_stream_push(&us, piece, np, text, sizeof text);
            if (!print_ids) fwrite(text, 1, (size_t)nt, stdout);
            fflush(stdout);
            if (len + (size_t)np + 1 > cap) gen = dg_realloc(gen, cap *= 2);
            memcpy(gen + len, piece, (size_t)np);
            len += (size_t)np;
            gen[len] = 0;
        }
        bool stop = false;
        for (int s = 0; s < n_stops; s++) if (strstr(gen, stops[s])) stop = true;
        if (stop) break;
        rc = dg_infer_step(ix, 1, &st, &t, logits);
    }
    if (!print_ids) {
        int nt = dg_utf8_stream_flush(&us, text, sizeof text);
        fwrite(text, 1, (size_t)nt, stdout);
        printf("\n");
    }
    if (rc) fprintf(stderr, "dragond generate: %s\n", dg_strerror(rc));
    dg_free(gen);
    dg_sampler_free(&smp);
    dg_infer_free(ix);
    dg_state_free(st);
    dg_free(logits);
    dg_free(ids);
    unload_model(&L);
    return rc ? EX_FAIL : (g_interrupted ? EX_INT : EX_OK);
}

// ------------------------------------------------------------------------------------------
// eval

int dg_cli_eval(int argc, char **argv) {
    static const struct option opts[] = {{"checkpoint", 1, 0, 'c'}, {"data", 1, 0, 'd'},
                                         {"split", 1, 0, 's'},      {"batch", 1, 0, 'B'},
                                         {"block", 1, 0, 'T'},      {"backend", 1, 0, 'b'},
                                         {"help", 0, 0, 'h'},       {0, 0, 0, 0}};
    const char *ckpt = NULL, *data = NULL, *split = "val", *backend = "cpu";
    int B = 0, T = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:d:s:B:T:b:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': ckpt = optarg; break;
        case 'd': data = optarg; break;
        case 's': split = optarg; break;
        case 'B': B = atoi(optarg); break;
        case 'T': T = atoi(optarg); break;
        case 'b': backend = optarg; break;
        case 'h':
            printf("usage: dragond eval --checkpoint CKPT --data FILE [--split val|all] [--batch B] [--block T]\n"
                   "Prints {\"loss\": mean next-token cross-entropy, \"tokens\": positions scored} over\n"
                   "consecutive blocks of the validation split (the last 10%%; --split all: whole file).\n");
            return EX_OK;
        default: return EX_USAGE;
        }
    }
    if (!ckpt || !data) { fprintf(stderr, "dragond eval: --checkpoint and --data are required\n"); return EX_USAGE; }
    if (strcmp(split, "val") && strcmp(split, "all")) { fprintf(stderr, "dragond eval: --split must be val or all\n"); return EX_USAGE; }
    loaded L;
    if (load_model(ckpt, backend, 0, &L)) return EX_FAIL;
    if (B <= 0) B = L.ck.train.batch_size;
    if (T <= 0) T = L.ck.train.block_size;
    dg_tokenizer_t *tok = L.ck.tokenizer;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = EX_FAIL;
    char err[512];
    if (load_corpus(data, dg_tokenizer_kind(tok), &tok, &ids, &n_ids)) goto out;
    dg_dataset ds;
    if (dg_dataset_init(&ds, ids, n_ids, !strcmp(split, "all") ? 1e-9 : L.ck.train.train_frac, 1, err, sizeof err)) {
        fprintf(stderr, "dragond eval: %s\n", err);
        goto out;
    }
    ids = NULL;
    if (!strcmp(split, "all")) ds.n_train = 0;
    int64_t nb = dg_eval_blocks(&ds, T, 0);
    if (nb <= 0) {   /* shorter than one block: score what is there */
        int64_t avail = (int64_t)(ds.n_tokens - ds.n_train) - 1;
        if (avail < 1) { fprintf(stderr, "dragond eval: not enough tokens to score (need at least 2)\n"); dg_dataset_free(&ds); goto out; }
        T = (int)avail;
        nb = dg_eval_blocks(&ds, T, 0);
    }
    if (B > nb) B = (int)nb;
    if (dg_model_alloc_train(L.model, B, T, 0)) { fprintf(stderr, "dragond eval: out of memory\n"); dg_dataset_free(&ds); goto out; }
    int32_t *inp = dg_malloc((size_t)B * T * 4), *tgt = dg_malloc((size_t)B * T * 4);
    double sum = 0;
    int64_t count = 0;
    for (int64_t i0 = 0; i0 < nb; i0 += B) {
        int valid = (int)(nb - i0 < B ? nb - i0 : B);
        for (int r = 0; r < B; r++) dg_eval_block(&ds, T, i0 + (r < valid ? r : 0), inp + (size_t)r * T, tgt + (size_t)r * T);
        float loss;
        if (dg_model_forward(L.model, inp, tgt, false, 0, &loss)) { fprintf(stderr, "dragond eval: forward failed\n"); break; }
        const float *pl = dg_model_last_losses(L.model);
        for (int64_t j = 0; j < (int64_t)valid * T; j++) sum += pl[j];
        count += (int64_t)valid * T;
    }
    if (count) { printf("{\"loss\": %.6f, \"tokens\": %lld}\n", sum / (double)count, (long long)count); rc = EX_OK; }
    dg_free(inp);
    dg_free(tgt);
    dg_dataset_free(&ds);
out:
    dg_free(ids);
    unload_model(&L);
    return rc;
}

// ------------------------------------------------------------------------------------------
// export

int dg_cli_export(int argc, char **argv) {
    static const struct option opts[] = {{"checkpoint", 1, 0, 'c'}, {"format", 1, 0, 'f'},
                                         {"out", 1, 0, 'o'},        {"dtype", 1, 0, 't'},
                                         {"parts-mib", 1, 0, 'p'},  {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *ckpt = NULL, *format = "safetensors", *out = NULL, *dtype = "f32";
    double parts_mib = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:f:o:t:p:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': ckpt = optarg; break;
        case 'f': format = optarg; break;
        case 'o': out = optarg; break;
        case 't': dtype = optarg; break;
        case 'p': parts_mib = atof(optarg); break;
        case 'h':
            printf("usage: dragond export --checkpoint CKPT --format safetensors|burnpack --out FILE\n"
                   "                      [--dtype f32|f16|bf16] [--parts-mib N]\n"
                   "Writes the model parameters with DESIGN.md §5 tensor names plus the model config\n"
                   "and tokenizer (metadata). --parts-mib splits a burnpack into parts with a\n"
                   "FILE.parts.json manifest.\n");
            return EX_OK;
        default: return EX_USAGE;
        }
    }
    if (!ckpt || !out) { fprintf(stderr, "dragond export: --checkpoint and --out are required\n"); return EX_USAGE; }
    dg_export_format fmt;
    if (!strcmp(format, "safetensors")) fmt = DG_EXPORT_SAFETENSORS;
    else if (!strcmp(format, "burnpack")) fmt = DG_EXPORT_BURNPACK;
    else { fprintf(stderr, "dragond export: --format must be safetensors or burnpack (got '%s')\n", format); return EX_USAGE; }
    dg_dtype dt;
    if (!strcmp(dtype, "f32")) dt = DG_DTYPE_F32;
    else if (!strcmp(dtype, "f16")) dt = DG_DTYPE_F16;
    else if (!strcmp(dtype, "bf16")) dt = DG_DTYPE_BF16;
    else { fprintf(stderr, "dragond export: --dtype must be f32, f16 or bf16 (got '%s')\n", dtype); return EX_USAGE; }
    if (parts_mib < 0 || (parts_mib > 0 && fmt != DG_EXPORT_BURNPACK)) {
        fprintf(stderr, "dragond export: --parts-mib needs --format burnpack and a positive size\n");
        return EX_USAGE;
    }
    char path[4200], err[1024];
    if (resolve_ckpt(ckpt, path, sizeof path)) return EX_FAIL;
    {   /* the output's directory is created if needed */
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", out);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = 0;
            if (mkdir_p(dir)) {
                fprintf(stderr, "dragond export: cannot create %s: %s\n", dir, strerror(errno));
                return EX_FAIL;
            }
        }
    }
    dg_ckpt ck;
    if (dg_ckpt_read(path, false, &ck, err, sizeof err)) { fprintf(stderr, "dragond export: %s\n", err); return EX_FAIL; }
    int rc = dg_export_model(out, fmt, dt, &ck, (int64_t)(parts_mib * 1024 * 1024), err, sizeof err);
    dg_ckpt_free(&ck);
    if (rc) { fprintf(stderr, "dragond export: %s\n", err); return EX_FAIL; }
    fprintf(stderr, "dragond export: wrote %s\n", out);
    return EX_OK;
}

// ------------------------------------------------------------------------------------------
// bench

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void bench_usage(FILE *f) {
    fprintf(f,
            "usage: dragond bench train  --config FILE [--data FILE] [--batch B] [--block T] [--steps N]\n"
            "       dragond bench decode --config FILE [--sessions S] [--tokens N] [--prompt-tokens P]\n"
            "       dragond bench decode --checkpoint CKPT [--data FILE] [...]   (a trained model;\n"
            "                            with --data the prompts are taken from that text)\n"
            "  common: [--backend NAME] [--vocab V] [--warmup W]\n"
            "Prints one JSON line: {\"bench\":..., \"tokens_per_s\": median over timed steps, ...}.\n"
            "Without --data the train bench uses random tokens.\n");
}

int dg_cli_bench(int argc, char **argv) {
    if (argc < 2 || argv[1][0] == '-') { bench_usage(argc >= 2 && !strcmp(argv[1], "--help") ? stdout : stderr); return argc >= 2 && !strcmp(argv[1], "--help") ? EX_OK : EX_USAGE; }
    const char *what = argv[1];
    static const struct option opts[] = {
        {"config", 1, 0, 'c'}, {"data", 1, 0, 'd'}, {"batch", 1, 0, 'B'}, {"block", 1, 0, 'T'},
        {"steps", 1, 0, 's'}, {"sessions", 1, 0, 'n'}, {"tokens", 1, 0, 'k'}, {"prompt-tokens", 1, 0, 'p'},
        {"backend", 1, 0, 'b'}, {"vocab", 1, 0, 'V'}, {"warmup", 1, 0, 'w'}, {"json", 0, 0, 'j'},
        {"device", 1, 0, 'D'}, {"checkpoint", 1, 0, 'C'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *config = NULL, *data = NULL, *backend = "cpu", *ckpt = NULL;
    int B = 0, T = 0, steps = 5, sessions = 1, tokens = 64, prompt_tokens = 16, V = 0, warmup = 1, device = 0, c;
    optind = 2;
    while ((c = getopt_long(argc, argv, "c:d:B:T:s:n:k:p:b:V:w:jD:C:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 'd': data = optarg; break;
        case 'B': B = atoi(optarg); break;
        case 'T': T = atoi(optarg); break;
        case 's': steps = atoi(optarg); break;
        case 'n': sessions = atoi(optarg); break;
        case 'k': tokens = atoi(optarg); break;
        case 'p': prompt_tokens = atoi(optarg); break;
        case 'b': backend = optarg; break;
        case 'V': V = atoi(optarg); break;
        case 'w': warmup = atoi(optarg); break;
        case 'j': break;
        case 'D': device = atoi(optarg); break;
        case 'C': ckpt = optarg; break;
        case 'h': bench_usage(stdout); return EX_OK;
        default: bench_usage(stderr); return EX_USAGE;
        }
    }
    if (ckpt && strcmp(what, "decode")) { fprintf(stderr, "dragond bench: --checkpoint is for decode\n"); return EX_USAGE; }
    if (!config && !ckpt) { fprintf(stderr, "dragond bench: --config (or, for decode, --checkpoint) is required\n"); return EX_USAGE; }
    char err[1024];
    dg_model_config mc;
    dg_train_config tc;
    loaded L = {0};
    if (ckpt) {                      /* the model and its training settings come from the checkpoint */
        if (load_model(ckpt, backend, device, &L)) return EX_FAIL;
        mc = L.ck.model;
        tc = L.ck.train;
        V = (int)mc.vocab_size;
        config = ckpt;
    } else if (dg_config_load_file(config, &mc, &tc, err, sizeof err)) { fprintf(stderr, "dragond bench: %s\n", err); return EX_USAGE; }
    if (B > 0) tc.batch_size = B;
    if (T > 0) tc.block_size = T;
    if (steps < 1 || sessions < 1 || tokens < 1 || prompt_tokens < 1 || warmup < 0) { fprintf(stderr, "dragond bench: counts must be >= 1\n"); return EX_USAGE; }
    dg_tokenizer_t *tok = ckpt ? L.ck.tokenizer : NULL;   /* the checkpoint's: borrowed */
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (data) {
        if (load_corpus(data, tc.tokenizer, &tok, &ids, &n_ids)) { if (ckpt) unload_model(&L); return EX_FAIL; }
    } else {
        if (ckpt) {}
        else if (tc.tokenizer == DG_TOK_BYTE) dg_tokenizer_byte(&tok);
        else {   /* a synthetic char vocabulary of V-4 characters */
            int nv = (V > 4 ? V : 69) - 4;
            uint32_t *cps = dg_malloc((size_t)nv * 4);
            for (int i = 0; i < nv; i++) cps[i] = 0x21 + (uint32_t)i;
            dg_tokenizer_from_chars(cps, nv, &tok);
            dg_free(cps);
        }
        int Vt = dg_tokenizer_vocab(tok);
        n_ids = (size_t)tc.batch_size * tc.block_size * 4 + 4096;
        ids = dg_malloc(n_ids * 4);
        dg_rng r;
        dg_rng_seed(&r, 7);
        for (size_t i = 0; i < n_ids; i++) ids[i] = 4 + (int32_t)dg_rng_below(&r, (uint64_t)(Vt - 4));
        tc.train_frac = 0.9;
    }
    mc.vocab_size = dg_tokenizer_vocab(tok);
    int rc = EX_OK;
    if (!strcmp(what, "train")) {
        tc.max_steps = steps + warmup;
        tc.epochs = 0;
        tc.eval_interval = 0;
        dg_trainer_spec sp = {.backend = backend, .device = device, .model = mc, .train = tc, .tokenizer = tok,
                              .tokens = ids, .n_tokens = n_ids};
        dg_trainer_t *tr;
        if (dg_trainer_create(&sp, &tr, err, sizeof err)) { fprintf(stderr, "dragond bench: %s\n", err); rc = EX_FAIL; goto out; }
        double *ts = dg_malloc((size_t)steps * sizeof *ts);
        float loss = 0;
        for (int i = 0; i < warmup + steps; i++) {
            dg_step_info si;
            if (dg_trainer_step(tr, &si)) { fprintf(stderr, "dragond bench: step failed\n"); rc = EX_FAIL; break; }
            if (i >= warmup) ts[i - warmup] = si.step_seconds;
            loss = si.loss;
        }
        if (!rc) {
            qsort(ts, (size_t)steps, sizeof *ts, cmp_d);
            double med = ts[steps / 2];
            double ntok = (double)tc.batch_size * tc.block_size;
            printf("{\"bench\":\"train\",\"backend\":\"%s\",\"config\":\"%s\",\"batch\":%d,\"block\":%d,"
                   "\"steps\":%d,\"ms_per_step\":%.3f,\"tokens_per_s\":%.1f,\"min_ms\":%.3f,\"max_ms\":%.3f,"
                   "\"final_loss\":%.5f,\"n_params\":%lld}\n",
                   backend, config, tc.batch_size, tc.block_size, steps, med * 1e3, ntok / med, ts[0] * 1e3,
                   ts[steps - 1] * 1e3, loss, (long long)dg_model_n_params(&mc));
        }
        dg_free(ts);
        dg_trainer_free(tr);
    } else if (!strcmp(what, "decode")) {
        dg_backend_t *be = L.be;
        dg_backend_params bp = {.device = device};
        dg_model_t *m = L.model;
        if (!ckpt && dg_backend_open(backend, &bp, &be)) { fprintf(stderr, "dragond bench: backend %s unavailable\n", backend); rc = EX_FAIL; goto out; }
        dg_state_t **st = dg_calloc((size_t)sessions, sizeof *st);
        dg_infer_t *ix = NULL;
        int r = 0;
        if (!ckpt) {
            r = dg_model_create(be, &mc, &m);
            if (!r) r = dg_model_init_params(m, tc.seed);
        }
        if (!r) r = dg_infer_create(m, sessions, prompt_tokens, &ix);
        for (int s = 0; s < sessions && !r; s++) r = dg_state_create(m, &st[s]);
        float *logits = dg_malloc((size_t)sessions * mc.vocab_size * 4);
        int32_t *tk = dg_malloc((size_t)sessions * 4);
        for (int s = 0; s < sessions && !r; s++) r = dg_infer_prefill(ix, st[s], ids + (size_t)s * prompt_tokens, prompt_tokens, logits + (size_t)s * mc.vocab_size);
        double t0 = 0, ts = 0;
        double *step_s = dg_malloc((size_t)(tokens > 0 ? tokens : 1) * sizeof *step_s);
        for (int i = 0; i < warmup + tokens && !r; i++) {
            if (i == warmup) { dg_sync(be); t0 = dg_now(); }
            if (i >= warmup) ts = dg_now();
            for (int s = 0; s < sessions; s++) {   /* greedy */
                const float *lg = logits + (size_t)s * mc.vocab_size;
                int best = 0;
                for (int v = 1; v < mc.vocab_size; v++) if (lg[v] > lg[best]) best = v;
                tk[s] = best;
            }
            r = dg_infer_step(ix, sessions, st, tk, logits);   /* logits reach the host: synced */
            if (i >= warmup) step_s[i - warmup] = dg_now() - ts;
        }
        if (!r) {
            dg_sync(be);
            double dt = dg_now() - t0;
            qsort(step_s, (size_t)tokens, sizeof *step_s, cmp_d);
            double med = tokens % 2 ? step_s[tokens / 2] : 0.5 * (step_s[tokens / 2 - 1] + step_s[tokens / 2]);
            /* tokens_per_s from the median step, as the PyTorch peer reports it; _wall over all */
            printf("{\"bench\":\"decode\",\"backend\":\"%s\",\"config\":\"%s\",\"sessions\":%d,\"tokens\":%d,"
                   "\"tokens_per_s\":%.1f,\"ms_per_step\":%.4f,\"tokens_per_s_wall\":%.1f,"
                   "\"ms_per_step_wall\":%.4f,\"state_bytes\":%zu}\n",
                   backend, config, sessions, tokens, sessions / med, med * 1e3,
                   (double)sessions * tokens / dt, dt / tokens * 1e3, dg_model_state_bytes(&mc));
        } else {
            fprintf(stderr, "dragond bench: decode failed: %s\n", dg_strerror(r));
            rc = EX_FAIL;
        }
        for (int s = 0; s < sessions; s++) dg_state_free(st[s]);
        dg_free(st);
        dg_free(step_s);
        dg_free(logits);
        dg_free(tk);
        dg_infer_free(ix);
        if (!ckpt) {
            dg_model_free(m);
            dg_backend_close(be);
        }
    } else {
        fprintf(stderr, "dragond bench: unknown benchmark '%s' (train or decode)\n", what);
        rc = EX_USAGE;
    }
out:
    dg_free(ids);
    if (ckpt) unload_model(&L);
    else dg_tokenizer_free(tok);
    return rc;
}
