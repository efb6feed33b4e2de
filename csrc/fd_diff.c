/* Match search over suffix arrays of the old image, then records whose copy
 * runs are stretched across scattered byte changes while at least half of
 * their bytes still match (the observation behind bsdiff).
 *
 * Large images are split in two: the old image into two overlapping parts
 * with a suffix array each, the new image into two ranges scanned on their
 * own. The split depends only on the sizes, so the output is the same with
 * or without threads; with FD_HAVE_PTHREADS the halves run on two cores. */
#include "fd_diff.h"

#include <stdlib.h>
#include <string.h>

#include "fd_sais.h"

#ifdef FD_HAVE_PTHREADS
#include <pthread.h>
#endif

#define PREFIX_BUCKETS 65536
#define PROGRESS_STEP (1 << 16)
/* Images from this size on are handled in two halves. */
#define SPLIT_MIN (1 << 20)
/* The first part of the old image reaches this far past its half, so that
 * matches crossing the middle are still found whole up to this length. */
#define PART_OVERLAP (1 << 16)

typedef struct {
    const uint8_t *text; /* old + base */
    int64_t base;
    int64_t len;
    int32_t *sa;
    int32_t *prefix; /* prefix[k]..prefix[k+1]: SA rows of suffixes starting with the 2 bytes k */
    int64_t row_shift[256];
    int rc;
} sa_part;

typedef fd_record record;

typedef struct {
    record *items;
    size_t len;
    size_t cap;
    int failed;
} record_list;

struct fd_index {
    const uint8_t *old;
    int64_t old_len;
    int nparts;
    sa_part parts[2];
};

typedef struct {
    const sa_part *parts;
    int nparts;
    const uint8_t *old;
    int64_t old_len;
    const uint8_t *new_;
    int64_t new_len;
    int64_t from;
    int64_t to;
    const fd_diff_params *params;
    fd_progress_fn progress; /* only the first range reports */
    void *user;
    record_list records;
    int rc;
} scan_job;

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

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static int64_t common_prefix(const uint8_t *a, const uint8_t *b, int64_t limit)
{
    return limit > 0 ? (int64_t)fd_match_len(a, b, (size_t)limit) : 0;
}

static void part_build(sa_part *p)
{
    const uint8_t *t = p->text;
    int64_t i, n = p->len;

    p->sa = malloc((size_t)(n ? n : 1) * sizeof *p->sa);
    p->prefix = calloc(PREFIX_BUCKETS + 1, sizeof *p->prefix);
    if (!p->sa || !p->prefix || fd_sais(t, p->sa, (int32_t)n)) {
        p->rc = FD_DIFF_ENOMEM;
        return;
    }
    /* Count suffixes of two bytes or more per 2-byte prefix. The one-byte
     * final suffix heads its first byte's group in the SA but is not
     * counted, so rows of groups from that byte on move down by one. */
    for (i = 0; i + 1 < n; i++)
        p->prefix[((uint32_t)t[i] << 8 | t[i + 1]) + 1]++;
    for (i = 0; i < PREFIX_BUCKETS; i++)
        p->prefix[i + 1] += p->prefix[i];
    for (i = 0; i < 256; i++)
        p->row_shift[i] = (n > 0 && i >= t[n - 1]) ? 1 : 0;
    p->rc = FD_DIFF_OK;
}

static void part_free(sa_part *p)
{
    free(p->sa);
    free(p->prefix);
}

