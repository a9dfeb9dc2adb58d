/* server/models_import.c -- POST /v1/models/import: the bundle cache with libcurl downloads
 * (parts first, resumable, retried, sha256-verified) and the conversion of a verified bundle into
 * an inference-only native checkpoint under <data_dir>/models/<name>/ (see models_import.h).
 *
 * Imports run as uv_work_t on the loop's thread pool; the table of imports lives on the LOOP
 * thread (in memory: an import is a short operation, its result is the model directory). Two
 * imports of the same name never run at once.
 * Not here: the formats (proto/), the registry (infer.c). Thread affinity: LOOP thread, except
 * the work callback and the dg_bundle_fetch / dg_model_import_file family (any thread). */
#include "models_import.h"

#include "engine/ckpt.h"
#include "proto/burnpack.h"
#include "proto/export.h"
#include "proto/parts.h"
#include "proto/sha256.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen) vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static bool file_size(const char *path, uint64_t *size) {
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return false;
    *size = (uint64_t)st.st_size;
    return true;
}

bool dg_model_name_ok(const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n > 64 || name[0] == '.' || name[0] == '-') return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && name[i] != '.' && name[i] != '_' &&
            name[i] != '-')
            return false;
    return true;
}

/* A plain file name: no '/', not "." / "..", no control characters. */
static bool plain_name(const char *s) {
    if (!*s || !strcmp(s, ".") || !strcmp(s, "..") || strlen(s) > 200) return false;
    for (const char *p = s; *p; p++)
        if (*p == '/' || *p == '\\' || (unsigned char)*p < 0x20) return false;
    return true;
}

// ------------------------------------------------------------------------------------------
// Downloads (any thread)

typedef struct {
    int         fd;
    uint64_t    have;          /* bytes of the .partial before this request */
    bool        started, truncated;
    long        status;
    CURL       *c;
    char        etag[80];
    atomic_int *cancel;
    int         io_err;
} dl_state;

static size_t on_header(char *p, size_t sz, size_t nm, void *ud) {
    dl_state *d = ud;
    size_t n = sz * nm;
    if (n > 5 && !strncasecmp(p, "ETag:", 5)) {
        const char *v = p + 5;
        while (*v == ' ' || *v == '"' || *v == 'W' || *v == '/') v++;
        size_t l = 0;
        while (v + l < p + n && v[l] != '"' && v[l] != '\r' && v[l] != '\n' && l < 79) l++;
        memcpy(d->etag, v, l);
        d->etag[l] = 0;
    }
    return n;
}

static size_t on_body(char *p, size_t sz, size_t nm, void *ud) {
    dl_state *d = ud;
    size_t n = sz * nm;
    if (!d->started) {
        d->started = true;
        curl_easy_getinfo(d->c, CURLINFO_RESPONSE_CODE, &d->status);
        if (d->status == 200 && d->have > 0) {      /* the server ignored Range: start over */
            if (ftruncate(d->fd, 0) != 0 || lseek(d->fd, 0, SEEK_SET) != 0) d->io_err = errno;
            d->truncated = true;
        }
    }
    if (d->status != 200 && d->status != 206) return n;          /* error body: dropped */
    size_t off = 0;
    while (off < n) {
        ssize_t k = write(d->fd, p + off, n - off);
        if (k < 0) {
            if (errno == EINTR) continue;
            d->io_err = errno;
            return 0;
        }
        off += (size_t)k;
    }
    return n;
}

