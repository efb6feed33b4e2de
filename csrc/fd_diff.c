/* Match search over suffix arrays of the old image, then records whose copy
 * runs are stretched across scattered byte changes while at least half of
 * their bytes still match (the observation behind bsdiff).
 *
 * Large old images get two suffix arrays, one per half (built on two
 * threads), the first reaching PART_OVERLAP past the middle; a match that
 * runs into the end of a part is extended in the whole old image, so the
 * split hides no match. The new image is scanned in ranges of RANGE_LEN
 * bytes that threads take in turn; each range starts on the identity
 * alignment and the records are joined in range order. Parts and ranges
 * depend only on the sizes, so the output is the same whatever the number
 * of threads.
 *
 * The suffix arrays leave out the inside of long runs of one byte value
 * (padding, erased flash): they are built over the old image less those
 * interiors (the kept text), and a match found there is measured again in
 * the old image wherever it reaches a left-out interior. */
#include "fd_diff.h"

#include <stdlib.h>
#include <string.h>

#include "fd_sais.h"

#ifdef FD_HAVE_PTHREADS
#include <pthread.h>
#endif

/* Suffix array rows are bucketed by their first two bytes (65536 buckets) from
 * parts of this size on, by their first byte below it: the 256 KiB table of a
 * two-byte key cost more to set up than the diff of a small image. */
#define KEY2_MIN (1 << 16)
#define PROGRESS_STEP (1 << 16)
/* Old images from this size on get two suffix arrays. */
#define SPLIT_MIN (1 << 20)
/* New images are scanned in ranges of about this length (at least one). */
#define RANGE_LEN (1 << 19)
/* Where the running alignment holds for a window of this many bytes with at
 * most ALIGNED_MISSES of them changed, the scan takes the window as it is
 * instead of looking for a better match at each of its bytes: a match
 * elsewhere would have to be longer than the window's matching bytes plus
 * min_gain to win, and seldom is. The lookups so saved (binary searches,
 * a cache miss each step) were most of the diff time, on code whose
 * relocated addresses change a byte or two in every few. Unless the misses
 * bunch up: where two 8-byte words in a row differ in more than min_gain
 * bytes (a record's head, a field it gained), a match elsewhere that covers
 * them gains what a new record needs, and the lookups find it. Without
 * that, the records of a table that each gained a field near their head
 * were taken whole at one alignment (an Intel Bluetooth firmware pair's
 * patch was 1.08x bsdiff4's, 0.86x with it; tables of
 * tests/test_patch_size.py up to 12x). */
#define ALIGNED_WINDOW 64
#define ALIGNED_MISSES 16
/* Where lookups keep finding no match of MISS_LEN bytes (data with no
 * counterpart in old: compressed or encrypted parts), the scan steps over
 * positions: one more every MISS_RUN such lookups, at most MAX_STEP. */
#define MISS_LEN 6
#define MISS_RUN 16
#define MAX_STEP 16
/* A range that has made old_len / GRAMS_PAYOFF lookups that won nothing (in
 * a diff where a match shorter than GRAM_LEN cannot start a record: min_gain
 * of GRAM_LEN - 1 or more) looks its next ones up in two bitmaps first, of
 * GRAM_BITS bits per old byte each, set by the hashes of old's strings of
 * GRAM_LEN bytes and of min_gain + 1 bytes (at most WIN_GRAM_MAX; the
 * shortest match that can win). A string whose bit is clear is not in old:
 * of GRAM_LEN bytes, the lookup is a miss without a binary search; of the
 * longer length, it could find nothing that wins, and is not made either.
 * Lookups were most of the diff time of images with much new code, and
 * most found nothing: on a 2.5 MB x86-64 library, 1.18 M lookups and 0.54 s
 * of scan without bitmaps, 0.72 M with the first, 0.43 M (0.31 s to 0.22 s)
 * with both; 161 k to 90 k on a 1 MB AArch64 boot loader. Filling both
 * takes about 4 ns per old byte, what some old_len / 64 lookups take: a
 * range that has lost that often is likely to lose as often again, and
 * images that change little never fill them. The scan differs from one
 * without bitmaps only where a match too short to win would have agreed
 * with the running alignment throughout, or where a lookup skipped as
 * unable to win would have found under MISS_LEN bytes (it is not counted a
 * miss, and steps grow with misses). The patch is the same for any thread
 * count (each range counts its own lookups) and on any host (the hash reads
 * bytes). */
#define GRAM_LEN MISS_LEN
#define GRAM_BITS 4
#define GRAMS_PAYOFF 64
#define WIN_GRAM_MAX 8
/* Lookups compare at most this many bytes per suffix: among long runs
 * (zero fill) the binary search would otherwise compare each run in full
 * at every step. Well above the length of repeated blocks: among several
 * copies of a block, only the longest match keeps the alignment (1 KiB made
 * 116 records of a one-deletion edit of an image of repeated blocks). */
#define SEARCH_CAP (1 << 16)
/* The first part of the old image reaches this far past its half, so that
 * matches crossing the middle are still found whole up to this length. */
#define PART_OVERLAP (1 << 16)
/* Runs of one byte value this long or longer keep RUN_KEEP bytes at each end
 * in the suffix arrays, and leave out the rest. Sorting the suffixes inside
 * them had taken a third of the index time of images that are mostly padding
 * (an OpenBIOS image of 1.6 MB, 1.2 MB of it zeros), and the suffixes at a
 * run's ends find what those inside did: a lookup among zeros still lands on
 * a run (and is measured in the whole old image), a lookup of a run's last
 * bytes and what follows still finds them. */
#define RUN_MIN (1 << 12)
#define RUN_KEEP (1 << 8)
/* ...where that leaves out at least a quarter of the image: the kept text is
 * a copy, and with its suffix array it takes 5 bytes per kept byte, less
 * than the 4 per old byte of the arrays over old itself only from there. */
#define KEPT_LEFT_OUT 4
/* A match that would leave the running alignment for a detour must also pay
 * for its seeks: DETOUR_WEIGHT times the bytes its seek's varint takes beyond
 * one, once there and once back. A detour is a match whose own alignment does
 * not go on after it (fewer than half of the next DETOUR_LOOK bytes agree
 * there) and is none of the last RECENT alignments records took. Short
 * matches of common strings anywhere in old (DWARF line programs and location
 * lists, string tables) had made a record each, with two far seeks that the
 * ctrl stream hardly compresses: 3,264 records in the 136 KB .debug_line of a
 * Cortex-M ELF where HDiffPatch makes 1,063 covers. An alignment that goes on
 * (code that moved) or comes back (a table whose entries alternate between
 * two alignments) costs only min_gain, as before: its seeks repeat, and
 * compress. On the 160 pairs of 3 MB or less of both corpora the patches came
 * out 0.75% smaller (geomean, threshold 6 below 1 MB; 64-bit Arm boot loaders
 * 5-9%, that ELF 4%), on the held-out set 1.1%; weights 1 and 3 gained 0.55%
 * and 0.70%. */
