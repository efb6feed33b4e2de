/* Match search over a suffix array of the old image, then records whose copy
 * runs are stretched across scattered byte changes while at least half of
 * their bytes still match (the observation behind bsdiff). */
#include "fd_diff.h"

#include <stdlib.h>
#include <string.h>

#include "fd_sais.h"

#define PREFIX_BUCKETS 65536
#define PROGRESS_STEP (1u << 16)

typedef struct {
    const uint8_t *old;
    int64_t old_len;
    int32_t *sa;
    int32_t *prefix; /* prefix[k]..prefix[k+1]: SA rows whose suffix starts with the 2 bytes k */
} suffix_index;

void fd_diff_default_params(fd_diff_params *p)
{
    p->min_gain = 8;
    p->min_match = 0;
}

void fd_delta_free(fd_delta *d)
{
    fd_buf_free(&d->ctrl);
    fd_buf_free(&d->wmap);
    fd_buf_free(&d->words);
    fd_buf_free(&d->extra);
}

static int64_t common_prefix(const uint8_t *a, const uint8_t *b, int64_t limit)
{
    int64_t i = 0;
#if defined(__GNUC__)
    while (i + 8 <= limit) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            return i + (__builtin_ctzll(x ^ y) >> 3);
#else
            break;
#endif
        }
        i += 8;
    }
#endif
    while (i < limit && a[i] == b[i])
        i++;
    return i;
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static int index_build(suffix_index *ix, const uint8_t *old, int64_t old_len)
{
    int64_t i;

    ix->old = old;
    ix->old_len = old_len;
    ix->sa = malloc((size_t)(old_len ? old_len : 1) * sizeof *ix->sa);
    ix->prefix = calloc(PREFIX_BUCKETS + 1, sizeof *ix->prefix);
    if (!ix->sa || !ix->prefix || fd_sais(old, ix->sa, (int32_t)old_len))
        return FD_DIFF_ENOMEM;
    /* Count suffixes of length >= 2 per 2-byte prefix; the last suffix (one
     * byte) sorts before all its bucket-mates and is never looked up. */
    for (i = 0; i + 1 < old_len; i++)
        ix->prefix[((uint32_t)old[i] << 8 | old[i + 1]) + 1]++;
    for (i = 0; i < PREFIX_BUCKETS; i++)
        ix->prefix[i + 1] += ix->prefix[i];
    return FD_DIFF_OK;
}

static void index_free(suffix_index *ix)
{
    free(ix->sa);
    free(ix->prefix);
}

/* Longest prefix of needle found in old; its length, with *pos its offset. */
static int64_t longest_match(const suffix_index *ix, const int64_t *row_shift, const uint8_t *needle,
                             int64_t needle_len, int64_t *pos)
{
    int64_t lo, hi, first, end, lo_lcp = 2, hi_lcp = 2, best = 0;
    uint32_t key;

    if (needle_len < 2 || ix->old_len < 2)
        return 0;
    key = (uint32_t)needle[0] << 8 | needle[1];
    lo = ix->prefix[key] + row_shift[needle[0]];
    hi = ix->prefix[key + 1] + row_shift[needle[0]];
    if (lo == hi)
        return 0;
    first = lo;
    end = hi;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2, s = ix->sa[mid];
        int64_t k = min64(lo_lcp, hi_lcp);
        int64_t l = k + common_prefix(ix->old + s + k, needle + k, min64(ix->old_len - s, needle_len) - k);
        if (l == needle_len) {
            *pos = s;
            return l;
        }
        if (s + l == ix->old_len || ix->old[s + l] < needle[l]) {
            lo = mid + 1;
            lo_lcp = l;
        } else {
            hi = mid;
            hi_lcp = l;
        }
    }
    if (lo > first) {
        int64_t s = ix->sa[lo - 1];
        best = common_prefix(ix->old + s, needle, min64(ix->old_len - s, needle_len));
        *pos = s;
    }
    if (lo < end) {
        int64_t s = ix->sa[lo];
        int64_t l = common_prefix(ix->old + s, needle, min64(ix->old_len - s, needle_len));
        if (l > best) {
            best = l;
            *pos = s;
        }
    }
    return best;
}

static int same_at(const uint8_t *old, int64_t old_len, int64_t old_pos, uint8_t value)
{
    return old_pos >= 0 && old_pos < old_len && old[old_pos] == value;
}

/* Records are written with their seek deferred, so that a record that would
 * produce no bytes is folded into the previous one's seek: every record but
 * the first then advances the new image, which bounds the control stream. */
typedef struct {
    fd_delta *d;
    int64_t pending_seek;
    uint8_t *delta;   /* per new byte: difference against old, 0 where inserted */
    uint8_t *covered; /* per new byte: 1 where it comes from COPY/ADD */
} emitter;

static void emit(emitter *e, const uint8_t *old, const uint8_t *new_, int64_t new_pos, int64_t old_pos,
                 int64_t add_len, int64_t insert_len, int64_t seek)
{
    fd_delta *d = e->d;
    int64_t i;

    if (add_len == 0 && insert_len == 0 && d->records > 0) {
        e->pending_seek += seek;
        return;
    }
    if (d->records > 0)
        fd_buf_varint(&d->ctrl, fd_zigzag(e->pending_seek));
    fd_buf_varint(&d->ctrl, (uint64_t)add_len);
    fd_buf_varint(&d->ctrl, (uint64_t)insert_len);
    e->pending_seek = seek;
    for (i = 0; i < add_len; i++) {
        uint8_t delta = (uint8_t)(new_[new_pos + i] - old[old_pos + i]);
        e->delta[new_pos + i] = delta;
        d->changed += delta != 0;
    }
    memset(e->covered + new_pos, 1, (size_t)add_len);
    fd_buf_append(&d->extra, new_ + new_pos + add_len, (size_t)insert_len);
    d->records++;
    d->copied += (uint64_t)add_len;
    d->inserted += (uint64_t)insert_len;
}

