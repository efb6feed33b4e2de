#include "fd_inplace.h"

#include <stddef.h>
#include <string.h>

#include "fd_ip_code.h"
#include "fd_sha256.h"

/* ---- little-endian fields ------------------------------------------------ */

/* "FDIP" and "FDJ1" as little-endian words. */
#define PATCH_MAGIC 0x50494446u
#define JOURNAL_MAGIC 0x314A4446u

/* A macro rather than a function: GCC -Os then makes each a single load on
 * targets that allow unaligned ones, where a call costs more. */
#define get32(p) ((uint32_t)(p)[0] | (uint32_t)(p)[1] << 8 | (uint32_t)(p)[2] << 16 | (uint32_t)(p)[3] << 24)

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* CRC-32 (IEEE, reflected), bitwise: journal records are a few bytes. */
static uint32_t crc32(const uint8_t *p, uint32_t n)
{
    uint32_t c = 0xffffffffu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return ~c;
}

/* ---- decoded payload ------------------------------------------------------ */

typedef struct {
    uint8_t codec;
    uint8_t grouping; /* fd_ip_header's */
    uint32_t start; /* offset of the lanes in the patch */
    fd_patch_read_fn read_patch;
    void *patch_user;
    uint32_t pos[FD_IP_LANES]; /* next stored payload byte of each lane */
    uint32_t raw[FD_IP_LANES]; /* decoded bytes still to come */
    const fd_payload_source *src;
    uint8_t *src_work;
    uint32_t src_work_len;
} payload;

/* The lanes follow the moves table: stored, one after the other. */
static int payload_open(payload *p, const fd_ip_header *h)
{
    uint32_t table = h->moves * FD_IP_MOVE_SIZE, len = h->payload_len - table, at;
    uint64_t total = 0;

    p->start = at = h->header_len + table;
    for (int k = 0; k < FD_IP_LANES; k++) {
        p->pos[k] = at;
        p->raw[k] = h->lane_raw[k];
        at += h->lane_raw[k];
        total += h->lane_raw[k];
    }
    if (p->codec == FD_IP_CODEC_STORED)
        return total == len ? FD_IP_OK : FD_IP_ECORRUPT;
    return p->src->open(p->src->user, p->start, len, p->src_work, p->src_work_len) ? FD_IP_ECORRUPT : FD_IP_OK;
}

static int payload_read(payload *p, unsigned lane, uint8_t *dst, uint32_t n)
{
    if (n > p->raw[lane])
        return FD_IP_ECORRUPT;
    p->raw[lane] -= n;
    if (p->codec != FD_IP_CODEC_STORED)
        return p->src->read(p->src->user, lane, dst, n) ? FD_IP_ECORRUPT : FD_IP_OK;
    if (p->read_patch(p->patch_user, p->pos[lane], dst, n))
        return FD_IP_EIO;
    p->pos[lane] += n;
    return FD_IP_OK;
}

/* Varints are all in the control lane. */
static int payload_varint(payload *p, uint32_t *value)
{
    uint32_t v = 0;
    for (unsigned shift = 0; shift < 35; shift += 7) {
        uint8_t b;
        int rc = payload_read(p, FD_IP_LANE_CONTROL, &b, 1);
        if (rc)
            return rc;
        if (shift == 28 && b > 0x0f)
            return FD_IP_ECORRUPT;
        v |= (uint32_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *value = v;
            return FD_IP_OK;
        }
    }
    return FD_IP_ECORRUPT;
}

/* Where the header's varints go, in order. */
static const uint8_t field_at[FD_IP_VARINTS] = {
    offsetof(fd_ip_header, old_size), offsetof(fd_ip_header, new_size),
    offsetof(fd_ip_header, lane_raw[FD_IP_LANE_CONTROL]), offsetof(fd_ip_header, lane_raw[FD_IP_LANE_LITERALS]),
    offsetof(fd_ip_header, lane_raw[FD_IP_LANE_DIFFS]), offsetof(fd_ip_header, payload_len),
    offsetof(fd_ip_header, work_need), offsetof(fd_ip_header, moves)};

