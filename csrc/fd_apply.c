#include "fd_apply.h"

#include "fd_format.h"

#include <string.h>

void fd_reader_init_mem(fd_reader *r, const uint8_t *data, size_t len)
{
    memset(r, 0, sizeof *r);
    r->cur = data;
    r->end = data + len;
}

void fd_reader_init_fill(fd_reader *r, fd_fill_fn fill, void *user, uint8_t *buf, size_t cap)
{
    memset(r, 0, sizeof *r);
    r->fill = fill;
    r->user = user;
    r->buf = buf;
    r->cur = r->end = buf;
    r->cap = cap;
}

/* Makes at least one byte available; FD_ETRUNCATED at the end of the stream. */
static int reader_refill(fd_reader *r)
{
    size_t got = 0;

    if (r->cur < r->end)
        return FD_OK;
    if (!r->fill)
        return FD_ETRUNCATED;
    if (r->fill(r->user, r->buf, r->cap, &got) || got > r->cap)
        return FD_EIO;
    if (got == 0)
        return FD_ETRUNCATED;
    r->cur = r->buf;
    r->end = r->buf + got;
    return FD_OK;
}

/* 1 at the end of the stream, 0 when more data follows, or FD_EIO. */
static int reader_at_end(fd_reader *r)
{
    int rc = reader_refill(r);
    return rc == FD_ETRUNCATED ? 1 : rc;
}

static int expect_end(fd_reader *r)
{
    int rc = reader_at_end(r);
    return rc < 0 ? rc : rc ? FD_OK : FD_ECORRUPT;
}

static int read_varint(fd_reader *r, uint64_t *value)
{
    uint64_t v = 0;

    /* Most varints (the word map's gaps) are one byte. */
    if (r->cur < r->end && !(*r->cur & 0x80)) {
        *value = *r->cur++;
        return FD_OK;
    }
    /* With a varint's longest (10 bytes) at hand, no refill is asked for between its bytes: on a
     * 30 MB image with 800,000 changed words, a refill per byte had been a third of fd_apply's
     * own instructions. */
    if (r->end - r->cur >= 10) {
        const uint8_t *p = r->cur;
        for (unsigned shift = 0; shift < 64; shift += 7) {
            uint8_t byte = *p++;
            if (shift == 63 && byte > 1)
                return FD_ECORRUPT;
            v |= (uint64_t)(byte & 0x7f) << shift;
            if (!(byte & 0x80)) {
                r->cur = p;
                *value = v;
                return FD_OK;
            }
        }
        return FD_ECORRUPT;
    }
    for (unsigned shift = 0; shift < 64; shift += 7) {
        int rc = reader_refill(r);
        uint8_t byte;
        if (rc)
            return rc;
        byte = *r->cur++;
        if (shift == 63 && byte > 1)
            return FD_ECORRUPT;
        v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *value = v;
            return FD_OK;
        }
    }
    return FD_ECORRUPT;
}

/* Output span of up to want bytes at new position pos: the output buffer
 * itself in memory mode, else the work area. */
static uint8_t *out_span(fd_apply_ctx *c, uint64_t pos, uint64_t want, size_t *n)
{
    if (c->out) {
        *n = (size_t)want;
        return c->out + pos;
    }
    *n = want < c->work_len ? (size_t)want : c->work_len;
    return c->work;
}

static int out_commit(fd_apply_ctx *c, const uint8_t *span, size_t n)
{
    if (c->out || n == 0)
        return FD_OK;
    if (c->new_code)
        return fd_code_write(&c->new_writer, c->write_out, c->out_user, span, n) ? FD_EIO : FD_OK;
    return c->write_out(c->out_user, span, n) ? FD_EIO : FD_OK;
}

static int read_old_memory(void *user, uint64_t offset, uint8_t *dst, size_t len)
{
    const fd_apply_ctx *c = user;
    memcpy(dst, c->old + offset, len);
    return 0;
}

/* Old bytes [pos, pos + n), through the forward transform when there is one. */
static int old_bytes(fd_apply_ctx *c, uint64_t pos, uint8_t *dst, size_t n)
{
    if (c->old_code)
        return fd_code_read(&c->old_reader, c->old ? read_old_memory : c->read_old,
                            c->old ? (void *)c : c->old_user, pos, dst, n) ? FD_EIO : FD_OK;
    if (c->old)
        memcpy(dst, c->old + pos, n);
    else if (c->read_old(c->old_user, pos, dst, n))
        return FD_EIO;
    return FD_OK;
}

