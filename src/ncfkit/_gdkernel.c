/* Compiled gradient-descent blocks for the CPU: the fast path of ncfkit.dynamics' GD.
 *
 * One call advances B rows of flat weights w (B, k) by K steps of w <- w - lr * grad L(w)
 * (K = 0: just L and grad L, the fast gradient of ncfkit.fastgd.value_and_grad_fn),
 * for the feed-forward nets of ncfkit.models.MLP (no biases, sigma = max(x, a x)^p, tanh,
 * gelu) and Example 1's diagonal model, with the square or logistic loss. The maths is
 * the closed-form forward/backward pass of models.MLP.forward_and_vjp, written as loops:
 * activations are kept as (k_l, n) planes so every inner loop runs over the n samples
 * (contiguous, vectorised by the compiler), and no memory is allocated per step.
 *
 * Python signature (buffers: anything with the buffer protocol, C-contiguous; the
 * wrapper in ncfkit/fastgd.py checks shapes and dtypes):
 *
 *   gd_block(XT, y, w, g, losses, widths, B, K, lr, arch, act, p, alpha, loss, scale)
 *
 *   XT      (d, n)   inputs, transposed            read
 *   y       (n,)     labels                        read
 *   w       (B, k)   weights, advanced K steps     read/write
 *   g       (B, k)   out: grad L at the final w    write
 *   losses  (K+1, B) out: L at every iterate       write (row 0: the starting w)
 *   widths  (L+1,)   int64 k_0 = d, k_1, ..., k_L = 1   (arch 1: (d, D))
 *   arch    0: mlp, 1: diag (H = sum_c w_c^D x_c)
 *   act     0 square, 1 linear, 2 relu, 3 max(x, alpha x)^p, 4 tanh, 5 gelu
 *   loss    0 square (p - y)^2, 1 logistic log(1 + exp(-p y)), 2 correlation p y (then
 *           "L" is the NCF y^T H(X; w) of eq. 3, with y = ytilde); times `scale` (1 or 1/n)
 *
 * Every kernel is compiled twice (double, float) from the one body below.
 * Returns the number of steps taken (K); rows whose loss turned non-finite keep going,
 * as plain GD does: the caller reads the losses and decides.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
/* One build runs fast on any x86-64: an AVX2/FMA clone picked at load time, else baseline. */
#define NCF_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define NCF_CLONES
#endif
#if defined(__GNUC__)
#define NCF_FLATTEN __attribute__((flatten))
#else
#define NCF_FLATTEN
#endif

enum { ACT_SQUARE, ACT_LINEAR, ACT_RELU, ACT_POWER, ACT_TANH, ACT_GELU };
enum { LOSS_SQUARE, LOSS_LOGISTIC, LOSS_CORRELATION };
enum { ARCH_MLP, ARCH_DIAG };

#define REAL double
#define SFX(name) name##_f64
#define EXP exp
#define LOG1P log1p
#define POW pow
#define TANH tanh
#define ERF erf
#define SQRT sqrt
#include "_gdkernel_body.h"
#undef REAL
#undef SFX
#undef EXP
#undef LOG1P
#undef POW
#undef TANH
#undef ERF
#undef SQRT

#define REAL float
#define SFX(name) name##_f32
#define EXP expf
#define LOG1P log1pf
#define POW powf
#define TANH tanhf
#define ERF erff
#define SQRT sqrtf
#include "_gdkernel_body.h"

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        PyErr_Format(PyExc_ValueError, "gd_block: %s must be a C-contiguous%s buffer", name,
                     writable ? " writable" : "");
        return -1;
    }
    return 0;
}

