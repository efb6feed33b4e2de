/* Test driver for the code transforms (csrc/fd_code.c) and their use in
 * fd_apply, meant to run under AddressSanitizer and UndefinedBehaviorSanitizer.
 *
 * - forward then inverse gives the input back, for every architecture, on
 *   random bytes and on bytes dense with each architecture's references;
 * - fd_code_read at random positions and lengths (with and without moves)
 *   gives what the whole-image transform gives;
 * - fd_code_write fed the transformed image in random pieces gives the image;
 * - fd_code_check and fd_code_moves_check refuse malformed maps and moves;
 * - fd_apply with code maps, in memory and callback mode (tiny buffers),
 *   turns a delta between transformed images into the plain new image, and
 *   refuses bad maps and short work memory with the right codes.
 * Every buffer handed to the core has exactly its size.
 *
 * usage: code_test    (exit status 0 when every check passed) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_apply.h"
#include "fd_code.h"

static unsigned long failures, checks;

#define CHECK(cond, what)                                                                                \
    do {                                                                                                 \
        checks++;                                                                                        \
        if (!(cond)) {                                                                                   \
            failures++;                                                                                  \
            fprintf(stderr, "FAIL %s:%d %s\n", __FILE__, __LINE__, what);                                \
        }                                                                                                \
    } while (0)

static uint64_t rng_state = 0x243F6A8885A308D3ull;

static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint8_t *xmalloc(size_t n)
{
    uint8_t *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "code_test: out of memory\n");
        exit(2);
    }
    return p;
}

/* Bytes dense with references of arch: its call/branch opcodes at random. */
static void fill_code(uint8_t *b, size_t n, uint8_t arch)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)rnd();
    for (size_t i = 0; i + 8 <= n; i += 2 + rnd() % 6) {
        switch (arch) {
        case FD_CODE_THUMB2:
            b[i + 1] = (uint8_t)(0xF0 | (b[i + 1] & 7));
            b[i + 3] = (uint8_t)((rnd() & 1 ? 0xF8 : 0xB8) | (b[i + 3] & 7));
            break;
        case FD_CODE_AARCH64:
            b[i + 3] = (uint8_t)(rnd() & 1 ? 0x94 : (0x90 | (b[i + 3] & 0x60)));
            break;
        case FD_CODE_X86_64:
            b[i] = (uint8_t)(rnd() & 1 ? 0xE8 : 0x48);
            b[i + 1] = (uint8_t)(b[i] == 0x48 ? 0x8D : b[i + 1]);
            b[i + 2] = (uint8_t)(b[i] == 0x48 ? 0x05 : b[i + 2]);
            b[i + 4] = (uint8_t)(rnd() & 1 ? 0x00 : 0xFF);
            break;
        case FD_CODE_XTENSA:
            b[i] = (uint8_t)((b[i] & 0xF0) | (rnd() % 3 == 0 ? 1 : 5));
            break;
        default:
            b[i] = (uint8_t)(rnd() & 1 ? 0xEF : 0x97); /* jal ra / auipc ra */
            b[i + 4] = 0x93;                            /* addi, funct3 0 ... */
            b[i + 5] = (uint8_t)((b[i + 5] & 0x0F) | 0x80); /* ... rs1 = ra */
            b[i + 6] = (uint8_t)(b[i + 6] & 0xF0);
            break;
        }
    }
}

static void random_map(fd_code_range *r, uint32_t *count, uint64_t len, uint8_t arch)
{
    uint64_t pos = 0;
    *count = 0;
    while (*count < 6 && pos < len) {
        uint64_t gap = rnd() % (len / 8 + 1), n = 1 + rnd() % (len / 3 + 1);
        if (pos + gap >= len)
            break;
        if (n > len - pos - gap)
            n = len - pos - gap;
        r[*count].start = pos + gap;
        r[*count].len = n;
        r[*count].addr = rnd() & 0xFFFFFFFFull;
        r[*count].arch = arch ? arch : (uint8_t)(1 + rnd() % (FD_CODE_ARCH_END - 1));
        pos += gap + n;
        (*count)++;
    }
}

typedef struct {
    const uint8_t *data;
    size_t len;
} mem_src;

static int mem_read(void *user, uint64_t off, uint8_t *dst, size_t len)
{
    mem_src *m = user;
    if (off > m->len || len > m->len - off)
        abort(); /* readers stay inside the image */
    memcpy(dst, m->data + off, len);
    return 0;
}

typedef struct {
    uint8_t *data;
    size_t len, cap;
} mem_sink;

static int mem_write(void *user, const uint8_t *src, size_t len)
{
    mem_sink *m = user;
    if (len > m->cap - m->len)
        abort();
    memcpy(m->data + m->len, src, len);
    m->len += len;
    return 0;
}