/* Moves to the next changed group, or FD_NO_WORD once the word map ends. */
static int next_changed_word(fd_apply_ctx *c, int first)
{
    uint64_t gap, from = first ? 0 : c->next_word + fd_group_len(c->grouping, c->span);
    const uint64_t unit = fd_group_stride(c->grouping);
    int rc;

    if ((rc = reader_at_end(&c->wmap))) {
        c->next_word = FD_NO_WORD;
        return rc < 0 ? rc : FD_OK;
    }
    if ((rc = read_varint(&c->wmap, &gap)))
        return rc == FD_ETRUNCATED ? FD_ECORRUPT : rc;
    /* A group starts at new_len at most (and one there, with no byte, is refused at the end). */
    if (from > c->new_len || gap > (c->new_len - from) / unit)
        return FD_ECORRUPT;
    c->next_word = from + gap * unit;
    return FD_OK;
}

/* Adds the differences of the changed words that overlap dst, which holds
 * the new bytes [pos, pos + n) copied from old. With sums, a byte takes in
 * the carry out of the byte before it in its word when that one was copied
 * too: both were copied in this call, or that one ended the call before. */
static int add_changed_words(fd_apply_ctx *c, uint8_t *dst, uint64_t pos, size_t n)
{
    const uint64_t word = fd_group_len(c->grouping, c->span);
    const int sums = c->grouping == FD_GROUP_SUMS || c->grouping == FD_GROUP_SPANS;

    while (c->next_word != FD_NO_WORD && c->next_word < pos + n) {
        uint64_t start = c->next_word, q;
        uint64_t lo = start > pos ? start : pos, hi = start + word < pos + n ? start + word : pos + n;
        int rc;

        if (hi - lo == word && (uint64_t)(c->words.end - c->words.cur) >= word) {
            /* A whole word, its differences at hand (nearly every word): no refill per byte. */
            uint8_t *at = dst + (lo - pos);
            unsigned carry = 0;
            for (q = 0; q < word; q++) {
                unsigned sum = at[q] + c->words.cur[q] + carry;
                at[q] = (uint8_t)sum;
                carry = sums ? sum >> 8 : 0;
            }
            c->words.cur += word;
        } else {
            for (q = lo; q < hi; q++) {
                unsigned sum;
                if ((rc = reader_refill(&c->words)))
                    return rc;
                sum = (unsigned)dst[q - pos] + *c->words.cur++;
                if (sums && q == c->carry_at && q != start)
                    sum += c->carry;
                dst[q - pos] = (uint8_t)sum;
                c->carry = (uint8_t)(sum >> 8);
                c->carry_at = q + 1;
            }
        }
        if (start + word > pos + n)
            break; /* the word goes on past this span */
        if ((rc = next_changed_word(c, 0)))
            return rc;
    }
    return FD_OK;
}

/* A relocated copy goes a piece at a time (out_span gives a whole one: the
 * work area holds FD_RELOC_PIECE bytes or more), each relocated before its
 * differences are added. */
static int copy_add(fd_apply_ctx *c, uint64_t new_pos, uint64_t old_pos, uint64_t len, int relocated)
{
    while (len > 0) {
        size_t n;
        uint8_t *dst = out_span(c, new_pos, relocated && len > FD_RELOC_PIECE ? FD_RELOC_PIECE : len, &n);
        int rc;

        if ((rc = old_bytes(c, old_pos, dst, n)))
            return rc;
        if (relocated)
            fd_reloc_copy(c->reloc, dst, n, old_pos, new_pos);
        if ((rc = add_changed_words(c, dst, new_pos, n)) || (rc = out_commit(c, dst, n)))
            return rc;
        new_pos += n;
        old_pos += n;
        len -= n;
    }
    return FD_OK;
}

static int copy_extra(fd_apply_ctx *c, uint64_t new_pos, uint64_t len)
{
    while (len > 0) {
        size_t n, done, avail;
        uint8_t *dst = out_span(c, new_pos, len, &n);
        int rc;

        for (done = 0; done < n; done += avail) {
            rc = reader_refill(&c->extra);
            if (rc)
                return rc;
            avail = (size_t)(c->extra.end - c->extra.cur);
            if (avail > n - done)
                avail = n - done;
            /* memmove: in memory mode the extra stream may lie in the output's tail, read
             * ahead of (or at) where it is written. */
            memmove(dst + done, c->extra.cur, avail);
            c->extra.cur += avail;
        }
        rc = out_commit(c, dst, n);
        if (rc)
            return rc;
        new_pos += n;
        len -= n;
    }
    return FD_OK;
}

/* In memory, undoes the output's transform on the blocks that end at or
 * before pos, each once: called as the records are written, a block is undone
 * while it is still in the cache (a pass over the whole output at the end had
 * gone through memory again: 30 MB on a large x86-64 image). No later record
 * writes before pos, and the extra stream, when it lies in the output's tail,
 * is read at or after pos. */
static void undo_written(fd_apply_ctx *c, uint64_t pos)
{
    const fd_code_map *m = c->new_code;
    const uint64_t block = (uint64_t)1 << m->block_log;

    while (c->undo_range < m->count) {
        const fd_code_range *rg = &m->ranges[c->undo_range];
        uint64_t at = c->undone > rg->start ? c->undone : rg->start, end = rg->start + rg->len;
        uint64_t n = end - at < block ? end - at : block;
        if (at + n > pos)
            return;
        fd_code_block(rg->arch, c->out + at, (size_t)n, rg->addr + (at - rg->start), 1, NULL);
        c->undone = at + n;
        if (c->undone == end)
            c->undo_range++;
    }
}

