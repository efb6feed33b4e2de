/* libFuzzer target for the code transforms and fd_apply with code maps or
 * relocated copies (build: tests/fuzz/run.sh).
 *
 * Input layout:
 *   [0]      block_log offset (FD_CODE_BLOCK_LOG_MIN + (b & 7)); b >> 3: the
 *            architecture of the relocated copies
 *   [1]      number of old ranges (b & 7), [2] number of new ranges (b & 7)
 *   [3]      number of moves (b & 7)
 *   [4..5]   new_len (little-endian u16), [6..7] old_len (u16)
 *   then per range 7 bytes: arch, start (u16), length (u16), addr (u16), old ranges first;
 *   per move 4 bytes: from (u16), delta (s16);
 *   then the ctrl stream length (u16) and ctrl, and the rest as old image bytes
 *   (repeated to old_len) and extra.
 *
 * Checks: the forward and inverse transforms of the old image over its map
 * are exact inverses; fd_apply in memory and callback mode (tiny buffers,
 * the old image through read_old) agree on code and output, ask for nothing
 * outside the old image and write nothing past new_len; fd_apply returns only
 * known codes. The same streams are then applied with relocated copies (the
 * moves, the architecture from byte 0) in both modes, with the same checks,
 * and relocating the old image's bytes in one pass (fd_reloc_copy, with the
 * moves' index and without) must give what the forward and inverse halves
 * do in turn.
 * Memory errors are the sanitizers' to find. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exact.h"
#include "fd_apply.h"
#include "fd_code.h"

typedef struct {
    const uint8_t *data;
    size_t len;
} region;

typedef struct {
    uint8_t *out;
    size_t len, cap;
} sink;

static int read_old(void *user, uint64_t offset, uint8_t *dst, size_t len)
{
    region *r = user;
    if (offset > r->len || len > r->len - offset)
        abort();
    if (len)
        memcpy(dst, r->data + offset, len);
    return 0;
}

static int write_out(void *user, const uint8_t *src, size_t len)
{
    sink *s = user;
    if (len == 0 || len > s->cap - s->len)
        abort();
    memcpy(s->out + s->len, src, len);
    s->len += len;
    return 0;
}

static size_t u16(const uint8_t *p)
{
    return (size_t)p[0] | (size_t)p[1] << 8;
}

/* fd_apply as m says (memory mode, its readers set up over ctrl and extra)
 * and the same in callback mode, the old image through read_old, with a
 * work area of work_len bytes and code_work for its code blocks: only known
 * codes, the same code and output in both. */
static void apply_both(fd_apply_ctx m, const uint8_t *ctrl, size_t ctrl_len, const uint8_t *extra, size_t extra_len,
                       size_t work_len, uint8_t *code_work)
{
    fd_apply_ctx c = m;
    region old_region = {m.old, m.old_len};
    sink s = {alloc_exact(m.new_len), 0, m.new_len};
    uint8_t *stage = alloc_exact(work_len);
    int rc_mem = fd_apply(&m), rc_cb;

    c.old = NULL;
    c.read_old = read_old;
    c.old_user = &old_region;
    c.out = NULL;
    c.write_out = write_out;
    c.out_user = &s;
    c.work = stage;
    c.work_len = work_len;
    c.code_work = code_work;
    fd_reader_init_mem(&c.ctrl, ctrl, ctrl_len);
    fd_reader_init_mem(&c.wmap, extra, 0);
    fd_reader_init_mem(&c.words, extra, 0);
    fd_reader_init_mem(&c.extra, extra, extra_len);
    rc_cb = fd_apply(&c);

    if (rc_mem != FD_OK && rc_mem != FD_ETRUNCATED && rc_mem != FD_ECORRUPT)
        abort();
    if (rc_mem != rc_cb)
        abort();
    if (rc_mem == FD_OK && (s.len != m.new_len || (m.new_len && memcmp(s.out, m.out, m.new_len) != 0)))
        abort();
    free_exact(stage);
    free_exact(s.out);
}

/* Relocated copies as docs/format.md defines them: each piece transformed
 * forward at its old offset (targets moved), then back at its new one. */
static void relocate_in_halves(const fd_reloc *r, uint8_t *buf, size_t len, uint64_t src, uint64_t dst)
{
    fd_code_remap remap;

    remap.fn = fd_code_moved;
    remap.user = (void *)r->moves;
    for (size_t at = 0; at < len; at += FD_RELOC_PIECE) {
        size_t n = len - at < FD_RELOC_PIECE ? len - at : FD_RELOC_PIECE;
        size_t skip = (size_t)((0u - (src + at)) & 3u);
        if (skip < n) {
            fd_code_block(r->arch, buf + at + skip, n - skip, src + at + skip, 0, &remap);
            fd_code_block(r->arch, buf + at + skip, n - skip, dst + at + skip, 1, NULL);
        }
    }
}

/* fd_reloc_copy (one pass a piece), with the moves' index and without,
 * gives what relocate_in_halves does, on the old image's bytes copied from
 * src to dst. */