static void test_image(size_t len, uint8_t arch, int dense)
{
    fd_code_range ranges[8];
    fd_code_step steps[3] = {{0x100, 64}, {0x10000, -4096}, {0x80000000ull, 12}};
    fd_code_moves moves = {steps, 3};
    fd_code_remap remap = {fd_code_moved, &moves};
    fd_code_map map;
    uint8_t *image = xmalloc(len), *t = xmalloc(len), *moved = xmalloc(len), *back = xmalloc(len);
    uint8_t *block = xmalloc((size_t)1 << FD_CODE_BLOCK_LOG_MAX), *out;
    fd_code_reader reader;
    fd_code_writer writer;
    mem_src src;
    mem_sink sink;

    if (dense)
        fill_code(image, len, arch ? arch : FD_CODE_THUMB2);
    else
        for (size_t i = 0; i < len; i++)
            image[i] = (uint8_t)rnd();
    map.ranges = ranges;
    map.block_log = (uint8_t)(FD_CODE_BLOCK_LOG_MIN + rnd() % 5);
    random_map(ranges, &map.count, len, arch);
    if (rnd() % 4 == 0 && len) { /* one range over everything */
        ranges[0].start = 0;
        ranges[0].len = len;
        map.count = 1;
    }
    CHECK(fd_code_check(&map, len) == FD_CODE_OK, "random map accepted");

    memcpy(t, image, len);
    fd_code_image(&map, t, 0, UINT64_MAX, 0, NULL);
    memcpy(back, t, len);
    fd_code_image(&map, back, 0, UINT64_MAX, 1, NULL);
    CHECK(memcmp(back, image, len) == 0, "inverse of forward is the identity");
    memcpy(moved, image, len);
    fd_code_image(&map, moved, 0, UINT64_MAX, 0, &remap);
    fd_code_copy_image(&map, back, image, len, 0, &remap);
    CHECK(memcmp(back, moved, len) == 0, "copy_image is a copy then fd_code_image");
    fd_code_copy_image(&map, back, t, len, 1, NULL);
    CHECK(memcmp(back, image, len) == 0, "copy_image undoes like fd_code_image");
    {
        /* Over spans cut anywhere (inside blocks too), in any order, the same. */
        uint64_t cut = len ? rnd() % (len + 1) : 0, cut2 = cut + (len - cut ? rnd() % (len - cut + 1) : 0);
        memcpy(back, t, len);
        fd_code_image(&map, back, cut2, UINT64_MAX, 1, NULL);
        fd_code_image(&map, back, 0, cut, 1, NULL);
        fd_code_image(&map, back, cut, cut2, 1, NULL);
        CHECK(memcmp(back, image, len) == 0, "fd_code_image over three spans undoes like over one");
    }

    /* Random reads through the reader, with and without moves. */
    src.data = image;
    src.len = len;
    for (int with_moves = 0; with_moves < 2; with_moves++) {
        fd_code_reader_init(&reader, &map, with_moves ? &remap : NULL, block);
        for (int k = 0; k < 40 && len; k++) {
            uint64_t pos = rnd() % len, n = 1 + rnd() % (len - pos);
            out = xmalloc((size_t)n);
            CHECK(fd_code_read(&reader, mem_read, &src, pos, out, (size_t)n) == FD_CODE_OK, "read");
            CHECK(memcmp(out, (with_moves ? moved : t) + pos, (size_t)n) == 0, "reader matches whole image");
            free(out);
        }
    }

    /* The transformed image pushed in random pieces comes out plain. */
    sink.data = xmalloc(len);
    sink.len = 0;
    sink.cap = len;
    fd_code_writer_init(&writer, &map, block);
    for (size_t pos = 0; pos < len;) {
        size_t n = 1 + (size_t)(rnd() % (rnd() % 2 ? 7 : 3000));
        if (n > len - pos)
            n = len - pos;
        CHECK(fd_code_write(&writer, mem_write, &sink, t + pos, n) == FD_CODE_OK, "write");
        pos += n;
    }
    CHECK(sink.len == len && memcmp(sink.data, image, len) == 0, "writer undoes the transform");

    free(sink.data);
    free(image);
    free(t);
    free(moved);
    free(back);
    free(block);
}