#define DETOUR_WEIGHT 2
#define DETOUR_LOOK 16
#define RECENT 8

typedef struct {
    const uint8_t *text; /* kept text + base */
    int64_t base;
    int64_t len;
    int64_t avail; /* bytes from text to the end of the kept text (>= len) */
    int32_t *sa;
    int32_t *prefix; /* prefix[k]..prefix[k+1]: SA rows of suffixes starting with the key k */
    int64_t row_shift[256];
    int key_bytes; /* 1 or 2 */
    fd_sort_fn sort;
    int rc;
} sa_part;

typedef fd_record record;

typedef struct {
    record *items;
    size_t len;
    size_t cap;
    int failed;
} record_list;

/* Where the kept text leaves out a run's interior. */
typedef struct {
    int64_t at;    /* kept-text offset of the first byte after the gap */
    int64_t shift; /* old offset less kept-text offset, from at on */
} text_cut;

struct fd_index {
    const uint8_t *old;
    int64_t old_len;
    uint8_t *kept; /* the kept text; NULL when nothing is left out (it is old) */
    int64_t kept_len;
    text_cut *cuts;
    size_t ncuts;
    int nparts;
    sa_part parts[2];
};

struct scan_pool;

/* A bitmap of 2^log bits set by the hashes of old's strings of len bytes. */
typedef struct {
    uint8_t *bits;
    int log;
    int len;
} gram_set;

/* One range of the new image and its records. */
typedef struct {
    struct scan_pool *pool;
    int64_t from;
    int64_t to;
    record_list records;
    int rc;
} scan_job;

/* The ranges of one diff and what the threads share while scanning them. */
typedef struct scan_pool {
    const fd_index *ix;
    const uint8_t *new_;
    int64_t new_len;
    const fd_diff_params *params;
    scan_job *jobs;
    size_t njobs;
    size_t next_job; /* the next range to take */
    uint64_t done;   /* new bytes scanned so far, for progress */
    int cancelled;
    /* Bitmaps of old's strings, once a range needs them: of GRAM_LEN bytes
     * (misses), and of the shortest match that can win (bits NULL when that
     * is GRAM_LEN bytes or fewer). */
    gram_set grams[2];
    int grams_made;
#ifdef FD_HAVE_PTHREADS
    pthread_mutex_t lock;
    int locked; /* the mutex is in use (more than one thread) */
#endif
} scan_pool;

void fd_diff_default_params(fd_diff_params *p)
{
    p->min_gain = 8;
    p->min_match = 0;
    p->threads = 1;
}

void fd_delta_free(fd_delta *d)
{
    fd_buf_free(&d->ctrl);
    fd_buf_free(&d->wmap);
    fd_buf_free(&d->words);
    fd_buf_free(&d->sums);
    fd_buf_free(&d->extra);
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static int64_t common_prefix(const uint8_t *a, const uint8_t *b, int64_t limit)
{
    return limit > 0 ? (int64_t)fd_match_len(a, b, (size_t)limit) : 0;
}

/* Suffix arrays are plain 4 KiB pages: advised onto 2 MiB pages (MADV_HUGEPAGE)
 * their lookups missed the TLB less (a 4 MB image's diff 5% faster at best),
 * but in the kernel's default "madvise" defrag mode the first touch compacts
 * memory on demand and stalled whenever free memory was fragmented: a 10.8 MB
 * image's diff took 650-690 ms or 830-930 at random, a 30 MB one 15% longer
 * every time. */
static void part_build(sa_part *p)
{
    const uint8_t *t = p->text;
    int64_t i, n = p->len, buckets;

    p->key_bytes = n >= KEY2_MIN ? 2 : 1;
    buckets = (int64_t)1 << (8 * p->key_bytes);
    p->sa = malloc((size_t)(n ? n : 1) * sizeof *p->sa);
    p->prefix = calloc((size_t)buckets + 1, sizeof *p->prefix);
    if (!p->sa || !p->prefix || p->sort(t, p->sa, (int32_t)n)) {
        p->rc = FD_DIFF_ENOMEM;
        return;
    }
    if (p->key_bytes == 2) {
        /* Count suffixes of two bytes or more per 2-byte prefix. The one-byte
         * final suffix heads its first byte's group in the SA but is not
         * counted, so rows of groups from that byte on move down by one. */
        for (i = 0; i + 1 < n; i++) {
            uint32_t key = (uint32_t)t[i] << 8 | t[i + 1];
            if (t[i] == t[i + 1]) {
                /* A run of one value (padding) is counted at once: bumped
                 * once per byte, the one counter was a chain of dependent
                 * loads and stores, a quarter of a padded image's index
                 * time. run ends at the run's last byte. */
                int64_t run = i + 1;
                while (run + 1 < n && t[run + 1] == t[i])
                    run++;
                p->prefix[key + 1] += run - i;
                i = run - 1;
                continue;
            }
            p->prefix[key + 1]++;
        }
        for (i = 0; i < 256; i++)
            p->row_shift[i] = (n > 0 && i >= t[n - 1]) ? 1 : 0;
    } else {
        for (i = 0; i < n; i++)
            p->prefix[t[i] + 1]++;
        memset(p->row_shift, 0, sizeof p->row_shift);
    }
    for (i = 0; i < buckets; i++)
        p->prefix[i + 1] += p->prefix[i];
    p->rc = FD_DIFF_OK;
}

static void part_free(sa_part *p)
{
    free(p->sa);
    free(p->prefix);
}

#if defined(__GNUC__)
#define prefetch(p) __builtin_prefetch(p)
#else
#define prefetch(p) ((void)(p))
#endif

/* A binary search for needle among the SA rows of one part, a step at a
 * time: longest_matches steps several searches in turn, so that the
 * cache misses of one (an SA row, then the old bytes it points at: most of
 * the diff time) overlap those of the other. */
typedef struct {
    const sa_part *p;
    const uint8_t *needle;
    int64_t needle_len;
    int64_t lo, hi, first, end;
    int64_t lo_lcp, hi_lcp; /* see search_start */
    int64_t best, row;      /* a match of needle_len bytes found on the way, at row */
    int active;
} sa_search;

static void search_start(sa_search *q, const sa_part *p, const uint8_t *needle, int64_t needle_len)
{
    uint32_t key;

    q->p = p;
    q->needle = needle;
    q->needle_len = needle_len;
    q->best = 0;
    q->active = needle_len >= 2 && p->len >= 2;
    if (!q->active)
        return;
    key = p->key_bytes == 2 ? (uint32_t)needle[0] << 8 | needle[1] : needle[0];
    q->lo = q->first = p->prefix[key] + p->row_shift[needle[0]];
    q->hi = q->end = p->prefix[key + 1] + p->row_shift[needle[0]];
    /* Invariant: lo_lcp is the common prefix of needle and row lo - 1 when
     * lo > first, hi_lcp that of row hi when hi < end. */
    q->lo_lcp = q->hi_lcp = p->key_bytes;
    q->active = q->lo < q->hi;
    if (q->active)
        prefetch(&p->sa[q->lo + ((q->hi - q->lo) >> 1)]);
}

/* One halving of the search interval. */
static void search_step(sa_search *q)
{
    const sa_part *p = q->p;
    const uint8_t *needle = q->needle;
    const int64_t needle_len = q->needle_len;
    /* Halved by shifts: the widths are never negative, and a signed division
     * by two costs a sign fix-up each. */
    int64_t lo = q->lo, hi = q->hi, mid = lo + ((hi - lo) >> 1), row = p->sa[mid];
    int64_t k = min64(q->lo_lcp, q->hi_lcp), l;

    /* The row the next step reads is one of two: fetch the old bytes of
     * both (their SA rows are loads of their own, independent of this step's
     * compare) while this step waits for its own. */
    {
        int64_t left = lo + ((mid - lo) >> 1), right = mid + 1 + ((hi - mid - 1) >> 1);
        prefetch(p->text + p->sa[left] + k);
        if (right < hi)
            prefetch(p->text + p->sa[right] + k);
    }
    l = k + common_prefix(p->text + row + k, needle + k, min64(p->len - row, needle_len) - k);
    if (l == needle_len) {
        q->best = l;
        q->row = row;
        q->active = 0;
        return;
    }
    if (row + l == p->len || p->text[row + l] < needle[l]) {
        q->lo = mid + 1;
        q->lo_lcp = l;
    } else {
        q->hi = mid;
        q->hi_lcp = l;
    }
    q->active = q->lo < q->hi;
}

/* The old offset of kept-text offset t; *next the kept-text offset of the
 * first cut after t (INT64_MAX if none). */
static int64_t kept_to_old(const fd_index *ix, int64_t t, int64_t *next)
{
    size_t lo = 0, hi = ix->ncuts;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ix->cuts[mid].at <= t)
            lo = mid + 1;
        else
            hi = mid;
    }
    *next = lo < ix->ncuts ? ix->cuts[lo].at : INT64_MAX;
    return t + (lo ? ix->cuts[lo - 1].shift : 0);
}

