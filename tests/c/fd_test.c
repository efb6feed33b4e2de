/* Test driver for the C core, meant to run under AddressSanitizer and
 * UndefinedBehaviorSanitizer.
 *
 * For generated image pairs and for pairs of files named on the command line
 * it makes a delta with fd_diff, applies it with fd_apply in memory mode and
 * in callback mode (tiny reader buffers, tiny work areas, short reads) and
 * checks the output. Then it damages the streams (truncations, byte changes,
 * left-over bytes, random garbage, wrong sizes) and checks that fd_apply
 * returns a known error code, that memory and callback mode agree, that no
 * callback is asked to read outside the old image or to write past the new
 * one, and that every truncation is reported. Failing callbacks must give
 * FD_EIO. A few hand-made streams cover cases fd_diff need not produce. Every
 * buffer handed to the core has exactly its size, so that the sanitizer sees
 * any access beyond it.
 *
 * usage: fd_test [--quick | --files-only] [--seeds DIR [--seeds-only]] [OLD NEW]...
 *   --quick       fewer and smaller generated cases
 *   --files-only  no generated cases, only the file pairs
 *   --seeds DIR   also write fuzzer seeds (tests/fuzz/fuzz_apply.c format)
 *   --seeds-only  write the seeds and skip the tests
 * Exit status 0 when every check passed. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_apply.h"
#include "fd_diff.h"
#include "fd_format.h"

#define NSTREAMS 4
static const char *const STREAM_NAMES[NSTREAMS] = {"ctrl", "wmap", "words", "extra"};

static unsigned long failures, checks, applies, mutants, mutant_errors;
static const char *current_case = "";

static void fail(const char *fmt, ...)
{
    va_list ap;
    failures++;
    if (failures > 50)
        return;
    fprintf(stderr, "FAIL [%s] ", current_case);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

#define CHECK(cond, ...)                                                                                 \
    do {                                                                                                 \
        checks++;                                                                                        \
        if (!(cond))                                                                                     \
            fail(__VA_ARGS__);                                                                           \
    } while (0)

/* ---- deterministic random numbers (splitmix64) ---- */

typedef struct {
    uint64_t s;
} rng_t;