static int on_xfer(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t e) {
    (void)a; (void)b; (void)c; (void)e;
    dl_state *d = ud;
    return d->cancel && atomic_load(d->cancel) ? 1 : 0;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void opts_default(const dg_fetch_opts *o, dg_fetch_opts *out) {
    memset(out, 0, sizeof *out);
    if (o) *out = *o;
    if (out->timeout_s <= 0) out->timeout_s = 600;
    if (out->tries <= 0) out->tries = 4;
    if (out->backoff_ms <= 0) out->backoff_ms = 250;
}

/* One HTTP GET of url into path (via path.partial, resumed), retried. *status gets the last
 * HTTP status; etag (may be NULL, 80 bytes) the ETag without quotes. Returns 0, DG_ENOTFOUND
 * (403 / 404 / 410), DG_ECANCELED, or DG_EIO with a message. */
static int download(const char *url, const char *path, const dg_fetch_opts *o, long *status,
                    char *etag, char *err, size_t errlen) {
    size_t pl = strlen(path) + 16;
    char *part = dg_malloc(pl);
    snprintf(part, pl, "%s.partial", path);
    int rc = DG_EIO, delay = o->backoff_ms;
    *status = 0;
    for (int attempt = 1; attempt <= o->tries; attempt++) {
        if (o->cancel && atomic_load(o->cancel)) {
            rc = fail(err, errlen, DG_ECANCELED, "%s: cancelled", url);
            break;
        }
        int fd = open(part, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0) {
            rc = fail(err, errlen, DG_EIO, "cannot write %s: %s", part, strerror(errno));
            break;
        }
        struct stat st;
        fstat(fd, &st);
        dl_state d = {.fd = fd, .have = (uint64_t)st.st_size, .cancel = o->cancel};
        CURL *c = curl_easy_init();
        d.c = c;
        char cerr[CURL_ERROR_SIZE] = "", range[48];
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 20L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)o->timeout_s);
        curl_easy_setopt(c, CURLOPT_USERAGENT, "dragond");
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, &d);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &d);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_xfer);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, &d);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        if (d.have > 0) {
            snprintf(range, sizeof range, "%llu-", (unsigned long long)d.have);
            curl_easy_setopt(c, CURLOPT_RANGE, range);
        }
        CURLcode cc = curl_easy_perform(c);
        long code = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_cleanup(c);
        bool synced = fsync(fd) == 0;
        close(fd);
        *status = code;
        if (etag) snprintf(etag, 80, "%s", d.etag);
        if (cc == CURLE_ABORTED_BY_CALLBACK) {
            rc = fail(err, errlen, DG_ECANCELED, "%s: cancelled", url);
            break;
        }
        if (d.io_err || !synced) {
            rc = fail(err, errlen, DG_EIO, "writing %s: %s", part,
                      strerror(d.io_err ? d.io_err : errno));
            break;
        }
        if (cc == CURLE_OK && (code == 200 || code == 206)) {
            if (rename(part, path) != 0) {
                rc = fail(err, errlen, DG_EIO, "cannot rename %s: %s", part, strerror(errno));
                break;
            }
            rc = 0;
            break;
        }
        if (cc == CURLE_OK && (code == 403 || code == 404 || code == 410)) {
            rc = fail(err, errlen, DG_ENOTFOUND, "%s: HTTP %ld", url, code);
            break;
        }
        if (cc == CURLE_OK && code == 416) unlink(part);   /* stale partial: start over */
        if (cc != CURLE_OK)
            rc = fail(err, errlen, DG_EIO, "%s: %s (attempt %d of %d)", url,
                      cerr[0] ? cerr : curl_easy_strerror(cc), attempt, o->tries);
        else
            rc = fail(err, errlen, DG_EIO, "%s: HTTP %ld (attempt %d of %d)", url, code,
                      attempt, o->tries);
        if (attempt < o->tries) {
            sleep_ms(delay);
            delay *= 2;
        }
    }
    dg_free(part);
    return rc;
}

/* Small GET into memory (a manifest). DG_ENOTFOUND for 403 / 404 / 410. */
static int fetch_text(const char *url, const char *tmp_path, const dg_fetch_opts *o,
                      char **text, size_t *n, char *err, size_t errlen) {
    long status;
    unlink(tmp_path);
    size_t pl = strlen(tmp_path) + 16;
    char *part = dg_malloc(pl);
    snprintf(part, pl, "%s.partial", tmp_path);
    unlink(part);                       /* never resume a manifest */
    dg_free(part);
    int rc = download(url, tmp_path, o, &status, NULL, err, errlen);
    if (rc) return rc;
    rc = dg_read_file(tmp_path, text, n, err, errlen);
    unlink(tmp_path);
    return rc;
}

static bool is_url(const char *s) {
    return !strncmp(s, "http://", 7) || !strncmp(s, "https://", 8);
}

