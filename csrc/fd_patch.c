#include "fd_patch.h"

#include "fd_format.h"

#include <string.h>

#define MAX_VARINT_BYTES 10

typedef struct {
    const uint8_t *data;
    size_t len, pos;
} cursor;

static int take(cursor *c, size_t n, size_t *at)
{
    if (n > c->len - c->pos)
        return FD_PATCH_ETRUNCATED;
    *at = c->pos;
    c->pos += n;
    return FD_PATCH_OK;
}

static int byte(cursor *c, uint8_t *v)
{
    if (c->pos >= c->len)
        return FD_PATCH_ETRUNCATED;
    *v = c->data[c->pos++];
    return FD_PATCH_OK;
}

/* An LEB128 varint of at most ten bytes and below 2^63, the container's rule. */
static int varint(cursor *c, uint64_t *v, int truncated, int malformed)
{
    uint64_t value = 0;

    for (unsigned k = 0; k < MAX_VARINT_BYTES; k++) {
        uint8_t b;
        if (c->pos >= c->len)
            return truncated;
        b = c->data[c->pos++];
        if (k == 9 && (b & 0x7F))
            return malformed; /* 2^63 or more */
        value |= (uint64_t)(b & 0x7F) << (7 * k);
        if (!(b & 0x80)) {
            *v = value;
            return FD_PATCH_OK;
        }
    }
    return malformed;
}

static int pvarint(cursor *c, uint64_t *v)
{
    return varint(c, v, FD_PATCH_ETRUNCATED, FD_PATCH_EVARINT);
}

/* A stream's header and bytes. raw_len: its raw length where the header
 * implies it (version 5), else NO_LENGTH (read from the patch). */
#define NO_LENGTH UINT64_MAX

static int stream(cursor *c, fd_patch *p, unsigned role, fd_patch_stream *s, uint64_t raw_len)
{
    uint64_t stored;
    int rc;

    if ((rc = byte(c, &s->codec)))
        return rc;
    if (s->codec >= FD_CODECS) {
        p->bad = s->codec;
        p->stream = role;
        return FD_PATCH_ECODEC;
    }
    if (raw_len != NO_LENGTH)
        s->raw_len = raw_len;
    else if ((rc = pvarint(c, &s->raw_len)))
        return rc;
    if (p->version >= FD_PATCH_VERSION_IMPLIED && s->codec == FD_CODEC_STORED)
        stored = s->raw_len;
    else if ((rc = pvarint(c, &stored)))
        return rc;
    if (stored > c->len - c->pos)
        return FD_PATCH_ETRUNCATED;
    s->len = (size_t)stored;
    return take(c, s->len, &s->offset);
}

/* Kinds whose one stream is the new image itself (full or referenced). */
static int image_kind(unsigned kind)
{
    return kind == FD_PATCH_FULL || kind == FD_PATCH_REFERENCED;
}

/* The sum of a solid patch's parts, NO_LENGTH where it would not fit in 63
 * bits (no stream is that long). */
static uint64_t parts_sum(const fd_patch *p)
{
    uint64_t sum = 0;

    for (unsigned k = 0; k < 4; k++) {
        if (p->parts[k] >= NO_LENGTH / 2 - sum)
            return NO_LENGTH;
        sum += p->parts[k];
    }
    return sum;
}

/* The lengths checked before anything is decoded (the records' bounds). */
static int check_lengths(const fd_patch *p)
{
    uint64_t old_size = p->old_size, new_size = p->new_size, ctrl, wmap, words, extra, q, x;

    if (old_size > FD_PATCH_MAX_IMAGE || new_size > FD_PATCH_MAX_IMAGE)
        return FD_PATCH_EHUGE;
    if (image_kind(p->kind))
        return p->streams[0].raw_len == new_size ? FD_PATCH_OK : FD_PATCH_EIMAGELEN;
    if (p->kind == FD_PATCH_SOLID) {
        if (p->streams[0].raw_len != parts_sum(p))
            return FD_PATCH_EPARTS;
        ctrl = p->parts[0], wmap = p->parts[1], words = p->parts[2], extra = p->parts[3];
    } else {
        ctrl = p->streams[0].raw_len, wmap = p->streams[1].raw_len, words = p->streams[2].raw_len;
        extra = p->streams[3].raw_len;
    }
    if (p->flags & FD_PATCH_FLAG_LAYER)
        old_size = p->inner_old, new_size = p->inner_new;
    if (extra > new_size || words > new_size - extra)
        return FD_PATCH_EDATA;
    /* One varint of at most ten bytes per changed word (or byte, or span). */
    if (wmap > MAX_VARINT_BYTES * (new_size / (p->flags & (FD_PATCH_FLAG_BYTES | FD_PATCH_FLAG_SPAN) ? 1 : FD_WORD) + 1))
        return FD_PATCH_EWMAP;
    /* A record is at most three 10-byte varints and produces at least one byte... */
    if (ctrl > 3 * MAX_VARINT_BYTES * new_size)
        return FD_PATCH_ECTRL;
    /* ...and copies at most the whole old image. */
    q = ctrl / 3;
    x = new_size - extra;
    if (x > 0 && (q == 0 || old_size == 0 || (x - 1) / old_size >= q))
        return FD_PATCH_ENEWSIZE;
    return FD_PATCH_OK;
}