static void emit_finish(emitter *e, int64_t new_len)
{
    int64_t w, last = 0;

    if (e->d->records > 0)
        fd_buf_varint(&e->d->ctrl, fd_zigzag(e->pending_seek));
    for (w = 0; w * FD_WORD < new_len; w++) {
        int64_t start = w * FD_WORD, end = min64(start + FD_WORD, new_len), i;
        int changed = 0;
        for (i = start; i < end; i++)
            changed |= e->delta[i];
        if (!changed)
            continue;
        fd_buf_varint(&e->d->wmap, (uint64_t)(w - last));
        last = w + 1;
        for (i = start; i < end; i++)
            if (e->covered[i])
                fd_buf_byte(&e->d->words, e->delta[i]);
    }
}

int fd_diff(const uint8_t *old, size_t old_size, const uint8_t *new_, size_t new_size,
            const fd_diff_params *params, fd_delta *out, fd_progress_fn progress, void *user)
{
    const int64_t old_len = (int64_t)old_size, new_len = (int64_t)new_size;
    int64_t row_shift[256];
    suffix_index ix;
    emitter em = {out, 0, NULL, NULL};
    int64_t scan = 0, len = 0, pos = 0, last_scan = 0, last_pos = 0, last_offset = 0;
    int64_t next_report = 0;
    int rc = FD_DIFF_OK;

    memset(out, 0, sizeof *out);
    memset(&ix, 0, sizeof ix);
    if (old_size >= (size_t)INT32_MAX || new_size >= (size_t)INT32_MAX)
        return FD_DIFF_ETOOBIG;
    em.delta = calloc((size_t)new_len + 1, 1);
    em.covered = calloc((size_t)new_len + 1, 1);
    if (!em.delta || !em.covered) {
        rc = FD_DIFF_ENOMEM;
        goto done;
    }
    rc = index_build(&ix, old, old_len);
    if (rc)
        goto done;
    /* The one-byte final suffix sits at the head of its first byte's group in
     * the SA but is not counted in prefix[]: rows of groups from that byte on
     * move down by one. */
    for (int c = 0; c < 256; c++)
        row_shift[c] = (old_len > 0 && c >= old[old_len - 1]) ? 1 : 0;

    while (scan < new_len) {
        int64_t old_score = 0, scsc;

        for (scsc = scan += len; scan < new_len; scan++) {
            if (progress && scan >= next_report) {
                if (progress(user, (uint64_t)scan, (uint64_t)new_len)) {
                    rc = FD_DIFF_CANCELLED;
                    goto done;
                }
                next_report = scan + PROGRESS_STEP;
            }
            len = longest_match(&ix, row_shift, new_ + scan, new_len - scan, &pos);
            if (len < params->min_match)
                len = 0;
            for (; scsc < scan + len; scsc++)
                old_score += same_at(old, old_len, scsc + last_offset, new_[scsc]);
            if ((len == old_score && len != 0) || len > old_score + params->min_gain)
                break;
            old_score -= same_at(old, old_len, scan + last_offset, new_[scan]);
        }

        if (len != old_score || scan == new_len) {
            int64_t i, score, best, len_fwd = 0, len_back = 0;

            /* Stretch the previous match forward as long as it keeps paying. */
            for (i = 0, score = 0, best = 0; last_scan + i < scan && last_pos + i < old_len;) {
                score += old[last_pos + i] == new_[last_scan + i];
                i++;
                if (score * 2 - i > best * 2 - len_fwd) {
                    best = score;
                    len_fwd = i;
                }
            }
            /* And the new match backward. */
            if (scan < new_len) {
                for (i = 1, score = 0, best = 0; scan >= last_scan + i && pos >= i; i++) {
                    score += old[pos - i] == new_[scan - i];
                    if (score * 2 - i > best * 2 - len_back) {
                        best = score;
                        len_back = i;
                    }
                }
            }
            /* Where the two stretches overlap, split at the best point. */
            if (last_scan + len_fwd > scan - len_back) {
                int64_t overlap = (last_scan + len_fwd) - (scan - len_back), split = 0;
                for (i = 0, score = 0, best = 0; i < overlap; i++) {
                    score += new_[last_scan + len_fwd - overlap + i] == old[last_pos + len_fwd - overlap + i];
                    score -= new_[scan - len_back + i] == old[pos - len_back + i];
                    if (score > best) {
                        best = score;
                        split = i + 1;
                    }
                }
                len_fwd += split - overlap;
                len_back -= split;
            }
            emit(&em, old, new_, last_scan, last_pos, len_fwd, (scan - len_back) - (last_scan + len_fwd),
                 scan < new_len ? (pos - len_back) - (last_pos + len_fwd) : 0);
            last_scan = scan - len_back;
            last_pos = pos - len_back;
            last_offset = pos - scan;
        }
    }
    emit_finish(&em, new_len);
    if (progress && progress(user, (uint64_t)new_len, (uint64_t)new_len))
        rc = FD_DIFF_CANCELLED;
done:
    index_free(&ix);
    free(em.delta);
    free(em.covered);
    if (rc == FD_DIFF_OK &&
        (out->ctrl.failed || out->wmap.failed || out->words.failed || out->extra.failed))
        rc = FD_DIFF_ENOMEM;
    if (rc)
        fd_delta_free(out);
    return rc;
}