int fd_ip_read_header(fd_patch_read_fn read_patch, void *patch_user, uint8_t raw[FD_IP_FIXED_SIZE], fd_ip_header *h)
{
    payload pl;
    int rc;

    if (read_patch(patch_user, 0, raw, FD_IP_FIXED_SIZE))
        return FD_IP_EIO;
    if (get32(raw) != PATCH_MAGIC || raw[4] != FD_IP_FORMAT_VERSION)
        return FD_IP_EFORMAT;
    /* Byte 5's high half: 0, FD_IP_FLAG_BYTEWISE, FD_IP_FLAG_SUMS or
     * FD_IP_FLAG_SPANS(2 to 4), that is 0 to 5. */
    const uint8_t flags = raw[5] >> 4;
    h->codec = raw[5] & 0x0F;
    h->grouping = flags;
    h->block_log = raw[6];
    h->park_slots = raw[7];
    h->arch = raw[8];
    if (h->codec > FD_IP_CODEC_LZMA || flags > FD_IP_FLAG_SPANS(FD_SPAN_MAX) >> 4 || h->block_log < FD_IP_BLOCK_LOG_MIN ||
        h->block_log > FD_IP_BLOCK_LOG_MAX || h->park_slots > FD_IP_MAX_PARK)
        return FD_IP_EFORMAT;
    /* The varints are read as a stored lane would be: bounded, and a byte
     * at a time (a short patch may end before FD_IP_HEADER_MAX). */
    pl.codec = FD_IP_CODEC_STORED;
    pl.read_patch = read_patch;
    pl.patch_user = patch_user;
    pl.pos[FD_IP_LANE_CONTROL] = FD_IP_FIXED_SIZE;
    pl.raw[FD_IP_LANE_CONTROL] = FD_IP_HEADER_MAX - FD_IP_FIXED_SIZE;
    for (unsigned k = 0; k < FD_IP_VARINTS; k++) {
        uint32_t x;
        if ((rc = payload_varint(&pl, &x)))
            return rc;
        memcpy((uint8_t *)h + field_at[k], &x, sizeof x);
    }
    h->header_len = pl.pos[FD_IP_LANE_CONTROL];
    return FD_IP_OK;
}

/* ---- journal ---------------------------------------------------------------
 * Two blocks used in turn. Each starts with a header record (magic, sequence
 * number, patch id, steps completed, step staged in scratch) and continues
 * with one record per event; a record is valid only if its CRC matches, so
 * a torn write reads as a skipped slot. */

enum { REC_STAGED = 1, REC_DONE = 2, REC_COMPLETE = 3 };
#define NO_STEP 0xffffffffu
#define HEADER_BYTES 24
#define RECORD_BYTES 12
/* Records are padded to the write size in a buffer of this many bytes. */
#define JBUF_SIZE 64

typedef struct {
    const fd_flash *f;
    uint32_t patch_id;
    uint32_t rec_size;  /* record slot, a multiple of the write size */
    uint32_t head_size; /* header slot */
    uint32_t active;    /* 0 or 1, or 2 when no valid journal exists */
    uint32_t seq;
    uint32_t next_slot; /* first unused record slot of the active block */
    uint32_t done;      /* steps completed */
    uint32_t staged;    /* step whose new block sits in scratch, or NO_STEP */
    int complete;
} journal;

/* unit: a power of two (write_size_fits). */
static uint32_t round_up(uint32_t v, uint32_t unit)
{
    return (v + unit - 1) & ~(unit - 1);
}

/* A power of two that divides the block (as every flash's write size does,
 * which round_up relies on) and fits the journal's buffer. */