/* Checks one cached file against size / sha256 (0 / "" skip). 0 = verified. */
static int verify_file(const char *path, uint64_t bytes, const char *sha, const char *what,
                       const char *by, char *err, size_t errlen) {
    uint64_t size;
    if (!file_size(path, &size)) return fail(err, errlen, DG_ENOTFOUND, "%s: missing", what);
    if (bytes && size != bytes)
        return fail(err, errlen, DG_ECORRUPT, "%s: size mismatch: %s says %llu bytes, "
                    "the file has %llu (%s)", what, by, (unsigned long long)bytes,
                    (unsigned long long)size, size < bytes ? "truncated" : "too long");
    if (sha && *sha) {
        char hex[65], e2[256];
        if (dg_sha256_file(path, hex, NULL, e2, sizeof e2))
            return fail(err, errlen, DG_EIO, "%s: %s", what, e2);
        if (strcasecmp(hex, sha))
            return fail(err, errlen, DG_ECORRUPT, "%s: sha256 mismatch: %s says %s, "
                        "the file has %s", what, by, sha, hex);
    }
    return 0;
}

/* Every part of a parsed manifest present and verified in dir. */
static int parts_complete(const dg_parts_manifest *m, const char *dir, char *err,
                          size_t errlen) {
    if (m->n_parts == 0) return fail(err, errlen, DG_ECORRUPT, "the manifest lists no parts");
    for (int k = 0; k < m->n_parts; k++) {
        char path[1600], what[300];
        snprintf(what, sizeof what, "part %d (%s)", k, m->parts[k].path);
        snprintf(path, sizeof path, "%s/%s", dir, m->parts[k].path);
        int rc = verify_file(path, m->parts[k].bytes, m->parts[k].sha256, what, "the manifest",
                             err, errlen);
        if (rc) return rc;
    }
    return 0;
}

static int load_manifest(const char *path, dg_parts_manifest *m, char *err, size_t errlen) {
    char *text = NULL;
    size_t n = 0;
    int rc = dg_read_file(path, &text, &n, err, errlen);
    if (rc) return rc;
    rc = dg_parts_manifest_parse(text, n, m, err, errlen);
    dg_free(text);
    return rc;
}

/* The parts route: manifest text from manifest_url into dir/<mname>, parts next to it. */
static int fetch_parts(const char *manifest_url, const char *text, size_t tn, const char *dir,
                       const char *mname, const dg_fetch_opts *o, char *local, size_t ln,
                       char *note, size_t nn, char *err, size_t errlen) {
    dg_parts_manifest m;
    char e2[1024];
    int rc = dg_parts_manifest_parse(text, tn, &m, e2, sizeof e2);
    if (rc) return fail(err, errlen, rc, "%s: bad manifest: %s", manifest_url, e2);
    if (m.n_parts == 0) {
        dg_parts_manifest_free(&m);
        return fail(err, errlen, DG_ECORRUPT, "%s: the manifest lists no parts", manifest_url);
    }
    /* the base for relative part paths: the manifest URL up to its last '/' */
    const char *q = strchr(manifest_url, '?');
    size_t ulen = q ? (size_t)(q - manifest_url) : strlen(manifest_url);
    size_t base = ulen;
    while (base > 0 && manifest_url[base - 1] != '/') base--;
    int downloaded = 0;
    for (int k = 0; k < m.n_parts && !rc; k++) {
        char *p = m.parts[k].path, url[2048], lname[256];
        if (is_url(p)) {
            snprintf(url, sizeof url, "%s", p);
            const char *s = strrchr(p, '/');
            snprintf(lname, sizeof lname, "%s", s ? s + 1 : p);
            lname[strcspn(lname, "?#")] = 0;
        } else {
            snprintf(url, sizeof url, "%.*s%s", (int)base, manifest_url, p);
            snprintf(lname, sizeof lname, "%s", p);
        }
        if (!plain_name(lname)) {
            rc = fail(err, errlen, DG_ECORRUPT, "%s: part %d has the path '%s' (HINT: parts must "
                      "be files next to the manifest or http(s) URLs)", manifest_url, k, p);
            break;
        }
        dg_free(m.parts[k].path);
        m.parts[k].path = dg_strdup(lname);
        char path[1600], what[600];
        snprintf(path, sizeof path, "%s/%s", dir, lname);
        snprintf(what, sizeof what, "part %d (%s)", k, lname);
        if (verify_file(path, m.parts[k].bytes, m.parts[k].sha256, what, "the manifest", e2,
                        sizeof e2) == 0)
            continue;                                  /* cached and verified */
        unlink(path);
        long status;
        rc = download(url, path, o, &status, NULL, e2, sizeof e2);
        if (rc == DG_ENOTFOUND) {
            rc = fail(err, errlen, DG_ENOTFOUND, "part %d (%s) is missing: %s", k, lname, e2);
            break;
        }
        if (rc) {
            fail(err, errlen, rc, "part %d (%s): %s", k, lname, e2);
            break;
        }
        downloaded++;
        if ((rc = verify_file(path, m.parts[k].bytes, m.parts[k].sha256, what, "the manifest",
                              err, errlen))) {
            unlink(path);                              /* never keep a bad part */
            break;
        }
    }
    if (!rc) {
        char *json = dg_parts_manifest_to_json(&m);
        snprintf(local, ln, "%s/%s", dir, mname);
        rc = dg_write_file_atomic(local, json, strlen(json), err, errlen);
        dg_free(json);
        if (note) snprintf(note, nn, "%d of %d part(s) downloaded", downloaded, m.n_parts);
    }
    dg_parts_manifest_free(&m);
    return rc;
}