int fd_patch_parse(const uint8_t *data, size_t len, fd_patch *p)
{
    static const uint8_t magic[4] = {'F', 'D', 'L', 'T'};
    cursor c = {data, len, 0};
    int rc;

    memset(p, 0, sizeof *p);
    if (len < sizeof magic || memcmp(data, magic, sizeof magic))
        return FD_PATCH_EMAGIC;
    c.pos = sizeof magic;
    if ((rc = byte(&c, &p->version)))
        return rc;
    if (p->version < FD_PATCH_VERSION_PLAIN || p->version > FD_PATCH_VERSION_IMPLIED) {
        p->bad = p->version;
        return FD_PATCH_EVERSION;
    }
    if ((rc = byte(&c, &p->kind)))
        return rc;
    if (p->kind >= FD_PATCH_KINDS) {
        p->bad = p->kind;
        return FD_PATCH_EKIND;
    }
    if (p->version >= FD_PATCH_VERSION_LAYERED) {
        if ((rc = byte(&c, &p->flags)))
            return rc;
        /* Version 3 says what versions 1 and 2 cannot: a HEX layer, byte
         * differences or sums (one grouping of the differences at most).
         * Versions 4 and 5 may say nothing, may make the sums spans and may
         * name a UF2 layer instead of a HEX one. */
        if (p->flags & ~(FD_PATCH_FLAG_CODE | FD_PATCH_FLAG_LAYER | FD_PATCH_FLAG_BYTES | FD_PATCH_FLAG_SUMS |
                         FD_PATCH_FLAG_SPAN | FD_PATCH_FLAG_RELOC) ||
            (p->flags & FD_PATCH_FLAG_RELOC &&
             (p->version < FD_PATCH_VERSION_IMPLIED || p->flags & FD_PATCH_FLAG_CODE)) ||
            (p->flags & FD_PATCH_FLAG_UF2 &&
             (p->version < FD_PATCH_VERSION_COMPACT || p->flags & FD_PATCH_FLAG_HEX)) ||
            (p->version == FD_PATCH_VERSION_LAYERED &&
             !(p->flags & (FD_PATCH_FLAG_HEX | FD_PATCH_FLAG_BYTES | FD_PATCH_FLAG_SUMS))) ||
            (p->flags & FD_PATCH_FLAG_BYTES && p->flags & FD_PATCH_FLAG_SUMS) ||
            (p->flags & FD_PATCH_FLAG_SPAN &&
             (p->version < FD_PATCH_VERSION_COMPACT || !(p->flags & FD_PATCH_FLAG_SUMS)))) {
            p->bad = p->flags;
            return FD_PATCH_EFLAGS;
        }
    } else {
        p->flags = p->version == FD_PATCH_VERSION_CODE ? FD_PATCH_FLAG_CODE : 0;
    }
    if (p->flags && image_kind(p->kind))
        return FD_PATCH_EFULLFLAGS;
    p->fingerprint_len =
        p->version >= FD_PATCH_VERSION_IMPLIED ? FD_PATCH_SHORT_FINGERPRINT_LEN : FD_PATCH_FINGERPRINT_LEN;
    p->digest_len = p->version >= FD_PATCH_VERSION_COMPACT ? FD_PATCH_COMPACT_DIGEST_LEN : FD_PATCH_DIGEST_LEN;
    if ((rc = pvarint(&c, &p->old_size)) || (rc = pvarint(&c, &p->new_size)) ||
        (rc = take(&c, p->fingerprint_len, &p->fingerprint)) || (rc = take(&c, p->digest_len, &p->digest)))
        return rc;
    if (p->flags & FD_PATCH_FLAG_LAYER) {
        if ((rc = pvarint(&c, &p->inner_old)) || (rc = pvarint(&c, &p->inner_new)) ||
            (rc = stream(&c, p, FD_PATCH_S_LAYOUT, &p->layout, NO_LENGTH)))
            return rc;
        /* Each payload byte is two hex digits of its image; a layout operation
         * stands for a record of 11 characters or more and takes at most 13
         * bytes of its own. A UF2 block of FD_UF2_BLOCK bytes holds at most
         * FD_UF2_DATA payload bytes, and a layout operation stands for one
         * block or more and takes at most 507 bytes (an operation byte, six
         * varints and the block's bytes after its payload). */
        if (p->flags & FD_PATCH_FLAG_HEX ? p->inner_old > p->old_size / 2 || p->inner_new > p->new_size / 2 ||
                                               p->layout.raw_len > 2 * p->new_size + 16
                                         : p->inner_old > p->old_size / FD_UF2_BLOCK * FD_UF2_DATA ||
                                               p->inner_new > p->new_size / FD_UF2_BLOCK * FD_UF2_DATA ||
                                               p->layout.raw_len > p->new_size + 16)
            return FD_PATCH_ELAYER;
    }
    if (p->kind == FD_PATCH_SOLID)
        for (unsigned k = 0; k < 4; k++)
            if ((rc = pvarint(&c, &p->parts[k])))
                return rc;
    if (p->flags & (FD_PATCH_FLAG_CODE | FD_PATCH_FLAG_RELOC)) {
        if ((rc = stream(&c, p, FD_PATCH_S_CODE, &p->code, NO_LENGTH)))
            return rc;
        if (p->code.raw_len > FD_PATCH_CODE_RAW_MAX)
            return FD_PATCH_ECODELEN;
    }
    p->nstreams = p->kind == FD_PATCH_DELTA ? 4 : 1;
    for (uint32_t k = 0; k < p->nstreams; k++) {
        unsigned role = p->kind == FD_PATCH_DELTA ? FD_PATCH_S_CTRL + k
                        : p->kind == FD_PATCH_SOLID ? FD_PATCH_S_RECORDS
                                                    : FD_PATCH_S_IMAGE;
        uint64_t raw_len = NO_LENGTH;
        if (p->version >= FD_PATCH_VERSION_IMPLIED && p->kind != FD_PATCH_DELTA) {
            raw_len = p->kind == FD_PATCH_SOLID ? parts_sum(p) : p->new_size;
            if (raw_len == NO_LENGTH)
                return FD_PATCH_EPARTS;
        }
        if ((rc = stream(&c, p, role, &p->streams[k], raw_len)))
            return rc;
        if (p->kind == FD_PATCH_REFERENCED && p->streams[k].codec == FD_CODEC_STORED) {
            p->bad = p->streams[k].codec;
            p->stream = role;
            return FD_PATCH_ECODEC;
        }
    }
    if (c.pos != len) {
        p->bad = len - c.pos;
        return FD_PATCH_ETRAILING;
    }
    return check_lengths(p);
}