/* The longest prefix of needle the search found in its part, extended past
 * the part's end in the whole kept text, then measured in the old image if
 * it reaches a cut; its length, *pos its old offset. */
static int64_t search_result(const fd_index *ix, const sa_search *q, const uint8_t *needle, int64_t needle_len,
                             int64_t *pos)
{
    const sa_part *p = q->p;
    int64_t best = q->best, s = q->row;

    if (best == 0) {
        /* Otherwise the longest match is next to the insertion point. */
        if (needle_len < 2 || p->len < 2)
            return 0;
        if (q->lo > q->first) {
            best = q->lo_lcp;
            s = p->sa[q->lo - 1];
        }
        if (q->lo < q->end && q->hi_lcp > best) {
            best = q->hi_lcp;
            s = p->sa[q->lo];
        }
        if (best == 0)
            return 0;
    }
    if (s + best == p->len && p->avail > p->len)
        best += common_prefix(p->text + s + best, needle + best, min64(p->avail - s, needle_len) - best);
    if (ix->ncuts) {
        int64_t next, at = kept_to_old(ix, p->base + s, &next);
        if (p->base + s + best >= next)
            best = common_prefix(ix->old + at, needle, min64(ix->old_len - at, needle_len));
        *pos = at;
    } else {
        *pos = p->base + s;
    }
    return best;
}

/* Needles longest_matches looks up at once. */
#define MAX_NEEDLES 2

/* For each of the count needles new_[at[c]..new_len): the longest match in
 * old, or one of SEARCH_CAP bytes or more (then followed to its end); of
 * equal ones, the first part's. len[c] is its length and pos[c] its old
 * offset (left as it is when len[c] is 0). The binary searches of all
 * needles in all parts are stepped in turn, so that their cache misses
 * overlap. */
static void longest_matches(const fd_index *ix, const uint8_t *new_, int64_t new_len, const int64_t *at, int count,
                            int64_t *len, int64_t *pos)
{
    sa_search q[MAX_NEEDLES * 2];
    int64_t capped[MAX_NEEDLES];
    int c, i, n = count * ix->nparts, active = 1;

    for (c = 0; c < count; c++) {
        capped[c] = min64(new_len - at[c], SEARCH_CAP);
        for (i = 0; i < ix->nparts; i++)
            search_start(&q[c * ix->nparts + i], &ix->parts[i], new_ + at[c], capped[c]);
    }
    while (active) {
        active = 0;
        for (i = 0; i < n; i++)
            if (q[i].active) {
                search_step(&q[i]);
                active |= q[i].active;
            }
    }
    for (c = 0; c < count; c++) {
        const uint8_t *needle = new_ + at[c];
        int64_t best = 0;
        for (i = 0; i < ix->nparts; i++) {
            int64_t found = 0, l = search_result(ix, &q[c * ix->nparts + i], needle, capped[c], &found);
            if (l > best) {
                best = l;
                pos[c] = found;
            }
        }
        if (best == SEARCH_CAP)
            best += common_prefix(ix->old + pos[c] + best, needle + best,
                                  min64(ix->old_len - pos[c], new_len - at[c]) - best);
        len[c] = best;
    }
}

/* Bytes that differ between a[0..8) and b[0..8). */
static int64_t word_misses(const uint8_t *a, const uint8_t *b)
{
    uint64_t x, y;

    memcpy(&x, a, 8);
    memcpy(&y, b, 8);
    x ^= y;
    /* one bit per non-zero byte */
    x |= x >> 4;
    x |= x >> 2;
    x |= x >> 1;
    /* add up the bits (a popcount instruction is not in baseline x86-64) */
    return (int64_t)(((x & 0x0101010101010101ull) * 0x0101010101010101ull) >> 56);
}

/* How far the running alignment (new offset scan, old offset scan + offset)
 * holds from scan in whole windows of ALIGNED_WINDOW bytes, each with at
 * most ALIGNED_MISSES differing bytes and no burst: more than burst of them
 * in two 8-byte words in a row, across windows too. A burst ends the span
 * before the words it spans, where the scan looks it up. 0 if the alignment
 * holds for no window. */
static int64_t aligned_span(const fd_index *ix, const uint8_t *new_, int64_t new_len, int64_t scan, int64_t offset,
                            int64_t burst)
{
    int64_t span = 0, last = 0;

    for (;;) {
        int64_t q = scan + span, at = q + offset, misses = 0, i;
        if (at < 0 || at + ALIGNED_WINDOW > ix->old_len || q + ALIGNED_WINDOW > new_len)
            return span;
        for (i = 0; i < ALIGNED_WINDOW; i += 8) {
            int64_t here = word_misses(ix->old + at + i, new_ + q + i);
            if (here + last > burst)
                return i == 0 && span > 0 ? span - 8 : span;
            misses += here;
            if (misses > ALIGNED_MISSES)
                return span;
            last = here;
        }
        span += ALIGNED_WINDOW;
    }
}