static uint64_t rnd(rng_t *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static size_t rnd_below(rng_t *r, size_t n)
{
    return n ? (size_t)(rnd(r) % n) : 0;
}

/* ---- byte buffers of exact size ---- */

typedef struct {
    uint8_t *p;
    size_t n;
} bytes_t;

static void *xmalloc(size_t n)
{
    /* malloc(0) gives a distinct pointer with no usable bytes in glibc and
     * under ASan: any access through it is reported. */
    void *p = malloc(n);
    if (!p && n) {
        fprintf(stderr, "fd_test: out of memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
}

static bytes_t bytes_copy(const uint8_t *src, size_t n)
{
    bytes_t b;
    b.p = xmalloc(n);
    b.n = n;
    if (n)
        memcpy(b.p, src, n);
    return b;
}

static void bytes_free(bytes_t *b)
{
    free(b->p);
    b->p = NULL;
    b->n = 0;
}

/* A growable buffer used while generating images. */
typedef struct {
    uint8_t *p;
    size_t n, cap;
} vec_t;

static void vec_reserve(vec_t *v, size_t extra)
{
    if (v->n + extra > v->cap) {
        size_t cap = v->cap ? v->cap : 256;
        while (cap < v->n + extra)
            cap *= 2;
        v->p = realloc(v->p, cap);
        if (!v->p) {
            fprintf(stderr, "fd_test: out of memory\n");
            exit(2);
        }
        v->cap = cap;
    }
}

static void vec_put(vec_t *v, const uint8_t *src, size_t n)
{
    vec_reserve(v, n);
    if (n)
        memcpy(v->p + v->n, src, n);
    v->n += n;
}

static void vec_u32(vec_t *v, uint32_t x)
{
    uint8_t b[4];
    b[0] = (uint8_t)x;
    b[1] = (uint8_t)(x >> 8);
    b[2] = (uint8_t)(x >> 16);
    b[3] = (uint8_t)(x >> 24);
    vec_put(v, b, 4);
}

static bytes_t vec_take(vec_t *v, size_t n)
{
    bytes_t b = bytes_copy(v->p, n < v->n ? n : v->n);
    free(v->p);
    memset(v, 0, sizeof *v);
    return b;
}

/* ---- image generators ---- */

static bytes_t gen_random(rng_t *r, size_t n)
{
    bytes_t b;
    b.p = xmalloc(n);
    b.n = n;
    for (size_t i = 0; i < n; i++)
        b.p[i] = (uint8_t)rnd(r);
    return b;
}

static bytes_t gen_fill(size_t n, uint8_t v)
{
    bytes_t b;
    b.p = xmalloc(n);
    b.n = n;
    if (n)
        memset(b.p, v, n);
    return b;
}

static bytes_t gen_words(size_t n, uint32_t word)
{
    vec_t v = {NULL, 0, 0};
    while (v.n < n)
        vec_u32(&v, word);
    return vec_take(&v, n);
}

/* 32-bit firmware look-alike: instruction words from a small vocabulary,
 * address literals, strings and 0xFF padding. */
static bytes_t gen_firmware(rng_t *r, size_t n)
{
    static const char *const strs[] = {"error", "flash", "boot", "update", "version", "ok"};
    uint32_t ops[48];
    vec_t v = {NULL, 0, 0};
    for (size_t i = 0; i < 48; i++)
        ops[i] = (uint32_t)rnd(r);
    while (v.n < n) {
        size_t kind = rnd_below(r, 100), k, cnt;
        if (kind < 60) {
            cnt = 8 + rnd_below(r, 120);
            for (k = 0; k < cnt; k++)
                vec_u32(&v, ops[rnd_below(r, 48)] ^ (uint32_t)(rnd_below(r, 16) << 8));
        } else if (kind < 80) {
            cnt = 2 + rnd_below(r, 22);
            for (k = 0; k < cnt; k++)
                vec_u32(&v, 0x08000000u + 4u * (uint32_t)rnd_below(r, n / 4 + 1));
        } else if (kind < 93) {
            cnt = 2 + rnd_below(r, 18);
            for (k = 0; k < cnt; k++) {
                const char *s = strs[rnd_below(r, 6)];
                vec_put(&v, (const uint8_t *)s, strlen(s) + 1);
            }
        } else {
            uint8_t ff[256];
            memset(ff, 0xFF, sizeof ff);
            vec_put(&v, ff, 4 + rnd_below(r, 252));
        }
    }
    return vec_take(&v, n);
}

/* Firmware pieces between runs of one byte value (padding, erased flash) of
 * 1 to 96 KiB: the suffix arrays leave out the inside of the long ones. */
static bytes_t gen_padded(rng_t *r, size_t n)
{
    static const uint8_t fills[] = {0x00, 0xFF, 0x5A};
    vec_t v = {NULL, 0, 0};
    while (v.n < n) {
        size_t len = 1024 + rnd_below(r, 96 * 1024);
        bytes_t piece = rnd_below(r, 2) ? gen_firmware(r, len) : gen_fill(len, fills[rnd_below(r, 3)]);
        vec_put(&v, piece.p, piece.n);
        bytes_free(&piece);
    }
    return vec_take(&v, n);
}

/* A new version: word changes, overwrites, inserts and deletes. */
static bytes_t gen_mutate(rng_t *r, const bytes_t *img, size_t edits)
{
    vec_t v = {NULL, 0, 0};
    vec_put(&v, img->p, img->n);
    for (size_t e = 0; e < edits; e++) {
        size_t op = rnd_below(r, 100), pos = rnd_below(r, v.n + 1), len, i;
        if (op < 45 && v.n >= 4) {
            pos = rnd_below(r, v.n - 3) & ~(size_t)3;
            v.p[pos] = (uint8_t)(v.p[pos] + 4 * (1 + rnd_below(r, 4)));
        } else if (op < 65) {
            len = 1 + rnd_below(r, 64);
            for (i = 0; i < len && pos + i < v.n; i++)
                v.p[pos + i] = (uint8_t)rnd(r);
        } else if (op < 85) {
            len = 1 + rnd_below(r, 256);
            vec_reserve(&v, len);
            memmove(v.p + pos + len, v.p + pos, v.n - pos);
            for (i = 0; i < len; i++)
                v.p[pos + i] = (uint8_t)rnd(r);
            v.n += len;
        } else {
            len = 1 + rnd_below(r, 256);
            if (len > v.n - pos)
                len = v.n - pos;
            memmove(v.p + pos, v.p + pos + len, v.n - pos - len);
            v.n -= len;
        }
    }
    return vec_take(&v, SIZE_MAX);
}

/* The image cut in blocks that are put back in another order. */
static bytes_t gen_permute(rng_t *r, const bytes_t *img, size_t block)
{
    size_t nb = (img->n + block - 1) / block, i;
    size_t *order = xmalloc((nb ? nb : 1) * sizeof *order);
    vec_t v = {NULL, 0, 0};
    for (i = 0; i < nb; i++)
        order[i] = i;
    for (i = nb; i > 1; i--) {
        size_t j = rnd_below(r, i), t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    for (i = 0; i < nb; i++) {
        size_t start = order[i] * block, len = img->n - start < block ? img->n - start : block;
        vec_put(&v, img->p + start, len);
    }
    free(order);
    return vec_take(&v, SIZE_MAX);
}

/* ---- delta streams ---- */

typedef struct {
    bytes_t s[NSTREAMS];
    uint8_t grouping; /* of the differences in s[2]: FD_GROUP_* */
    uint8_t span;     /* bytes per span of FD_GROUP_SPANS */
} streams_t;

static void streams_free(streams_t *st)
{
    for (int i = 0; i < NSTREAMS; i++)
        bytes_free(&st->s[i]);
}

static streams_t streams_dup(const streams_t *st)
{
    streams_t out;
    for (int i = 0; i < NSTREAMS; i++)
        out.s[i] = bytes_copy(st->s[i].p, st->s[i].n);
    out.grouping = st->grouping;
    out.span = st->span;
    return out;
}

static int progress_calls;

static int count_progress(void *user, uint64_t done, uint64_t total)
{
    (void)user;
    progress_calls++;
    CHECK(done <= total, "progress done %llu > total %llu", (unsigned long long)done,
          (unsigned long long)total);
    return 0;
}

/* The delta's streams in out, and with sums (unless NULL) the same with the
 * differences as sums. */
static int make_delta(const bytes_t *old, const bytes_t *new_, int32_t min_gain, streams_t *out, streams_t *sums)
{
    fd_index *ix = NULL;
    fd_diff_params params;
    fd_delta d;
    int rc = fd_index_build(&ix, old->p, old->n, 2, NULL);
    if (rc != FD_DIFF_OK) {
        fail("fd_index_build returned %d", rc);
        return -1;
    }
    fd_diff_default_params(&params);
    params.min_gain = min_gain;
    rc = fd_diff(ix, new_->p, new_->n, &params, &d, count_progress, NULL);
    if (rc == FD_DIFF_OK && new_->n >= (1u << 20)) {
        /* Several ranges: threads take them in any order, the streams must not change. */
        fd_delta t;
        params.threads = 3;
        rc = fd_diff(ix, new_->p, new_->n, &params, &t, NULL, NULL);
        if (rc == FD_DIFF_OK) {
            const fd_buf *a[4] = {&d.ctrl, &d.wmap, &d.words, &d.extra}, *b[4] = {&t.ctrl, &t.wmap, &t.words, &t.extra};
            for (int k = 0; k < 4; k++)
                CHECK(a[k]->len == b[k]->len && (a[k]->len == 0 || !memcmp(a[k]->data, b[k]->data, a[k]->len)),
                      "stream %s differs with 3 threads", STREAM_NAMES[k]);
            fd_delta_free(&t);
        } else
            fd_delta_free(&d);
    }
    fd_index_free(ix);
    if (rc != FD_DIFF_OK) {
        fail("fd_diff returned %d", rc);
        return -1;
    }
    out->s[0] = bytes_copy(d.ctrl.data, d.ctrl.len);
    out->s[1] = bytes_copy(d.wmap.data, d.wmap.len);
    out->s[2] = bytes_copy(d.words.data, d.words.len);
    out->s[3] = bytes_copy(d.extra.data, d.extra.len);
    out->grouping = FD_GROUP_WORDS;
    out->span = 0;
    CHECK(d.sums.len == d.words.len, "sums %zu bytes, words %zu", d.sums.len, d.words.len);
    if (sums) {
        *sums = streams_dup(out);
        bytes_free(&sums->s[2]);
        sums->s[2] = bytes_copy(d.sums.data, d.sums.len);
        sums->grouping = FD_GROUP_SUMS;
    }
    CHECK(d.copied + d.inserted == new_->n, "copied %llu + inserted %llu != new size %zu",
          (unsigned long long)d.copied, (unsigned long long)d.inserted, new_->n);
    CHECK(d.extra.len == d.inserted, "extra stream %zu bytes, inserted %llu", d.extra.len,
          (unsigned long long)d.inserted);
    fd_delta_free(&d);
    return 0;
}

/* ---- apply, memory mode ---- */

typedef struct {
    int rc;
    bytes_t out; /* the new image (memory mode: whatever was written, even on error) */
} result_t;

static const uint8_t *nonnull(const bytes_t *b)
{
    static const uint8_t empty_marker;
    return b->p ? b->p : &empty_marker;
}

static result_t apply_memory(const bytes_t *old, const streams_t *st, uint64_t new_len)
{
    static uint8_t scratch[1];
    fd_apply_ctx ctx;
    result_t res;
    memset(&ctx, 0, sizeof ctx);
    res.out.p = xmalloc((size_t)new_len);
    res.out.n = (size_t)new_len;
    if (new_len)
        memset(res.out.p, 0xA5, (size_t)new_len);
    ctx.old = nonnull(old);
    ctx.old_len = old->n;
    ctx.out = res.out.p ? res.out.p : scratch;
    ctx.new_len = new_len;
    ctx.grouping = st->grouping;
    ctx.span = st->span;
    fd_reader_init_mem(&ctx.ctrl, nonnull(&st->s[0]), st->s[0].n);
    fd_reader_init_mem(&ctx.wmap, nonnull(&st->s[1]), st->s[1].n);
    fd_reader_init_mem(&ctx.words, nonnull(&st->s[2]), st->s[2].n);
    fd_reader_init_mem(&ctx.extra, nonnull(&st->s[3]), st->s[3].n);
    res.rc = fd_apply(&ctx);
    applies++;
    return res;
}

/* ---- apply, callback mode ---- */

typedef struct {
    size_t reader_cap; /* bytes in each fd_reader buffer */
    size_t max_chunk;  /* a fill returns at most this many bytes (short reads) */
    size_t work_len;
    int old_in_memory; /* old through ctx.old instead of read_old */
    long fail_after;   /* callbacks fail from this call on (-1: never) */
    int overfill;      /* a fill claims more than cap */
} cb_config;

typedef struct {
    const uint8_t *data;
    size_t len, pos;
    rng_t rng;
    const cb_config *cfg;
    long *calls;
} fill_state;

typedef struct {
    const bytes_t *old;
    const cb_config *cfg;
    long *calls;
    int violations;
} old_state;

typedef struct {
    vec_t out;
    uint64_t new_len;
    const cb_config *cfg;
    long *calls;
    int violations;
} out_state;

static int cb_should_fail(const cb_config *cfg, long *calls)
{
    return cfg->fail_after >= 0 && (*calls)++ >= cfg->fail_after;
}

static int fill_cb(void *user, uint8_t *buf, size_t cap, size_t *got)
{
    fill_state *f = user;
    size_t n = f->len - f->pos;
    if (cb_should_fail(f->cfg, f->calls))
        return 1;
    if (n > cap)
        n = cap;
    if (f->cfg->max_chunk && n > 1) {
        size_t lim = 1 + rnd_below(&f->rng, f->cfg->max_chunk);
        if (n > lim)
            n = lim;
    }
    if (n)
        memcpy(buf, f->data + f->pos, n);
    f->pos += n;
    *got = f->cfg->overfill && n ? cap + 1 : n;
    return 0;
}

static int read_old_cb(void *user, uint64_t offset, uint8_t *dst, size_t len)
{
    old_state *o = user;
    if (cb_should_fail(o->cfg, o->calls))
        return 1;
    if (offset > o->old->n || len > o->old->n - offset) {
        o->violations++;
        return 1;
    }
    if (len)
        memcpy(dst, o->old->p + offset, len);
    return 0;
}

static int write_cb(void *user, const uint8_t *src, size_t len)
{
    out_state *o = user;
    if (cb_should_fail(o->cfg, o->calls))
        return 1;
    if (len == 0 || len > o->cfg->work_len || o->out.n + len > o->new_len) {
        o->violations++;
        return 1;
    }
    vec_put(&o->out, src, len);
    return 0;
}

static result_t apply_callbacks(const bytes_t *old, const streams_t *st, uint64_t new_len,
                                const cb_config *cfg, uint64_t seed)
{
    fd_apply_ctx ctx;
    fill_state fills[NSTREAMS];
    uint8_t *bufs[NSTREAMS];
    fd_reader *readers[NSTREAMS];
    old_state os;
    out_state ws;
    uint8_t *work = xmalloc(cfg->work_len);
    long calls = 0;
    result_t res;

    memset(&ctx, 0, sizeof ctx);
    ctx.grouping = st->grouping;
    ctx.span = st->span;
    readers[0] = &ctx.ctrl;
    readers[1] = &ctx.wmap;
    readers[2] = &ctx.words;
    readers[3] = &ctx.extra;
    os.old = old;
    os.cfg = cfg;
    os.calls = &calls;
    os.violations = 0;
    memset(&ws, 0, sizeof ws);
    ws.new_len = new_len;
    ws.cfg = cfg;
    ws.calls = &calls;
    if (cfg->old_in_memory) {
        ctx.old = nonnull(old);
    } else {
        ctx.read_old = read_old_cb;
        ctx.old_user = &os;
    }
    ctx.old_len = old->n;
    ctx.write_out = write_cb;
    ctx.out_user = &ws;
    ctx.new_len = new_len;
    ctx.work = work;
    ctx.work_len = cfg->work_len;
    for (int i = 0; i < NSTREAMS; i++) {
        fills[i].data = st->s[i].p;
        fills[i].len = st->s[i].n;
        fills[i].pos = 0;
        fills[i].rng.s = seed + (uint64_t)i;
        fills[i].cfg = cfg;
        fills[i].calls = &calls;
        bufs[i] = xmalloc(cfg->reader_cap);
        fd_reader_init_fill(readers[i], fill_cb, &fills[i], bufs[i], cfg->reader_cap);
    }
    res.rc = fd_apply(&ctx);
    applies++;
    CHECK(os.violations == 0, "read_old asked for bytes outside the old image (%d times)", os.violations);
    CHECK(ws.violations == 0, "write_out got an empty, oversized or out-of-image chunk (%d times)",
          ws.violations);
    for (int i = 0; i < NSTREAMS; i++)
        free(bufs[i]);
    free(work);
    res.out = vec_take(&ws.out, SIZE_MAX);
    return res;
}

static const cb_config CB_CONFIGS[] = {
    {1, 0, FD_APPLY_MIN_WORK, 0, -1, 0},    {2, 1, FD_APPLY_MIN_WORK + 1, 0, -1, 0},
    {3, 2, 67, 1, -1, 0},                   {7, 5, 100, 0, -1, 0},
    {16, 16, 4096, 1, -1, 0},               {4096, 1000, 65536, 0, -1, 0},
};
#define N_CB_CONFIGS (sizeof CB_CONFIGS / sizeof CB_CONFIGS[0])

static int rc_known(int rc)
{
    return rc == FD_OK || rc == FD_ETRUNCATED || rc == FD_ECORRUPT;
}

/* ---- checks ---- */

/* Memory mode and one callback configuration on the same input must agree. */
static int apply_both(const bytes_t *old, const streams_t *st, uint64_t new_len, size_t cfg_index,
                      uint64_t seed, result_t *mem_out)
{
    const cb_config *cfg = &CB_CONFIGS[cfg_index % N_CB_CONFIGS];
    result_t mem = apply_memory(old, st, new_len);
    result_t cb = apply_callbacks(old, st, new_len, cfg, seed);
    CHECK(rc_known(mem.rc), "memory mode returned unexpected code %d", mem.rc);
    CHECK(mem.rc == cb.rc, "memory mode returned %d, callback mode (config %zu) %d", mem.rc,
          cfg_index % N_CB_CONFIGS, cb.rc);
    if (mem.rc == FD_OK && cb.rc == FD_OK) {
        CHECK(cb.out.n == new_len, "callback mode wrote %zu bytes, expected %llu", cb.out.n,
              (unsigned long long)new_len);
        CHECK(cb.out.n == mem.out.n && (!cb.out.n || memcmp(cb.out.p, mem.out.p, cb.out.n) == 0),
              "memory and callback mode disagree on the output");
    }
    bytes_free(&cb.out);
    if (mem_out)
        *mem_out = mem;
    else
        bytes_free(&mem.out);
    return mem.rc;
}

static void check_roundtrip(const bytes_t *old, const bytes_t *new_, const streams_t *st)
{
    result_t mem = apply_memory(old, st, new_->n);
    CHECK(mem.rc == FD_OK, "round trip: fd_apply (memory) returned %d (%s)", mem.rc, fd_strerror(mem.rc));
    if (mem.rc == FD_OK)
        CHECK(!new_->n || memcmp(mem.out.p, new_->p, new_->n) == 0, "round trip: wrong output (memory)");
    bytes_free(&mem.out);
    for (size_t k = 0; k < N_CB_CONFIGS; k++) {
        result_t cb = apply_callbacks(old, st, new_->n, &CB_CONFIGS[k], 1000 + k);
        CHECK(cb.rc == FD_OK, "round trip: fd_apply (callbacks, config %zu) returned %d (%s)", k, cb.rc,
              fd_strerror(cb.rc));
        if (cb.rc == FD_OK)
            CHECK(cb.out.n == new_->n && (!cb.out.n || memcmp(cb.out.p, new_->p, new_->n) == 0),
                  "round trip: wrong output (callbacks, config %zu)", k);
        bytes_free(&cb.out);
    }
}

/* Failing callbacks and bad parameters. */
static void check_failures(const bytes_t *old, const streams_t *st, uint64_t new_len)
{
    long total_calls;
    cb_config cfg = {5, 3, FD_APPLY_MIN_WORK, 0, -1, 0};
    result_t r = apply_callbacks(old, st, new_len, &cfg, 7);
    bytes_free(&r.out);
    if (r.rc != FD_OK)
        return;
    /* Fail at a spread of callback numbers until a run gets through. */
    for (total_calls = 0; total_calls < 400; total_calls += 1 + total_calls / 4) {
        cfg.fail_after = total_calls;
        r = apply_callbacks(old, st, new_len, &cfg, 7);
        CHECK(r.rc == FD_EIO || r.rc == FD_OK, "callback failing at call %ld gave %d, not FD_EIO", total_calls,
              r.rc);
        bytes_free(&r.out);
        if (r.rc == FD_OK)
            break;
    }
    cfg.fail_after = -1;
    cfg.overfill = 1;
    r = apply_callbacks(old, st, new_len, &cfg, 7);
    if (new_len > 0)
        CHECK(r.rc == FD_EIO, "a fill that claims more than cap gave %d, not FD_EIO", r.rc);
    bytes_free(&r.out);

    {
        fd_apply_ctx ctx;
        uint8_t small[FD_APPLY_MIN_WORK - 1];
        memset(&ctx, 0, sizeof ctx);
        ctx.old = nonnull(old);
        ctx.old_len = old->n;
        ctx.new_len = new_len;
        fd_reader_init_mem(&ctx.ctrl, nonnull(&st->s[0]), st->s[0].n);
        fd_reader_init_mem(&ctx.wmap, nonnull(&st->s[1]), st->s[1].n);
        fd_reader_init_mem(&ctx.words, nonnull(&st->s[2]), st->s[2].n);
        fd_reader_init_mem(&ctx.extra, nonnull(&st->s[3]), st->s[3].n);
        CHECK(fd_apply(&ctx) == FD_EPARAM, "no output at all must give FD_EPARAM");
        ctx.write_out = write_cb;
        ctx.work = small;
        ctx.work_len = sizeof small;
        CHECK(fd_apply(&ctx) == FD_EPARAM, "a work area under FD_APPLY_MIN_WORK must give FD_EPARAM");
        ctx.work = NULL;
        ctx.work_len = 4096;
        CHECK(fd_apply(&ctx) == FD_EPARAM, "a NULL work area must give FD_EPARAM");
        ctx.old = NULL;
        CHECK(fd_apply(&ctx) == FD_EPARAM, "no old image at all must give FD_EPARAM");
    }
    CHECK(strlen(fd_strerror(FD_ECORRUPT)) > 0 && strlen(fd_strerror(12345)) > 0, "fd_strerror");
}

static void mutant_result(int rc, int must_fail, const char *what, size_t a, size_t b)
{
    mutants++;
    if (rc != FD_OK)
        mutant_errors++;
    if (must_fail)
        CHECK(rc != FD_OK, "%s (%zu, %zu) was not reported", what, a, b);
}

/* Damaged streams: truncations, byte changes, trailing bytes, garbage, sizes. */
static void check_mutations(const bytes_t *old, const bytes_t *new_, const streams_t *st, rng_t *r,
                            size_t budget)
{
    static const uint8_t xors[] = {0x01, 0x80, 0xFF, 0x40};
    size_t cfg = 0;
    for (int s = 0; s < NSTREAMS; s++) {
        size_t n = st->s[s].n, step = n <= budget ? 1 : n / budget + 1, len, pos;
        /* Every truncation loses data the records need. */
        for (len = 0; len < n; len += (len < 16 || n - len < 16) ? 1 : step) {
            streams_t m = streams_dup(st);
            bytes_free(&m.s[s]);
            m.s[s] = bytes_copy(st->s[s].p, len);
            mutant_result(apply_both(old, &m, new_->n, cfg++, len, NULL), 1, STREAM_NAMES[s], len, n);
            streams_free(&m);
        }
        /* Byte changes. */
        for (pos = 0; pos < n; pos += step) {
            for (size_t x = 0; x < sizeof xors; x++) {
                streams_t m = streams_dup(st);
                m.s[s].p[pos] ^= xors[x];
                mutant_result(apply_both(old, &m, new_->n, cfg++, pos, NULL), 0, STREAM_NAMES[s], pos, x);
                streams_free(&m);
            }
        }
        /* Left-over bytes after the last record are corrupt data. */
        {
            streams_t m = streams_dup(st);
            vec_t v = {NULL, 0, 0};
            uint8_t extra_byte = 0;
            vec_put(&v, st->s[s].p, n);
            vec_put(&v, &extra_byte, 1);
            bytes_free(&m.s[s]);
            m.s[s] = vec_take(&v, SIZE_MAX);
            mutant_result(apply_both(old, &m, new_->n, cfg++, 0, NULL), s != 1, "trailing byte", 0, (size_t)s);
            streams_free(&m);
        }
        /* Random garbage of random length. */
        for (int k = 0; k < 8; k++) {
            streams_t m = streams_dup(st);
            bytes_free(&m.s[s]);
            m.s[s] = gen_random(r, rnd_below(r, 2 * n + 16));
            mutant_result(apply_both(old, &m, new_->n, cfg++, (size_t)k, NULL), 0, "garbage", 0, 0);
            streams_free(&m);
        }
    }
    /* All streams garbage. */
    for (int k = 0; k < 16; k++) {
        streams_t m;
        for (int s = 0; s < NSTREAMS; s++)
            m.s[s] = gen_random(r, rnd_below(r, 64));
        m.grouping = (uint8_t)(k % 4);
        m.span = (uint8_t)(FD_SPAN_MIN + k / 4 % (FD_SPAN_MAX - FD_SPAN_MIN + 1));
        mutant_result(apply_both(old, &m, new_->n, cfg++, (size_t)k, NULL), 0, "all garbage", 0, 0);
        streams_free(&m);
    }
    /* Wrong new size, wrong (shorter or longer) old image. */
    {
        uint64_t sizes[5];
        sizes[0] = new_->n ? new_->n - 1 : 0;
        sizes[1] = new_->n + 1;
        sizes[2] = 0;
        sizes[3] = 2 * (uint64_t)new_->n + 64;
        sizes[4] = new_->n / 2;
        for (int k = 0; k < 5; k++) {
            mutant_result(apply_both(old, st, sizes[k], cfg++, (size_t)k, NULL), sizes[k] != new_->n,
                          "new size", (size_t)sizes[k], new_->n);
        }
        if (old->n > 0) {
            bytes_t shorter = bytes_copy(old->p, old->n - 1 - rnd_below(r, old->n));
            mutant_result(apply_both(&shorter, st, new_->n, cfg++, 0, NULL), 0, "shorter old", shorter.n, old->n);
            bytes_free(&shorter);
        }
        {
            bytes_t longer = gen_random(r, old->n + 100);
            if (old->n)
                memcpy(longer.p, old->p, old->n);
            mutant_result(apply_both(&longer, st, new_->n, cfg++, 0, NULL), 0, "longer old", longer.n, old->n);
            bytes_free(&longer);
        }
    }
}

/* ---- hand-made streams ---- */

/* A fill callback that always fails. */
static int failing_fill(void *user, uint8_t *buf, size_t cap, size_t *got)
{
    (void)user;
    (void)buf;
    (void)cap;
    *got = 0;
    return 1;
}

/* Regressions that need exact streams rather than whatever fd_diff makes. */
static void handmade_cases(void)
{
    /* A 7-byte image whose last, partial word has a changed byte: the changed
     * word runs past the end of the last COPY span. */
    {
        static const uint8_t old_img[7] = {10, 20, 30, 40, 50, 60, 70};
        static const uint8_t new_img[7] = {10, 20, 30, 40, 51, 60, 70};
        static const uint8_t ctrl[3] = {0, 7, 0}; /* seek 0, copy 7, insert 0 */
        static const uint8_t wmap[1] = {1};       /* word 1 (bytes 4..6) changed */
        static const uint8_t words[3] = {1, 0, 0};
        bytes_t old = bytes_copy(old_img, sizeof old_img), new_ = bytes_copy(new_img, sizeof new_img);
        streams_t st;
        current_case = "changed partial last word";
        st.s[0] = bytes_copy(ctrl, sizeof ctrl);
        st.s[1] = bytes_copy(wmap, sizeof wmap);
        st.s[2] = bytes_copy(words, sizeof words);
        st.s[3] = bytes_copy(NULL, 0);
        st.grouping = FD_GROUP_WORDS;
        st.span = 0;
        check_roundtrip(&old, &new_, &st);
        streams_free(&st);
        bytes_free(&old);
        bytes_free(&new_);
    }
    /* A failing fill callback met where fd_apply asks whether a stream has
     * ended is an I/O error, not corrupt data. */
    {
        fd_apply_ctx ctx;
        uint8_t out[1] = {0}, buf[4] = {0};
        int rc;
        current_case = "failing fill at end of stream";
        memset(&ctx, 0, sizeof ctx);
        ctx.old = out;
        ctx.out = out;
        fd_reader_init_mem(&ctx.wmap, out, 0);
        fd_reader_init_mem(&ctx.words, out, 0);
        fd_reader_init_mem(&ctx.extra, out, 0);
        fd_reader_init_fill(&ctx.ctrl, failing_fill, NULL, buf, sizeof buf);
        rc = fd_apply(&ctx);
        CHECK(rc == FD_EIO, "a failing fill at the end-of-stream check gave %d, not FD_EIO", rc);
    }
}

/* ---- fuzzer seeds ---- */

static const char *seed_dir;
static unsigned seed_count;

/* Format of tests/fuzz/fuzz_apply.c: cfg0, cfg1, new_len (u16 LE), then the
 * lengths of old, ctrl, wmap and words (u16 LE each), then old, ctrl, wmap,
 * words and extra (the rest). */
static void write_seed(const bytes_t *old, const streams_t *st, size_t new_len)
{
    char path[4096];
    FILE *f;
    uint8_t hdr[12];
    size_t lens[5];
    if (!seed_dir || new_len > 0xFFFF || old->n > 0xFFFF)
        return;
    lens[0] = old->n;
    for (int i = 0; i < NSTREAMS; i++)
        lens[i + 1] = st->s[i].n;
    for (int i = 0; i < 4; i++)
        if (lens[i] > 0xFFFF)
            return;
    hdr[0] = (uint8_t)(seed_count * 37u);
    /* The grouping is hdr[1] % 6: FD_GROUP_* below 3, else spans of hdr[1] % 6 - 1 bytes. */
    hdr[1] = (uint8_t)(6 * (seed_count * 11u % 42) + (st->grouping == FD_GROUP_SPANS ? st->span + 1u : st->grouping));
    hdr[2] = (uint8_t)new_len;
    hdr[3] = (uint8_t)(new_len >> 8);
    for (int i = 0; i < 4; i++) {
        hdr[4 + 2 * i] = (uint8_t)lens[i];
        hdr[5 + 2 * i] = (uint8_t)(lens[i] >> 8);
    }
    snprintf(path, sizeof path, "%s/seed-%04u", seed_dir, seed_count++);
    f = fopen(path, "wb");
    if (!f) {
        fail("cannot write seed %s", path);
        return;
    }
    fwrite(hdr, 1, sizeof hdr, f);
    if (old->n)
        fwrite(old->p, 1, old->n, f);
    for (int i = 0; i < NSTREAMS; i++)
        if (st->s[i].n)
            fwrite(st->s[i].p, 1, st->s[i].n, f);
    fclose(f);
}

/* ---- one case ---- */

/* The delta along st's records with its differences as sums of spans of
 * span bytes (fd_delta_from_records). */
static int make_spans(const bytes_t *old, const bytes_t *new_, const streams_t *st, uint8_t span, streams_t *out)
{
    fd_record *recs = NULL;
    size_t n = 0;
    fd_delta d;
    int rc = fd_ctrl_records(nonnull(&st->s[0]), st->s[0].n, old->n, new_->n, &recs, &n);
    if (rc == FD_DIFF_OK)
        rc = fd_delta_from_records(nonnull(old), old->n, nonnull(new_), new_->n, recs, n, FD_GROUP_SPANS, span, NULL,
                                   &d);
    free(recs);
    if (rc != FD_DIFF_OK) {
        fail("spans of %u bytes: fd_delta_from_records returned %d", span, rc);
        return -1;
    }
    *out = streams_dup(st);
    bytes_free(&out->s[1]);
    bytes_free(&out->s[2]);
    out->s[1] = bytes_copy(d.wmap.data, d.wmap.len);
    out->s[2] = bytes_copy(d.sums.data, d.sums.len);
    out->grouping = FD_GROUP_SPANS;
    out->span = span;
    CHECK(d.sums.len == d.words.len, "span sums %zu bytes, differences %zu", d.sums.len, d.words.len);
    fd_delta_free(&d);
    return 0;
}

static void run_case(const char *name, const bytes_t *old, const bytes_t *new_, rng_t *r, size_t budget)
{
    static const int32_t gains[] = {8, 4, 16};
    current_case = name;
    for (size_t g = 0; g < sizeof gains / sizeof gains[0]; g++) {
        streams_t st, sums, spans;
        /* Each span length in turn, one per threshold. */
        const uint8_t span = (uint8_t)(FD_SPAN_MIN + g % (FD_SPAN_MAX - FD_SPAN_MIN + 1));
        if (make_delta(old, new_, gains[g], &st, &sums))
            return;
        if (make_spans(old, new_, &st, span, &spans)) {
            streams_free(&st);
            streams_free(&sums);
            return;
        }
        check_roundtrip(old, new_, &st);
        check_roundtrip(old, new_, &sums);
        check_roundtrip(old, new_, &spans);
        if (g == 0) {
            check_failures(old, &st, new_->n);
            check_mutations(old, new_, &st, r, budget);
            check_mutations(old, new_, &sums, r, budget / 4);
            check_mutations(old, new_, &spans, r, budget / 4);
            write_seed(old, &st, new_->n);
            write_seed(old, &sums, new_->n);
            write_seed(old, &spans, new_->n);
        }
        streams_free(&st);
        streams_free(&sums);
        streams_free(&spans);
    }
}

static bytes_t read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    vec_t v = {NULL, 0, 0};
    uint8_t buf[65536];
    size_t n;
    if (!f) {
        fprintf(stderr, "fd_test: cannot open %s\n", path);
        exit(2);
    }
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        vec_put(&v, buf, n);
    fclose(f);
    return vec_take(&v, SIZE_MAX);
}

static void generated_cases(int quick)
{
    rng_t r = {12345};
    char name[128];
    size_t sizes_full[] = {0, 1, 2, 3, 4, 5, 7, 8, 63, 64, 65, 255, 1000, 4099, 65536 + 3, 300000};
    size_t sizes_quick[] = {0, 1, 3, 4, 5, 64, 1000, 4099, 40000};
    size_t *sizes = quick ? sizes_quick : sizes_full;
    size_t nsizes = quick ? sizeof sizes_quick / sizeof *sizes : sizeof sizes_full / sizeof *sizes;

    for (size_t i = 0; i < nsizes; i++) {
        size_t n = sizes[i], budget = n > 10000 ? 48 : 200;
        bytes_t a = gen_firmware(&r, n), b = gen_mutate(&r, &a, 1 + n / 500), c = gen_random(&r, n);
        bytes_t e = gen_fill(0, 0);
        snprintf(name, sizeof name, "firmware %zu -> mutated", n);
        run_case(name, &a, &b, &r, budget);
        snprintf(name, sizeof name, "firmware %zu -> identical", n);
        run_case(name, &a, &a, &r, budget / 4);
        snprintf(name, sizeof name, "random %zu -> firmware", n);
        run_case(name, &c, &a, &r, budget / 4);
        snprintf(name, sizeof name, "empty -> firmware %zu", n);
        run_case(name, &e, &a, &r, budget / 4);
        snprintf(name, sizeof name, "firmware %zu -> empty", n);
        run_case(name, &a, &e, &r, budget / 4);
        bytes_free(&a);
        bytes_free(&b);
        bytes_free(&c);
        bytes_free(&e);
    }
    {
        size_t n = quick ? 50000 : 200000;
        bytes_t a = gen_firmware(&r, n), p = gen_permute(&r, &a, 1024);
        bytes_t f1 = gen_fill(n, 0xFF), f2 = gen_mutate(&r, &f1, 5);
        bytes_t w1 = gen_words(n, 0xE7FEE7FEu), w2 = gen_mutate(&r, &w1, 20);
        bytes_t x = gen_random(&r, n / 2), y = gen_random(&r, n / 2);
        run_case("moved blocks", &a, &p, &r, 64);
        run_case("0xFF fill", &f1, &f2, &r, 64);
        run_case("repeating words", &w1, &w2, &r, 64);
        run_case("random vs random", &x, &y, &r, 64);
        bytes_free(&a);
        bytes_free(&p);
        bytes_free(&f1);
        bytes_free(&f2);
        bytes_free(&w1);
        bytes_free(&w2);
        bytes_free(&x);
        bytes_free(&y);
    }
    {
        /* Padded images, below and past the two-part split of the runs' kept text. */
        size_t n = quick ? 300000 : (5u << 20) / 2;
        bytes_t a = gen_padded(&r, n), b = gen_mutate(&r, &a, 1 + n / 20000);
        run_case("padded firmware", &a, &b, &r, quick ? 16 : 24);
        bytes_free(&a);
        bytes_free(&b);
    }
    if (!quick) {
        /* Past the two-part split of large images (1 MiB), with changes on both sides. */
        bytes_t a = gen_firmware(&r, (3u << 20) / 2), b = gen_mutate(&r, &a, 200);
        run_case("large firmware (split diff)", &a, &b, &r, 24);
        bytes_free(&a);
        bytes_free(&b);
    }
    /* Changes near the end: the partial last word and the last COPY span. */
    for (int k = 0; k < (quick ? 40 : 200); k++) {
        size_t n = 100 + rnd_below(&r, 3000), back = 1 + rnd_below(&r, 10);
        bytes_t a = gen_firmware(&r, n), b = gen_mutate(&r, &a, 0);
        b.p[b.n - back] = (uint8_t)(b.p[b.n - back] + 1 + rnd_below(&r, 255));
        snprintf(name, sizeof name, "tail edit %d", k);
        run_case(name, &a, &b, &r, 8);
        bytes_free(&a);
        bytes_free(&b);
    }
}

/* Seeds of small images for the fuzzer. */
static void generated_seeds(void)
{
    rng_t r = {4242};
    current_case = "seed";
    for (int k = 0; k < 48; k++) {
        size_t n = k < 8 ? (size_t)k : 16 + rnd_below(&r, 2000);
        bytes_t a = gen_firmware(&r, n), b = gen_mutate(&r, &a, 1 + rnd_below(&r, 6));
        streams_t st;
        if (k % 4 == 0 && b.n > 0)
            b.p[b.n - 1 - rnd_below(&r, b.n < 6 ? b.n : 6)] ^= 0x11; /* near the end */
        if (!make_delta(&a, &b, 8, &st, NULL)) {
            write_seed(&a, &st, b.n);
            streams_free(&st);
        }
        bytes_free(&a);
        bytes_free(&b);
    }
}

/* A window of a real pair (a third into both images) as a fuzzer seed. */
static void window_seed(const bytes_t *old, const bytes_t *new_)
{
    const size_t w = 6000;
    size_t off_old = old->n / 3, off_new = new_->n / 3;
    bytes_t wo = bytes_copy(old->p + off_old, old->n - off_old < w ? old->n - off_old : w);
    bytes_t wn = bytes_copy(new_->p + off_new, new_->n - off_new < w ? new_->n - off_new : w);
    streams_t st;
    current_case = "seed window";
    if (!make_delta(&wo, &wn, 8, &st, NULL)) {
        write_seed(&wo, &st, wn.n);
        streams_free(&st);
    }
    bytes_free(&wo);
    bytes_free(&wn);
}

int main(int argc, char **argv)
{
    int quick = 0, seeds_only = 0, files_only = 0, i;
    rng_t r = {777};

    for (i = 1; i < argc && argv[i][0] == '-' && argv[i][1] == '-'; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--seeds") == 0 && i + 1 < argc)
            seed_dir = argv[++i];
        else if (strcmp(argv[i], "--seeds-only") == 0)
            seeds_only = 1;
        else if (strcmp(argv[i], "--files-only") == 0)
            files_only = 1;
        else {
            fprintf(stderr, "usage: fd_test [--quick | --files-only] [--seeds DIR [--seeds-only]] [OLD NEW]...\n");
            return 2;
        }
    }
    if ((argc - i) % 2) {
        fprintf(stderr, "fd_test: file arguments come in OLD NEW pairs\n");
        return 2;
    }
    if (seeds_only && !seed_dir) {
        fprintf(stderr, "fd_test: --seeds-only needs --seeds DIR\n");
        return 2;
    }
    if (seed_dir)
        generated_seeds();
    if (!seeds_only && !files_only) {
        handmade_cases();
        generated_cases(quick);
    }
    for (; i + 1 < argc; i += 2) {
        bytes_t old = read_file(argv[i]), new_ = read_file(argv[i + 1]);
        char name[4200];
        snprintf(name, sizeof name, "%s -> %s", argv[i], argv[i + 1]);
        if (!seeds_only)
            run_case(name, &old, &new_, &r, quick || new_.n > (1u << 20) ? 16 : 40);
        if (seed_dir && old.n > 0 && new_.n > 0)
            window_seed(&old, &new_);
        bytes_free(&old);
        bytes_free(&new_);
    }
    if (seeds_only) {
        printf("fd_test: wrote %u fuzzer seeds to %s\n", seed_count, seed_dir);
        return failures ? 1 : 0;
    }
    printf("fd_test: %lu checks, %lu applies, %lu damaged inputs (%lu rejected), %u seeds, progress calls %d\n",
           checks, applies, mutants, mutant_errors, seed_count, progress_calls);
    if (failures) {
        printf("fd_test: %lu FAILURES\n", failures);
        return 1;
    }
    printf("fd_test: all checks passed\n");
    return 0;
}