/* Longest prefix of needle found in the part; its length, *pos its old offset. */
static int64_t part_match(const sa_part *p, const uint8_t *needle, int64_t needle_len, int64_t *pos)
{
    int64_t lo, hi, first, end, lo_lcp = 2, hi_lcp = 2, best = 0;
    uint32_t key;

    if (needle_len < 2 || p->len < 2)
        return 0;
    key = (uint32_t)needle[0] << 8 | needle[1];
    lo = first = p->prefix[key] + p->row_shift[needle[0]];
    hi = end = p->prefix[key + 1] + p->row_shift[needle[0]];
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2, s = p->sa[mid];
        int64_t k = min64(lo_lcp, hi_lcp);
        int64_t l = k + common_prefix(p->text + s + k, needle + k, min64(p->len - s, needle_len) - k);
        if (l == needle_len) {
            *pos = p->base + s;
            return l;
        }
        if (s + l == p->len || p->text[s + l] < needle[l]) {
            lo = mid + 1;
            lo_lcp = l;
        } else {
            hi = mid;
            hi_lcp = l;
        }
    }
    /* The longest match is next to the insertion point. */
    if (lo > first) {
        int64_t s = p->sa[lo - 1];
        best = common_prefix(p->text + s, needle, min64(p->len - s, needle_len));
        *pos = p->base + s;
    }
    if (lo < end) {
        int64_t s = p->sa[lo];
        int64_t l = common_prefix(p->text + s, needle, min64(p->len - s, needle_len));
        if (l > best) {
            best = l;
            *pos = p->base + s;
        }
    }
    return best;
}