/* gram: GRAM_LEN bytes as a number, the first one most significant. */
static uint32_t gram_hash(uint64_t gram, int log)
{
    return (uint32_t)((gram * 0x9E3779B97F4A7C15ull) >> (64 - log));
}

/* Whether new_[at..] surely has no match of set->len bytes in old (never
 * without the bitmap, bits NULL). */
static int gram_missing(const gram_set *set, const uint8_t *new_, int64_t new_len, int64_t at)
{
    uint64_t gram = 0;
    uint32_t h;

    if (!set->bits || at + set->len > new_len)
        return 0;
    for (int i = 0; i < set->len; i++)
        gram = gram << 8 | new_[at + i];
    h = gram_hash(gram, set->log);
    return !(set->bits[h >> 3] >> (h & 7) & 1);
}

/* What a lookup at new_[at..] would find, told by the bitmaps (grams NULL
 * before the range has them): LOOK_MISS no match of GRAM_LEN bytes, LOOK_LOST
 * none that can win, LOOK_UP either may be there. */
enum { LOOK_UP, LOOK_MISS, LOOK_LOST };

static int look_kind(const gram_set *grams, const uint8_t *new_, int64_t new_len, int64_t at)
{
    /* The shorter string first: where it is not in old, neither is the
     * longer one (data with no counterpart in old takes one probe). */
    if (!grams)
        return LOOK_UP;
    if (gram_missing(&grams[0], new_, new_len, at))
        return LOOK_MISS;
    return gram_missing(&grams[1], new_, new_len, at) ? LOOK_LOST : LOOK_UP;
}

/* Positions the scan moves on by after misses lookups in a row found no
 * match of MISS_LEN bytes. */
static int64_t miss_step(int64_t misses)
{
    return misses / MISS_RUN < MAX_STEP ? 1 + misses / MISS_RUN : MAX_STEP;
}

static void push_record(record_list *l, int64_t new_pos, int64_t old_pos, int64_t add_len, int64_t insert_len)
{
    if (l->failed)
        return;
    if (l->len == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        record *p = realloc(l->items, cap * sizeof *p);
        if (!p) {
            l->failed = 1;
            return;
        }
        l->items = p;
        l->cap = cap;
    }
    l->items[l->len].new_pos = new_pos;
    l->items[l->len].old_pos = old_pos;
    l->items[l->len].add_len = add_len;
    l->items[l->len].insert_len = insert_len;
    l->len++;
}

static int same_at(const uint8_t *old, int64_t old_len, int64_t old_pos, uint8_t value)
{
    return old_pos >= 0 && old_pos < old_len && old[old_pos] == value;
}

/* Puts offset first among the recent alignments (once). */
static void remember(int64_t *recent, int64_t offset)
{
    int k = 0;

    while (k < RECENT - 1 && recent[k] != offset)
        k++;
    memmove(recent + 1, recent, (size_t)k * sizeof(recent[0]));
    recent[0] = offset;
}

/* What a match at new offset `at` and old offset at + offset must gain over
 * the running alignment (last_offset) beyond min_gain: nothing unless it is a
 * detour (see DETOUR_WEIGHT), then the cost of its seeks there and back. */
static int64_t detour_cost(const uint8_t *old, int64_t old_len, const uint8_t *new_, int64_t new_len, int64_t at,
                           int64_t len, int64_t offset, int64_t last_offset, const int64_t *recent)
{
    int64_t agree = 0;

    for (int k = 0; k < RECENT; k++)
        if (recent[k] == offset)
            return 0;
    for (int64_t q = at + len; q < at + len + DETOUR_LOOK && q < new_len; q++)
        agree += same_at(old, old_len, q + offset, new_[q]);
    if (2 * agree >= DETOUR_LOOK)
        return 0;
    return DETOUR_WEIGHT * (fd_varint_len(fd_zigzag(offset - last_offset)) - 1);
}

/* Adds scanned new bytes to the pool's count; the reporting thread passes
 * the count to the progress callback. Non-zero once the diff is cancelled. */
static int pool_step(scan_pool *pool, int64_t scanned, int reporter, fd_progress_fn progress, void *user)
{
    uint64_t done;
    int cancelled;

#ifdef FD_HAVE_PTHREADS
    if (pool->locked)
        pthread_mutex_lock(&pool->lock);
#endif
    pool->done += (uint64_t)scanned;
    done = pool->done;
    cancelled = pool->cancelled;
#ifdef FD_HAVE_PTHREADS
    if (pool->locked)
        pthread_mutex_unlock(&pool->lock);
#endif
    if (cancelled || !reporter || !progress || !progress(user, done, (uint64_t)pool->new_len))
        return cancelled;
#ifdef FD_HAVE_PTHREADS
    if (pool->locked)
        pthread_mutex_lock(&pool->lock);
#endif
    pool->cancelled = 1;
#ifdef FD_HAVE_PTHREADS
    if (pool->locked)
        pthread_mutex_unlock(&pool->lock);
#endif
    return 1;
}

/* Sets set's bits for old's strings of len bytes (at most 8); 0, or
 * FD_DIFF_ENOMEM. */
static int gram_fill(gram_set *set, const uint8_t *old, int64_t old_len, int len)
{
    const uint64_t mask = len < 8 ? ((uint64_t)1 << (8 * len)) - 1 : ~(uint64_t)0;
    uint64_t gram = 0;

    set->len = len;
    set->log = 12;
    while (set->log < 32 && ((int64_t)1 << set->log) < GRAM_BITS * old_len)
        set->log++;
    set->bits = calloc((size_t)1 << (set->log - 3), 1);
    if (!set->bits)
        return FD_DIFF_ENOMEM;
    for (int64_t i = 0; i < old_len; i++) {
        gram = (gram << 8 | old[i]) & mask;
        if (i >= len - 1) {
            uint32_t h = gram_hash(gram, set->log);
            set->bits[h >> 3] |= (uint8_t)(1u << (h & 7));
        }
    }
    return FD_DIFF_OK;
}

/* The pool's bitmaps (scan_pool.grams), filled by the first range that asks
 * for them; NULL if they cannot be allocated. */
static const gram_set *pool_grams(scan_pool *pool)
{
    const gram_set *grams = pool->grams;

#ifdef FD_HAVE_PTHREADS
    if (pool->locked)
        pthread_mutex_lock(&pool->lock);
#endif
    if (!pool->grams_made) {
        const int64_t win = min64(pool->params->min_gain + 1, WIN_GRAM_MAX);
        int rc = gram_fill(&pool->grams[0], pool->ix->old, pool->ix->old_len, GRAM_LEN);
        if (rc == FD_DIFF_OK && win > GRAM_LEN)
            rc = gram_fill(&pool->grams[1], pool->ix->old, pool->ix->old_len, (int)win);
        pool->grams_made = rc == FD_DIFF_OK ? 1 : -1;
    }
    if (pool->grams_made < 0)
        grams = NULL;
#ifdef FD_HAVE_PTHREADS
    if (pool->locked)
        pthread_mutex_unlock(&pool->lock);
#endif
    return grams;
}

