/* engine/backend.c -- tensor view helpers and the asserting wrappers: the only code that calls
 * backend iface slots. Each wrapper checks the shapes it can (our invariants: DG_ASSERT) and
 * forwards. Thread affinity: the thread that owns the backend. */
#include "backend.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

// ------------------------------------------------------------------------------------------
// views

size_t dg_dtype_size(dg_dtype t) {
    switch (t) {
    case DG_DTYPE_F32: case DG_DTYPE_I32: return 4;
    case DG_DTYPE_BF16: case DG_DTYPE_F16: return 2;
    }
    DG_ASSERT(0 && "bad dtype");
    return 0;
}

static dg_tensor mk(dg_buf_t *b, size_t offs, int64_t n0, int64_t n1, int64_t n2, int64_t n3,
                    dg_dtype ty) {
    dg_tensor t = {b, offs, {n0, n1, n2, n3}, ty};
    if (b) DG_ASSERT(offs + dg_nbytes(t) <= b->nbytes);
    return t;
}

dg_tensor dg_t1(dg_buf_t *b, size_t o, int64_t n0) { return mk(b, o, n0, 1, 1, 1, DG_DTYPE_F32); }
dg_tensor dg_t2(dg_buf_t *b, size_t o, int64_t r, int64_t c) { return mk(b, o, c, r, 1, 1, DG_DTYPE_F32); }
dg_tensor dg_t3(dg_buf_t *b, size_t o, int64_t d2, int64_t d1, int64_t d0) {
    return mk(b, o, d0, d1, d2, 1, DG_DTYPE_F32);
}
dg_tensor dg_t4(dg_buf_t *b, size_t o, int64_t d3, int64_t d2, int64_t d1, int64_t d0) {
    return mk(b, o, d0, d1, d2, d3, DG_DTYPE_F32);
}
dg_tensor dg_t_i32(dg_buf_t *b, size_t o, int64_t n) { return mk(b, o, n, 1, 1, 1, DG_DTYPE_I32); }
dg_tensor dg_t_null(void) { dg_tensor t = {0}; return t; }

int64_t dg_nelem(dg_tensor t) { return t.ne[0] * t.ne[1] * t.ne[2] * t.ne[3]; }
size_t  dg_nbytes(dg_tensor t) { return (size_t)dg_nelem(t) * dg_dtype_size(t.type); }

dg_mat dg_m(dg_tensor t, int64_t rows, int64_t cols, int64_t ld) {
    dg_mat m = {t.buf, t.offs, rows, cols, ld, 0, false};
    return m;
}
dg_mat dg_m_t(dg_mat m) { m.trans = !m.trans; return m; }

// ------------------------------------------------------------------------------------------
// lifecycle

static const char *const REQUIRED[] = {
    "init", "free", "buf_alloc", "buf_free", "set", "get", "copy", "fill", "gemm", "axpy",
    "scale", "sumsq", "embed_fwd", "embed_bwd", "layernorm_fwd", "layernorm_bwd", "relu_fwd",
    "relu_bwd", "pos_fwd", "pos_bwd", "attn_fwd", "attn_bwd", "gate_fwd", "gate_bwd", "add",
    "xent", "adamw", "attn_step",
};

static const void *slot(const dg_backend_iface *i, const char *name) {
#define S(n) if (!strcmp(name, #n)) return (const void *)i->n;
    S(init) S(free) S(buf_alloc) S(buf_free) S(set) S(get) S(copy) S(fill) S(gemm) S(axpy)
    S(scale) S(sumsq) S(embed_fwd) S(embed_bwd) S(layernorm_fwd) S(layernorm_bwd) S(relu_fwd)
    S(relu_bwd) S(pos_fwd) S(pos_bwd) S(attn_fwd) S(attn_bwd) S(gate_fwd) S(gate_bwd) S(add)
    S(xent) S(adamw) S(attn_step)
#undef S
    return NULL;
}

