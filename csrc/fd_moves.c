#include "fd_moves.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    fd_code_site *items;
    size_t len;
    size_t cap;
    int failed;
    uint64_t start; /* the range being read: its offset and address */
    uint64_t addr;
} site_list;

static uint64_t record_site(void *user, uint64_t pc, uint64_t target)
{
    site_list *l = user;

    if (l->failed)
        return target;
    if (l->len == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 1024;
        fd_code_site *p = realloc(l->items, cap * sizeof *p);
        if (!p) {
            l->failed = 1;
            return target;
        }
        l->items = p;
        l->cap = cap;
    }
    l->items[l->len].offset = l->start + (pc - l->addr);
    l->items[l->len].target = target;
    l->len++;
    return target;
}

int fd_code_sites(const uint8_t *image, size_t len, const fd_code_map *map, fd_code_site **out, size_t *count)
{
    const uint64_t block = (uint64_t)1 << map->block_log;
    site_list l;
    fd_code_remap remap;
    uint8_t *scratch;

    *out = NULL;
    *count = 0;
    if (fd_code_check(map, len))
        return FD_MOVES_EINVAL;
    scratch = malloc((size_t)block);
    if (!scratch)
        return FD_MOVES_ENOMEM;
    memset(&l, 0, sizeof l);
    remap.fn = record_site;
    remap.user = &l;
    /* Blocks are transformed on a copy in image order, and instructions in a
     * block in address order: the sites come out sorted by offset. */
    for (uint32_t k = 0; k < map->count && !l.failed; k++) {
        const fd_code_range *r = &map->ranges[k];
        l.start = r->start;
        l.addr = r->addr;
        for (uint64_t off = 0; off < r->len; off += block) {
            size_t n = (size_t)(r->len - off < block ? r->len - off : block);
            memcpy(scratch, image + r->start + off, n);
            fd_code_block(r->arch, scratch, n, r->addr + off, 0, &remap);
        }
    }
    free(scratch);
    if (l.failed) {
        free(l.items);
        return FD_MOVES_ENOMEM;
    }
    *out = l.items;
    *count = l.len;
    return FD_MOVES_OK;
}

/* Sorts n values: a bottom-up merge sort (see sort_votes). tmp holds n values.
 * Returns the sorted array, v or tmp. */
static uint64_t *sort_u64(uint64_t *v, uint64_t *tmp, size_t n)
{
    uint64_t *src = v, *dst = tmp;
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                dst[k++] = src[j] < src[i] ? src[j++] : src[i++];
            while (i < mid)
                dst[k++] = src[i++];
            while (j < hi)
                dst[k++] = src[j++];
        }
        {
            uint64_t *t = src;
            src = dst;
            dst = t;
        }
    }
    return src;
}

int fd_code_score(const uint8_t *image, size_t len, const fd_code_map *map, uint64_t *sites, uint64_t *shared)
{
    fd_code_site *s;
    size_t n, run;
    uint64_t *targets, *sorted;
    int rc;

    *sites = *shared = 0;
    if ((rc = fd_code_sites(image, len, map, &s, &n)))
        return rc;
    targets = malloc((n ? n : 1) * 2 * sizeof *targets); /* the targets, then the sort's space */
    if (!targets) {
        free(s);
        return FD_MOVES_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        targets[i] = s[i].target;
    free(s);
    sorted = sort_u64(targets, targets + (n ? n : 1), n);
    for (size_t i = 0; i < n; i += run) {
        for (run = 1; i + run < n && sorted[i + run] == sorted[i]; run++)
            ;
        if (run > 1 && sorted[i] < len)
            *shared += run;
    }
    *sites = n;
    free(targets);
    return FD_MOVES_OK;
}

/* One reference of new in copied code and where it was in old. */
typedef struct {
    uint64_t new_offset;
    uint64_t old_offset;
} pair;

static int read_memory(void *user, uint64_t offset, uint8_t *dst, size_t len)
{
    memcpy(dst, (const uint8_t *)user + offset, len);
    return 0;
}

typedef struct {
    uint64_t target;
    int64_t delta;
} vote;

static int vote_before(const vote *x, const vote *y)
{
    return x->target != y->target ? x->target < y->target : x->delta < y->delta;
}

/* Sorts votes by target, then delta: a bottom-up merge sort with the
 * comparison inlined (qsort's call per comparison had taken a quarter of the
 * plan of a small image). Equal votes are alike, so any order of them is the
 * same array. tmp holds n votes. Returns the sorted array, votes or tmp. */
static vote *sort_votes(vote *votes, vote *tmp, size_t n)
{
    vote *src = votes, *dst = tmp;
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                dst[k++] = vote_before(&src[j], &src[i]) ? src[j++] : src[i++];
            while (i < mid)
                dst[k++] = src[i++];
            while (j < hi)
                dst[k++] = src[j++];
        }
        {
            vote *t = src;
            src = dst;
            dst = t;
        }
    }
    return src;
}

/* The first of the n sites at or after offset (n if none), searched from hint,
 * the previous answer: the pairs of one copy come in offset order in both
 * images, so the answer is mostly a few sites on (a binary search from
 * scratch for each had taken a third of the pairing of a large image). */