static int write_size_fits(const fd_flash *f)
{
    return f->write_size != 0 && !((f->write_size | f->block_size) & (f->write_size - 1)) &&
           f->write_size <= JBUF_SIZE;
}

static uint32_t jblock(const journal *j, uint32_t which)
{
    return j->f->journal + which * j->f->block_size;
}

static int all_erased(const uint8_t *p, uint32_t n)
{
    while (n--)
        if (*p++ != 0xff)
            return 0;
    return 1;
}

/* Ends the record of len bytes at buf (its last four the CRC of the others),
 * pads it with erased bytes to slot bytes and writes it at addr. */
static int write_record(const journal *j, uint32_t addr, uint8_t *buf, uint32_t len, uint32_t slot)
{
    put32(buf + len - 4, crc32(buf, len - 4));
    memset(buf + len, 0xff, slot - len);
    return j->f->write(j->f->user, addr, buf, slot) ? FD_IP_EIO : FD_IP_OK;
}

/* buf: JBUF_SIZE bytes. */
static int journal_start_block(journal *j, uint32_t which, uint8_t *buf)
{
    int rc;

    if (j->f->erase(j->f->user, jblock(j, which)))
        return FD_IP_EIO;
    put32(buf, JOURNAL_MAGIC);
    put32(buf + 4, j->seq + 1);
    put32(buf + 8, j->patch_id);
    put32(buf + 12, j->done);
    put32(buf + 16, j->staged);
    rc = write_record(j, jblock(j, which), buf, HEADER_BYTES, j->head_size);
    if (rc)
        return rc;
    j->active = which;
    j->seq++;
    j->next_slot = 0;
    return FD_IP_OK;
}

/* raw: the patch header, whose digest's first four bytes tell its journal. */
static void journal_init(journal *j, const fd_flash *f, const uint8_t *raw)
{
    memset(j, 0, sizeof *j);
    j->f = f;
    j->patch_id = get32(raw + FD_IP_PATCH_DIGEST_AT);
    j->rec_size = round_up(RECORD_BYTES, f->write_size);
    j->head_size = round_up(HEADER_BYTES, f->write_size);
    j->staged = NO_STEP;
}

/* Reads both blocks; the valid header of this patch with the higher
 * sequence wins and its records are replayed. Right after journal_init();
 * buf holds a block. */
static int journal_load(journal *j, uint8_t *buf)
{
    const uint32_t bs = j->f->block_size;
    uint32_t best_seq = 0;

    j->active = 2;
    for (uint32_t which = 0; which < 2; which++) {
        uint32_t seq;
        if (j->f->read(j->f->user, jblock(j, which), buf, HEADER_BYTES))
            return FD_IP_EIO;
        seq = get32(buf + 4);
        if (get32(buf) == JOURNAL_MAGIC && get32(buf + 20) == crc32(buf, 20) && get32(buf + 8) == j->patch_id &&
            (j->active == 2 || seq > best_seq)) {
            j->active = which;
            best_seq = seq;
        }
    }
    if (j->active == 2)
        return FD_IP_OK;
    if (j->f->read(j->f->user, jblock(j, j->active), buf, bs))
        return FD_IP_EIO;
    j->seq = best_seq;
    j->done = get32(buf + 12);
    j->staged = get32(buf + 16);
    for (uint32_t slot = 0; j->head_size + (slot + 1) * j->rec_size <= bs; slot++) {
        const uint8_t *r = buf + j->head_size + slot * j->rec_size;
        if (all_erased(r, j->rec_size))
            break;
        j->next_slot = slot + 1;
        if (get32(r + 8) != crc32(r, 8) || get32(r + 4) != j->seq)
            continue; /* torn */
        if (r[0] == REC_STAGED) {
            j->staged = get32(r + 0) >> 8;
        } else if (r[0] == REC_DONE) {
            j->done = (get32(r + 0) >> 8) + 1;
            j->staged = NO_STEP;
        } else if (r[0] == REC_COMPLETE) {
            j->complete = 1;
        }
    }
    return FD_IP_OK;
}