static void check_relocation(fd_reloc reloc, const uint8_t *bytes, size_t len, uint64_t src, uint64_t dst)
{
    fd_code_moves_index index;
    uint8_t *halves = alloc_exact(len), *one = alloc_exact(len);

    if (len)
        memcpy(halves, bytes, len);
    relocate_in_halves(&reloc, halves, len, src, dst);
    for (int indexed = 0; indexed < 2; indexed++) {
        if (len)
            memcpy(one, bytes, len);
        if (indexed) {
            fd_code_moves_index_init(&index, reloc.moves);
            reloc.index = &index;
        }
        fd_reloc_copy(&reloc, one, len, src, dst);
        if (len && memcmp(one, halves, len) != 0)
            abort();
    }
    free_exact(halves);
    free_exact(one);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fd_code_range ranges[16];
    fd_code_step steps[8];
    fd_code_map old_map, new_map;
    fd_code_moves moves;
    size_t pos = 8, nold, nnew, nmoves, new_len, old_len, ctrl_len, i;
    uint8_t *old, *copy, *ctrl, *extra, *out_mem, *work_m, *work_c;
    fd_reloc reloc;
    fd_apply_ctx m;

    if (size < 8)
        return 0;
    nold = data[1] & 7;
    nnew = data[2] & 7;
    nmoves = data[3] & 7;
    new_len = u16(data + 4);
    old_len = u16(data + 6);
    if (size < pos + 7 * (nold + nnew) + 4 * nmoves + 2)
        return 0;
    for (i = 0; i < nold + nnew; i++, pos += 7) {
        ranges[i].arch = data[pos];
        ranges[i].start = u16(data + pos + 1);
        ranges[i].len = u16(data + pos + 3);
        ranges[i].addr = u16(data + pos + 5) * (uint64_t)0x10001;
    }
    for (i = 0; i < nmoves; i++, pos += 4) {
        steps[i].from = u16(data + pos) * (uint64_t)0x101;
        steps[i].delta = (int16_t)u16(data + pos + 2);
    }
    old_map.ranges = ranges;
    old_map.count = (uint32_t)nold;
    old_map.block_log = (uint8_t)(FD_CODE_BLOCK_LOG_MIN + (data[0] & 7));
    new_map = old_map;
    new_map.ranges = ranges + nold;
    new_map.count = (uint32_t)nnew;
    moves.steps = steps;
    moves.count = (uint32_t)nmoves;
    ctrl_len = u16(data + pos);
    pos += 2;
    if (ctrl_len > size - pos)
        ctrl_len = size - pos;
    ctrl = alloc_exact(ctrl_len);
    if (ctrl_len)
        memcpy(ctrl, data + pos, ctrl_len);
    pos += ctrl_len;
    old = alloc_exact(old_len);
    for (i = 0; i < old_len; i++)
        old[i] = size > pos ? data[pos + i % (size - pos)] : (uint8_t)i;
    extra = alloc_exact(size - pos);
    if (size > pos)
        memcpy(extra, data + pos, size - pos);

    /* The transform and its inverse, when the old map is well-formed. */
    if (fd_code_check(&old_map, old_len) == FD_CODE_OK) {
        copy = alloc_exact(old_len);
        if (old_len)
            memcpy(copy, old, old_len);
        fd_code_image(&old_map, copy, 0, UINT64_MAX, 0, NULL);
        fd_code_image(&old_map, copy, 0, UINT64_MAX, 1, NULL);
        if (old_len && memcmp(copy, old, old_len) != 0)
            abort();
        free_exact(copy);
    }

    work_m = alloc_exact(FD_APPLY_CODE_WORK(old_map.block_log));
    work_c = alloc_exact(FD_APPLY_CODE_WORK(old_map.block_log));
    out_mem = alloc_exact(new_len);
    memset(&m, 0, sizeof m);
    m.old = old;
    m.old_len = old_len;
    m.out = out_mem;
    m.new_len = new_len;
    m.old_code = &old_map;
    m.new_code = &new_map;
    m.old_moves = nmoves ? &moves : NULL;
    m.code_work = work_m;
    m.code_work_len = FD_APPLY_CODE_WORK(old_map.block_log);
    fd_reader_init_mem(&m.ctrl, ctrl, ctrl_len);
    fd_reader_init_mem(&m.wmap, extra, 0);
    fd_reader_init_mem(&m.words, extra, 0);
    fd_reader_init_mem(&m.extra, extra, size - pos);
    apply_both(m, ctrl, ctrl_len, extra, size - pos, FD_APPLY_MIN_WORK, work_c);

    /* The same streams with relocated copies by the moves, of the architecture byte 0 names. */
    reloc.arch = data[0] >> 3;
    reloc.moves = &moves;
    reloc.index = NULL;
    if (fd_reloc_check(&reloc) == FD_CODE_OK)
        check_relocation(reloc, old, old_len, u16(data + 4) * (uint64_t)0x10001, old_len * (uint64_t)0x3001);
    m.old_code = m.new_code = NULL;
    m.old_moves = NULL;
    m.code_work = NULL;
    m.code_work_len = 0;
    m.reloc = &reloc;
    apply_both(m, ctrl, ctrl_len, extra, size - pos, FD_RELOC_PIECE, NULL);

    free_exact(ctrl);
    free_exact(old);
    free_exact(extra);
    free_exact(work_m);
    free_exact(work_c);
    free_exact(out_mem);
    return 0;
}
