/* SA-IS (Nong, Zhang and Chan 2009) over an integer string that ends in a
 * unique smallest sentinel 0. The byte text is lifted to int32 symbols 1..256
 * so that the recursion can reuse the same routine. */
#include "fd_sais.h"

#include <stdlib.h>
#include <string.h>

enum { TYPE_L = 0, TYPE_S = 1 };

static int is_lms(const uint8_t *type, int32_t i)
{
    return i > 0 && type[i] == TYPE_S && type[i - 1] == TYPE_L;
}

/* bucket[c] = first slot of c (heads) or one past its last slot (tails). */
static void fill_buckets(const int32_t *s, int32_t n, int32_t k, int32_t *bucket, int tails)
{
    int32_t c, sum = 0;
    memset(bucket, 0, (size_t)k * sizeof *bucket);
    for (int32_t i = 0; i < n; i++)
        bucket[s[i]]++;
    for (c = 0; c < k; c++) {
        sum += bucket[c];
        bucket[c] = tails ? sum : sum - bucket[c];
    }
}

static void induce(const int32_t *s, int32_t *sa, const uint8_t *type, int32_t n, int32_t k,
                   int32_t *bucket)
{
    fill_buckets(s, n, k, bucket, 0);
    for (int32_t i = 0; i < n; i++) {
        int32_t j = sa[i] - 1;
        if (sa[i] > 0 && type[j] == TYPE_L)
            sa[bucket[s[j]]++] = j;
    }
    fill_buckets(s, n, k, bucket, 1);
    for (int32_t i = n - 1; i >= 0; i--) {
        int32_t j = sa[i] - 1;
        if (sa[i] > 0 && type[j] == TYPE_S)
            sa[--bucket[s[j]]] = j;
    }
}

static int lms_substrings_equal(const int32_t *s, const uint8_t *type, int32_t a, int32_t b)
{
    for (int32_t d = 0;; d++) {
        if (s[a + d] != s[b + d] || type[a + d] != type[b + d])
            return 0;
        if (d > 0 && (is_lms(type, a + d) || is_lms(type, b + d)))
            return 1;
    }
}

static int sais_core(const int32_t *s, int32_t *sa, int32_t n, int32_t k)
{
    uint8_t *type = malloc((size_t)n);
    int32_t *bucket = malloc((size_t)k * sizeof *bucket);
    int32_t i, j, n1 = 0, names = 0, prev = -1;
    int rc = 0;

    if (!type || !bucket) {
        rc = -1;
        goto out;
    }
    type[n - 1] = TYPE_S;
    for (i = n - 2; i >= 0; i--)
        type[i] = (s[i] < s[i + 1] || (s[i] == s[i + 1] && type[i + 1] == TYPE_S)) ? TYPE_S : TYPE_L;

    /* Sort LMS substrings by one round of induction from their bucket tails. */
    fill_buckets(s, n, k, bucket, 1);
    for (i = 0; i < n; i++)
        sa[i] = -1;
    for (i = 1; i < n; i++)
        if (is_lms(type, i))
            sa[--bucket[s[i]]] = i;
    induce(s, sa, type, n, k, bucket);

    /* Name them; equal substrings share a name. Names go to sa[n1 + pos/2],
     * a slot no other LMS position maps to because LMS positions are >= 2 apart. */
    for (i = 0; i < n; i++)
        if (is_lms(type, sa[i]))
            sa[n1++] = sa[i];
    for (i = n1; i < n; i++)
        sa[i] = -1;
    for (i = 0; i < n1; i++) {
        int32_t pos = sa[i];
        if (prev < 0 || !lms_substrings_equal(s, type, pos, prev)) {
            names++;
            prev = pos;
        }
        sa[n1 + pos / 2] = names - 1;
    }
    for (i = n - 1, j = n - 1; i >= n1; i--)
        if (sa[i] >= 0)
            sa[j--] = sa[i];

    /* Order the LMS suffixes: recurse when names repeat, else read off directly. */
    {
        int32_t *s1 = sa + n - n1;
        if (names < n1) {
            rc = sais_core(s1, sa, n1, names);
            if (rc)
                goto out;
        } else {
            for (i = 0; i < n1; i++)
                sa[s1[i]] = i;
        }
        for (i = 1, j = 0; i < n; i++)
            if (is_lms(type, i))
                s1[j++] = i;
        for (i = 0; i < n1; i++)
            sa[i] = s1[sa[i]];
    }

    /* Place the sorted LMS suffixes at their bucket tails and induce the rest. */
    for (i = n1; i < n; i++)
        sa[i] = -1;
    fill_buckets(s, n, k, bucket, 1);
    for (i = n1 - 1; i >= 0; i--) {
        j = sa[i];
        sa[i] = -1;
        sa[--bucket[s[j]]] = j;
    }
    induce(s, sa, type, n, k, bucket);
out:
    free(type);
    free(bucket);
    return rc;
}

int fd_sais(const uint8_t *text, int32_t *sa, int32_t n)
{
    int32_t *s, *full;
    int rc;

    if (n < 0 || n > INT32_MAX - 1)
        return -1;
    if (n == 0)
        return 0;
    s = malloc(((size_t)n + 1) * sizeof *s);
    full = malloc(((size_t)n + 1) * sizeof *full);
    if (!s || !full) {
        free(s);
        free(full);
        return -1;
    }
    for (int32_t i = 0; i < n; i++)
        s[i] = (int32_t)text[i] + 1;
    s[n] = 0;
    rc = sais_core(s, full, n + 1, 257);
    if (rc == 0)
        memcpy(sa, full + 1, (size_t)n * sizeof *sa); /* full[0] is the sentinel */
    free(s);
    free(full);
    return rc;
}