static int fetch_locked(const char *url, const char *cache_root, const dg_fetch_opts *opts,
                        char *local, size_t ln, char *note, size_t nn, char *err, size_t errlen,
                        int *lock_fd);

int dg_bundle_fetch(const char *url, const char *cache_root, const dg_fetch_opts *opts,
                    char *local, size_t ln, char *note, size_t nn, char *err, size_t errlen) {
    int lock_fd = -1;
    int rc = fetch_locked(url, cache_root, opts, local, ln, note, nn, err, errlen, &lock_fd);
    if (lock_fd >= 0) close(lock_fd);       /* releases the flock */
    return rc;
}

/* The cache entry of one URL is used by one import at a time (flock on <dir>/.lock): two
 * imports of the same URL wait for each other instead of writing the same .partial files. */
static int fetch_locked(const char *url, const char *cache_root, const dg_fetch_opts *opts,
                        char *local, size_t ln, char *note, size_t nn, char *err, size_t errlen,
                        int *lock_fd) {
    dg_fetch_opts o;
    opts_default(opts, &o);
    if (!is_url(url)) return fail(err, errlen, DG_EINVAL, "'%s' is not an http(s) URL", url);
    /* the file name: the last path segment without query or fragment */
    char clean[2048];
    snprintf(clean, sizeof clean, "%s", url);
    clean[strcspn(clean, "?#")] = 0;
    const char *slash = strrchr(clean, '/');
    char fname[256];
    snprintf(fname, sizeof fname, "%s", slash ? slash + 1 : "");
    bool is_manifest = ends_with(fname, ".parts.json");
    if (!plain_name(fname) || fname[0] == '.' || strlen(fname) > 180)
        return fail(err, errlen, DG_EINVAL, "%s: the URL does not end in a file name (HINT: "
                    "point at model.bpk, model.bpk.parts.json or model.safetensors)", url);
    if (!is_manifest && !ends_with(fname, ".bpk") && !ends_with(fname, ".safetensors"))
        return fail(err, errlen, DG_EINVAL, "%s: not a bundle (.bpk, .bpk.parts.json or "
                    ".safetensors)", url);
    /* cache key: sha256 of the URL of the monolith (the manifest's without .parts.json) */
    char mono_url[2048];
    snprintf(mono_url, sizeof mono_url, "%s", url);
    if (is_manifest) mono_url[strlen(mono_url) - 11] = 0;
    uint8_t dig[32];
    char hex[65], dir[1400];
    dg_sha256(mono_url, strlen(mono_url), dig);
    dg_sha256_hex(dig, hex);
    snprintf(dir, sizeof dir, "%s/%.16s", cache_root, hex);
    if (dg_mkdirs(dir)) return fail(err, errlen, DG_EIO, "cannot create %s", dir);
    char lockp[1500];
    snprintf(lockp, sizeof lockp, "%s/.lock", dir);
    *lock_fd = open(lockp, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (*lock_fd < 0 || flock(*lock_fd, LOCK_EX) != 0)
        return fail(err, errlen, DG_EIO, "cannot lock %s: %s", lockp, strerror(errno));
    char mono_name[256], mname[300], mpath[1800], monopath[1800], sidecar[1900];
    snprintf(mono_name, sizeof mono_name, "%s", fname);
    if (is_manifest) mono_name[strlen(mono_name) - 11] = 0;
    snprintf(mname, sizeof mname, "%s.parts.json", mono_name);
    snprintf(mpath, sizeof mpath, "%s/%s", dir, mname);
    snprintf(monopath, sizeof monopath, "%s/%s", dir, mono_name);
    snprintf(sidecar, sizeof sidecar, "%s.sha256", monopath);
    char e2[1024];
    bool try_parts = is_manifest || ends_with(fname, ".bpk");
    /* 1. a complete cached manifest */
    dg_parts_manifest m;
    if (try_parts && load_manifest(mpath, &m, e2, sizeof e2) == 0) {
        int rc = parts_complete(&m, dir, e2, sizeof e2);
        dg_parts_manifest_free(&m);
        if (rc == 0) {
            snprintf(local, ln, "%s", mpath);
            if (note) snprintf(note, nn, "cache hit (parts)");
            return 0;
        }
    }
    /* 2. a cached single file whose recorded sha256 still matches */
    if (!is_manifest) {
        char *want = NULL;
        size_t wn = 0;
        uint64_t sz;
        if (file_size(monopath, &sz) && dg_read_file(sidecar, &want, &wn, e2, sizeof e2) == 0) {
            want[strcspn(want, " \r\n")] = 0;
            bool ok = verify_file(monopath, 0, want, mono_name, "the cache record", e2,
                                  sizeof e2) == 0;
            dg_free(want);
            if (ok) {
                snprintf(local, ln, "%s", monopath);
                if (note) snprintf(note, nn, "cache hit");
                return 0;
            }
        }
    }
    /* 3. the manifest from the server */
    if (try_parts) {
        char murl[2100], tmp[1900];
        snprintf(murl, sizeof murl, "%s%s", url, is_manifest ? "" : ".parts.json");
        snprintf(tmp, sizeof tmp, "%s.download", mpath);
        char *text = NULL;
        size_t tn = 0;
        int rc = fetch_text(murl, tmp, &o, &text, &tn, e2, sizeof e2);
        if (rc == 0) {
            rc = fetch_parts(murl, text, tn, dir, mname, &o, local, ln, note, nn, err, errlen);
            dg_free(text);
            return rc;
        }
        if (rc == DG_ECANCELED) return fail(err, errlen, rc, "%s", e2);
        if (is_manifest) return fail(err, errlen, rc, "manifest %s", e2);
        /* no manifest (or it could not be fetched): the single file */
    }
    /* 4. the single file */
    unlink(sidecar);
    unlink(monopath);
    long status;
    char etag[80] = "";
    int rc = download(url, monopath, &o, &status, etag, e2, sizeof e2);
    if (rc == DG_ENOTFOUND && try_parts)
        return fail(err, errlen, rc, "no bundle at %s: %s, and no %s.parts.json either", url, e2,
                    fname);
    if (rc) return fail(err, errlen, rc, "%s", e2);
    bool etag_sha = strlen(etag) == 64;
    for (int i = 0; etag_sha && i < 64; i++) etag_sha = isxdigit((unsigned char)etag[i]) != 0;
    if (etag_sha) {
        char what[300];
        snprintf(what, sizeof what, "%s", mono_name);
        if (verify_file(monopath, 0, etag, what, "the server's ETag", e2, sizeof e2)) {
            unlink(monopath);
            return fail(err, errlen, DG_ECORRUPT, "%s: %s", url, e2);
        }
        dg_write_file_atomic(sidecar, etag, 64, e2, sizeof e2);
    }
    snprintf(local, ln, "%s", monopath);
    if (note) snprintf(note, nn, "downloaded%s", etag_sha ? " (sha256 verified by ETag)" : "");
    return 0;
}

// ------------------------------------------------------------------------------------------
// Conversion (any thread)

static int rm_tree_shallow(const char *dir) {
    char p[1600];
    static const char *const names[] = {"model.dck", "source.json"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    return rmdir(dir);
}

/* A model id is taken by <models>/<name>.dck, <models>/<name>/model.dck or a run directory
 * <models>/<name>/ckpt (the registry resolves them in that order). */
static bool model_taken(const char *models_dir, const char *name) {
    char p[1600];
    static const char *const fmts[] = {"%s/%s.dck", "%s/%s/model.dck", "%s/%s/ckpt"};
    for (int k = 0; k < 3; k++) {
        snprintf(p, sizeof p, fmts[k], models_dir, name);
        if (access(p, F_OK) == 0) return true;
    }
    return false;
}

int dg_model_import_file(const char *path, const char *models_dir, const char *name,
                         const char *source_json, char *err, size_t errlen) {
    if (!dg_model_name_ok(name))
        return fail(err, errlen, DG_EINVAL, "bad model name '%s'", name);
    char dir[1400], p[1600];
    snprintf(dir, sizeof dir, "%s/%s", models_dir, name);
    if (model_taken(models_dir, name))
        return fail(err, errlen, DG_EEXIST, "model '%s' already exists", name);
    dg_ckpt ck;
    int rc = dg_import_model(path, &ck, err, errlen);
    if (rc) return rc;
    bool made = false;
    if (access(dir, F_OK) != 0) {
        if (dg_mkdirs(dir)) {
            dg_ckpt_free(&ck);
            return fail(err, errlen, DG_EIO, "cannot create %s", dir);
        }
        made = true;
    }
    char e2[512];
    snprintf(p, sizeof p, "%s/source.json", dir);
    rc = dg_write_file_atomic(p, source_json, strlen(source_json), e2, sizeof e2);
    if (!rc) {
        snprintf(p, sizeof p, "%s/model.dck", dir);
        rc = dg_ckpt_write(p, &ck, e2, sizeof e2);
    }
    dg_ckpt_free(&ck);
    if (rc) {
        if (made) rm_tree_shallow(dir);
        return fail(err, errlen, rc, "writing model '%s': %s", name, e2);
    }
    return 0;
}

// ------------------------------------------------------------------------------------------
// The import table and the handlers (LOOP thread)

typedef struct imp {
    uv_work_t    req;
    char         id[DG_ID_LEN];
    char         name[72];
    char        *source;            /* url or path */
    bool         remote;
    char         status[16];        /* running succeeded failed */
    char         local[1800];
    char         note[256];
    int          rc;
    char         err[2048];
    double       created_at, finished_at;
    struct imp  *next;
} imp;

static struct {
    uv_loop_t         *loop;
    const dg_settings *s;
    char               models[1100], cache[1100];
    imp               *list;
    int                n_running;
    atomic_int         cancel;
} M;

int dg_models_import_init(uv_loop_t *loop, const dg_settings *s, char *err, size_t n) {
    memset(&M, 0, sizeof M);
    M.loop = loop;
    M.s = s;
    snprintf(M.models, sizeof M.models, "%s/models", s->data_dir);
    snprintf(M.cache, sizeof M.cache, "%s/cache/models", s->data_dir);
    if (dg_mkdirs(M.models) || dg_mkdirs(M.cache))
        return fail(err, n, DG_EIO, "cannot create %s or %s", M.models, M.cache);
    return 0;
}

bool dg_models_import_idle(void) { return M.n_running == 0; }

void dg_models_import_close(void) {
    atomic_store(&M.cancel, 1);
    for (imp **p = &M.list; *p;) {
        imp *i = *p;
        if (!strcmp(i->status, "running")) {
            uv_cancel((uv_req_t *)&i->req);     /* a running one is left to its thread */
            p = &i->next;
        } else {
            *p = i->next;
            dg_free(i->source);
            dg_free(i);
        }
    }
}

static json_t *imp_json(const imp *i) {
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:f}", "id", i->id, "object",
                          "model.import", "status", i->status, "name", i->name,
                          i->remote ? "url" : "path", i->source, "created_at", i->created_at);
    json_object_set_new(o, "finished_at", i->finished_at > 0 ? json_real(i->finished_at)
                                                             : json_null());
    if (!strcmp(i->status, "failed"))
        json_object_set_new(o, "error", json_pack("{s:s, s:s}", "code",
                                                  i->rc == DG_EEXIST ? "model_exists"
                                                                     : "import_failed",
                                                  "message", i->err));
    else json_object_set_new(o, "error", json_null());
    json_object_set_new(o, "model", !strcmp(i->status, "succeeded") ? json_string(i->name)
                                                                    : json_null());
    json_object_set_new(o, "note", i->note[0] ? json_string(i->note) : json_null());
    return o;
}