/* Checks the code maps against the images and hands out the work blocks. */
static int code_setup(fd_apply_ctx *c)
{
    const fd_code_map *any = c->old_code ? c->old_code : c->new_code;

    if (!any)
        return FD_OK;
    if (c->old_code && c->new_code && c->old_code->block_log != c->new_code->block_log)
        return FD_ECORRUPT;
    if ((c->old_code && fd_code_check(c->old_code, c->old_len)) ||
        (c->new_code && fd_code_check(c->new_code, c->new_len)) || (c->old_moves && fd_code_moves_check(c->old_moves)))
        return FD_ECORRUPT;
    if (!c->code_work || c->code_work_len < FD_APPLY_CODE_WORK(any->block_log))
        return FD_EPARAM;
    c->undone = 0;
    c->undo_range = 0;
    c->old_remap.fn = fd_code_moved;
    c->old_remap.user = (void *)c->old_moves;
    if (c->old_code)
        fd_code_reader_init(&c->old_reader, c->old_code, c->old_moves ? &c->old_remap : NULL, c->code_work);
    if (c->new_code)
        fd_code_writer_init(&c->new_writer, c->new_code, c->code_work + ((size_t)1 << any->block_log));
    return FD_OK;
}

int fd_apply(fd_apply_ctx *c)
{
    uint64_t new_pos = 0, old_pos = 0;
    int rc;

    if ((!c->old && !c->read_old) || (!c->out && !c->write_out))
        return FD_EPARAM;
    if (!c->out && (!c->work || c->work_len < FD_APPLY_MIN_WORK))
        return FD_EPARAM;
    if (!fd_group_valid(c->grouping, c->span))
        return FD_EPARAM;
    if ((rc = code_setup(c)))
        return rc;
    if (c->reloc) {
        if (c->old_code || c->new_code || (!c->out && c->work_len < FD_RELOC_PIECE))
            return FD_EPARAM;
        if (fd_reloc_check(c->reloc) != FD_CODE_OK)
            return FD_ECORRUPT;
    }
    c->carry_at = FD_NO_WORD;
    c->carry = 0;
    if ((rc = next_changed_word(c, 1)))
        return rc;

    while (new_pos < c->new_len) {
        uint64_t seek_code, add_len, insert_len, back;
        int relocated = 0;

        if ((rc = read_varint(&c->ctrl, &seek_code)) || (rc = read_varint(&c->ctrl, &add_len)) ||
            (rc = read_varint(&c->ctrl, &insert_len)))
            return rc;
        if (c->reloc) {
            relocated = (int)(add_len & 1);
            add_len >>= 1;
            if (relocated && add_len == 0)
                return FD_ECORRUPT; /* nothing to relocate: one way to write each record */
        }
        /* The cursor never leaves [0, old_len] in a well-formed delta. */
        if (seek_code & 1) {
            back = (seek_code >> 1) + 1;
            if (back > old_pos)
                return FD_ECORRUPT;
            old_pos -= back;
        } else {
            if ((seek_code >> 1) > c->old_len - old_pos)
                return FD_ECORRUPT;
            old_pos += seek_code >> 1;
        }
        if (add_len > c->new_len - new_pos || add_len > c->old_len - old_pos)
            return FD_ECORRUPT;
        if ((rc = copy_add(c, new_pos, old_pos, add_len, relocated)))
            return rc;
        new_pos += add_len;
        old_pos += add_len;
        if (insert_len > c->new_len - new_pos)
            return FD_ECORRUPT;
        if ((rc = copy_extra(c, new_pos, insert_len)))
            return rc;
        new_pos += insert_len;
        if (c->out && c->new_code)
            undo_written(c, new_pos);
    }
    /* The last changed word may run on into inserted bytes: it is done. */
    if (c->next_word != FD_NO_WORD && c->next_word < c->new_len && (rc = next_changed_word(c, 0)))
        return rc;
    if (c->next_word != FD_NO_WORD)
        return FD_ECORRUPT;
    if ((rc = expect_end(&c->ctrl)) || (rc = expect_end(&c->words)) || (rc = expect_end(&c->extra)))
        return rc;
    if (c->out && c->new_code)
        undo_written(c, c->new_len);
    return FD_OK;
}

const char *fd_strerror(int code)
{
    switch (code) {
    case FD_OK:
        return "ok";
    case FD_ETRUNCATED:
        return "patch data ends too early";
    case FD_ECORRUPT:
        return "patch data is corrupt";
    case FD_EIO:
        return "read or write failed";
    case FD_EPARAM:
        return "invalid apply parameters";
    default:
        return "unknown error";
    }
}