static int cvarint(cursor *c, uint64_t *v)
{
    return varint(c, v, FD_CODE_PLAN_ETRUNCATED, FD_CODE_PLAN_EVARINT);
}

static int code_ranges(cursor *c, uint64_t size, fd_code_range *ranges, fd_code_map *map, uint64_t *bad)
{
    uint64_t count, end = 0;
    int rc;

    if ((rc = cvarint(c, &count)))
        return rc;
    if (count > FD_CODE_MAX_RANGES) {
        *bad = count;
        return FD_CODE_PLAN_ERANGES;
    }
    for (uint64_t k = 0; k < count; k++) {
        fd_code_range *r = &ranges[k];
        uint64_t gap;
        if (c->pos >= c->len)
            return FD_CODE_PLAN_ETRUNCATED;
        r->arch = c->data[c->pos++];
        if (r->arch == 0 || r->arch >= FD_CODE_ARCH_END) {
            *bad = r->arch;
            return FD_CODE_PLAN_EARCH;
        }
        if ((rc = cvarint(c, &gap)) || (rc = cvarint(c, &r->len)) || (rc = cvarint(c, &r->addr)))
            return rc;
        /* end and gap are below 2^63 each: their sum does not wrap. */
        r->start = end + gap;
        if (r->len == 0 || r->start > size || r->len > size - r->start)
            return FD_CODE_PLAN_ERANGE;
        end = r->start + r->len;
    }
    map->ranges = ranges;
    map->count = (uint32_t)count;
    return FD_CODE_PLAN_OK;
}