int dg_backend_open(const char *name, const dg_backend_params *p, dg_backend_t **out) {
    const dg_backend_iface *iface = dg_backend_find(name ? name : "cpu");
    if (!iface) {
        DG_ERROR("backend '%s' is not available (compiled in: %s)", name, dg_backend_list());
        return DG_ENOTFOUND;
    }
    if (iface->version != DG_BACKEND_IFACE_VERSION) {
        DG_ERROR("backend '%s' has iface version %d, engine wants %d", iface->name,
                 iface->version, DG_BACKEND_IFACE_VERSION);
        return DG_EVERSION;
    }
    for (size_t k = 0; k < sizeof REQUIRED / sizeof *REQUIRED; k++) {
        if (!slot(iface, REQUIRED[k])) {
            DG_ERROR("backend '%s' does not implement op '%s'", iface->name, REQUIRED[k]);
            return DG_ENOTSUP;
        }
    }
    dg_backend_t *be = dg_calloc(1, sizeof *be);
    be->iface = iface;
    dg_backend_params defp = {0};
    int rc = iface->init(be, p ? p : &defp);
    if (rc) {
        DG_ERROR("backend '%s' failed to start: %s%s%s", iface->name, dg_strerror(rc),
                 be->errmsg[0] ? ": " : "", be->errmsg);
        dg_free(be);
        return rc;
    }
    *out = be;
    return 0;
}

void dg_backend_close(dg_backend_t *be) {
    if (!be) return;
    be->iface->free(be);
    dg_free(be);
}

const char *dg_backend_name(const dg_backend_t *be) { return be->iface->name; }

bool dg_backend_is_host(const dg_backend_t *be) {
    return !strcmp(be->iface->name, "ref") || !strcmp(be->iface->name, "cpu");
}

// ------------------------------------------------------------------------------------------
// wrappers

#define BE_OK(be) DG_ASSERT((be) && (be)->iface)
#define F32(t)    DG_ASSERT((t).buf && (t).type == DG_DTYPE_F32)
#define SAME(a, b) DG_ASSERT(dg_nelem(a) == dg_nelem(b))

int dg_buf_alloc(dg_backend_t *be, size_t nbytes, dg_buf_t **out) {
    BE_OK(be);
    return be->iface->buf_alloc(be, nbytes ? nbytes : 4, out);
}
void dg_buf_free(dg_backend_t *be, dg_buf_t *buf) { if (buf) be->iface->buf_free(be, buf); }
int dg_set(dg_backend_t *be, dg_tensor dst, const void *host) { BE_OK(be); DG_ASSERT(dst.buf); return be->iface->set(be, dst, host); }
int dg_get(dg_backend_t *be, void *host, dg_tensor src) { BE_OK(be); DG_ASSERT(src.buf); return be->iface->get(be, host, src); }
int dg_copy(dg_backend_t *be, dg_tensor dst, dg_tensor src) {
    BE_OK(be); DG_ASSERT(dg_nbytes(dst) == dg_nbytes(src));
    return be->iface->copy(be, dst, src);
}
int dg_fill(dg_backend_t *be, dg_tensor t, float v) { BE_OK(be); F32(t); return be->iface->fill(be, t, v); }
int dg_sync(dg_backend_t *be) { BE_OK(be); return be->iface->sync ? be->iface->sync(be) : 0; }

static void mat_check(dg_mat m, int64_t r, int64_t c, int64_t batch) {
    /* r x c is the operand as the GEMM uses it; the stored matrix is transposed if trans. */
    int64_t sr = m.trans ? c : r, sc = m.trans ? r : c;
    DG_ASSERT(m.buf && m.rows == sr && m.cols == sc && m.ld >= sc);
    size_t last = (size_t)((batch - 1) * m.bstride + (sr - 1) * m.ld + sc) * 4;
    DG_ASSERT(m.offs + last <= m.buf->nbytes);
}

int dg_gemm(dg_backend_t *be, const dg_gemm_desc *d) {
    BE_OK(be);
    DG_ASSERT(d->M > 0 && d->N > 0 && d->K > 0 && d->batch >= 1);
    mat_check(d->A, d->M, d->K, d->batch);
    mat_check(d->B, d->K, d->N, d->batch);
    DG_ASSERT(!d->C.trans);
    mat_check(d->C, d->M, d->N, d->batch);
    return be->iface->gemm(be, d);
}
int dg_axpy(dg_backend_t *be, dg_tensor y, float a, dg_tensor x) { BE_OK(be); F32(y); F32(x); SAME(x, y); return be->iface->axpy(be, y, a, x); }
int dg_scale(dg_backend_t *be, dg_tensor x, float a) { BE_OK(be); F32(x); return be->iface->scale(be, x, a); }
int dg_sumsq(dg_backend_t *be, double *out, dg_tensor x) { BE_OK(be); F32(x); return be->iface->sumsq(be, out, x); }