/* Covers new[from, to) with records. A new match starts a record when it
 * beats the running alignment (old offset of the previous match) by more
 * than min_gain bytes and, for a detour, its seeks (detour_cost); each
 * record's copy run is then stretched forward from the previous match and
 * backward from the new one while at least half of the bytes agree, and what
 * lies between is inserted. */
static void scan_range(scan_job *job, int reporter, fd_progress_fn progress, void *user)
{
    scan_pool *pool = job->pool;
    const fd_index *ix = pool->ix;
    const uint8_t *old = ix->old, *new_ = pool->new_;
    const int64_t old_len = ix->old_len, new_len = pool->new_len, to = job->to;
    const int64_t min_gain = pool->params->min_gain, min_match = pool->params->min_match;
    int64_t scan = job->from, len = 0, pos = 0, last_scan = job->from;
    /* The running alignment starts as the identity (new offset = old offset),
     * the best guess for a range that starts inside the image. last_pos and
     * last_offset must agree: a match on this alignment then extends the
     * current record instead of being taken as covered by it. */
    int64_t last_pos = min64(job->from, old_len), last_offset = last_pos - last_scan;
    int64_t reported = scan;
    int64_t ahead_at = -1, ahead_len = 0, ahead_pos = 0; /* a lookup made ahead of the scan */
    /* Lookups that found no match that wins, until the bitmaps are used. */
    int64_t lost = 0, use_grams_at = min_gain + 1 >= GRAM_LEN ? old_len / GRAMS_PAYOFF + 1 : -1;
    const gram_set *grams = NULL;
    int kind = LOOK_UP, ahead_kind = LOOK_UP;
    int64_t recent[RECENT]; /* the alignments of the last records, newest first */

    for (int k = 0; k < RECENT; k++)
        recent[k] = INT64_MIN;

    while (scan < to) {
        int64_t old_score = 0, scsc, misses = 0, step;
        int aligned = 0;

        for (scsc = scan += len; scan < to; scan++) {
            if (scan - reported >= PROGRESS_STEP) {
                if (pool_step(pool, scan - reported, reporter, progress, user)) {
                    job->rc = FD_DIFF_CANCELLED;
                    return;
                }
                reported = scan;
            }
            len = aligned_span(ix, new_, new_len, scan, last_offset, min_gain);
            if (len) {
                aligned = 1;
                break;
            }
            if (scan != ahead_at) {
                /* The position scanned next if this one finds no match is
                 * looked up with it, unless an alignment holds there: past
                 * a step over missed positions, not the next byte (looked up
                 * ahead, it had been wasted on every step). */
                int64_t next = scan + miss_step(misses + 1);
                int64_t at[2] = {scan, next}, found[2] = {pos, pos}, lens[2] = {0, 0};
                int64_t look_at[2], look_len[2], look_pos[2];
                int kinds[2] = {look_kind(grams, new_, new_len, scan), look_kind(grams, new_, new_len, next)};
                int which[2], n = 0;
                for (int c = 0; c < 2; c++)
                    if (kinds[c] == LOOK_UP && at[c] < new_len) {
                        which[n] = c;
                        look_at[n++] = at[c];
                    }
                longest_matches(ix, new_, new_len, look_at, n, look_len, look_pos);
                for (int k = 0; k < n; k++)
                    if ((lens[which[k]] = look_len[k]) != 0)
                        found[which[k]] = look_pos[k];
                ahead_at = next < new_len ? next : -1;
                ahead_len = lens[1];
                ahead_pos = found[1];
                ahead_kind = kinds[1];
                len = lens[0];
                pos = found[0];
                kind = kinds[0];
            } else {
                len = ahead_len;
                if (len)
                    pos = ahead_pos;
                kind = ahead_kind;
                ahead_at = -1;
            }
            if (len < min_match)
                len = 0;
            for (; scsc < scan + len; scsc++)
                old_score += same_at(old, old_len, scsc + last_offset, new_[scsc]);
            /* A detour's cost is looked at only for a match that wins without it. */
            if ((len == old_score && len != 0) ||
                (len - old_score > min_gain &&
                 len - old_score - min_gain >
                     detour_cost(old, old_len, new_, new_len, scan, len, pos - scan, last_offset, recent)))
                break;
            /* Step over the next positions, the faster the longer nothing
             * matched: a match found inside a run is stretched back to the
             * run's start, so the steps lose only runs shorter than a step. */
            misses = len < MISS_LEN && kind != LOOK_LOST ? misses + 1 : 0;
            if (++lost == use_grams_at && !(grams = pool_grams(pool))) {
                job->rc = FD_DIFF_ENOMEM;
                return;
            }
            step = miss_step(misses);
            for (int64_t k = 0; k < step && scan + k < scsc; k++)
                old_score -= same_at(old, old_len, scan + k + last_offset, new_[scan + k]);
            scan += step - 1;
            if (scsc < scan + 1)
                scsc = scan + 1;
        }

        if ((!aligned && len != old_score) || scan >= to) {
            int64_t i, score, best, len_fwd = 0, len_back = 0;

            if (scan > to)
                scan = to;
            for (i = 0, score = 0, best = 0; last_scan + i < scan && last_pos + i < old_len;) {
                /* Eight equal bytes at once (most of a copy): each raises
                 * score * 2 - i by one, so the last of them is the best
                 * point if any of them is. Byte by byte, this stretch was
                 * most of the scan of a near-identical image. */
                if (last_scan + i + 8 <= scan && last_pos + i + 8 <= old_len &&
                    memcmp(old + last_pos + i, new_ + last_scan + i, 8) == 0) {
                    score += 8;
                    i += 8;
                } else {
                    score += old[last_pos + i] == new_[last_scan + i];
                    i++;
                }
                if (score * 2 - i > best * 2 - len_fwd) {
                    best = score;
                    len_fwd = i;
                }
            }
            if (scan < to) {
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
            push_record(&job->records, last_scan, last_pos, len_fwd, (scan - len_back) - (last_scan + len_fwd));
            last_scan = scan - len_back;
            last_pos = pos - len_back;
            last_offset = pos - scan;
            remember(recent, last_offset);
        }
    }
    pool_step(pool, to - reported, reporter, NULL, NULL);
    job->rc = job->records.failed ? FD_DIFF_ENOMEM : FD_DIFF_OK;
}

/* Appends the differences of the COPY/ADD bytes of the group of len bytes at
 * start (inserted bytes have none); recs[k] covers one of its bytes. Groups
 * of two bytes or more also get them as sums: a byte's difference then takes
 * in the carry out of the byte before it, when that one was copied too
 * (FD_GROUP_SUMS, FD_GROUP_SPANS). */
static void write_group(const uint8_t *old, const uint8_t *copied, const uint8_t *new_, int64_t new_len,
                        const record *recs, size_t n, size_t k, int64_t start, int64_t len, fd_delta *d)
{
    int64_t stop = min64(start + len, new_len);
    unsigned carry = 0;

    while (k > 0 && recs[k].new_pos > start)
        k--;
    for (int64_t q = start; q < stop; q++) {
        while (k + 1 < n && q >= recs[k].new_pos + recs[k].add_len + recs[k].insert_len)
            k++;
        if (q < recs[k].new_pos + recs[k].add_len) {
            uint8_t from = copied ? copied[q] : old[recs[k].old_pos + (q - recs[k].new_pos)];
            uint8_t diff = (uint8_t)(new_[q] - from);
            fd_buf_byte(&d->words, diff);
            d->changed += diff != 0;
            if (len > 1) {
                uint8_t digit = (uint8_t)(diff - carry);
                fd_buf_byte(&d->sums, digit);
                d->carried += digit != diff;
                carry = (unsigned)from + digit + carry > 0xFF;
            }
        } else {
            carry = 0;
        }
    }
}

/* Writes the records (in new-image order, covering it) as streams, the
 * differences grouped by groups of len bytes that start at multiples of unit
 * (words: FD_WORD and FD_WORD; bytes: 1 and 1; spans: 1 and the span). Seeks
 * are derived from the absolute old positions, and records that produce
 * nothing are dropped. With relocated copies (relocated not NULL: a flag per
 * record), copied holds each record's copy as applied, at its new position,
 * and the copy lengths carry the flags. */
static void write_streams(const uint8_t *old, const uint8_t *new_, int64_t new_len, const record *recs, size_t n,
                          int64_t unit, int64_t len, const uint8_t *copied, const uint8_t *relocated, fd_delta *d)
{
    int64_t cursor = 0, last_end = 0, done = 0; /* new bytes before done are in groups already written */

    for (size_t k = 0; k < n; k++) {
        const record *r = &recs[k];
        if (r->add_len == 0 && r->insert_len == 0)
            continue;
        fd_buf_varint(&d->ctrl, fd_zigzag(r->add_len ? r->old_pos - cursor : 0));
        fd_buf_varint(&d->ctrl, relocated ? (uint64_t)r->add_len << 1 | relocated[k] : (uint64_t)r->add_len);
        fd_buf_varint(&d->ctrl, (uint64_t)r->insert_len);
        if (r->add_len)
            cursor = r->old_pos + r->add_len;
        fd_buf_append(&d->extra, new_ + r->new_pos + r->add_len, (size_t)r->insert_len);
        d->records++;
        d->copied += (uint64_t)r->add_len;
        d->inserted += (uint64_t)r->insert_len;
        d->relocated += relocated && relocated[k] ? (uint64_t)r->add_len : 0;
    }
    /* A group is changed when one of its COPY/ADD bytes differs: find those
     * bytes by comparing old and new along each record's copy run. */
    for (size_t k = 0; k < n; k++) {
        const record *r = &recs[k];
        int64_t end = r->new_pos + r->add_len, q = r->new_pos > done ? r->new_pos : done;
        while (q < end) {
            int64_t start;
            q += common_prefix(new_ + q, copied ? copied + q : old + r->old_pos + (q - r->new_pos), end - q);
            if (q >= end)
                break;
            start = q - q % unit;
            fd_buf_varint(&d->wmap, (uint64_t)((start - last_end) / unit));
            last_end = start + len;
            write_group(old, copied, new_, new_len, recs, n, k, start, len, d);
            q = done = start + len;
        }
    }
}

/* Takes ranges until none is left. */
static void scan_worker(scan_pool *pool, int reporter, fd_progress_fn progress, void *user)
{
    for (;;) {
        size_t j;
#ifdef FD_HAVE_PTHREADS
        if (pool->locked)
            pthread_mutex_lock(&pool->lock);
#endif
        j = pool->cancelled ? pool->njobs : pool->next_job;
        if (j < pool->njobs)
            pool->next_job++;
#ifdef FD_HAVE_PTHREADS
        if (pool->locked)
            pthread_mutex_unlock(&pool->lock);
#endif
        if (j >= pool->njobs)
            return;
        scan_range(&pool->jobs[j], reporter, progress, user);
    }
}

#ifdef FD_HAVE_PTHREADS
static void *part_thread(void *arg)
{
    part_build(arg);
    return NULL;
}

static void *scan_thread(void *arg)
{
    scan_worker(arg, 0, NULL, NULL);
    return NULL;
}
#endif

/* The end of the run of old[at]'s value that holds the RUN_MIN / 2 bytes
 * from at, and *start its start; at + 1 when those bytes are not one run. */
static int64_t run_at(const uint8_t *old, int64_t old_len, int64_t at, int64_t *start)
{
    const int64_t probe = RUN_MIN / 2;
    int64_t end;

    /* The bytes from at equal those one on when all of them are one value. */
    *start = at;
    if ((int64_t)fd_match_len(old + at, old + at + 1, (size_t)(probe - 1)) < probe - 1)
        return at + 1;
    end = at + probe;
    end += (int64_t)fd_match_len(old + end, old + end - 1, (size_t)(old_len - end));
    while (*start > 0 && old[*start - 1] == old[at])
        (*start)--;
    return end;
}

/* Fills the kept text and its cuts; none, and no kept text (kept_len is
 * old's), when they would leave out less than 1 / KEPT_LEFT_OUT of old. A run of RUN_MIN bytes holds
 * RUN_MIN / 2 of them from a multiple of RUN_MIN / 2, so only those offsets
 * are probed. */
static int cut_runs(fd_index *ix)
{
    const uint8_t *old = ix->old;
    const int64_t n = ix->old_len, probe = RUN_MIN / 2;
    int64_t at = 0, copied = 0, cap = 0;

    while (at + probe < n) {
        int64_t start = 0, end = run_at(old, n, at, &start);
        if (end - start >= RUN_MIN) {
            int64_t head = start + RUN_KEEP, tail = end - RUN_KEEP;
            if ((int64_t)ix->ncuts == cap) {
                text_cut *c = realloc(ix->cuts, (size_t)(cap = cap ? 2 * cap : 16) * sizeof *c);
                if (!c)
                    return FD_DIFF_ENOMEM;
                ix->cuts = c;
            }
            ix->kept_len += head - copied;
            ix->cuts[ix->ncuts].at = ix->kept_len;
            ix->cuts[ix->ncuts].shift = tail - ix->kept_len;
            ix->ncuts++;
            copied = tail;
        }
        at = end > at + 1 ? (end + probe - 1) / probe * probe : at + probe;
    }
    ix->kept_len += n - copied;
    if (!ix->ncuts || (n - ix->kept_len) * KEPT_LEFT_OUT < n) {
        ix->ncuts = 0;
        ix->kept_len = n;
        return FD_DIFF_OK;
    }
    ix->kept = malloc((size_t)ix->kept_len);
    if (!ix->kept)
        return FD_DIFF_ENOMEM;
    copied = 0;
    for (size_t k = 0; k <= ix->ncuts; k++) {
        int64_t from = k ? ix->cuts[k - 1].at + ix->cuts[k - 1].shift : 0;
        int64_t to = k < ix->ncuts ? ix->cuts[k].at + (k ? ix->cuts[k - 1].shift : 0) : n;
        memcpy(ix->kept + copied, old + from, (size_t)(to - from));
        copied += to - from;
    }
    return FD_DIFF_OK;
}

int fd_index_build(fd_index **out, const uint8_t *old, size_t old_size, int threads, fd_sort_fn sort)
{
    fd_index *ix;
    const uint8_t *text;
    int rc = FD_DIFF_OK;

    *out = NULL;
    if (old_size >= (size_t)INT32_MAX - PART_OVERLAP)
        return FD_DIFF_ETOOBIG;
    ix = calloc(1, sizeof *ix);
    if (!ix)
        return FD_DIFF_ENOMEM;
    ix->old = old;
    ix->old_len = (int64_t)old_size;
    if (cut_runs(ix) != FD_DIFF_OK) {
        fd_index_free(ix);
        return FD_DIFF_ENOMEM;
    }
    text = ix->kept ? ix->kept : old;
    ix->nparts = ix->kept_len >= SPLIT_MIN ? 2 : 1;
    if (ix->nparts == 2) {
        int64_t half = ix->kept_len / 2;
        ix->parts[0].text = text;
        ix->parts[0].len = half + PART_OVERLAP;
        ix->parts[1].text = text + half;
        ix->parts[1].base = half;
        ix->parts[1].len = ix->kept_len - half;
    } else {
        ix->parts[0].text = text;
        ix->parts[0].len = ix->kept_len;
    }
    for (int i = 0; i < ix->nparts; i++) {
        ix->parts[i].avail = ix->kept_len - ix->parts[i].base;
        ix->parts[i].sort = sort ? sort : fd_sais;
    }
#ifdef FD_HAVE_PTHREADS
    if (ix->nparts == 2 && threads > 1) {
        pthread_t t;
        if (pthread_create(&t, NULL, part_thread, &ix->parts[1]) == 0) {
            part_build(&ix->parts[0]);
            pthread_join(t, NULL);
        } else {
            part_build(&ix->parts[0]);
            part_build(&ix->parts[1]);
        }
    } else
#endif
    {
        (void)threads;
        for (int i = 0; i < ix->nparts; i++)
            part_build(&ix->parts[i]);
    }
    for (int i = 0; i < ix->nparts; i++)
        if (ix->parts[i].rc)
            rc = ix->parts[i].rc;
    if (rc) {
        fd_index_free(ix);
        return rc;
    }
    *out = ix;
    return FD_DIFF_OK;
}

void fd_index_free(fd_index *ix)
{
    if (!ix)
        return;
    for (int i = 0; i < 2; i++)
        part_free(&ix->parts[i]);
    free(ix->kept);
    free(ix->cuts);
    free(ix);
}

/* Whether record b, at the start of a range, can be joined to a, the last
 * one before it: b only inserts (or is empty: a range that starts off the
 * running alignment opens with one), or a inserts nothing and b copies from
 * where a's copy ends. Each range starts a record of its own; joined, such a
 * pair costs one record instead of two (on a patch of a few changed words in
 * a 2 MB image, 15 of its 98 bytes). */
static int continues(const record *a, const record *b)
{
    return b->add_len == 0 || (a->insert_len == 0 && b->old_pos == a->old_pos + a->add_len);
}

static void join(record *a, const record *b)
{
    a->add_len += b->add_len;
    a->insert_len += b->insert_len;
}

/* Scans new in ranges on up to params->threads threads (this one included)
 * and returns the records of all ranges in order (free *out). */
static int scan_all(const fd_index *ix, const uint8_t *new_, int64_t new_len, const fd_diff_params *params,
                    fd_progress_fn progress, void *user, record **out, size_t *count)
{
    scan_pool pool;
    size_t total = 0, n = 0;
    int rc = FD_DIFF_OK;

    *out = NULL;
    *count = 0;
    memset(&pool, 0, sizeof pool);
    pool.ix = ix;
    pool.new_ = new_;
    pool.new_len = new_len;
    pool.params = params;
    pool.njobs = new_len / RANGE_LEN > 0 ? (size_t)(new_len / RANGE_LEN) : 1;
    pool.jobs = calloc(pool.njobs, sizeof *pool.jobs);
    if (!pool.jobs)
        return FD_DIFF_ENOMEM;
    for (size_t j = 0; j < pool.njobs; j++) {
        pool.jobs[j].pool = &pool;
        pool.jobs[j].from = (int64_t)((uint64_t)new_len * j / pool.njobs);
        pool.jobs[j].to = (int64_t)((uint64_t)new_len * (j + 1) / pool.njobs);
    }
#ifdef FD_HAVE_PTHREADS
    {
        pthread_t helpers[FD_DIFF_MAX_THREADS];
        int nhelpers = 0;
        int want = params->threads < 1 ? 1 : params->threads > FD_DIFF_MAX_THREADS ? FD_DIFF_MAX_THREADS
                                                                                   : params->threads;
        if ((size_t)want > pool.njobs)
            want = (int)pool.njobs;
        if (want > 1 && pthread_mutex_init(&pool.lock, NULL) == 0) {
            pool.locked = 1;
            while (nhelpers < want - 1 && pthread_create(&helpers[nhelpers], NULL, scan_thread, &pool) == 0)
                nhelpers++;
        }
        scan_worker(&pool, 1, progress, user);
        for (int t = 0; t < nhelpers; t++)
            pthread_join(helpers[t], NULL);
        if (pool.locked)
            pthread_mutex_destroy(&pool.lock);
    }
#else
    scan_worker(&pool, 1, progress, user);
#endif
    for (size_t j = 0; j < pool.njobs; j++) {
        if (pool.jobs[j].rc && rc == FD_DIFF_OK)
            rc = pool.jobs[j].rc;
        total += pool.jobs[j].records.len;
    }
    if (pool.cancelled)
        rc = FD_DIFF_CANCELLED;
    if (rc == FD_DIFF_OK) {
        *out = malloc((total + 1) * sizeof **out);
        if (!*out)
            rc = FD_DIFF_ENOMEM;
    }
    for (size_t j = 0; j < pool.njobs; j++) {
        if (rc == FD_DIFF_OK && pool.jobs[j].records.len) {
            const record *first = pool.jobs[j].records.items;
            size_t len = pool.jobs[j].records.len;
            while (len && n && continues(&(*out)[n - 1], first)) {
                join(&(*out)[n - 1], first);
                first++;
                len--;
            }
            memcpy(*out + n, first, len * sizeof **out);
            n += len;
        }
        free(pool.jobs[j].records.items);
    }
    free(pool.jobs);
    free(pool.grams[0].bits);
    free(pool.grams[1].bits);
    if (rc == FD_DIFF_OK)
        *count = n;
    return rc;
}

int fd_diff_records(const fd_index *ix, const uint8_t *new_, size_t new_size, const fd_diff_params *params,
                    fd_record **out, size_t *count, fd_progress_fn progress, void *user)
{
    *out = NULL;
    *count = 0;
    if (new_size >= (size_t)INT32_MAX)
        return FD_DIFF_ETOOBIG;
    return scan_all(ix, new_, (int64_t)new_size, params, progress, user, out, count);
}

int fd_diff(const fd_index *ix, const uint8_t *new_, size_t new_size, const fd_diff_params *params,
            fd_delta *out, fd_progress_fn progress, void *user)
{
    const int64_t new_len = (int64_t)new_size;
    record *recs = NULL;
    size_t n = 0;
    int rc;

    memset(out, 0, sizeof *out);
    if (new_size >= (size_t)INT32_MAX)
        return FD_DIFF_ETOOBIG;
    rc = scan_all(ix, new_, new_len, params, progress, user, &recs, &n);
    if (rc == FD_DIFF_OK)
        write_streams(ix->old, new_, new_len, recs, n, FD_WORD, FD_WORD, NULL, NULL, out);
    free(recs);
    if (rc == FD_DIFF_OK && progress && progress(user, (uint64_t)new_len, (uint64_t)new_len))
        rc = FD_DIFF_CANCELLED;
    if (rc == FD_DIFF_OK &&
        (out->ctrl.failed || out->wmap.failed || out->words.failed || out->sums.failed || out->extra.failed))
        rc = FD_DIFF_ENOMEM;
    if (rc)
        fd_delta_free(out);
    return rc;
}

int fd_ctrl_records(const uint8_t *ctrl, size_t ctrl_len, size_t old_len, size_t new_len, fd_record **out,
                    size_t *count)
{
    record_list l;
    size_t at = 0;
    int64_t cursor = 0, pos = 0;

    *out = NULL;
    *count = 0;
    if (old_len >= (size_t)INT32_MAX || new_len >= (size_t)INT32_MAX)
        return FD_DIFF_ETOOBIG;
    memset(&l, 0, sizeof l);
    while (at < ctrl_len) {
        uint64_t f[3];
        for (int k = 0; k < 3; k++) {
            unsigned shift = 0;
            f[k] = 0;
            for (;;) {
                if (at >= ctrl_len || shift > 35) {
                    free(l.items);
                    return FD_DIFF_EINVAL;
                }
                f[k] |= (uint64_t)(ctrl[at] & 0x7F) << shift;
                shift += 7;
                if (!(ctrl[at++] & 0x80))
                    break;
            }
        }
        if (f[1]) {
            cursor += fd_unzigzag(f[0]);
            if (cursor < 0 || (uint64_t)cursor > old_len || f[1] > old_len - (uint64_t)cursor)
                break;
        }
        if (f[1] + f[2] > new_len - (uint64_t)pos)
            break;
        push_record(&l, pos, cursor, (int64_t)f[1], (int64_t)f[2]);
        cursor += (int64_t)f[1];
        pos += (int64_t)(f[1] + f[2]);
    }
    if (at < ctrl_len || (uint64_t)pos != new_len) {
        free(l.items);
        return FD_DIFF_EINVAL;
    }
    if (l.failed) {
        free(l.items);
        return FD_DIFF_ENOMEM;
    }
    *out = l.items;
    *count = l.len;
    return FD_DIFF_OK;
}

/* Words (FD_WORD, aligned in new) of new[pos, pos + len) that a differs in. */
static int64_t words_changed(const uint8_t *a, const uint8_t *new_, int64_t pos, int64_t len)
{
    int64_t count = 0;

    for (int64_t q = 0; q < len;) {
        int64_t end = min64(pos + q - (pos + q) % FD_WORD + FD_WORD - pos, len);
        count += memcmp(a + q, new_ + pos + q, (size_t)(end - q)) != 0;
        q = end;
    }
    return count;
}

/* Each record's copy into copied at its new position, relocated (its flag
 * set) where that leaves fewer words changed: relocated in place a piece at
 * a time, each piece's bytes as they were kept to compare, and copied again
 * from old where relocating loses. */
static void relocate_copies(const uint8_t *old, const uint8_t *new_, const record *recs, size_t n,
                            const fd_reloc *reloc, uint8_t *copied, uint8_t *relocated)
{
    uint8_t as_copied[FD_RELOC_PIECE];

    for (size_t k = 0; k < n; k++) {
        const record *r = &recs[k];
        uint8_t *at = copied + r->new_pos;
        int64_t as_is = 0, moved = 0;
        memcpy(at, old + r->old_pos, (size_t)r->add_len);
        for (int64_t q = 0; q < r->add_len; q += FD_RELOC_PIECE) {
            int64_t m = min64(FD_RELOC_PIECE, r->add_len - q);
            memcpy(as_copied, at + q, (size_t)m);
            fd_reloc_copy(reloc, at + q, (size_t)m, (uint64_t)(r->old_pos + q), (uint64_t)(r->new_pos + q));
            if (memcmp(as_copied, at + q, (size_t)m) == 0)
                continue;
            as_is += words_changed(as_copied, new_, r->new_pos + q, m);
            moved += words_changed(at + q, new_, r->new_pos + q, m);
        }
        relocated[k] = moved < as_is;
        if (!relocated[k])
            memcpy(at, old + r->old_pos, (size_t)r->add_len);
    }
}

int fd_delta_from_records(const uint8_t *old, size_t old_len, const uint8_t *new_, size_t new_len,
                          const fd_record *recs, size_t n, int grouping, size_t span, const fd_reloc *reloc,
                          fd_delta *out)
{
    int64_t pos = 0;
    uint8_t *copied = NULL, *relocated = NULL;

    memset(out, 0, sizeof *out);
    /* Words come with their sums (fd_diff's); sums alone are not asked for. */
    if (!fd_group_valid((unsigned)grouping, span) || grouping == FD_GROUP_SUMS)
        return FD_DIFF_EINVAL;
    for (size_t k = 0; k < n; k++) {
        const record *r = &recs[k];
        if (r->new_pos != pos || r->add_len < 0 || r->insert_len < 0 || r->old_pos < 0 ||
            r->old_pos + r->add_len > (int64_t)old_len)
            return FD_DIFF_EINVAL;
        pos += r->add_len + r->insert_len;
    }
    if (pos != (int64_t)new_len)
        return FD_DIFF_EINVAL;
    if (reloc) {
        if (fd_reloc_check(reloc) != FD_CODE_OK)
            return FD_DIFF_EINVAL;
        copied = malloc(new_len ? new_len : 1);
        relocated = malloc(n ? n : 1);
        if (!copied || !relocated) {
            free(copied);
            free(relocated);
            return FD_DIFF_ENOMEM;
        }
        relocate_copies(old, new_, recs, n, reloc, copied, relocated);
    }
    write_streams(old, new_, (int64_t)new_len, recs, n, fd_group_stride((unsigned)grouping),
                  fd_group_len((unsigned)grouping, (unsigned)span), copied, relocated, out);
    free(copied);
    free(relocated);
    if (out->ctrl.failed || out->wmap.failed || out->words.failed || out->sums.failed || out->extra.failed) {
        fd_delta_free(out);
        return FD_DIFF_ENOMEM;
    }
    return FD_DIFF_OK;
}
