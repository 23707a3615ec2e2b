/* The body of _gdkernel.c, included once per floating type (REAL, SFX, EXP, ...). */

/* z <- sigma(z) and dz <- sigma'(z) over a plane of m values: ncfkit.activations.Activation,
 * same branches and order of operations; the switch is outside the loops, which vectorise. */
static inline void SFX(activate)(int act, REAL p, REAL alpha, Py_ssize_t m, REAL *restrict z,
                                 REAL *restrict dz) {
    switch (act) {
    case ACT_SQUARE:
#pragma omp simd
        for (Py_ssize_t i = 0; i < m; i++) { REAL x = z[i]; dz[i] = 2 * x; z[i] = x * x; }
        return;
    case ACT_LINEAR:
        for (Py_ssize_t i = 0; i < m; i++) dz[i] = 1;
        return;
    case ACT_RELU:
#pragma omp simd
        for (Py_ssize_t i = 0; i < m; i++) {
            REAL x = z[i];
            dz[i] = x > 0 ? 1 : 0;
            z[i] = x > 0 ? x : (x == x ? 0 : x);  /* NaN stays NaN, as in torch.relu */
        }
        return;
    case ACT_TANH:
        for (Py_ssize_t i = 0; i < m; i++) { REAL t = TANH(z[i]); z[i] = t; dz[i] = 1 - t * t; }
        return;
    case ACT_GELU:
        for (Py_ssize_t i = 0; i < m; i++) {
            REAL x = z[i];
            REAL cdf = (REAL)0.5 * (1 + ERF(x / SQRT((REAL)2)));
            REAL pdf = EXP((REAL)-0.5 * x * x) / SQRT((REAL)(2 * 3.14159265358979323846));
            z[i] = x * cdf;
            dz[i] = cdf + x * pdf;
        }
        return;
    default:  /* max(x, alpha x)^p */
        for (Py_ssize_t i = 0; i < m; i++) {
            REAL x = z[i], ax = alpha * x;
            int up = x > ax;
            REAL base = up ? x : ax, slope = up ? 1 : alpha;
            if (p == 1) { z[i] = base; dz[i] = slope; }
            else { z[i] = POW(base, p); dz[i] = p * POW(base, p - 1) * slope; }
        }
    }
}

/* The loops that carry the arithmetic, over the n samples (contiguous). Four rows at a
 * time: one pass over y per four rows of x in axpy4, and four independent accumulators
 * sharing the loads of x in dot4, so neither store traffic nor the latency of one
 * reduction chain sets the pace. */
static inline void SFX(axpy4)(Py_ssize_t n, const REAL *a, const REAL *x, Py_ssize_t ldx,
                              Py_ssize_t rows, REAL *restrict y) {
    Py_ssize_t m = 0;
    for (; m + 4 <= rows; m += 4) {
        const REAL a0 = a[m], a1 = a[m + 1], a2 = a[m + 2], a3 = a[m + 3];
        const REAL *restrict x0 = x + m * ldx, *restrict x1 = x0 + ldx, *restrict x2 = x1 + ldx,
                   *restrict x3 = x2 + ldx;
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++) y[i] += a0 * x0[i] + a1 * x1[i] + a2 * x2[i] + a3 * x3[i];
    }
    for (; m < rows; m++) {
        const REAL a0 = a[m];
        const REAL *restrict x0 = x + m * ldx;
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++) y[i] += a0 * x0[i];
    }
}

/* out[m] = x . y_m for rows m of y (row stride ldy). */
static inline void SFX(dot4)(Py_ssize_t n, const REAL *restrict x, const REAL *y, Py_ssize_t ldy,
                             Py_ssize_t rows, REAL *out) {
    Py_ssize_t m = 0;
    for (; m + 4 <= rows; m += 4) {
        const REAL *restrict y0 = y + m * ldy, *restrict y1 = y0 + ldy, *restrict y2 = y1 + ldy,
                   *restrict y3 = y2 + ldy;
        REAL s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (Py_ssize_t i = 0; i < n; i++) {
            const REAL xi = x[i];
            s0 += xi * y0[i];
            s1 += xi * y1[i];
            s2 += xi * y2[i];
            s3 += xi * y3[i];
        }
        out[m] = s0; out[m + 1] = s1; out[m + 2] = s2; out[m + 3] = s3;
    }
    for (; m < rows; m++) {
        const REAL *restrict y0 = y + m * ldy;
        REAL s0 = 0;
#pragma omp simd reduction(+ : s0)
        for (Py_ssize_t i = 0; i < n; i++) s0 += x[i] * y0[i];
        out[m] = s0;
    }
}