static void imp_work(uv_work_t *w) {
    imp *i = w->data;
    char path[1800];
    if (i->remote) {
        dg_fetch_opts o = {.timeout_s = M.s->download_timeout_s, .cancel = &M.cancel};
        i->rc = dg_bundle_fetch(i->source, M.cache, &o, path, sizeof path, i->note,
                                sizeof i->note, i->err, sizeof i->err);
        if (i->rc) return;
    } else {
        snprintf(path, sizeof path, "%s", i->source);
    }
    snprintf(i->local, sizeof i->local, "%s", path);
    char hex[65] = "", e2[256];
    uint64_t bytes = 0;
    if (dg_sha256_file(path, hex, &bytes, e2, sizeof e2)) hex[0] = 0;
    json_t *src = json_pack("{s:s, s:s, s:s, s:s, s:I, s:f}", "format", "dragond.model_source",
                            i->remote ? "url" : "path", i->source, "local", path,
                            "sha256", hex, "bytes", (json_int_t)bytes,
                            "imported_at", dg_wall_s());
    char *text = dg_json_text(src);
    json_decref(src);
    i->rc = dg_model_import_file(path, M.models, i->name, text, i->err, sizeof i->err);
    dg_free(text);
}

static void imp_done(uv_work_t *w, int status) {
    imp *i = w->data;
    M.n_running--;
    if (status == UV_ECANCELED) {
        i->rc = DG_ECANCELED;
        snprintf(i->err, sizeof i->err, "cancelled (the daemon is stopping)");
    }
    i->finished_at = dg_wall_s();
    snprintf(i->status, sizeof i->status, "%s", i->rc ? "failed" : "succeeded");
    if (i->rc) {
        DG_WARN("import %s (%s) failed: %s", i->id, i->source, i->err);
    } else {
        DG_INFO("import %s: model '%s' from %s%s%s", i->id, i->name, i->source,
                i->note[0] ? ": " : "", i->note);
        if (dg_infer_models_changed && !atomic_load(&M.cancel))   /* not while stopping */
            dg_infer_models_changed(i->name);
    }
}

