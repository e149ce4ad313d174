/* Fused per-row work after one score GEMM on the host (`host_kernels.py` loads this with ctypes).
 *
 * kp_label_block: two passes over each row of a (b, k) float32 score block, while the row is in
 * cache, do what NumPy does in four passes over the block (argmin, the gather of the smallest score,
 * the near-tie comparison and its count): the label (lowest index of the smallest score, as NumPy's
 * argmin), that score, and whether another score lies within the row's near-tie limit (`ties.py`).
 * Results equal NumPy's bit for bit for finite scores (the reader rejects non-finite rows): minima
 * and comparisons are exact in any order. kp_segment_sum: per-label row sums (`host_sums.py`).
 * Plain C without the Python API: built as an optional extension, the NumPy path runs without it.
 */
#include <stdint.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define KP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KP_CLONES
#endif

#define LANES 16
typedef float vfloat __attribute__((vector_size(LANES * 4)));
typedef int32_t vint __attribute__((vector_size(LANES * 4)));

/* Smallest of row[0..k) (k >= 1), LANES at a time with GCC/Clang vector extensions (a compare and
 * a blend per vector, whatever width the target has; a plain loop is not vectorised without
 * fast-math, which this file does not use). Either zero may stand for a minimum of -0.0 and 0.0. */
static inline float row_min(const float *row, int64_t k)
{
    float m = row[0];
    int64_t j = 0;
    if (k >= 2 * LANES) {
        vfloat acc;
        __builtin_memcpy(&acc, row, sizeof acc);
        for (j = LANES; j + LANES <= k; j += LANES) {
            vfloat v;
            __builtin_memcpy(&v, row + j, sizeof v);
            vint less = v < acc;
            acc = (vfloat)(((vint)v & less) | ((vint)acc & ~less));
        }
        for (int l = 0; l < LANES; l++) m = acc[l] < m ? acc[l] : m;
    }
    for (; j < k; j++) m = row[j] < m ? row[j] : m;
    return m;
}

/* The lowest j with row[j] == m (k if none); vectorised as a minimum of indices. */
static inline int32_t first_at(const float *row, int32_t k, float m)
{
    int32_t arg = k;
    for (int32_t j = 0; j < k; j++) {
        int32_t at = row[j] == m ? j : k;
        arg = at < arg ? at : arg;
    }
    return arg;
}

/* `first_at`, and in the same pass how many of row[0..k) are <= limit (into *within). */
static inline int32_t first_at_and_count(const float *row, int32_t k, float m, float limit, int32_t *within)
{
    int32_t arg = k, count = 0;
    for (int32_t j = 0; j < k; j++) {
        int32_t at = row[j] == m ? j : k;
        arg = at < arg ? at : arg;
        count += row[j] <= limit;
    }
    *within = count;
    return arg;
}

/* nextafterf(f, +inf) for finite f, inline (the libm call cost more than the row's comparisons). */
static inline float next_up(float f)
{
    uint32_t bits;
    if (f == 0.0f) return 1.40129846e-45f; /* the smallest subnormal, from either zero */
    __builtin_memcpy(&bits, &f, sizeof bits);
    bits = f > 0.0f ? bits + 1 : bits - 1;
    __builtin_memcpy(&f, &bits, sizeof f);
    return f;
}

/* For each row i of scores (b, k), C order, k < 2^31: labels[i] = the lowest index of the smallest
 * score, first[i] = that score; with slack (b,) given, tie[i] = 1 when another score is <= the limit
 * nextafterf((float)((double)first[i] + slack[i]), +inf), else 0 (tie may be NULL without slack).
 * Returns the number of rows with a near tie (0 without slack). */
KP_CLONES int64_t kp_label_block(const float *scores, int64_t b, int64_t k, const double *slack,
                                 int32_t *labels, float *first, uint8_t *tie)
{
    int64_t ties = 0;
    for (int64_t i = 0; i < b; i++) {
        const float *row = scores + i * k;
        float m = row_min(row, k);
        int32_t arg;
        if (slack != 0) {
            int32_t within;
            /* m may be the other zero than row[arg]: both give the same float64 sum */
            arg = first_at_and_count(row, (int32_t)k, m, next_up((float)((double)m + slack[i])), &within);
            tie[i] = within > 1;
            ties += within > 1;
        } else {
            arg = first_at(row, (int32_t)k, m);
        }
        if (arg == k) arg = 0; /* unreachable for finite scores */
        labels[i] = arg;
        first[i] = row[arg]; /* the entry itself, with its sign if it is a zero */
    }
    return ties;
}

/* out (k, c) float32 += each row of rows (n, c), C order, into its label's row, in row order (the
 * additions and their order of scipy's CSC product with a one-hot matrix: the same sums, bit for bit).
 * Returns 0, or -1 (out untouched from that row on) at the first label outside [0, k). */
KP_CLONES int64_t kp_segment_sum(const float *rows, int64_t n, int64_t c, const int32_t *labels, int64_t k,
                                 float *out)
{
    for (int64_t i = 0; i < n; i++) {
        int32_t label = labels[i];
        if (label < 0 || label >= k) return -1;
        float *sum = out + (int64_t)label * c;
        const float *row = rows + i * c;
        for (int64_t j = 0; j < c; j++) sum[j] += row[j];
    }
    return 0;
}