static void test_checks(void)
{
    fd_code_range r[2] = {{0, 16, 0, FD_CODE_THUMB2}, {16, 16, 0, FD_CODE_RISCV}};
    fd_code_map m = {r, 2, 10};
    fd_code_step s[2] = {{10, 1}, {10, 2}};
    fd_code_moves mv = {s, 2};

    CHECK(fd_code_check(&m, 32) == FD_CODE_OK, "adjacent ranges");
    CHECK(fd_code_check(&m, 31) != FD_CODE_OK, "range past the image");
    r[1].start = 15;
    CHECK(fd_code_check(&m, 64) != FD_CODE_OK, "overlap");
    r[1].start = 16;
    r[1].len = 0;
    CHECK(fd_code_check(&m, 64) != FD_CODE_OK, "empty range");
    r[1].len = 16;
    r[1].arch = FD_CODE_ARCH_END;
    CHECK(fd_code_check(&m, 64) != FD_CODE_OK, "unknown arch");
    r[1].arch = 0;
    CHECK(fd_code_check(&m, 64) != FD_CODE_OK, "arch 0");
    r[1].arch = FD_CODE_RISCV;
    r[1].start = UINT64_MAX;
    CHECK(fd_code_check(&m, 64) != FD_CODE_OK, "start overflows");
    r[1].start = 16;
    r[1].len = UINT64_MAX;
    CHECK(fd_code_check(&m, 64) != FD_CODE_OK, "length overflows");
    r[1].len = 16;
    m.block_log = FD_CODE_BLOCK_LOG_MIN - 1;
    CHECK(fd_code_check(&m, 64) != FD_CODE_OK, "block log too small");
    m.block_log = FD_CODE_BLOCK_LOG_MAX + 1;
    CHECK(fd_code_check(&m, 64) != FD_CODE_OK, "block log too large");
    m.block_log = 10;
    m.count = FD_CODE_MAX_RANGES + 1;
    CHECK(fd_code_check(&m, 64) != FD_CODE_OK, "too many ranges");
    CHECK(fd_code_moves_check(&mv) != FD_CODE_OK, "moves not increasing");
    s[1].from = 11;
    CHECK(fd_code_moves_check(&mv) == FD_CODE_OK, "moves increasing");
    CHECK(fd_code_moved(&mv, 0, 9) == 9 && fd_code_moved(&mv, 0, 10) == 11 && fd_code_moved(&mv, 0, 1000) == 1002,
          "moves are steps");
}

/* fd_code_moved_indexed gives fd_code_moved's target for every target: at, just
 * below and just above each step, at the ends of the 64-bit range and at
 * random, over step counts from none to past the index's buckets, packed close
 * or spread up to 2^64 - 1. */
static void test_moves_index(void)
{
    static const uint32_t counts[] = {0, 1, 2, 3, 7, 100, FD_CODE_MOVES_BUCKETS, 9000};
    static fd_code_step steps[9000];
    static fd_code_moves_index x;
    fd_code_moves mv = {steps, 0};

    for (size_t c = 0; c < sizeof counts / sizeof *counts; c++) {
        for (int spread = 0; spread < 3; spread++) {
            uint64_t from = spread == 2 ? UINT64_MAX - counts[c] * UINT64_C(1000) : rnd() % 5000;
            mv.count = 0;
            for (uint32_t k = 0; k < counts[c]; k++) {
                if (k && from <= steps[k - 1].from) /* a wide spread wrapped past 2^64: it ends */
                    break;
                steps[k].from = from;
                steps[k].delta = (int64_t)(rnd() % 2000) - 1000;
                mv.count = k + 1;
                from += 1 + (spread == 1 ? rnd() >> 20 : rnd() % 1000);
            }
            CHECK(fd_code_moves_check(&mv) == FD_CODE_OK, "random moves increase");
            fd_code_moves_index_init(&x, &mv);
            for (uint32_t k = 0; k < mv.count; k++)
                for (int d = -1; d <= 1; d++) {
                    uint64_t t = steps[k].from + (uint64_t)(int64_t)d;
                    CHECK(fd_code_moved_indexed(&x, 0, t) == fd_code_moved(&mv, 0, t), "indexed move at a step");
                }
            for (int k = 0; k < 2000; k++) {
                /* Half of them among the steps, where the buckets are. */
                uint64_t t = k == 0 ? 0 : k == 1 ? UINT64_MAX : rnd() >> (rnd() % 64);
                if (k > 1 && k % 2 && mv.count)
                    t = steps[0].from + rnd() % (steps[mv.count - 1].from - steps[0].from + 1);
                CHECK(fd_code_moved_indexed(&x, 0, t) == fd_code_moved(&mv, 0, t), "indexed move at random");
            }
        }
    }
}