/* Appends an event; moves to the other block when this one is full. */
static int journal_append(journal *j, uint8_t type, uint32_t step, uint8_t *buf)
{
    int rc;

    if (j->head_size + (j->next_slot + 1) * j->rec_size > j->f->block_size) {
        rc = journal_start_block(j, 1 - j->active, buf);
        if (rc)
            return rc;
    }
    put32(buf, (uint32_t)type | step << 8);
    put32(buf + 4, j->seq);
    rc = write_record(j, jblock(j, j->active) + j->head_size + j->next_slot * j->rec_size, buf, RECORD_BYTES,
                      j->rec_size);
    j->next_slot++;
    return rc;
}

/* ---- the update ---------------------------------------------------------- */

typedef struct {
    const fd_flash *f;
    payload *pl;
    fd_ip_code code;
    uint8_t *buf; /* one block */
    uint32_t cursor;  /* where the next copy reads, before its seek */
    uint32_t new_end; /* end of the last block built, in the new image */
    uint32_t span;    /* bytes of the slot either image covers */
} updater;

/* Whether SHA-256 of prefix (may be empty) followed by len bytes read at
 * addr starts with the FD_IP_DIGEST_LEN bytes at expect: FD_IP_OK, else
 * mismatch (or FD_IP_EIO when a read fails). buf holds buf_len bytes. With
 * engine (flash bytes: rd reads the flash, prefix is empty) the flash's own
 * digest engine hashes them if it has one. */
static int check_digest(const fd_flash *engine, const uint8_t *prefix, uint32_t prefix_len, fd_patch_read_fn rd,
                        void *user, uint32_t addr, uint32_t len, uint8_t *buf, uint32_t buf_len, const uint8_t *expect,
                        int mismatch)
{
    fd_sha256 sha;
    uint8_t full[FD_SHA256_LEN];

#ifdef FD_IP_FLASH_DIGEST
    if (engine && engine->digest) {
        if (engine->digest(engine->user, addr, len, full))
            return FD_IP_EIO;
        return memcmp(full, expect, FD_IP_DIGEST_LEN) ? mismatch : FD_IP_OK;
    }
#else
    (void)engine;
#endif
    fd_sha256_init(&sha);
    fd_sha256_update(&sha, prefix, prefix_len);
    while (len > 0) {
        uint32_t chunk = len < buf_len ? len : buf_len;
        if (rd(user, addr, buf, chunk))
            return FD_IP_EIO;
        fd_sha256_update(&sha, buf, chunk);
        addr += chunk;
        len -= chunk;
    }
    fd_sha256_final(&sha, full);
    return memcmp(full, expect, FD_IP_DIGEST_LEN) ? mismatch : FD_IP_OK;
}

static int flash_read_cb(void *user, uint32_t addr, uint8_t *dst, uint32_t len)
{
    const fd_flash *f = user;
    return f->read(f->user, addr, dst, len);
}

/* check_digest() of the slot's first len bytes; buf holds a block. */
static int check_slot(const fd_flash *f, uint32_t len, uint8_t *buf, const uint8_t *expect, int mismatch)
{
    return check_digest(f, NULL, 0, flash_read_cb, (void *)f, f->slot, len, buf, f->block_size, expect, mismatch);
}

/* Decodes one step of blen bytes into u->buf. With build = 0 only consumes
 * its payload. */