static int64_t longest_match(const scan_job *job, const uint8_t *needle, int64_t needle_len, int64_t *pos)
{
    int64_t best = 0;

    for (int i = 0; i < job->nparts; i++) {
        int64_t at = 0, len = part_match(&job->parts[i], needle, needle_len, &at);
        if (len > best) {
            best = len;
            *pos = at;
        }
    }
    return best;
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

/* Covers new[from, to) with records. A new match starts a record when it
 * beats the running alignment (old offset of the previous match) by more
 * than min_gain bytes; each record's copy run is then stretched forward from
 * the previous match and backward from the new one while at least half of
 * the bytes agree, and what lies between is inserted. */
static void scan_range(scan_job *job)
{
    const uint8_t *old = job->old, *new_ = job->new_;
    const int64_t old_len = job->old_len, new_len = job->new_len, to = job->to;
    int64_t scan = job->from, len = 0, pos = 0, last_scan = job->from;
    /* The running alignment starts as the identity (new offset = old offset),
     * the best guess for a range that starts inside the image. last_pos and
     * last_offset must agree: a match on this alignment then extends the
     * current record instead of being taken as covered by it. */
    int64_t last_pos = min64(job->from, job->old_len), last_offset = last_pos - last_scan;
    int64_t next_report = scan;

    while (scan < to) {
        int64_t old_score = 0, scsc;

        for (scsc = scan += len; scan < to; scan++) {
            if (job->progress && scan >= next_report) {
                uint64_t done = (uint64_t)(scan - job->from) * (uint64_t)new_len / (uint64_t)(to - job->from);
                if (job->progress(job->user, done, (uint64_t)new_len)) {
                    job->rc = FD_DIFF_CANCELLED;
                    return;
                }
                next_report = scan + PROGRESS_STEP;
            }
            len = longest_match(job, new_ + scan, new_len - scan, &pos);
            if (len < job->params->min_match)
                len = 0;
            for (; scsc < scan + len; scsc++)
                old_score += same_at(old, old_len, scsc + last_offset, new_[scsc]);
            if ((len == old_score && len != 0) || len > old_score + job->params->min_gain)
                break;
            old_score -= same_at(old, old_len, scan + last_offset, new_[scan]);
        }

        if (len != old_score || scan >= to) {
            int64_t i, score, best, len_fwd = 0, len_back = 0;

            if (scan > to)
                scan = to;
            for (i = 0, score = 0, best = 0; last_scan + i < scan && last_pos + i < old_len;) {
                score += old[last_pos + i] == new_[last_scan + i];
                i++;
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
        }
    }
    job->rc = job->records.failed ? FD_DIFF_ENOMEM : FD_DIFF_OK;
}

/* Writes the records as streams. Seeks are derived from the absolute old
 * positions, and records that produce nothing are dropped. */
static int write_streams(const uint8_t *old, const uint8_t *new_, int64_t new_len, const scan_job *jobs,
                         int njobs, fd_delta *d)
{
    uint8_t *delta = calloc((size_t)new_len + 1, 1);   /* per new byte: difference, 0 if inserted */
    uint8_t *covered = calloc((size_t)new_len + 1, 1); /* per new byte: 1 if from COPY/ADD */
    int64_t cursor = 0, w, last = 0;

    if (!delta || !covered) {
        free(delta);
        free(covered);
        return FD_DIFF_ENOMEM;
    }
    for (int j = 0; j < njobs; j++) {
        for (size_t k = 0; k < jobs[j].records.len; k++) {
            const record *r = &jobs[j].records.items[k];
            if (r->add_len == 0 && r->insert_len == 0)
                continue;
            fd_buf_varint(&d->ctrl, fd_zigzag(r->add_len ? r->old_pos - cursor : 0));
            fd_buf_varint(&d->ctrl, (uint64_t)r->add_len);
            fd_buf_varint(&d->ctrl, (uint64_t)r->insert_len);
            if (r->add_len)
                cursor = r->old_pos + r->add_len;
            for (int64_t i = 0; i < r->add_len; i++) {
                uint8_t diff = (uint8_t)(new_[r->new_pos + i] - old[r->old_pos + i]);
                delta[r->new_pos + i] = diff;
                d->changed += diff != 0;
            }
            memset(covered + r->new_pos, 1, (size_t)r->add_len);
            fd_buf_append(&d->extra, new_ + r->new_pos + r->add_len, (size_t)r->insert_len);
            d->records++;
            d->copied += (uint64_t)r->add_len;
            d->inserted += (uint64_t)r->insert_len;
        }
    }
    for (w = 0; w * FD_WORD < new_len; w++) {
        int64_t start = w * FD_WORD, end = min64(start + FD_WORD, new_len), i;
        uint8_t changed = 0;
        for (i = start; i < end; i++)
            changed |= delta[i];
        if (!changed)
            continue;
        fd_buf_varint(&d->wmap, (uint64_t)(w - last));
        last = w + 1;
        for (i = start; i < end; i++)
            if (covered[i])
                fd_buf_byte(&d->words, delta[i]);
    }
    free(delta);
    free(covered);
    return FD_DIFF_OK;
}

#ifdef FD_HAVE_PTHREADS
static void *part_thread(void *arg)
{
    part_build(arg);
    return NULL;
}

static void *scan_thread(void *arg)
{
    scan_range(arg);
    return NULL;
}

/* Runs fn(a) on a second thread and fn(b) here; sequential if no thread. */
static void run_pair(void *(*fn)(void *), void *a, void *b)
{
    pthread_t t;
    if (pthread_create(&t, NULL, fn, b) != 0) {
        fn(a);
        fn(b);
        return;
    }
    fn(a);
    pthread_join(t, NULL);
}
#define RUN_PARTS(a, b) run_pair(part_thread, (a), (b))
#define RUN_SCANS(a, b) run_pair(scan_thread, (a), (b))
#else
#define RUN_PARTS(a, b) (part_build(a), part_build(b))
#define RUN_SCANS(a, b) (scan_range(a), scan_range(b))
#endif

int fd_index_build(fd_index **out, const uint8_t *old, size_t old_size)
{
    fd_index *ix;
    int rc = FD_DIFF_OK;

    *out = NULL;
    if (old_size >= (size_t)INT32_MAX - PART_OVERLAP)
        return FD_DIFF_ETOOBIG;
    ix = calloc(1, sizeof *ix);
    if (!ix)
        return FD_DIFF_ENOMEM;
    ix->old = old;
    ix->old_len = (int64_t)old_size;
    if (ix->old_len >= SPLIT_MIN) {
        int64_t half = ix->old_len / 2;
        ix->nparts = 2;
        ix->parts[0].text = old;
        ix->parts[0].len = half + PART_OVERLAP;
        ix->parts[1].text = old + half;
        ix->parts[1].base = half;
        ix->parts[1].len = ix->old_len - half;
        RUN_PARTS(&ix->parts[0], &ix->parts[1]);
    } else {
        ix->nparts = 1;
        ix->parts[0].text = old;
        ix->parts[0].len = ix->old_len;
        part_build(&ix->parts[0]);
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
    free(ix);
}

/* Runs the scan (two ranges on two threads for large images) into jobs[]. */
static int scan_all(const fd_index *ix, const uint8_t *new_, int64_t new_len, const fd_diff_params *params,
                    fd_progress_fn progress, void *user, scan_job jobs[2], int *njobs)
{
    int rc = FD_DIFF_OK;

    *njobs = new_len >= SPLIT_MIN ? 2 : 1;
    memset(jobs, 0, 2 * sizeof *jobs);
    for (int j = 0; j < *njobs; j++) {
        jobs[j].parts = ix->parts;
        jobs[j].nparts = ix->nparts;
        jobs[j].old = ix->old;
        jobs[j].old_len = ix->old_len;
        jobs[j].new_ = new_;
        jobs[j].new_len = new_len;
        jobs[j].from = j == 0 ? 0 : new_len / 2;
        jobs[j].to = (j == 0 && *njobs == 2) ? new_len / 2 : new_len;
        jobs[j].params = params;
    }
    jobs[0].progress = progress;
    jobs[0].user = user;
    if (*njobs == 2)
        RUN_SCANS(&jobs[0], &jobs[1]);
    else
        scan_range(&jobs[0]);
    for (int j = 0; j < *njobs; j++)
        if (jobs[j].rc)
            rc = jobs[j].rc;
    return rc;
}

int fd_diff_records(const fd_index *ix, const uint8_t *new_, size_t new_size, const fd_diff_params *params,
                    fd_record **out, size_t *count, fd_progress_fn progress, void *user)
{
    scan_job jobs[2];
    int njobs, rc;
    size_t n = 0;

    *out = NULL;
    *count = 0;
    if (new_size >= (size_t)INT32_MAX)
        return FD_DIFF_ETOOBIG;
    rc = scan_all(ix, new_, (int64_t)new_size, params, progress, user, jobs, &njobs);
    if (rc == FD_DIFF_OK) {
        *out = malloc((jobs[0].records.len + jobs[1].records.len + 1) * sizeof **out);
        if (!*out)
            rc = FD_DIFF_ENOMEM;
    }
    for (int j = 0; j < njobs && rc == FD_DIFF_OK; j++)
        for (size_t k = 0; k < jobs[j].records.len; k++)
            (*out)[n++] = jobs[j].records.items[k];
    for (int j = 0; j < 2; j++)
        free(jobs[j].records.items);
    *count = n;
    return rc;
}

int fd_diff(const fd_index *ix, const uint8_t *new_, size_t new_size, const fd_diff_params *params,
            fd_delta *out, fd_progress_fn progress, void *user)
{
    const int64_t new_len = (int64_t)new_size;
    scan_job jobs[2];
    int njobs, rc;

    memset(out, 0, sizeof *out);
    if (new_size >= (size_t)INT32_MAX)
        return FD_DIFF_ETOOBIG;
    rc = scan_all(ix, new_, new_len, params, progress, user, jobs, &njobs);
    if (rc == FD_DIFF_OK)
        rc = write_streams(ix->old, new_, new_len, jobs, njobs, out);
    if (rc == FD_DIFF_OK && progress && progress(user, (uint64_t)new_len, (uint64_t)new_len))
        rc = FD_DIFF_CANCELLED;
    for (int j = 0; j < 2; j++)
        free(jobs[j].records.items);
    if (rc == FD_DIFF_OK && (out->ctrl.failed || out->wmap.failed || out->words.failed || out->extra.failed))
        rc = FD_DIFF_ENOMEM;
    if (rc)
        fd_delta_free(out);
    return rc;
}
