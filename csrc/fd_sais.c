/* SA-IS (Nong, Zhang and Chan 2009). The end of the string acts as a
 * virtual sentinel smaller than every symbol, so the byte text is sorted in
 * place without widening it; the reduced strings of the recursion are int32.
 * Suffix types are kept one bit per position to stay cache-resident. The
 * induce loops prefetch the symbol and type bit of the suffix PREFETCH rows
 * ahead: those reads are cache misses otherwise on images of a megabyte
 * (10-15% of the sort there). */
#include "fd_sais.h"

#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#define FD_INLINE static inline __attribute__((always_inline))
#else
#define FD_INLINE static inline
#endif

#define PREFETCH 32
/* ...on strings this long: shorter ones stay in cache, where prefetching costs. */
#define PREFETCH_MIN (1 << 18)
#if defined(__GNUC__)
#define prefetch(p) __builtin_prefetch(p)
#else
#define prefetch(p) ((void)(p))
#endif

/* Symbol i of a byte (wide == 0) or int32 (wide == 1) string. */
FD_INLINE int32_t sym(const void *s, int wide, int32_t i)
{
    return wide ? ((const int32_t *)s)[i] : ((const uint8_t *)s)[i];
}

FD_INLINE int is_s(const uint8_t *bits, int32_t i)
{
    return (bits[i >> 3] >> (i & 7)) & 1;
}

FD_INLINE int is_lms(const uint8_t *bits, int32_t i)
{
    return i > 0 && is_s(bits, i) && !is_s(bits, i - 1);
}

/* bucket[c] = first slot of symbol c (heads) or one past its last (tails). */
FD_INLINE void fill_buckets(const int32_t *count, int32_t k, int32_t *bucket, int tails)
{
    int32_t sum = 0;
    for (int32_t c = 0; c < k; c++) {
        sum += count[c];
        bucket[c] = tails ? sum : sum - count[c];
    }
}

/* Prefetches what inducing from the row holding suffix q + 1 will read. */
FD_INLINE void prefetch_row(const void *s, int wide, const uint8_t *bits, int32_t q)
{
    if (q < 0)
        return;
    prefetch(wide ? (const void *)((const int32_t *)s + q) : (const void *)((const uint8_t *)s + q));
    prefetch(bits + (q >> 3));
}

FD_INLINE void induce(const void *s, int wide, int32_t *sa, const uint8_t *bits, int32_t n,
                      const int32_t *count, int32_t k, int32_t *bucket)
{
    int32_t ahead = n >= PREFETCH_MIN ? PREFETCH : n;

    fill_buckets(count, k, bucket, 0);
    /* The virtual sentinel sorts first and induces suffix n-1, always L-type. */
    sa[bucket[sym(s, wide, n - 1)]++] = n - 1;
    for (int32_t i = 0; i < n; i++) {
        int32_t j = sa[i] - 1;
        if (i + ahead < n)
            prefetch_row(s, wide, bits, sa[i + ahead] - 1);
        if (j >= 0 && !is_s(bits, j))
            sa[bucket[sym(s, wide, j)]++] = j;
    }
    fill_buckets(count, k, bucket, 1);
    for (int32_t i = n - 1; i >= 0; i--) {
        int32_t j = sa[i] - 1;
        if (i >= ahead)
            prefetch_row(s, wide, bits, sa[i - ahead] - 1);
        if (j >= 0 && is_s(bits, j))
            sa[--bucket[sym(s, wide, j)]] = j;
    }
}

/* Equal LMS substrings starting at a and b; the one that reaches the
 * sentinel is unique. */
FD_INLINE int lms_equal(const void *s, int wide, const uint8_t *bits, int32_t n, int32_t a, int32_t b)
{
    for (int32_t d = 0;; d++) {
        if (a + d == n || b + d == n)
            return 0;
        if (sym(s, wide, a + d) != sym(s, wide, b + d) || is_s(bits, a + d) != is_s(bits, b + d))
            return 0;
        if (d > 0 && is_lms(bits, a + d))
            return 1;
    }
}

static int sais_wide(const int32_t *s, int32_t *sa, int32_t n, int32_t k);

FD_INLINE int sais_core(const void *s, int wide, int32_t *sa, int32_t n, int32_t k)
{
    uint8_t *bits = calloc((size_t)n / 8 + 1, 1);
    int32_t *count = calloc((size_t)k, sizeof *count);
    int32_t *bucket = calloc((size_t)k, sizeof *bucket);
    int32_t i, j, n1 = 0, names = 0, prev = -1;
    int rc = 0;

    if (!bits || !count || !bucket) {
        rc = -1;
        goto out;
    }
    for (i = 0; i < n; i++)
        count[sym(s, wide, i)]++;
    /* Suffix n-1 is L (greater than the sentinel); bits mark S-type. */
    for (i = n - 2; i >= 0; i--) {
        int32_t c = sym(s, wide, i), d = sym(s, wide, i + 1);
        if (c < d || (c == d && is_s(bits, i + 1)))
            bits[i >> 3] |= (uint8_t)(1u << (i & 7));
    }

    /* Sort the LMS substrings: seed LMS positions at bucket tails, induce. */
    for (i = 0; i < n; i++)
        sa[i] = -1;
    fill_buckets(count, k, bucket, 1);
    for (i = 1; i < n; i++)
        if (is_lms(bits, i))
            sa[--bucket[sym(s, wide, i)]] = i;
    induce(s, wide, sa, bits, n, count, k, bucket);

    /* Name them in sorted order; equal substrings share a name. Names go to
     * sa[n1 + pos/2], distinct slots since LMS positions are >= 2 apart. */
    for (i = 0; i < n; i++)
        if (is_lms(bits, sa[i]))
            sa[n1++] = sa[i];
    for (i = n1; i < n; i++)
        sa[i] = -1;
    for (i = 0; i < n1; i++) {
        int32_t pos = sa[i];
        if (prev < 0 || !lms_equal(s, wide, bits, n, pos, prev)) {
            names++;
            prev = pos;
        }
        sa[n1 + pos / 2] = names - 1;
    }
    for (i = n - 1, j = n - 1; i >= n1; i--)
        if (sa[i] >= 0)
            sa[j--] = sa[i];

    /* Order the LMS suffixes: recurse on the reduced string when names repeat. */
    if (n1 > 0) {
        int32_t *s1 = sa + n - n1;
        if (names < n1) {
            rc = sais_wide(s1, sa, n1, names);
            if (rc)
                goto out;
        } else {
            for (i = 0; i < n1; i++)
                sa[s1[i]] = i;
        }
        for (i = 1, j = 0; i < n; i++)
            if (is_lms(bits, i))
                s1[j++] = i;
        for (i = 0; i < n1; i++)
            sa[i] = s1[sa[i]];
    }

    /* Seed the sorted LMS suffixes at their bucket tails and induce the rest. */
    for (i = n1; i < n; i++)
        sa[i] = -1;
    fill_buckets(count, k, bucket, 1);
    for (i = n1 - 1; i >= 0; i--) {
        j = sa[i];
        sa[i] = -1;
        sa[--bucket[sym(s, wide, j)]] = j;
    }
    induce(s, wide, sa, bits, n, count, k, bucket);
out:
    free(bits);
    free(count);
    free(bucket);
    return rc;
}

static int sais_wide(const int32_t *s, int32_t *sa, int32_t n, int32_t k)
{
    return sais_core(s, 1, sa, n, k);
}

int fd_sais(const uint8_t *text, int32_t *sa, int32_t n)
{
    if (n < 0)
        return -1;
    if (n == 0)
        return 0;
    return sais_core(text, 0, sa, n, 256);
}