static int run_step_payload(updater *u, uint32_t start, uint32_t blen, int build)
{
    /* Per grouping (byte 5's bits 4-7): the bytes a group covers (bits 0-2),
     * what a gap counts (bits 3-5), and whether carries cross its bytes (bit 6). */
    static const uint8_t groups[6] = {4 | 4 << 3, 1 | 1 << 3, 4 | 4 << 3 | 64, 2 | 1 << 3 | 64, 3 | 1 << 3 | 64,
                                      4 | 1 << 3 | 64};
    const uint32_t g = groups[u->pl->grouping], unit = g & 7, stride = g >> 3 & 7, sums = g >> 6;
    uint32_t pos = 0, at = 0;
    int rc;

    /* Between steps the cursor moves as far as the new position does (within
     * the slot): a copy that goes on where the last block's left off, in
     * either direction, needs no seek. */
    if (start >= u->new_end)
        u->cursor = start - u->new_end > u->span - u->cursor ? u->span : u->cursor + (start - u->new_end);
    else
        u->cursor = u->new_end - start > u->cursor ? 0 : u->cursor - (u->new_end - start);
    u->new_end = start + blen;

    while (pos < blen) {
        uint32_t seek, add, ins, reloc = 0;
        if ((rc = payload_varint(u->pl, &seek)) || (rc = payload_varint(u->pl, &add)) ||
            (rc = payload_varint(u->pl, &ins)))
            return rc;
        if (u->code.arch) {
            /* A relocated copy: the low bit of its length. */
            reloc = add & 1;
            add >>= 1;
        }
        /* Copies read the slot as it is now: old bytes, or new bytes of
         * blocks already rewritten. */
        if (seek & 1) {
            if ((seek >> 1) + 1 > u->cursor)
                return FD_IP_ECORRUPT;
            u->cursor -= (seek >> 1) + 1;
        } else {
            if ((seek >> 1) > u->span - u->cursor)
                return FD_IP_ECORRUPT;
            u->cursor += seek >> 1;
        }
        if (add > blen - pos || ins > blen - pos - add || add > u->span - u->cursor || add + ins == 0)
            return FD_IP_ECORRUPT;
        if (build && add &&
            (u->f->read(u->f->user, u->f->slot + u->cursor, u->buf + pos, add) ||
             (reloc && fd_ip_relocate(&u->code, u->buf + pos, add, u->cursor, start + pos))))
            return FD_IP_EIO;
        u->cursor += add;
        pos += add;
        if (ins && (rc = payload_read(u->pl, FD_IP_LANE_LITERALS, u->buf + pos, ins)))
            return rc;
        pos += ins;
    }
    /* Changed words (or bytes, or spans): each its gap + 1 in strides (0
     * ends the block's list), then its differences from the other lane; as
     * sums, each byte's carry goes into the next byte of its group. */
    for (;;) {
        uint32_t gap, carry = 0;
        uint8_t d[4];
        if ((rc = payload_varint(u->pl, &gap)))
            return rc;
        if (gap == 0)
            break;
        /* (gap - 1 < blen: no overflow) */
        if (gap - 1 >= blen || (at += (gap - 1) * stride) >= blen)
            return FD_IP_ECORRUPT;
        if ((rc = payload_read(u->pl, FD_IP_LANE_DIFFS, d, unit)))
            return rc;
        for (uint32_t k = 0; k < unit; k++, at++) {
            if (at >= blen) {
                if (d[k])
                    return FD_IP_ECORRUPT;
            } else if (build) {
                uint32_t sum = u->buf[at] + d[k] + carry;
                u->buf[at] = (uint8_t)sum;
                carry = sums & (sum >> 8);
            }
        }
    }
    return FD_IP_OK;
}

static int write_block(const fd_flash *f, uint32_t addr, uint8_t *buf, uint32_t blen)
{
    uint32_t len = round_up(blen, f->write_size);
    memset(buf + blen, 0xff, len - blen);
    if (f->erase(f->user, addr))
        return FD_IP_EIO;
    return f->write(f->user, addr, buf, len) ? FD_IP_EIO : FD_IP_OK;
}

/* How fd_inplace_apply() and fd_inplace_state() both begin: the header read,
 * the write size and a block of work memory checked, and the journal of this
 * patch loaded (reads only). */