/* A move count, refused beyond FD_CODE_MAX_MOVES or beyond what the rest of
 * the stream can hold (a move takes two bytes or more), so that a caller
 * does not allocate for it. */
static int move_count(cursor *c, uint32_t *moves, uint64_t *bad)
{
    uint64_t count;
    int rc;

    if ((rc = cvarint(c, &count)))
        return rc;
    if (count > FD_CODE_MAX_MOVES) {
        *bad = count;
        return FD_CODE_PLAN_EMOVES;
    }
    if (count > (c->len - c->pos) / 2)
        return FD_CODE_PLAN_ETRUNCATED;
    *moves = (uint32_t)count;
    return FD_CODE_PLAN_OK;
}

/* The moves from at on; nothing may follow them. */
static int read_moves(const uint8_t *data, size_t len, size_t at, uint32_t moves, fd_code_step *steps)
{
    cursor c = {data, len, at};
    uint64_t start = 0;
    int rc;

    for (uint32_t k = 0; k < moves; k++) {
        uint64_t gap, zz;
        if ((rc = cvarint(&c, &gap)) || (rc = cvarint(&c, &zz)))
            return rc;
        if (k > 0 && gap == 0)
            return FD_CODE_PLAN_EORDER;
        /* start and gap are below 2^63 each: their sum does not wrap. */
        start += gap;
        if (start >= UINT64_C(1) << 63)
            return FD_CODE_PLAN_EMOVE;
        steps[k].from = start;
        steps[k].delta = (int64_t)(zz >> 1) ^ -(int64_t)(zz & 1);
    }
    return c.pos == len ? FD_CODE_PLAN_OK : FD_CODE_PLAN_ETRAILING;
}

int fd_code_plan_parse(const uint8_t *data, size_t len, uint64_t old_size, uint64_t new_size,
                       fd_code_range *old_ranges, fd_code_range *new_ranges, fd_code_plan *plan)
{
    cursor c = {data, len, 0};
    uint8_t block_log;
    int rc;

    memset(plan, 0, sizeof *plan);
    if (len == 0)
        return FD_CODE_PLAN_ETRUNCATED;
    block_log = data[c.pos++];
    if (block_log < FD_CODE_BLOCK_LOG_MIN || block_log > FD_CODE_BLOCK_LOG_MAX) {
        plan->bad = block_log;
        return FD_CODE_PLAN_EBLOCK;
    }
    plan->old_map.block_log = plan->new_map.block_log = block_log;
    if ((rc = code_ranges(&c, old_size, old_ranges, &plan->old_map, &plan->bad)) ||
        (rc = code_ranges(&c, new_size, new_ranges, &plan->new_map, &plan->bad)) ||
        (rc = move_count(&c, &plan->moves, &plan->bad)))
        return rc;
    plan->moves_at = c.pos;
    return FD_CODE_PLAN_OK;
}

int fd_code_plan_moves(const uint8_t *data, size_t len, const fd_code_plan *plan, fd_code_step *steps)
{
    return read_moves(data, len, plan->moves_at, plan->moves, steps);
}

int fd_reloc_plan_parse(const uint8_t *data, size_t len, fd_reloc_plan *plan)
{
    cursor c = {data, len, 0};
    int rc;

    memset(plan, 0, sizeof *plan);
    if (byte(&c, &plan->arch))
        return FD_CODE_PLAN_ETRUNCATED;
    if (plan->arch == 0 || plan->arch >= FD_CODE_ARCH_END) {
        plan->bad = plan->arch;
        return FD_CODE_PLAN_EARCH;
    }
    if ((rc = move_count(&c, &plan->moves, &plan->bad)))
        return rc;
    plan->moves_at = c.pos;
    return FD_CODE_PLAN_OK;
}

int fd_reloc_plan_moves(const uint8_t *data, size_t len, const fd_reloc_plan *plan, fd_code_step *steps)
{
    return read_moves(data, len, plan->moves_at, plan->moves, steps);
}