static void varint(uint8_t **p, uint64_t v)
{
    while (v >= 0x80) {
        *(*p)++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *(*p)++ = (uint8_t)v;
}

/* new = old with its middle third cut out, as a delta between the
 * transformed images (records over t_old/t_new); fd_apply must give new. */
static void test_apply(size_t len, uint8_t arch)
{
    fd_code_range ro = {0, len, 0x8000, arch}, rn = {0, 0, 0x8000, arch};
    fd_code_map mo = {&ro, 1, 8}, mn = {&rn, 1, 8};
    size_t cut = len / 3, new_len = len - cut, i;
    uint8_t *old = xmalloc(len), *t_old = xmalloc(len), *t_new = xmalloc(new_len), *want = xmalloc(new_len);
    uint8_t *ctrl_buf = xmalloc(len * 3 + 64), *q = ctrl_buf, *words = xmalloc(new_len), *out = xmalloc(new_len), *wmap = xmalloc(new_len * 3);
    uint8_t *work = xmalloc(FD_APPLY_CODE_WORK(8)), *stage = xmalloc(FD_APPLY_MIN_WORK);
    size_t nwords = 0, nwmap = 0;
    uint64_t last = 0;
    fd_apply_ctx c;
    mem_sink sink;
    int rc;

    fill_code(old, len, arch);
    rn.len = new_len;
    memcpy(want, old, cut);
    memcpy(want + cut, old + 2 * cut, len - 2 * cut);
    memcpy(t_old, old, len);
    fd_code_image(&mo, t_old, 0, UINT64_MAX, 0, NULL);
    memcpy(t_new, want, new_len);
    fd_code_image(&mn, t_new, 0, UINT64_MAX, 0, NULL);
    /* Copies of [0, cut) and [2cut, len) of t_old, with differences, each cut into records of
     * random lengths: the output's transform is undone as the records are written. */
    for (size_t at = 0; at < new_len;) {
        size_t n = 1 + (size_t)(rnd() % 300), end = at < cut ? cut : new_len;
        if (n > end - at)
            n = end - at;
        varint(&q, at == cut && cut ? cut * 2 : 0); /* zigzag(+cut) */
        varint(&q, n);
        varint(&q, 0);
        at += n;
    }
    for (size_t w = 0; w * 4 < new_len; w++) {
        int changed = 0;
        for (i = w * 4; i < w * 4 + 4 && i < new_len; i++)
            changed |= t_new[i] != t_old[i < cut ? i : i + cut];
        if (!changed)
            continue;
        {
            uint8_t *p = wmap + nwmap;
            varint(&p, w - last);
            nwmap = (size_t)(p - wmap);
        }
        last = w + 1;
        for (i = w * 4; i < w * 4 + 4 && i < new_len; i++)
            words[nwords++] = (uint8_t)(t_new[i] - t_old[i < cut ? i : i + cut]);
    }

    for (int mode = 0; mode < 2; mode++) {
        memset(&c, 0, sizeof c);
        c.old = old;
        c.old_len = len;
        c.new_len = new_len;
        c.old_code = &mo;
        c.new_code = &mn;
        c.code_work = work;
        c.code_work_len = FD_APPLY_CODE_WORK(8);
        fd_reader_init_mem(&c.ctrl, ctrl_buf, (size_t)(q - ctrl_buf));
        fd_reader_init_mem(&c.wmap, wmap, nwmap);
        fd_reader_init_mem(&c.words, words, nwords);
        fd_reader_init_mem(&c.extra, stage, 0);
        if (mode == 0) {
            c.out = out;
        } else {
            sink.data = out;
            sink.len = 0;
            sink.cap = new_len;
            c.write_out = mem_write;
            c.out_user = &sink;
            c.work = stage;
            c.work_len = FD_APPLY_MIN_WORK;
        }
        memset(out, 0, new_len);
        rc = fd_apply(&c);
        CHECK(rc == FD_OK, fd_strerror(rc));
        CHECK(memcmp(out, want, new_len) == 0, mode ? "callback apply gives the new image" : "memory apply gives it");
    }
    c.code_work_len = FD_APPLY_CODE_WORK(8) - 1;
    CHECK(fd_apply(&c) == FD_EPARAM, "short code work memory");
    c.code_work_len = FD_APPLY_CODE_WORK(8);
    rn.len = new_len + 1;
    CHECK(fd_apply(&c) == FD_ECORRUPT, "new map past the image");
    rn.len = new_len;
    mn.block_log = 9;
    CHECK(fd_apply(&c) == FD_ECORRUPT, "block logs differ");

    free(old);
    free(ctrl_buf);
    free(t_old);
    free(t_new);
    free(want);
    free(words);
    free(out);
    free(wmap);
    free(work);
    free(stage);
}

int main(void)
{
    static const size_t sizes[] = {0, 1, 3, 7, 64, 255, 256, 1000, 4096, 70000};
    test_checks();
    test_moves_index();
    for (uint8_t arch = 0; arch < FD_CODE_ARCH_END; arch++) {
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
            test_image(sizes[k], arch, 0);
            test_image(sizes[k], arch, 1);
        }
        if (arch)
            for (size_t len = 300; len < 40000; len = len * 3 + 1)
                test_apply(len, arch);
    }
    printf("code_test: %lu checks, %lu failures\n", checks, failures);
    if (failures)
        return 1;
    printf("all checks passed\n");
    return 0;
}
