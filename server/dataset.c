/* server/dataset.c -- dataset presets: "shakespeare" (Tiny Shakespeare, karpathy/char-rnn
 * data/tinyshakespeare/input.txt, 1115394 bytes) kept at <data_dir>/datasets/tinyshakespeare.txt.
 * A present file is used when its sha256 matches; otherwise it is downloaded with libcurl from
 * the shakespeare_url setting into a temporary file, checked against the sha256 and renamed into
 * place (fsync, rename, fsync dir). Without a network the job fails with data_error and the
 * message names the file to place by hand.
 * Not here: reading or tokenizing the text (worker.c). Thread affinity: any thread (the engine
 * thread calls it); libcurl's global init happens once in serve.c. */
#include "srv.h"
#include "engine/ckpt.h"
#include "proto/sha256.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

const char dg_shakespeare_sha256[] =
    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed";

typedef struct {
    char       *buf;
    size_t      len, cap, limit;
    atomic_int *cancel;
} dl_buf;

static size_t on_data(char *p, size_t sz, size_t nm, void *ud) {
    dl_buf *b = ud;
    size_t n = sz * nm;
    if (b->len + n > b->limit) return 0;               /* aborts the transfer */
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->buf = dg_realloc(b->buf, b->cap);
    }
    memcpy(b->buf + b->len, p, n);
    b->len += n;
    return n;
}

static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d) {
    (void)a; (void)b; (void)c; (void)d;
    dl_buf *x = ud;
    return x->cancel && atomic_load(x->cancel) ? 1 : 0;
}

int dg_dataset_preset(const char *preset, const char *data_dir, const char *url,
                      int64_t timeout_s, atomic_int *cancel, char *path_out, size_t pn,
                      char *err, size_t errlen) {
    if (strcmp(preset, "shakespeare") != 0) {
        snprintf(err, errlen, "unknown dataset preset '%s' (known: shakespeare)", preset);
        return DG_EINVAL;
    }
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/datasets", data_dir);
    snprintf(path_out, pn, "%s/tinyshakespeare.txt", dir);
    char hex[65];
    char e2[512];
    if (access(path_out, R_OK) == 0) {
        if (dg_sha256_file(path_out, hex, NULL, e2, sizeof e2) == 0 &&
            !strcmp(hex, dg_shakespeare_sha256))
            return 0;
        DG_WARN("%s has sha256 %s, expected %s; downloading it again", path_out, hex,
                dg_shakespeare_sha256);
    }
    if (dg_mkdirs(dir)) {
        snprintf(err, errlen, "cannot create %s", dir);
        return DG_EIO;
    }
    DG_INFO("downloading %s", url);
    dl_buf b = {.limit = 64u << 20, .cancel = cancel};
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(err, errlen, "libcurl init failed");
        return DG_EINTERNAL;
    }
    char cerr[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 15L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)timeout_s);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, &b);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "dragond");
    CURLcode cc = curl_easy_perform(c);
    curl_easy_cleanup(c);
    int rc = 0;
    if (cc != CURLE_OK) {
        snprintf(err, errlen, "cannot download the shakespeare dataset from %.300s: %.200s. HINT: "
                 "place the file by hand at %.400s (sha256 %s)", url,
                 cerr[0] ? cerr : curl_easy_strerror(cc), path_out, dg_shakespeare_sha256);
        rc = DG_EDATA;
        goto out;
    }
    uint8_t dig[32];
    dg_sha256(b.buf, b.len, dig);
    dg_sha256_hex(dig, hex);
    if (strcmp(hex, dg_shakespeare_sha256) != 0) {
        snprintf(err, errlen, "downloaded %zu bytes from %.300s but their sha256 is %s, not %s. "
                 "HINT: place the right file by hand at %.400s", b.len, url, hex,
                 dg_shakespeare_sha256, path_out);
        rc = DG_EDATA;
        goto out;
    }
    rc = dg_write_atomic(path_out, b.buf, b.len, e2, sizeof e2);
    if (rc) snprintf(err, errlen, "cannot write %.400s: %.400s", path_out, e2);
out:
    dg_free(b.buf);
    return rc;
}