int dg_embed_fwd(dg_backend_t *be, dg_tensor out, dg_tensor tok, dg_tensor wte) {
    BE_OK(be); F32(out); F32(wte); DG_ASSERT(tok.type == DG_DTYPE_I32);
    DG_ASSERT(out.ne[0] == wte.ne[0] && dg_nelem(out) == dg_nelem(tok) * wte.ne[0]);
    return be->iface->embed_fwd(be, out, tok, wte);
}
int dg_embed_bwd(dg_backend_t *be, dg_tensor dwte, dg_tensor dout, dg_tensor tok) {
    BE_OK(be); F32(dwte); F32(dout); DG_ASSERT(tok.type == DG_DTYPE_I32);
    DG_ASSERT(dout.ne[0] == dwte.ne[0] && dg_nelem(dout) == dg_nelem(tok) * dwte.ne[0]);
    return be->iface->embed_bwd(be, dwte, dout, tok);
}

int dg_layernorm_fwd(dg_backend_t *be, dg_tensor out, dg_tensor mean, dg_tensor rstd,
                     dg_tensor inp, dg_tensor gamma, dg_tensor beta, float eps) {
    BE_OK(be); F32(out); F32(inp); F32(mean); F32(rstd); SAME(out, inp);
    int64_t D = inp.ne[0], R = dg_nelem(inp) / D;
    DG_ASSERT(dg_nelem(mean) == R && dg_nelem(rstd) == R);
    DG_ASSERT(dg_t_present(gamma) == dg_t_present(beta));
    if (dg_t_present(gamma)) DG_ASSERT(dg_nelem(gamma) == D && dg_nelem(beta) == D);
    return be->iface->layernorm_fwd(be, out, mean, rstd, inp, gamma, beta, eps);
}
int dg_layernorm_bwd(dg_backend_t *be, dg_tensor dinp, dg_tensor dgamma, dg_tensor dbeta,
                     dg_tensor dout, dg_tensor inp, dg_tensor mean, dg_tensor rstd,
                     dg_tensor gamma) {
    BE_OK(be); F32(dinp); F32(dout); F32(inp); SAME(dinp, inp); SAME(dout, inp);
    DG_ASSERT(dg_t_present(gamma) == dg_t_present(dgamma));
    DG_ASSERT(dg_t_present(dgamma) == dg_t_present(dbeta));
    return be->iface->layernorm_bwd(be, dinp, dgamma, dbeta, dout, inp, mean, rstd, gamma);
}

int dg_relu_fwd(dg_backend_t *be, dg_tensor out, dg_tensor inp, float thr) {
    BE_OK(be); F32(out); F32(inp); SAME(out, inp); return be->iface->relu_fwd(be, out, inp, thr);
}
int dg_relu_bwd(dg_backend_t *be, dg_tensor dinp, dg_tensor dout, dg_tensor out) {
    BE_OK(be); F32(dinp); F32(dout); F32(out); SAME(dinp, out); SAME(dout, out);
    return be->iface->relu_bwd(be, dinp, dout, out);
}

static void pos_check(dg_tensor out, dg_tensor inp, dg_pos_mode mode) {
    F32(out); F32(inp);
    DG_ASSERT(mode == DG_POS_ROPE || mode == DG_POS_POPE);
    DG_ASSERT(out.ne[0] == (mode == DG_POS_POPE ? 2 : 1) * inp.ne[0]);
    DG_ASSERT(out.ne[1] == inp.ne[1] && out.ne[2] == inp.ne[2] && out.ne[3] == inp.ne[3]);
    if (mode == DG_POS_ROPE) DG_ASSERT(inp.ne[0] % 2 == 0);
}
int dg_pos_fwd(dg_backend_t *be, dg_tensor out, dg_tensor inp, const int64_t *pos0,
               dg_pos_mode mode, float theta) {
    BE_OK(be); pos_check(out, inp, mode); DG_ASSERT(pos0);
    return be->iface->pos_fwd(be, out, inp, pos0, mode, theta);
}
int dg_pos_bwd(dg_backend_t *be, dg_tensor dinp, dg_tensor dout, dg_tensor inp,
               const int64_t *pos0, dg_pos_mode mode, float theta) {
    BE_OK(be); pos_check(dout, inp, mode); F32(dinp); SAME(dinp, inp); DG_ASSERT(pos0);
    return be->iface->pos_bwd(be, dinp, dout, inp, pos0, mode, theta);
}