/* A default name from the source: the file stem, or for a generic "model" stem the directory
 * above it (an export id for dragond's /v1/exports/<id>/files/model.bpk). */
static void default_name(const char *src, char *out, size_t n) {
    char s[2048];
    snprintf(s, sizeof s, "%s", src);
    s[strcspn(s, "?#")] = 0;
    char *segs[64];
    int ns = 0;
    for (char *save = NULL, *t = strtok_r(s, "/", &save); t && ns < 64;
         t = strtok_r(NULL, "/", &save))
        segs[ns++] = t;
    char stem[256] = "";
    if (ns > 0) {
        snprintf(stem, sizeof stem, "%s", segs[ns - 1]);
        static const char *const sufs[] = {".parts.json", ".bpk", ".safetensors"};
        for (int k = 0; k < 3; k++)
            if (ends_with(stem, sufs[k])) stem[strlen(stem) - strlen(sufs[k])] = 0;
        if (!strcmp(stem, "model")) {
            int at = ns - 2;
            if (at >= 0 && !strcmp(segs[at], "files")) at--;
            if (at >= 0 && dg_model_name_ok(segs[at])) snprintf(stem, sizeof stem, "%s",
                                                                segs[at]);
        }
    }
    if (!dg_model_name_ok(stem)) snprintf(stem, sizeof stem, "imported");
    snprintf(out, n, "%s", stem);
}

