/* SA-IS (Nong, Zhang and Chan 2009). The end of the string acts as a
 * virtual sentinel smaller than every symbol, so the byte text is sorted in
 * place without widening it; the reduced strings of the recursion are int32.
 * A reduced string few of whose names repeat (firmware's) is sorted by prefix
 * doubling instead, which costs less there (sort_reduced). Suffix types are
 * kept one bit per position to stay cache-resident. The induce loops
 * prefetch the symbol and type bit of the suffix PREFETCH rows ahead: those
 * reads are cache misses otherwise on images of a megabyte (10-15% of the
 * sort there). */
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
/* Prefix doubling of a reduced string of m names gives way to recursion once
 * its rounds would have sorted more than this many times m rows. */
#define DOUBLING_WORK 2
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

FD_INLINE void swap2(int32_t *key, int32_t *idx, int32_t x, int32_t y)
{
    int32_t t = key[x];
    key[x] = key[y];
    key[y] = t;
    t = idx[x];
    idx[x] = idx[y];
    idx[y] = t;
}

static void sift_down(int32_t *key, int32_t *idx, int32_t root, int32_t n)
{
    for (;;) {
        int32_t child = 2 * root + 1;
        if (child >= n)
            return;
        if (child + 1 < n && key[child + 1] > key[child])
            child++;
        if (key[root] >= key[child])
            return;
        swap2(key, idx, root, child);
        root = child;
    }
}

/* Sorts idx[0..n) by key[0..n) (both permuted alike): quicksort with
 * three-way partitions (groups often share keys), insertion sort for short
 * ranges and heapsort past a depth limit, so never quadratic. */
static void sort_keys(int32_t *key, int32_t *idx, int32_t n, int depth)
{
    while (n > 16) {
        int32_t lt = 0, gt = n, i, a = key[0], b = key[n / 2], c = key[n - 1], pivot;
        if (depth-- == 0) {
            for (i = n / 2 - 1; i >= 0; i--)
                sift_down(key, idx, i, n);
            for (i = n - 1; i > 0; i--) {
                swap2(key, idx, 0, i);
                sift_down(key, idx, 0, i);
            }
            return;
        }
        pivot = a < b ? (b < c ? b : a < c ? c : a) : (a < c ? a : b < c ? c : b);
        /* key[0..lt) < pivot, key[lt..i) == pivot, key[gt..n) > pivot */
        for (i = 0; i < gt;) {
            if (key[i] < pivot)
                swap2(key, idx, lt++, i++);
            else if (key[i] > pivot)
                swap2(key, idx, i, --gt);
            else
                i++;
        }
        /* Recurse into the smaller side, loop on the larger. */
        if (lt < n - gt) {
            sort_keys(key, idx, lt, depth);
            key += gt;
            idx += gt;
            n -= gt;
        } else {
            sort_keys(key + gt, idx + gt, n - gt, depth);
            n = lt;
        }
    }
    for (int32_t i = 1; i < n; i++) {
        int32_t k = key[i], v = idx[i], j = i;
        for (; j > 0 && key[j - 1] > k; j--) {
            key[j] = key[j - 1];
            idx[j] = idx[j - 1];
        }
        key[j] = k;
        idx[j] = v;
    }
}

/* Sorts the suffixes of the reduced string r[0..m) (names 0..k-1, numbered
 * in the order of their LMS substrings) into sa[0..m). Where few names
 * repeat, as in firmware, by prefix doubling (Larsson and Sadakane): rows
 * sorted by their first h names are sorted by their first 2h by the rank of
 * the suffix h further on, a round per doubling, only for rows still tied.
 * A rank is the last row of its suffix's group; r is overwritten with ranks,
 * which order the suffixes as the names do. Where many names repeat, or the
 * ties do not thin out within DOUBLING_WORK rows' work, by recursion. */
static int sort_reduced(int32_t *r, int32_t *sa, int32_t m, int32_t k)
{
    int32_t *first = calloc((size_t)k + 1, sizeof *first);
    int32_t *groups = NULL, *next = NULL, *keys = NULL, cap = 0, ngroups = 0, tied = 0;
    int64_t work = 0;
    int rc = -1, depth = 2;

    if (!first)
        return -1;
    for (int32_t j = 0; j < m; j++)
        first[r[j] + 1]++;
    for (int32_t c = 0; c < k; c++) {
        tied += first[c + 1] > 1 ? first[c + 1] : 0;
        first[c + 1] += first[c];
    }
    if (tied > m / 8 * 7) {
        free(first);
        return sais_wide(r, sa, m, k);
    }
    for (int32_t v = m; v > 1; v >>= 1)
        depth += 2;
    for (int32_t j = 0; j < m; j++)
        sa[first[r[j]]++] = j;
    for (int32_t j = 0; j < m; j++)
        r[j] = first[r[j]] - 1;
    free(first);
    /* Groups of two rows or more, as (first row, end row) pairs: never more
     * than half the tied rows. */
    groups = malloc(((size_t)tied / 2 + 1) * 2 * sizeof *groups);
    next = malloc(((size_t)tied / 2 + 1) * 2 * sizeof *next);
    if (!groups || !next)
        goto out;
    for (int32_t a = 0; a < m;) {
        int32_t end = r[sa[a]] + 1;
        if (end - a > 1) {
            groups[2 * ngroups] = a;
            groups[2 * ngroups + 1] = end;
            ngroups++;
        }
        a = end;
    }
    for (int64_t h = 1; ngroups > 0; h *= 2) {
        int32_t nnext = 0, *t;
        tied = 0;
        for (int32_t g = 0; g < ngroups; g++)
            tied += groups[2 * g + 1] - groups[2 * g];
        if (work + tied > DOUBLING_WORK * (int64_t)m && tied > m / 16) {
            /* Long repeats: recursion on the ranks costs less from here. */
            free(groups);
            free(next);
            free(keys);
            return sais_wide(r, sa, m, m);
        }
        work += tied;
        for (int32_t g = 0; g < ngroups; g++) {
            int32_t a = groups[2 * g], n = groups[2 * g + 1] - a, x, y;
            int32_t *idx = sa + a;
            if (n > cap) {
                int32_t *p = realloc(keys, (size_t)n * sizeof *keys);
                if (!p)
                    goto out;
                keys = p;
                cap = n;
            }
            /* A suffix that ends within h names sorts first: the sentinel. */
            for (x = 0; x < n; x++)
                keys[x] = idx[x] + h < m ? r[idx[x] + h] : -1;
            sort_keys(keys, idx, n, depth);
            /* Ranks change once the whole group is sorted (its keys may be
             * its own ranks); other groups may see them this round, a finer
             * order that keeps theirs right. */
            for (x = 0; x < n; x = y) {
                for (y = x + 1; y < n && keys[y] == keys[x]; y++)
                    ;
                if (y - x > 1) {
                    next[2 * nnext] = a + x;
                    next[2 * nnext + 1] = a + y;
                    nnext++;
                }
            }
            for (x = 0; x < n; x = y) {
                for (y = x + 1; y < n && keys[y] == keys[x]; y++)
                    ;
                for (int32_t q = x; q < y; q++)
                    r[idx[q]] = a + y - 1;
            }
        }
        t = groups;
        groups = next;
        next = t;
        ngroups = nnext;
    }
    rc = 0;
out:
    free(groups);
    free(next);
    free(keys);
    return rc;
}


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
            rc = sort_reduced(s1, sa, n1, names);
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