static int begin(const fd_flash *f, fd_patch_read_fn read_patch, void *patch_user, uint8_t raw[FD_IP_FIXED_SIZE],
                 fd_ip_header *h, journal *j, void *work, uint32_t work_len)
{
    int rc;

    if ((rc = fd_ip_read_header(read_patch, patch_user, raw, h)))
        return rc;
    if (!write_size_fits(f))
        return FD_IP_EGEOMETRY;
    if (!work || work_len < f->block_size)
        return FD_IP_ENOMEM;
    journal_init(j, f, raw);
    return journal_load(j, work);
}

int fd_inplace_apply(const fd_flash *f, fd_patch_read_fn read_patch, void *patch_user,
                     const fd_payload_source *source, void *work, uint32_t work_len)
{
    uint8_t raw[FD_IP_FIXED_SIZE], jbuf[JBUF_SIZE];
    fd_ip_header h;
    payload pl;
    journal j;
    updater u;
    uint32_t prev_block = 0xffffffffu, bs = f->block_size, span;
    int rc;

    /* Checks that need no flash writes. */
    if ((rc = begin(f, read_patch, patch_user, raw, &h, &j, work, work_len)))
        return rc;
    span = h.old_size > h.new_size ? h.old_size : h.new_size;
    /* The slot must hold span rounded up to whole blocks (bs is a power of two). */
    if (bs != (1u << h.block_log) || f->park_blocks < h.park_slots ||
        span > f->slot_size || (f->slot_size - span) < ((0u - span) & (bs - 1)))
        return FD_IP_EGEOMETRY;
    if ((h.codec != FD_IP_CODEC_STORED && !source) || !FD_IP_ARCH_BUILT(h.arch))
        return FD_IP_EFORMAT;
    if (h.moves > h.payload_len / FD_IP_MOVE_SIZE)
        return FD_IP_ECORRUPT;
    if (work_len < h.work_need || h.work_need < bs)
        return FD_IP_ENOMEM;
    pl.codec = h.codec; /* payload_open() sets the rest */
    pl.grouping = h.grouping;
    pl.read_patch = read_patch;
    pl.patch_user = patch_user;
    pl.src = source;
    pl.src_work = (uint8_t *)work + bs;
    pl.src_work_len = work_len - bs;
    u.f = f;
    u.pl = &pl;
    u.code.arch = h.arch;
    u.code.moves = h.moves;
    u.code.table = h.header_len;
    u.code.read = read_patch;
    u.code.user = patch_user;
    u.buf = work;
    u.cursor = 0;
    u.new_end = 0;
    u.span = span;
    /* The patch digest covers every byte of the patch but its own. */
    if ((rc = check_digest(NULL, raw, FD_IP_PATCH_DIGEST_AT, read_patch, patch_user, FD_IP_FIXED_SIZE,
                           h.header_len - FD_IP_FIXED_SIZE + h.payload_len, u.buf, bs, raw + FD_IP_PATCH_DIGEST_AT,
                           FD_IP_ECORRUPT)))
        return rc;
    /* Opening the payload checks the decoder's memory: still before any
     * write. Nothing reads the payload until the steps below. */
    if ((rc = payload_open(&pl, &h)))
        return rc;

    if (j.active == 2) {
        /* A fresh start: the slot must hold the source image. */
        if ((rc = check_slot(f, h.old_size, u.buf, raw + FD_IP_OLD_DIGEST_AT, FD_IP_ESOURCE)) ||
            (rc = journal_start_block(&j, 0, jbuf)))
            return rc;
    }
    if (j.complete)
        return FD_IP_OK;

    for (uint32_t k = 0; pl.raw[FD_IP_LANE_CONTROL] > 0; k++) {
        uint32_t code, zz, block, addr, blen, kind, slot = 0, park_addr;

        if ((rc = payload_varint(&pl, &code)))
            return rc;
        kind = code & 3;
        if (kind == FD_IP_STEP_PARK || kind == FD_IP_STEP_UNPARK) {
            if ((rc = payload_varint(&pl, &slot)))
                return rc;
            if (slot >= h.park_slots)
                return FD_IP_ECORRUPT;
        }
        park_addr = f->park + slot * bs;
        zz = code >> 2;
        block = prev_block + 1 + (zz & 1 ? ~(zz >> 1) : zz >> 1);
        if ((uint64_t)block * bs >= h.new_size)
            return FD_IP_ECORRUPT;
        prev_block = block;
        addr = f->slot + block * bs;
        blen = h.new_size - block * bs < bs ? h.new_size - block * bs : bs;
        if (kind == FD_IP_STEP_UNPARK) {
            if (k < j.done)
                continue;
            /* Its readers are written: move the parked block into place. */
            if (f->read(f->user, park_addr, u.buf, bs))
                return FD_IP_EIO;
        } else if (k < j.done || (k == j.done && j.staged == k)) {
            if ((rc = run_step_payload(&u, block * bs, blen, 0)))
                return rc;
            if (k < j.done)
                continue;
            /* Power failed after staging: the new block is safe in scratch. */
            if (f->read(f->user, f->scratch, u.buf, bs))
                return FD_IP_EIO;
        } else {
            if ((rc = run_step_payload(&u, block * bs, blen, 1)))
                return rc;
            if (kind == FD_IP_STEP_PARK) {
                /* Built early to break a cycle; its old bytes stay readable. */
                addr = park_addr;
            } else if (kind == FD_IP_STEP_STAGED) {
                /* The block reads its own old bytes: keep the new ones in
                 * scratch until the block itself has been rewritten. */
                if ((rc = write_block(f, f->scratch, u.buf, bs)) || (rc = journal_append(&j, REC_STAGED, k, jbuf)))
                    return rc;
                /* A journal block started from here on must carry it too. */
                j.staged = k;
            }
        }
        if ((rc = write_block(f, addr, u.buf, blen)) || (rc = journal_append(&j, REC_DONE, k, jbuf)))
            return rc;
        j.done = k + 1;
        j.staged = NO_STEP;
    }
    if (pl.raw[FD_IP_LANE_LITERALS] || pl.raw[FD_IP_LANE_DIFFS])
        return FD_IP_ECORRUPT;
    if ((rc = check_slot(f, h.new_size, u.buf, raw + FD_IP_NEW_DIGEST_AT, FD_IP_EVERIFY)))
        return rc;
    return journal_append(&j, REC_COMPLETE, 0, jbuf);
}