void dg_h_models_import(dg_req *r) {
    json_t *b = dg_req_json(r, false);
    if (!b) return;
    const char *key;
    json_t *v;
    json_object_foreach(b, key, v) {
        if (strcmp(key, "path") && strcmp(key, "url") && strcmp(key, "name")) {
            dg_reply_error(r, 400, "invalid_request", "unknown_field", key,
                           "unknown field '%s' (allowed: path, url, name)", key);
            json_decref(b);
            return;
        }
    }
    const char *path = json_string_value(json_object_get(b, "path"));
    const char *url = json_string_value(json_object_get(b, "url"));
    json_t *jn = json_object_get(b, "name");
    char name[72];
    if ((json_object_get(b, "path") && !path) || (json_object_get(b, "url") && !url) ||
        (jn && !json_is_string(jn))) {
        dg_reply_error(r, 400, "invalid_request", "invalid_type", NULL,
                       "path, url and name must be strings");
        goto out;
    }
    if ((!path) == (!url)) {
        dg_reply_error(r, 400, "invalid_request", "invalid_value", "url",
                       "give exactly one of path (a file on the daemon's machine) or url "
                       "(http or https)");
        goto out;
    }
    if (url && !is_url(url)) {
        dg_reply_error(r, 400, "invalid_request", "invalid_value", "url",
                       "url must start with http:// or https:// (got '%s')", url);
        goto out;
    }
    if (path && access(path, R_OK) != 0) {
        char man[1200];
        snprintf(man, sizeof man, "%s.parts.json", path);
        if (access(man, R_OK) != 0) {
            dg_reply_error(r, 404, "not_found", "file_not_found", "path",
                           "cannot read '%s' on the daemon's machine: %s", path,
                           strerror(errno));
            goto out;
        }
    }
    if (jn) {
        snprintf(name, sizeof name, "%s", json_string_value(jn));
        if (!dg_model_name_ok(json_string_value(jn))) {
            dg_reply_error(r, 400, "invalid_request", "invalid_value", "name",
                           "name must be 1..64 characters of A-Z a-z 0-9 . _ - (not starting "
                           "with . or -)");
            goto out;
        }
    } else {
        default_name(url ? url : path, name, sizeof name);
    }
    bool busy = false;
    for (imp *i = M.list; i; i = i->next)
        busy |= !strcmp(i->status, "running") && !strcmp(i->name, name);
    if (busy || model_taken(M.models, name)) {
        dg_reply_error(r, 409, "conflict", "model_exists", "name",
                       "model '%s' %s (HINT: pass another \"name\")", name,
                       busy ? "is being imported right now" : "already exists");
        goto out;
    }
    imp *i = dg_calloc(1, sizeof *i);
    dg_make_id("imp_", i->id);
    snprintf(i->name, sizeof i->name, "%s", name);
    i->source = dg_strdup(url ? url : path);
    i->remote = url != NULL;
    snprintf(i->status, sizeof i->status, "running");
    i->created_at = dg_wall_s();
    i->req.data = i;
    if (uv_queue_work(M.loop, &i->req, imp_work, imp_done)) {
        dg_free(i->source);
        dg_free(i);
        dg_reply_error(r, 500, "internal", "queue_failed", NULL, "cannot start the import");
        goto out;
    }
    M.n_running++;
    i->next = M.list;
    M.list = i;
    char loc[128];
    snprintf(loc, sizeof loc, "/v1/models/imports/%s", i->id);
    dg_reply_header(r, "Location", loc);
    dg_reply_json(r, 202, imp_json(i));
out:
    json_decref(b);
}

void dg_h_models_import_get(dg_req *r) {
    const char *id = dg_req_param(r, "id");
    for (imp *i = M.list; i; i = i->next)
        if (!strcmp(i->id, id)) {
            dg_reply_json(r, 200, imp_json(i));
            return;
        }
    dg_reply_error(r, 404, "not_found", "import_not_found", "id", "no import '%s'", id);
}