static PyObject *py_gd_block(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *oXT, *oy, *ow, *og, *olosses, *owidths;
    Py_ssize_t B, K;
    double lr, p, alpha, scale;
    int arch, act, loss;
    if (!PyArg_ParseTuple(args, "OOOOOOnndiiddid", &oXT, &oy, &ow, &og, &olosses, &owidths, &B, &K,
                          &lr, &arch, &act, &p, &alpha, &loss, &scale))
        return NULL;
    Py_buffer bufs[6];
    PyObject *objs[6] = {oXT, oy, ow, og, olosses, owidths};
    const char *names[6] = {"XT", "y", "w", "g", "losses", "widths"};
    const int writable[6] = {0, 0, 1, 1, 1, 0};
    int got = 0;
    PyObject *result = NULL;
    for (; got < 6; got++)
        if (get_buffer(objs[got], &bufs[got], writable[got], names[got]) < 0) goto done;
    const char *wfmt = bufs[5].format ? bufs[5].format : "B";
    if (bufs[5].itemsize != 8 || !(strcmp(wfmt, "q") == 0 || strcmp(wfmt, "l") == 0 ||
                                   strcmp(wfmt, "<q") == 0 || strcmp(wfmt, "=q") == 0)) {
        PyErr_SetString(PyExc_ValueError, "gd_block: widths must be int64");
        goto done;
    }
    const int64_t *widths = (const int64_t *)bufs[5].buf;
    Py_ssize_t nw = bufs[5].len / 8;
    Py_ssize_t item = bufs[2].itemsize;
    const char *want = item == 8 ? "d" : "f";
    for (int i = 0; i < 5; i++) {
        const char *f = bufs[i].format ? bufs[i].format : "B";
        if (*f == '<' || *f == '=' || *f == '@') f++;
        if (bufs[i].itemsize != item || (item != 8 && item != 4) || strcmp(f, want) != 0) {
            PyErr_SetString(PyExc_ValueError,
                            "gd_block: XT, y, w, g, losses must share one float dtype (float32 or float64)");
            goto done;
        }
    }
    if (arch != ARCH_MLP && arch != ARCH_DIAG) {
        PyErr_SetString(PyExc_ValueError, "gd_block: arch must be 0 (mlp) or 1 (diag)");
        goto done;
    }
    if (act < ACT_SQUARE || act > ACT_GELU || loss < LOSS_SQUARE || loss > LOSS_CORRELATION) {
        PyErr_SetString(PyExc_ValueError, "gd_block: unknown activation or loss code");
        goto done;
    }
    if (nw < 2 || B < 1 || K < 0 || (arch == ARCH_DIAG && nw != 2)) {
        PyErr_SetString(PyExc_ValueError, "gd_block: bad sizes");
        goto done;
    }
    if (nw > 64) {
        PyErr_SetString(PyExc_ValueError, "gd_block: at most 63 layers");
        goto done;
    }
    for (Py_ssize_t l = 0; l < nw; l++)
        if (widths[l] < 1 || widths[l] > ((int64_t)1 << 31)) {
            PyErr_SetString(PyExc_ValueError, "gd_block: every width must be a positive int");
            goto done;
        }
    Py_ssize_t n = bufs[1].len / item, k = 0, d = widths[0];
    if (arch == ARCH_MLP) {
        for (Py_ssize_t l = 0; l + 1 < nw; l++) k += widths[l] * widths[l + 1];
        if (widths[nw - 1] != 1) {
            PyErr_SetString(PyExc_ValueError, "gd_block: the last width must be 1");
            goto done;
        }
    } else {
        k = d;
    }
    if (bufs[0].len != d * n * item || bufs[2].len != B * k * item || bufs[3].len != B * k * item ||
        bufs[4].len != (K + 1) * B * item) {
        PyErr_SetString(PyExc_ValueError, "gd_block: buffer sizes do not match the shapes");
        goto done;
    }
    int ok;
    Py_BEGIN_ALLOW_THREADS
    if (item == 8)
        ok = gd_block_f64(bufs[0].buf, bufs[1].buf, bufs[2].buf, bufs[3].buf, bufs[4].buf, widths, (int)nw,
                          n, B, K, lr, arch, act, p, alpha, loss, scale);
    else
        ok = gd_block_f32(bufs[0].buf, bufs[1].buf, bufs[2].buf, bufs[3].buf, bufs[4].buf, widths, (int)nw,
                          n, B, K, lr, arch, act, p, alpha, loss, scale);
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyLong_FromSsize_t(K);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&bufs[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"gd_block", py_gd_block, METH_VARARGS, "Advance B rows of weights by K GD steps (see the C source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gdkernel",
                                    "Compiled GD blocks (ncfkit.fastgd is the interface).", -1, methods};

PyMODINIT_FUNC PyInit__gdkernel(void) { return PyModule_Create(&module); }