/* L(w) and grad L(w) of one row; work holds the planes (see gd_block). */
static inline REAL SFX(value_and_grad)(const REAL *XT, const REAL *y, const REAL *w, REAL *g,
                                        const int64_t *widths, int nw, Py_ssize_t n, int arch,
                                        int act, REAL p, REAL alpha, int loss, REAL scale,
                                        REAL *work) {
    REAL *out = work, *r = work + n, *planes = work + 2 * n;
    if (arch == ARCH_DIAG) {
        Py_ssize_t d = widths[0];
        REAL D = (REAL)widths[1];
        for (Py_ssize_t i = 0; i < n; i++) out[i] = 0;
        for (Py_ssize_t c = 0; c < d; c++) {
            REAL a = POW(w[c], D);
            SFX(axpy4)(n, &a, XT + c * n, n, 1, out);
        }
    } else {
        int L = nw - 1;
        const REAL *hin = XT;
        Py_ssize_t kin = widths[0], off = 0;
        REAL *H = planes, *Dz = planes;
        Py_ssize_t hidden_size = 0;
        for (int l = 1; l < L; l++) hidden_size += widths[l] * n;
        Dz = planes + hidden_size;
        for (int l = 0; l + 1 < L; l++) {  /* hidden layer l+1 */
            Py_ssize_t kl = widths[l + 1];
            const REAL *W = w + off;
            for (Py_ssize_t j = 0; j < kl; j++) {
                REAL *zj = H + j * n;
                for (Py_ssize_t i = 0; i < n; i++) zj[i] = 0;
                SFX(axpy4)(n, W + j * kin, hin, n, kin, zj);
            }
            SFX(activate)(act, p, alpha, kl * n, H, Dz);
            off += kl * kin;
            hin = H;
            kin = kl;
            H += kl * n;
            Dz += kl * n;
        }
        const REAL *v = w + off;
        for (Py_ssize_t i = 0; i < n; i++) out[i] = 0;
        SFX(axpy4)(n, v, hin, n, kin, out);
    }
    /* the loss and r = dL/dout */
    REAL total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        REAL o = out[i], yi = y[i];
        if (loss == LOSS_SQUARE) {
            REAL e = o - yi;
            total += e * e;
            r[i] = 2 * e * scale;
        } else if (loss == LOSS_CORRELATION) {
            total += o * yi;
            r[i] = yi * scale;
        } else {
            REAL t = -o * yi;
            total += t > 20 ? t : LOG1P(EXP(t));
            r[i] = -yi / (1 + EXP(o * yi)) * scale;
        }
    }
    total *= scale;
    if (arch == ARCH_DIAG) {
        Py_ssize_t d = widths[0];
        REAL D = (REAL)widths[1];
        for (Py_ssize_t c = 0; c < d; c++) {
            REAL acc;
            SFX(dot4)(n, r, XT + c * n, n, 1, &acc);
            g[c] = D * POW(w[c], D - 1) * acc;
        }
        return total;
    }
    /* backward: back = d/d(pre-activation of layer l), a (k_l, n) plane */
    int L = nw - 1;
    Py_ssize_t hidden_size = 0, maxk = 1;
    for (int l = 1; l < L; l++) {
        hidden_size += widths[l] * n;
        if (widths[l] > maxk) maxk = widths[l];
    }
    REAL *Hs = planes, *Dzs = planes + hidden_size;
    REAL *back = planes + 2 * hidden_size, *back2 = back + maxk * n, *col = back2 + maxk * n;
    Py_ssize_t offs[64];
    Py_ssize_t hoff[64];
    {
        Py_ssize_t o = 0, h = 0;
        for (int l = 0; l < L; l++) {
            offs[l] = o;
            o += widths[l] * widths[l + 1];
            hoff[l] = h;  /* plane of hidden layer l+1 */
            if (l + 1 < L) h += widths[l + 1] * n;
        }
    }
    /* output layer: g_v[m] = sum_i r_i h[m, i]; back = v[m] r_i sigma'(z[m, i]) */
    {
        Py_ssize_t kin = widths[L - 1];
        const REAL *hin = L >= 2 ? Hs + hoff[L - 2] : XT;
        REAL *gv = g + offs[L - 1];
        const REAL *v = w + offs[L - 1];
        SFX(dot4)(n, r, hin, n, kin, gv);
        if (L >= 2) {
            const REAL *dz = Dzs + hoff[L - 2];
            for (Py_ssize_t m = 0; m < kin; m++) {
                REAL a = v[m];
                for (Py_ssize_t i = 0; i < n; i++) back[m * n + i] = (a * r[i]) * dz[m * n + i];
            }
        }
    }
    for (int l = L - 2; l >= 0; l--) {  /* W_{l+1}: (k_{l+1}, k_l) */
        Py_ssize_t kout = widths[l + 1], kin = widths[l];
        const REAL *hin = l >= 1 ? Hs + hoff[l - 1] : XT;
        const REAL *W = w + offs[l];
        REAL *gW = g + offs[l];
        for (Py_ssize_t j = 0; j < kout; j++) {
            const REAL *bj = back + j * n;
            SFX(dot4)(n, bj, hin, n, kin, gW + j * kin);
        }
        if (l >= 1) {
            const REAL *dz = Dzs + hoff[l - 1];
            for (Py_ssize_t m = 0; m < kin; m++) {
                REAL *bm = back2 + m * n;
                for (Py_ssize_t i = 0; i < n; i++) bm[i] = 0;
                for (Py_ssize_t j = 0; j < kout; j++) col[j] = W[j * kin + m];
                SFX(axpy4)(n, col, back, n, kout, bm);
                for (Py_ssize_t i = 0; i < n; i++) bm[i] *= dz[m * n + i];
            }
            REAL *t = back; back = back2; back2 = t;
        }
    }
    return total;
}

