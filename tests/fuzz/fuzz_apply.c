/* libFuzzer target for fd_apply (build: tests/fuzz/run.sh).
 *
 * Input layout (all lengths little-endian u16, clamped to the bytes present):
 *   [0] cfg0: reader buffer size 1 + (cfg0 & 31); bit 5: old image through
 *             read_old instead of memory; bits 6-7: fills return short reads
 *   [1] cfg1: work area FD_APPLY_MIN_WORK + cfg1 bytes; cfg1 % 6: the differences'
 *             grouping (0 by words, 1 by bytes, 2 as sums, 3-5 as sums of spans
 *             of cfg1 % 6 - 1 bytes)
 *   [2..3]   new_len
 *   [4..11]  lengths of old, ctrl, wmap, words
 *   then old, ctrl, wmap, words, and extra (the rest of the input).
 *
 * Each input is applied in memory mode and in callback mode. Every buffer
 * given to the core has exactly its size. Aborts when fd_apply returns an
 * unknown code, when the two modes disagree (code or output), when a callback
 * is asked for bytes outside the old image, or when more than new_len bytes
 * are written. Memory errors are the sanitizers' to find. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exact.h"
#include "fd_apply.h"

typedef struct {
    const uint8_t *data;
    size_t len, pos;
    unsigned short_reads;
    uint32_t state;
} fill_state;

typedef struct {
    const uint8_t *old;
    size_t old_len;
} old_state;

typedef struct {
    uint8_t *out;
    size_t len, cap;
} out_state;

static int fill(void *user, uint8_t *buf, size_t cap, size_t *got)
{
    fill_state *f = user;
    size_t n = f->len - f->pos;
    if (n > cap)
        n = cap;
    if (f->short_reads && n > 1) {
        f->state = f->state * 1103515245u + 12345u;
        n = 1 + (f->state >> 16) % n;
    }
    if (n)
        memcpy(buf, f->data + f->pos, n);
    f->pos += n;
    *got = n;
    return 0;
}

static int read_old(void *user, uint64_t offset, uint8_t *dst, size_t len)
{
    old_state *o = user;
    if (offset > o->old_len || len > o->old_len - offset)
        abort(); /* fd_apply checks bounds before it reads */
    if (len)
        memcpy(dst, o->old + offset, len);
    return 0;
}

static int write_out(void *user, const uint8_t *src, size_t len)
{
    out_state *o = user;
    if (len == 0 || len > o->cap - o->len)
        abort(); /* nothing past new_len, no empty writes */
    memcpy(o->out + o->len, src, len);
    o->len += len;
    return 0;
}


static uint8_t *dup_exact(const uint8_t *src, size_t n)
{
    uint8_t *p = alloc_exact(n);
    if (n)
        memcpy(p, src, n);
    return p;
}

static size_t u16(const uint8_t *p)
{
    return (size_t)p[0] | (size_t)p[1] << 8;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t len[5], new_len, reader_cap, work_len, pos = 12, i;
    uint8_t *part[5], *out_mem, *work, *bufs[4];
    fill_state fills[4];
    old_state os;
    out_state ws;
    fd_apply_ctx m, c;
    fd_reader *mr[4], *cr[4];
    int rc_mem, rc_cb;

    if (size < 12)
        return 0;
    reader_cap = 1 + (data[0] & 31);
    work_len = FD_APPLY_MIN_WORK + data[1];
    new_len = u16(data + 2);
    for (i = 0; i < 5; i++) {
        size_t want = i < 4 ? u16(data + 4 + 2 * i) : size - pos;
        len[i] = want < size - pos ? want : size - pos;
        /* Exact-size copies: the sanitizer sees any read past a stream. */
        part[i] = dup_exact(data + pos, len[i]);
        pos += len[i];
    }

    memset(&m, 0, sizeof m);
    mr[0] = &m.ctrl, mr[1] = &m.wmap, mr[2] = &m.words, mr[3] = &m.extra;
    out_mem = alloc_exact(new_len);
    m.old = part[0];
    m.old_len = len[0];
    m.out = out_mem;
    m.new_len = new_len;
    /* FD_GROUP_*, both modes alike */
    m.grouping = data[1] % 6 < 3 ? data[1] % 6 : FD_GROUP_SPANS;
    m.span = m.grouping == FD_GROUP_SPANS ? data[1] % 6 - 1 : 0;
    for (i = 0; i < 4; i++)
        fd_reader_init_mem(mr[i], part[i + 1], len[i + 1]);
    rc_mem = fd_apply(&m);

    memset(&c, 0, sizeof c);
    cr[0] = &c.ctrl, cr[1] = &c.wmap, cr[2] = &c.words, cr[3] = &c.extra;
    os.old = part[0];
    os.old_len = len[0];
    ws.out = alloc_exact(new_len);
    ws.len = 0;
    ws.cap = new_len;
    work = alloc_exact(work_len);
    if (data[0] & 32) {
        c.read_old = read_old;
        c.old_user = &os;
    } else {
        c.old = part[0];
    }
    c.old_len = len[0];
    c.write_out = write_out;
    c.out_user = &ws;
    c.new_len = new_len;
    c.grouping = m.grouping;
    c.span = m.span;
    c.work = work;
    c.work_len = work_len;
    for (i = 0; i < 4; i++) {
        fills[i].data = part[i + 1];
        fills[i].len = len[i + 1];
        fills[i].pos = 0;
        fills[i].short_reads = (data[0] >> 6) & (1u << (i & 1));
        fills[i].state = (uint32_t)i * 7919u + data[1];
        bufs[i] = alloc_exact(reader_cap);
        fd_reader_init_fill(cr[i], fill, &fills[i], bufs[i], reader_cap);
    }
    rc_cb = fd_apply(&c);

    if (rc_mem != FD_OK && rc_mem != FD_ETRUNCATED && rc_mem != FD_ECORRUPT)
        abort();
    if (rc_mem != rc_cb)
        abort();
    if (rc_mem == FD_OK && (ws.len != new_len || (new_len && memcmp(ws.out, out_mem, new_len) != 0)))
        abort();

    for (i = 0; i < 4; i++)
        free_exact(bufs[i]);
    for (i = 0; i < 5; i++)
        free_exact(part[i]);
    free_exact(work);
    free_exact(ws.out);
    free_exact(out_mem);
    return 0;
}