/* q (B, T, H, Nq), v (B, T, D), out (B, T, H, D), rho (B, H, Nq, D) */
static void attn_check(dg_tensor out, dg_tensor q, dg_tensor v, dg_tensor rho_a, dg_tensor rho_b) {
    F32(out); F32(q); F32(v);
    int64_t Nq = q.ne[0], H = q.ne[1], T = q.ne[2], B = q.ne[3], D = v.ne[0];
    DG_ASSERT(v.ne[1] == T && v.ne[2] == B && v.ne[3] == 1);
    DG_ASSERT(out.ne[0] == D && out.ne[1] == H && out.ne[2] == T && out.ne[3] == B);
    dg_tensor rs[2] = {rho_a, rho_b};
    for (int i = 0; i < 2; i++) {
        if (!dg_t_present(rs[i])) continue;
        F32(rs[i]);
        DG_ASSERT(rs[i].ne[0] == D && rs[i].ne[1] == Nq && rs[i].ne[2] == H && rs[i].ne[3] == B);
    }
}
int dg_attn_fwd(dg_backend_t *be, dg_tensor out, dg_tensor rho_out, dg_tensor q, dg_tensor v,
                dg_tensor rho_in, const float *gamma) {
    BE_OK(be); attn_check(out, q, v, rho_in, rho_out); DG_ASSERT(gamma);
    if (dg_t_present(rho_out) && dg_t_present(rho_in))
        DG_ASSERT(rho_out.buf != rho_in.buf || rho_out.offs != rho_in.offs);
    return be->iface->attn_fwd(be, out, rho_out, q, v, rho_in, gamma);
}
int dg_attn_bwd(dg_backend_t *be, dg_tensor dq, dg_tensor dv, dg_tensor drho_in, dg_tensor dout,
                dg_tensor drho_out, dg_tensor q, dg_tensor v, dg_tensor rho_in,
                const float *gamma) {
    BE_OK(be); attn_check(dout, q, v, rho_in, drho_out); DG_ASSERT(gamma);
    F32(dq); F32(dv); SAME(dq, q); SAME(dv, v);
    if (dg_t_present(drho_in)) { DG_ASSERT(dg_t_present(rho_in)); SAME(drho_in, rho_in); }
    return be->iface->attn_bwd(be, dq, dv, drho_in, dout, drho_out, q, v, rho_in, gamma);
}

int dg_gate_fwd(dg_backend_t *be, dg_tensor z, dg_tensor x, dg_tensor y, float p, uint64_t seed) {
    BE_OK(be); F32(z); F32(x); F32(y); SAME(z, x); SAME(z, y); DG_ASSERT(p >= 0 && p < 1);
    return be->iface->gate_fwd(be, z, x, y, p, seed);
}
int dg_gate_bwd(dg_backend_t *be, dg_tensor dx, dg_tensor dy, dg_tensor dz, dg_tensor x,
                dg_tensor y, float p, uint64_t seed) {
    BE_OK(be); F32(dx); F32(dy); F32(dz); SAME(dz, x); SAME(dx, x); SAME(dy, y);
    DG_ASSERT(p >= 0 && p < 1);
    return be->iface->gate_bwd(be, dx, dy, dz, x, y, p, seed);
}
int dg_add(dg_backend_t *be, dg_tensor out, dg_tensor a, dg_tensor b) {
    BE_OK(be); F32(out); F32(a); F32(b); SAME(out, a); SAME(out, b);
    return be->iface->add(be, out, a, b);
}
int dg_xent(dg_backend_t *be, dg_tensor loss, dg_tensor dlogits, dg_tensor logits, dg_tensor tgt,
            float dscale) {
    BE_OK(be); F32(loss); F32(logits); DG_ASSERT(tgt.type == DG_DTYPE_I32);
    int64_t V = logits.ne[0], R = dg_nelem(logits) / V;
    DG_ASSERT(dg_nelem(loss) == R && dg_nelem(tgt) == R);
    if (dg_t_present(dlogits)) { F32(dlogits); SAME(dlogits, logits); }
    return be->iface->xent(be, loss, dlogits, logits, tgt, dscale);
}
int dg_adamw(dg_backend_t *be, dg_tensor p, dg_tensor g, dg_tensor m, dg_tensor v,
             const dg_adamw_hp *hp) {
    BE_OK(be); F32(p); F32(g); F32(m); F32(v); SAME(p, g); SAME(p, m); SAME(p, v);
    DG_ASSERT(hp && hp->step >= 1);
    return be->iface->adamw(be, p, g, m, v, hp);
}
int dg_attn_step(dg_backend_t *be, int B, const dg_tensor *rho, dg_tensor out, dg_tensor q,
                 dg_tensor v, const float *gamma) {
    BE_OK(be); F32(out); F32(q); F32(v); DG_ASSERT(B >= 1 && rho && gamma);
    int64_t Nq = q.ne[0], H = q.ne[1], D = v.ne[0];
    DG_ASSERT(dg_nelem(q) == B * H * Nq && dg_nelem(v) == B * D && dg_nelem(out) == B * H * D);
    for (int b = 0; b < B; b++) { F32(rho[b]); DG_ASSERT(dg_nelem(rho[b]) == H * Nq * D); }
    return be->iface->attn_step(be, B, rho, out, q, v, gamma);
}