int fd_inplace_state(const fd_flash *f, fd_patch_read_fn read_patch, void *patch_user, void *work,
                     uint32_t work_len)
{
    uint8_t raw[FD_IP_FIXED_SIZE];
    fd_ip_header h;
    journal j;
    int rc;

    if ((rc = begin(f, read_patch, patch_user, raw, &h, &j, work, work_len)))
        return rc;
    if (j.active == 2)
        return FD_IP_STATE_NONE;
    return j.complete ? FD_IP_STATE_COMPLETE : FD_IP_STATE_RUNNING;
}

const char *fd_ip_strerror(int code)
{
    switch (code) {
    case FD_IP_OK:
        return "ok";
    case FD_IP_EIO:
        return "flash or patch access failed";
    case FD_IP_EFORMAT:
        return "not an in-place patch this patcher can apply";
    case FD_IP_EGEOMETRY:
        return "flash geometry does not fit the patch";
    case FD_IP_ENOMEM:
        return "not enough work memory for this patch";
    case FD_IP_ECORRUPT:
        return "patch payload is corrupt";
    case FD_IP_ESOURCE:
        return "the slot does not hold the source image of this patch";
    case FD_IP_EVERIFY:
        return "the new image does not match the target digest";
    default:
        return "unknown error";
    }
}