static size_t seek_site(const fd_code_site *s, size_t n, size_t hint, uint64_t offset)
{
    size_t lo = 0, hi = n, step = 1;

    if (hint < n && (hint == 0 || s[hint - 1].offset < offset)) {
        /* Gallop forward from hint: the answer is in [lo, hi). */
        lo = hint;
        while (lo + step < n && s[lo + step].offset < offset) {
            lo += step;
            step *= 2;
        }
        hi = lo + step < n ? lo + step + 1 : n;
    } else if (hint < n) {
        hi = hint;
    }
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s[mid].offset < offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int64_t abs64(int64_t v)
{
    return v < 0 ? -v : v;
}

/* The steps: per old target (votes sorted by target, then delta) the delta
 * most of its references agree on, kept where it beats the current step by
 * FD_MOVES_MIN_GAIN references. */
static size_t make_steps(const vote *v, size_t n, fd_code_step *steps)
{
    size_t count = 0, i = 0;
    int64_t current = 0;

    while (i < n && count < FD_CODE_MAX_MOVES) {
        size_t j = i, best_n = 0, cur_n = 0;
        int64_t best = 0;
        while (j < n && v[j].target == v[i].target) {
            size_t k = j;
            while (k < n && v[k].target == v[i].target && v[k].delta == v[j].delta)
                k++;
            if (k - j > best_n) {
                best_n = k - j;
                best = v[j].delta;
            }
            if (v[j].delta == current)
                cur_n = k - j;
            j = k;
        }
        if (best != current && best_n >= cur_n + FD_MOVES_MIN_GAIN && abs64(best) < ((int64_t)1 << 62) &&
            v[i].target < ((uint64_t)1 << 63)) {
            steps[count].from = v[i].target;
            steps[count].delta = best;
            count++;
            current = best;
        }
        i = j;
    }
    return count;
}

int fd_moves_learn(const uint8_t *old, size_t old_len, const fd_code_map *old_map, const uint8_t *new_,
                   size_t new_len, const fd_code_map *new_map, const fd_record *recs, size_t nrec, fd_moves *out)
{
    fd_code_site *os = NULL, *ns = NULL;
    size_t on = 0, nn = 0, npairs = 0, nvotes = 0, k = 0, at = 0;
    pair *pairs = NULL;
    vote *votes = NULL, *sorted;
    uint8_t *blocks = NULL;
    fd_code_moves moves;
    fd_code_remap remap;
    fd_code_reader old_reader, new_reader;
    int rc;

    memset(out, 0, sizeof *out);
    if (old_map->block_log != new_map->block_log)
        return FD_MOVES_EINVAL;
    if ((rc = fd_code_sites(old, old_len, old_map, &os, &on)) || (rc = fd_code_sites(new_, new_len, new_map, &ns, &nn)))
        goto done;
    pairs = malloc((nn ? nn : 1) * sizeof *pairs);
    votes = malloc((nn ? nn : 1) * 2 * sizeof *votes); /* the votes, then the sort's space */
    if (!pairs || !votes) {
        rc = FD_MOVES_ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < nn; i++) {
        uint64_t q = ns[i].offset;
        const fd_code_site *o;
        pair *p;
        while (k < nrec && (uint64_t)(recs[k].new_pos + recs[k].add_len + recs[k].insert_len) <= q)
            k++;
        if (k == nrec || q < (uint64_t)recs[k].new_pos || q + 4 > (uint64_t)(recs[k].new_pos + recs[k].add_len))
            continue;
        p = &pairs[npairs++];
        p->new_offset = q;
        p->old_offset = (uint64_t)recs[k].old_pos + (q - (uint64_t)recs[k].new_pos);
        at = seek_site(os, on, at, p->old_offset);
        o = at < on && os[at].offset == p->old_offset ? &os[at] : NULL;
        if (o) {
            votes[nvotes].target = o->target;
            votes[nvotes].delta = (int64_t)(ns[i].target - o->target);
            nvotes++;
        }
    }
    sorted = sort_votes(votes, votes + (nn ? nn : 1), nvotes);
    out->steps = malloc((nvotes ? nvotes : 1) * sizeof *out->steps);
    blocks = malloc((size_t)2 << old_map->block_log);
    if (!out->steps || !blocks) {
        rc = FD_MOVES_ENOMEM;
        goto done;
    }
    out->count = make_steps(sorted, nvotes, out->steps);
    out->paired = npairs;
    moves.steps = out->steps;
    moves.count = (uint32_t)out->count;
    remap.fn = fd_code_moved;
    remap.user = &moves;
    fd_code_reader_init(&old_reader, old_map, &remap, blocks);
    fd_code_reader_init(&new_reader, new_map, NULL, blocks + ((size_t)1 << old_map->block_log));
    /* Each pair's first four bytes, equal in the plain images and in the
     * transformed ones: transformed a block at a time, pairs mostly in order. */
    out->gain = -(int64_t)FD_MOVES_MIN_GAIN * (int64_t)out->count;
    for (size_t i = 0; i < npairs; i++) {
        const pair *p = &pairs[i];
        uint8_t a[4], b[4];
        int before = memcmp(old + p->old_offset, new_ + p->new_offset, 4) == 0;
        fd_code_read(&old_reader, read_memory, (void *)old, p->old_offset, a, 4);
        fd_code_read(&new_reader, read_memory, (void *)new_, p->new_offset, b, 4);
        out->gain += (memcmp(a, b, 4) == 0) - before;
    }
done:
    free(os);
    free(ns);
    free(pairs);
    free(votes);
    free(blocks);
    if (rc) {
        free(out->steps);
        memset(out, 0, sizeof *out);
    }
    return rc;
}