bool dg_has_graphs(const dg_backend_t *be) {
    const dg_backend_iface *i = be->iface;
    return i->graph_begin && i->graph_end && i->graph_launch && i->graph_free && i->pos_fwd_dev;
}
int dg_pos_fwd_dev(dg_backend_t *be, dg_tensor out, dg_tensor inp, dg_tensor pos,
                   dg_pos_mode mode, float theta) {
    BE_OK(be); pos_check(out, inp, mode); DG_ASSERT(be->iface->pos_fwd_dev);
    DG_ASSERT(pos.type == DG_DTYPE_I32 && dg_nelem(pos) == inp.ne[3]);
    return be->iface->pos_fwd_dev(be, out, inp, pos, mode, theta);
}
int dg_graph_begin(dg_backend_t *be) { BE_OK(be); DG_ASSERT(be->iface->graph_begin); return be->iface->graph_begin(be); }
int dg_graph_end(dg_backend_t *be, void **graph) {
    BE_OK(be); DG_ASSERT(be->iface->graph_end && graph);
    *graph = NULL;
    return be->iface->graph_end(be, graph);
}
int dg_graph_launch(dg_backend_t *be, void *graph) {
    BE_OK(be); DG_ASSERT(be->iface->graph_launch && graph);
    return be->iface->graph_launch(be, graph);
}
void dg_graph_free(dg_backend_t *be, void *graph) {
    if (graph && be->iface->graph_free) be->iface->graph_free(be, graph);
}

bool dg_has_gate_proj(const dg_backend_t *be) { return be->iface->gate_proj != NULL; }

int dg_gate_proj(dg_backend_t *be, dg_tensor z, dg_tensor x, dg_tensor a, dg_tensor wt, float thr) {
    BE_OK(be); F32(z); F32(x); F32(a); F32(wt); DG_ASSERT(be->iface->gate_proj);
    int64_t D = wt.ne[0], N = wt.ne[1], H = wt.ne[2], HN = H * N;
    DG_ASSERT(wt.ne[3] == 1 && HN > 0 && D > 0);
    int64_t R = dg_nelem(x) / HN;
    DG_ASSERT(R >= 1 && dg_nelem(x) == R * HN && dg_nelem(z) == R * HN && dg_nelem(a) == R * H * D);
    return be->iface->gate_proj(be, z, x, a, wt, thr);
}

bool dg_has_attn_step_lazy(const dg_backend_t *be) { return be->iface->attn_step_lazy != NULL; }

int dg_attn_step_lazy(dg_backend_t *be, int B, const dg_tensor *rho, float *scale, dg_tensor out,
                      dg_tensor q, dg_tensor v, const float *gamma) {
    BE_OK(be); F32(out); F32(q); F32(v); DG_ASSERT(B >= 1 && rho && gamma && scale);
    DG_ASSERT(be->iface->attn_step_lazy);
    int64_t Nq = q.ne[0], H = q.ne[1], D = v.ne[0];
    DG_ASSERT(dg_nelem(q) == B * H * Nq && dg_nelem(v) == B * D && dg_nelem(out) == B * H * D);
    for (int b = 0; b < B; b++) { F32(rho[b]); DG_ASSERT(dg_nelem(rho[b]) == H * Nq * D); }
    return be->iface->attn_step_lazy(be, B, rho, scale, out, q, v, gamma);
}

int dg_backend_devices(const char *name, dg_device_info *out, int max) {
    const dg_backend_iface *iface = dg_backend_find(name);
    if (!iface) return DG_ENOTFOUND;
    if (iface->devices) return iface->devices(out, max);
    if (max >= 1) {   /* the host: one device, the machine's memory */
        memset(out, 0, sizeof *out);
        snprintf(out->name, sizeof out->name, "cpu (%ld cores)", sysconf(_SC_NPROCESSORS_ONLN));
        long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        out->mem_total = (uint64_t)pages * (uint64_t)psz;
        out->mem_used = (uint64_t)(pages - avail) * (uint64_t)psz;
        out->util_pct = -1;
    }
    return 1;
}