/* flatten: every helper is inlined into each target clone (AVX2/FMA and baseline). */
static NCF_CLONES NCF_FLATTEN int SFX(gd_block)(const void *XTv, const void *yv, void *wv, void *gv, void *lossesv,
                                    const int64_t *widths, int nw, Py_ssize_t n, Py_ssize_t B,
                                    Py_ssize_t K, double lr, int arch, int act, double p,
                                    double alpha, int loss, double scale) {
    const REAL *XT = XTv, *y = yv;
    REAL *w = wv, *g = gv, *losses = lossesv;
    Py_ssize_t k = 0, hidden_size = 0, maxk = 1;
    if (arch == ARCH_DIAG) {
        k = widths[0];
    } else {
        for (int l = 0; l + 1 < nw; l++) k += widths[l] * widths[l + 1];
        for (int l = 1; l + 1 < nw; l++) {
            hidden_size += widths[l] * n;
            if (widths[l] > maxk) maxk = widths[l];
        }
    }
    if (nw > 64) return 0;
    REAL *work = malloc(sizeof(REAL) * (size_t)(2 * n + 2 * hidden_size + 2 * maxk * n + maxk + 1));
    if (!work) return 0;
    const REAL step = (REAL)lr;
    for (Py_ssize_t b = 0; b < B; b++) {
        REAL *wb = w + b * k, *gb = g + b * k;
        for (Py_ssize_t s = 0;; s++) {
            losses[s * B + b] = SFX(value_and_grad)(XT, y, wb, gb, widths, nw, n, arch, act, (REAL)p,
                                                    (REAL)alpha, loss, (REAL)scale, work);
            if (s == K) break;
            for (Py_ssize_t i = 0; i < k; i++) wb[i] = wb[i] + (-step) * gb[i];
        }
    }
    free(work);
    return 1;
}
