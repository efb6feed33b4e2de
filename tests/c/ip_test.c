/* Test driver for the device-side in-place patcher (csrc/fd_inplace.c with
 * fd_ip_lz.c, fd_lz.c and fd_sha256.c), meant to run under AddressSanitizer
 * and UndefinedBehaviorSanitizer.
 *
 * For generated old/new image pairs (firmware-like words; word edits, small
 * inserts and deletes, whole chunks swapped and moved both ways so that
 * write-order cycles appear, growth and shrink) and every block size of
 * 256, 1024 and 4096 bytes with 0, 2 and 8 park slots it plans the payload
 * with fd_inplace_diff, builds the patch itself exactly as docs/inplace.md
 * lays it out (stored payload, and the MCU codec with the default RAM's
 * windows: 256 bytes for the control lane, 1 KiB for the differences), and
 * applies it to an in-memory flash that enforces what real NOR flash does:
 * erases block-aligned, writes write_size-aligned (4 and 16 bytes) to erased
 * bytes only, nothing outside the slot's new blocks, the scratch block, the
 * patch's park slots and the two journal blocks, and no operation after the
 * power has gone. Then:
 *   - power cuts: the k-th erase leaves a random prefix erased, the k-th write
 *     a random prefix written, and the callback fails; the update is resumed
 *     with a second cut at a random later point and resumed again; the slot
 *     must end as the new image, and a further call must touch nothing;
 *   - hostile flash: journal, scratch, park and the slot tail full of garbage,
 *     zeros or well-formed journal headers of another patch before a fresh
 *     start, and a finished journal of the previous update;
 *   - refusals without a single erase or write: every header byte damaged,
 *     payload bytes damaged, truncated patches, less work memory than
 *     work_need, a wrong source image, unsuitable geometry, no decoder;
 *   - resealed damage (the patch digest recomputed over a damaged patch):
 *     any result code but no sanitizer report, no flash rule broken, and OK
 *     only with the new image in the slot.
 * Every buffer handed to the patcher (work memory) has exactly its size and
 * starts with garbage.
 *
 * Hand-made patches (--part oversized) give image sizes beyond the slot with
 * a valid digest, up to sizes whose rounding to a block passes 2^32: refused
 * with FD_IP_EGEOMETRY before any erase or write.
 *
 * usage: ip_test [--quick] [--verbose] [--part generated|oversized] [--emit DIR]
 *                [--patch OLD NEW PATCH]...
 *   --quick        about 25 power-cut scenarios per patch and layout (else a cut
 *                  at every operation)
 *   --verbose      a line per patch and flash layout
 *   --part P       only the generated pairs or only the hand-made patches
 *   --emit DIR     also write DIR/{stored,lz}.{old,new,patch} made here
 *   --patch O N P  run the same checks on an existing patch (no generated cases)
 * Prints a one-line summary; exit status 0 when every check passed. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fd_buf.h"
#include "fd_diff.h"
#include "fd_inplace.h"
#include "fd_ip_code.h"
#include "fd_ip_lz.h"
#include "fd_ipdiff.h"
#include "fd_lz.h"
#include "fd_lz_enc.h"
#include "fd_sha256.h"
#include "ip_header.h"

static const uint8_t LZ_WINDOW_LOGS[FD_IP_LANES] = {8, 9, 9};
#define ERASED 0xffu

static unsigned long failures, checks, patches, applies, cuts, recoveries, refusals, resealed;
static char current_case[200];
static int verbose;

static void fail(const char *fmt, ...)
{
    va_list ap;
    failures++;
    if (failures > 40)
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

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* ---- deterministic random numbers (splitmix64) ---------------------------- */

typedef struct {
    uint64_t s;
} rng;

static uint64_t rnd64(rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint32_t below(rng *r, uint32_t n)
{
    return n ? (uint32_t)(rnd64(r) % n) : 0;
}

static void rnd_bytes(rng *r, uint8_t *p, size_t n)
{
    while (n--)
        *p++ = (uint8_t)rnd64(r);
}

/* ---- little-endian fields, digests ---------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* SHA-256 of a || b, first out_len bytes. */
static void sha_trunc(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len, uint8_t *out, size_t out_len)
{
    fd_sha256 h;
    uint8_t full[FD_SHA256_LEN];
    fd_sha256_init(&h);
    fd_sha256_update(&h, a, a_len);
    fd_sha256_update(&h, b, b_len);
    fd_sha256_final(&h, full);
    memcpy(out, full, out_len);
}

/* Journal CRC (IEEE, reflected), to forge well-formed journal headers. */
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

/* ---- images ----------------------------------------------------------------- */

/* Firmware-like bytes: instruction words from a small vocabulary, literal
 * pools of addresses, string tables, 0xFF padding. */
static void firmware_like(rng *r, uint8_t *out, size_t size)
{
    static const char *const words[] = {"error", "flash", "boot", "update", "version", "device", "ok", ""};
    uint32_t opcodes[48];
    size_t pos = 0;

    for (int i = 0; i < 48; i++)
        opcodes[i] = (uint32_t)rnd64(r);
    while (pos < size) {
        uint32_t kind = below(r, 100), n;
        uint8_t w[4];
        if (kind < 60) {
            for (n = 8 + below(r, 120); n-- && pos < size;) {
                put32(w, opcodes[below(r, 48)] ^ below(r, 16) << 8);
                for (int k = 0; k < 4 && pos < size; k++)
                    out[pos++] = w[k];
            }
        } else if (kind < 80) {
            for (n = 2 + below(r, 22); n-- && pos < size;) {
                put32(w, 0x08000000u + 4 * below(r, (uint32_t)size / 4 + 1));
                for (int k = 0; k < 4 && pos < size; k++)
                    out[pos++] = w[k];
            }
        } else if (kind < 93) {
            for (n = 2 + below(r, 18); n-- && pos < size;) {
                const char *s = words[below(r, 8)];
                size_t len = strlen(s) + 1;
                for (size_t k = 0; k < len && pos < size; k++)
                    out[pos++] = (uint8_t)s[k];
            }
        } else {
            for (n = 4 + below(r, 252); n-- && pos < size;)
                out[pos++] = 0xff;
        }
    }
}

typedef struct {
    uint8_t *p;
    size_t len, cap;
} image;

/* Moves buf[from, from + n) to start at `to` in the image without it
 * (a rotation): code moved forward or backward. */
static void move_chunk(image *im, size_t from, size_t n, size_t to)
{
    uint8_t *tmp = xmalloc(n);
    memcpy(tmp, im->p + from, n);
    memmove(im->p + from, im->p + from + n, im->len - from - n);
    memmove(im->p + to + n, im->p + to, im->len - n - to);
    memcpy(im->p + to, tmp, n);
    free(tmp);
}

static void insert_fresh(rng *r, image *im, size_t at, size_t n, int code)
{
    if (im->len + n > im->cap)
        n = im->cap - im->len;
    memmove(im->p + at + n, im->p + at, im->len - at);
    if (code)
        firmware_like(r, im->p + at, n);
    else
        rnd_bytes(r, im->p + at, n);
    im->len += n;
}

/* A new version of old for block size bs: always some relocations, swaps of
 * whole blocks (write-order cycles) and a chunk moved each way; then, by
 * flavour, shifts inside blocks (staged steps), fresh code, growth or shrink.
 * Flavour 64: a shift at the start only. */
static void derive_new(rng *r, const uint8_t *old, size_t old_len, uint32_t bs, unsigned flavour, image *im)
{
    im->cap = old_len * 2 + 8 * (size_t)bs;
    im->p = xmalloc(im->cap);
    memcpy(im->p, old, old_len);
    im->len = old_len;

    if (flavour & 64) {
        /* Only a few bytes inserted in the first block and a few relocations:
         * every later block reads its own old bytes (a chain of staged steps). */
        insert_fresh(r, im, below(r, bs), 1 + below(r, 12), 0);
        for (uint32_t n = 1 + below(r, 8); n--;) {
            size_t at = below(r, (uint32_t)(im->len / 4)) * 4;
            put32(im->p + at, get32(im->p + at) + 4u);
        }
        return;
    }
    /* Relocated addresses and changed instructions. */
    for (uint32_t n = 4 + below(r, (uint32_t)(old_len / 256) + 1); n--;) {
        size_t at = below(r, (uint32_t)(im->len / 4)) * 4;
        if (at + 4 <= im->len)
            put32(im->p + at, get32(im->p + at) + (below(r, 2) ? 4u : 0x100u));
    }
    /* Whole blocks swapped: old a is read by new b and the other way round. */
    for (uint32_t n = 1 + below(r, 3); n--;) {
        size_t nb = im->len / bs, len = (size_t)bs * (1 + below(r, 2)), a, b;
        if (nb < 6)
            break;
        a = (size_t)below(r, (uint32_t)(nb / 2)) * bs;
        b = a + len + (size_t)below(r, (uint32_t)(nb / 2)) * bs;
        if (flavour & 1)
            b += below(r, 64); /* not block-aligned: two blocks read each chunk */
        if (b + len > im->len)
            continue;
        for (size_t i = 0; i < len; i++) {
            uint8_t t = im->p[a + i];
            im->p[a + i] = im->p[b + i];
            im->p[b + i] = t;
        }
    }
    /* A chunk moved forward and one moved backward. */
    for (int dir = 0; dir < 2; dir++) {
        size_t n = (size_t)bs / 2 + below(r, 2 * bs), from, to;
        if (im->len < 4 * n)
            break;
        from = below(r, (uint32_t)(im->len - n));
        to = below(r, (uint32_t)(im->len - n));
        if ((dir == 0) != (to > from)) {
            size_t t = from;
            from = to;
            to = t;
        }
        move_chunk(im, from, n, to);
    }
    /* A few bytes inserted or deleted: every later block reads its own old
     * bytes and its neighbour's, i.e. staged steps in a chain. */
    if (flavour & 2) {
        for (uint32_t n = 1 + below(r, 3); n--;) {
            size_t at = below(r, (uint32_t)im->len), k = 1 + below(r, 12);
            if (below(r, 2) && at + k < im->len) {
                memmove(im->p + at, im->p + at + k, im->len - at - k);
                im->len -= k;
            } else {
                insert_fresh(r, im, at, k, 0);
            }
        }
    }
    /* Fresh code somewhere (literals). */
    if (flavour & 4) {
        size_t at = below(r, (uint32_t)im->len), n = 16 + below(r, bs);
        if (at + n <= im->len)
            firmware_like(r, im->p + at, n);
    }
    /* Growth or shrink, often not to a block boundary. */
    switch ((flavour >> 3) % 3) {
    case 0:
        insert_fresh(r, im, im->len, 1 + below(r, 3 * bs), 1);
        break;
    case 1: {
        size_t cut = 1 + below(r, 2 * bs);
        if (cut < im->len / 2)
            im->len -= cut;
        break;
    }
    default:
        break;
    }
}

/* ---- patches ------------------------------------------------------------------ */

typedef struct {
    const uint8_t *data;
    uint32_t len;
    unsigned long outside; /* reads past the end */
} patch_reader;

static int read_patch(void *user, uint32_t offset, uint8_t *dst, uint32_t len)
{
    patch_reader *pr = user;
    if (offset > pr->len || len > pr->len - offset) {
        pr->outside++;
        return 1;
    }
    memcpy(dst, pr->data + offset, len);
    return 0;
}

typedef struct {
    uint8_t *data; /* exactly len bytes */
    uint32_t len;
    fd_ip_header h;
} patch_t;

static void free_patch(patch_t *p)
{
    free(p->data);
    p->data = NULL;
}

/* dst becomes a copy of src (dst->data: NULL or from an earlier copy). */
static void copy_patch(patch_t *dst, const patch_t *src)
{
    free(dst->data);
    dst->data = xmalloc(src->len);
    memcpy(dst->data, src->data, src->len);
    dst->len = src->len;
    dst->h = src->h;
}

/* Recomputes the patch digest over every byte of the patch but its own. */
static void reseal(patch_t *p)
{
    sha_trunc(p->data, FD_IP_PATCH_DIGEST_AT, p->data + FD_IP_FIXED_SIZE, p->len - FD_IP_FIXED_SIZE,
              p->data + FD_IP_PATCH_DIGEST_AT, FD_IP_DIGEST_LEN);
}

/* fd_ip_read_header() of p into p->h. */
static int read_header(patch_t *p)
{
    patch_reader pr = {p->data, p->len, 0};
    uint8_t raw[FD_IP_FIXED_SIZE];
    return fd_ip_read_header(read_patch, &pr, raw, &p->h);
}

/* p as the header for h with the two image digests at digests (old, then
 * new), then a and b (either may be empty), resealed and read back. */
static void assemble(patch_t *p, const fd_ip_header *h, const uint8_t digests[2 * FD_IP_DIGEST_LEN],
                     const uint8_t *a, uint32_t a_len, const uint8_t *b, uint32_t b_len)
{
    uint8_t head[FD_IP_HEADER_MAX];
    const uint32_t head_len = put_header(head, h);

    memcpy(head + FD_IP_OLD_DIGEST_AT, digests, 2 * FD_IP_DIGEST_LEN);
    p->len = head_len + a_len + b_len;
    p->data = xmalloc(p->len);
    memcpy(p->data, head, head_len);
    if (a_len)
        memcpy(p->data + head_len, a, a_len);
    if (b_len)
        memcpy(p->data + head_len + a_len, b, b_len);
    reseal(p);
    if (read_header(p) != FD_IP_OK || p->h.header_len != head_len) {
        fprintf(stderr, "fd_ip_read_header does not read back a header made here\n");
        exit(2);
    }
}

/* p with its header's fields replaced by h's, digests of the images and the
 * payload kept, resealed: the varints may change length, so the header is
 * written anew rather than patched in place. */
static void reheader(patch_t *p, const fd_ip_header *h)
{
    uint8_t *was = p->data;

    assemble(p, h, was + FD_IP_OLD_DIGEST_AT, was + p->h.header_len, p->len - p->h.header_len, NULL, 0);
    free(was);
}

/* The patch of docs/inplace.md: the header (fixed fields, then varints),
 * then the moves table (code: NULL for none) and the lanes as stored. */
static void seal(patch_t *p, uint8_t codec, uint32_t bs, uint32_t park, const uint8_t *old, uint32_t old_len,
                 const uint8_t *new_, uint32_t new_len, const uint32_t lanes_raw[FD_IP_LANES],
                 const uint8_t *stored, uint32_t stored_len, uint32_t work_need, const fd_ip_code_plan *code)
{
    const uint32_t moves = code ? code->moves : 0, table = moves * FD_IP_MOVE_SIZE;
    uint8_t digests[2 * FD_IP_DIGEST_LEN];
    fd_ip_header h;

    memset(&h, 0, sizeof h);
    h.codec = codec & 0x0F;
    h.grouping = codec >> 4;
    while ((1u << h.block_log) < bs)
        h.block_log++;
    h.park_slots = (uint8_t)park;
    h.arch = code ? code->arch : 0;
    h.old_size = old_len;
    h.new_size = new_len;
    memcpy(h.lane_raw, lanes_raw, sizeof h.lane_raw);
    h.payload_len = table + stored_len;
    h.work_need = work_need;
    h.moves = moves;
    sha_trunc(old, old_len, NULL, 0, digests, FD_IP_DIGEST_LEN);
    sha_trunc(new_, new_len, NULL, 0, digests + FD_IP_DIGEST_LEN, FD_IP_DIGEST_LEN);
    assemble(p, &h, digests, table ? code->table : NULL, table, stored, stored_len);
}

/* Patch for old -> new with codec FD_IP_CODEC_STORED or FD_IP_CODEC_LZ from a
 * planned payload (two lanes and the order the patcher reads them in). */
static void make_patch(patch_t *p, uint8_t codec, uint32_t bs, uint32_t park, const uint8_t *old,
                       uint32_t old_len, const uint8_t *new_, uint32_t new_len, const fd_ipdelta *d,
                       const fd_ip_code_plan *code)
{
    uint32_t lanes_raw[FD_IP_LANES];
    fd_buf z;
    int rc = FD_LZ_OK;

    memset(&z, 0, sizeof z);
    if (codec == FD_IP_CODEC_LZ) {
        fd_lz_lane_src lanes[FD_IP_LANES];
        for (int k = 0; k < FD_IP_LANES; k++) {
            lanes[k].data = d->lanes[k].data;
            lanes[k].len = d->lanes[k].len;
            lanes[k].window_log = LZ_WINDOW_LOGS[k];
        }
        uint32_t *turns = xmalloc(d->turns.len + 1);
        memcpy(turns, d->turns.data, d->turns.len);
        rc = fd_lz_compress_lanes(lanes, FD_IP_LANES, turns, d->turns.len / sizeof *turns, 0, &z);
        free(turns);
    } else {
        for (int k = 0; k < FD_IP_LANES; k++)
            fd_buf_append(&z, d->lanes[k].data, d->lanes[k].len);
    }
    if (rc != FD_LZ_OK || z.failed) {
        fprintf(stderr, "making the payload failed: %d\n", rc);
        exit(2);
    }
    for (int k = 0; k < FD_IP_LANES; k++)
        lanes_raw[k] = (uint32_t)d->lanes[k].len;
    seal(p, (uint8_t)(codec | (d->grouping == FD_GROUP_BYTES   ? FD_IP_FLAG_BYTEWISE
                               : d->grouping == FD_GROUP_SUMS  ? FD_IP_FLAG_SUMS
                               : d->grouping == FD_GROUP_SPANS ? FD_IP_FLAG_SPANS(d->span)
                                                               : 0)),
         bs, park, old, old_len, new_, new_len,
         lanes_raw, z.data, (uint32_t)z.len,
         codec == FD_IP_CODEC_LZ ? bs + (uint32_t)fd_lz_work_size(FD_IP_LANES, LZ_WINDOW_LOGS) : bs, code);
    fd_buf_free(&z);
}

/* ---- flash ------------------------------------------------------------------- */

typedef struct {
    uint8_t *mem;
    uint32_t size, bs;
    fd_flash f;
    uint32_t slot_write_end; /* the patch may erase and write the slot up to here */
    uint32_t park_used;      /* park slots the patch may use */
    /* per fd_inplace_apply call */
    unsigned long ops, erases, writes;
    uint16_t *slot_erases, *slot_writes; /* per slot block */
    long cut_at; /* operation (0-based) that loses power, or -1 */
    int dead;    /* the power is gone: no further operation may come */
    rng tear;
} sim;

static int in_area(const sim *s, uint32_t addr, uint32_t len)
{
    const fd_flash *f = &s->f;
    const uint32_t bs = s->bs;
#define INSIDE(lo, n) (addr >= (lo) && addr - (lo) <= (n) && len <= (n) - (addr - (lo)))
    return INSIDE(f->slot, s->slot_write_end) || INSIDE(f->scratch, bs) || INSIDE(f->park, s->park_used * bs) ||
           INSIDE(f->journal, 2 * bs);
#undef INSIDE
}

static int sim_read(void *user, uint32_t addr, uint8_t *dst, uint32_t len)
{
    sim *s = user;
    if (s->dead) {
        fail("read at 0x%x after the power was lost", (unsigned)addr);
        return 1;
    }
    if (addr > s->size || len > s->size - addr) {
        fail("read of %u bytes at 0x%x outside the flash", (unsigned)len, (unsigned)addr);
        return 1;
    }
    memcpy(dst, s->mem + addr, len);
    return 0;
}

static int sim_erase(void *user, uint32_t addr)
{
    sim *s = user;
    uint32_t n = s->bs;
    if (s->dead) {
        fail("erase at 0x%x after the power was lost", (unsigned)addr);
        return 1;
    }
    if (addr % s->bs || addr >= s->size || !in_area(s, addr, s->bs)) {
        fail("erase at 0x%x: not block-aligned or outside slot/scratch/park/journal", (unsigned)addr);
        return 1;
    }
    s->erases++;
    if (addr - s->f.slot < s->f.slot_size)
        s->slot_erases[(addr - s->f.slot) / s->bs]++;
    if ((long)s->ops++ == s->cut_at) {
        n = below(&s->tear, s->bs + 1);
        s->dead = 1;
    }
    memset(s->mem + addr, ERASED, n);
    return s->dead;
}

static int sim_write(void *user, uint32_t addr, const uint8_t *src, uint32_t len)
{
    sim *s = user;
    uint32_t n = len, ws = s->f.write_size;
    if (s->dead) {
        fail("write at 0x%x after the power was lost", (unsigned)addr);
        return 1;
    }
    if (addr % ws || len % ws || addr > s->size || len > s->size - addr || !in_area(s, addr, len)) {
        fail("write of %u bytes at 0x%x: not %u-byte aligned or outside slot/scratch/park/journal",
             (unsigned)len, (unsigned)addr, (unsigned)ws);
        return 1;
    }
    for (uint32_t i = 0; i < len; i++)
        if (s->mem[addr + i] != ERASED) {
            fail("write of %u bytes at 0x%x programs a byte that is not erased (0x%x, 0x%02x)", (unsigned)len,
                 (unsigned)addr, (unsigned)(addr + i), s->mem[addr + i]);
            return 1;
        }
    s->writes++;
    if (addr - s->f.slot < s->f.slot_size)
        s->slot_writes[(addr - s->f.slot) / s->bs]++;
    if ((long)s->ops++ == s->cut_at) {
        n = below(&s->tear, len + 1);
        s->dead = 1;
    }
    memcpy(s->mem + addr, src, n);
    return s->dead;
}

/* Flash layouts: the areas in two orders, every address absolute and away
 * from 0, guard blocks around them. */
static void sim_init(sim *s, const fd_ip_header *h, uint32_t write_size, unsigned variant)
{
    const uint32_t bs = 1u << h->block_log;
    const uint32_t span = h->old_size > h->new_size ? h->old_size : h->new_size;
    const uint32_t slot_blocks = (span + bs - 1) / bs + (variant & 1) + (span == 0);
    const uint32_t park_blocks = h->park_slots + ((variant >> 1) & 1);
    uint32_t b = 1; /* guard */

    memset(s, 0, sizeof *s);
    s->bs = bs;
    s->f.read = sim_read;
    s->f.erase = sim_erase;
    s->f.write = sim_write;
    s->f.user = s;
    s->f.block_size = bs;
    s->f.write_size = write_size;
    s->f.slot_size = slot_blocks * bs;
    s->f.park_blocks = park_blocks;
    if (variant & 4) {
        s->f.journal = b * bs;
        b += 2;
        s->f.scratch = b++ * bs;
        s->f.park = b * bs;
        b += park_blocks + 1; /* guard */
        s->f.slot = b * bs;
        b += slot_blocks;
    } else {
        s->f.slot = b * bs;
        b += slot_blocks + 1; /* guard */
        s->f.scratch = b++ * bs;
        s->f.park = b * bs;
        b += park_blocks;
        s->f.journal = b * bs;
        b += 2;
    }
    b++; /* guard */
    s->size = b * bs;
    s->mem = xmalloc(s->size);
    s->slot_erases = xmalloc(slot_blocks * sizeof *s->slot_erases);
    s->slot_writes = xmalloc(slot_blocks * sizeof *s->slot_writes);
    s->slot_write_end = (h->new_size + bs - 1) / bs * bs;
    s->park_used = h->park_slots;
    s->cut_at = -1;
}

enum { SPARE_ERASED, SPARE_GARBAGE, SPARE_ZERO, SPARE_FORGED, SPARE_MODES };

/* A well-formed journal header (valid CRC) for patch id `id`. */
static void forge_journal_header(uint8_t *p, uint32_t seq, uint32_t id, uint32_t done, uint32_t staged)
{
    memcpy(p, "FDJ1", 4);
    put32(p + 4, seq);
    put32(p + 8, id);
    put32(p + 12, done);
    put32(p + 16, staged);
    put32(p + 20, crc32(p, 20));
}

/* The device before a fresh start: old image in the slot; the rest of the
 * slot, scratch, park and journal erased or holding leftovers. */
static void sim_load(sim *s, const patch_t *p, const uint8_t *old, uint32_t old_len, int spare, int tail_garbage,
                     rng *r)
{
    const uint32_t bs = s->bs;
    switch (spare) {
    case SPARE_ERASED:
        memset(s->mem, ERASED, s->size);
        break;
    case SPARE_ZERO:
        memset(s->mem, 0, s->size);
        break;
    default:
        rnd_bytes(r, s->mem, s->size);
        break;
    }
    if (spare == SPARE_FORGED) {
        /* Journal headers of other patches with huge sequence numbers, and one
         * of this patch with a broken CRC, followed by plausible records. */
        uint32_t id = get32(p->data + FD_IP_PATCH_DIGEST_AT);
        uint8_t *j0 = s->mem + s->f.journal, *j1 = j0 + bs;
        forge_journal_header(j0, 0xfffffff0u, id ^ 1u, 5, 0xffffffffu);
        forge_journal_header(j1, 7, id, 3, 3);
        j1[20] ^= 0x40;
        for (uint32_t at = 64; at + 12 <= bs; at += 16) {
            put32(j1 + at, 2u | (below(r, 50) << 8));
            put32(j1 + at + 4, 7);
            put32(j1 + at + 8, crc32(j1 + at, 8));
        }
        forge_journal_header(s->mem + s->f.scratch, 9, id + 1, 0, 0xffffffffu);
    }
    if (!tail_garbage)
        memset(s->mem + s->f.slot, ERASED, s->f.slot_size);
    memcpy(s->mem + s->f.slot, old, old_len);
}

/* ---- running the patcher --------------------------------------------------------- */

enum { SRC_AUTO, SRC_NONE, SRC_LZ };

/* One fd_inplace_apply call, as a bootloader makes it: a fresh fd_ip_lz for
 * the LZ codec and work memory of
 * exactly work_len bytes holding garbage. cut_at: operation that loses
 * power, or -1. patch_len: bytes the reader offers (the patch's, or fewer). */
static int run(sim *s, const patch_t *p, uint32_t patch_len, uint32_t work_len, int source, long cut_at,
               rng *r, unsigned long *outside)
{
    patch_reader pr = {p->data, patch_len, 0};
    fd_ip_lz lz;
    fd_payload_source src;
    const fd_payload_source *use = NULL;
    uint8_t *work = work_len ? xmalloc(work_len) : NULL;
    int rc;

    if (source == SRC_LZ || (source == SRC_AUTO && (p->data[5] & ~(FD_IP_FLAG_BYTEWISE | FD_IP_FLAG_SUMS)) == FD_IP_CODEC_LZ)) {
        fd_ip_lz_source(&lz, &src, read_patch, &pr);
        use = &src;
    }
    if (work)
        rnd_bytes(r, work, work_len);
    /* What this patch may touch: the slot's blocks of its new image (never
     * beyond the slot) and its park slots. */
    {
        uint64_t end = ((uint64_t)p->h.new_size + s->bs - 1) / s->bs * s->bs;
        s->slot_write_end = end < s->f.slot_size ? (uint32_t)end : s->f.slot_size;
    }
    s->park_used = p->h.park_slots;
    s->ops = s->erases = s->writes = 0;
    memset(s->slot_erases, 0, s->f.slot_size / s->bs * sizeof *s->slot_erases);
    memset(s->slot_writes, 0, s->f.slot_size / s->bs * sizeof *s->slot_writes);
    s->cut_at = cut_at;
    s->dead = 0;
    s->tear.s = rnd64(r);
    rc = fd_inplace_apply(&s->f, read_patch, &pr, use, work, work_len);
    free(work);
    applies++;
    if (outside)
        *outside = pr.outside;
    else
        CHECK(pr.outside == 0, "the patcher read %lu times past the end of an intact patch", pr.outside);
    CHECK(rc <= FD_IP_OK && rc >= FD_IP_EVERIFY, "unknown result code %d", rc);
    CHECK(strcmp(fd_ip_strerror(rc), "unknown error") != 0, "no message for result code %d", rc);
    return rc;
}

static int slot_holds(const sim *s, const uint8_t *img, uint32_t len)
{
    return memcmp(s->mem + s->f.slot, img, len) == 0;
}

/* The erase-block padding of a partial last block is the erased value. */
static int tail_padded(const sim *s, uint32_t new_len)
{
    for (uint32_t a = new_len; a < s->slot_write_end; a++)
        if (s->mem[s->f.slot + a] != ERASED)
            return 0;
    return 1;
}

/* After success: OK again without a single flash operation. */
static void check_finished(sim *s, const patch_t *p, const uint8_t *new_, uint32_t new_len, rng *r, const char *when)
{
    int rc;
    CHECK(slot_holds(s, new_, new_len), "%s: the slot does not hold the new image", when);
    /* A grown image's last block is always rewritten (a shorter one's may be
     * left as it is, with whatever follows the image). */
    if (new_len > p->h.old_size)
        CHECK(tail_padded(s, new_len), "%s: the last block is not padded with erased bytes", when);
    rc = run(s, p, p->len, p->h.work_need, SRC_AUTO, -1, r, NULL);
    CHECK(rc == FD_IP_OK && s->erases == 0 && s->writes == 0,
          "%s: a call after success gave %d with %lu erases and %lu writes", when, rc, s->erases, s->writes);
}

typedef struct {
    const uint8_t *old, *new_;
    uint32_t old_len, new_len;
} pair;

/* Clean update, then a power cut at (every every-th) operation k, a second
 * cut at a random later point of the recovery, and a final recovery. */
static void powercuts(sim *s, const patch_t *p, const pair *im, unsigned max_scenarios, rng *r)
{
    unsigned long total;
    uint32_t every;
    int rc;

    sim_load(s, p, im->old, im->old_len, (int)below(r, SPARE_MODES), (int)below(r, 2), r);
    rc = run(s, p, p->len, p->h.work_need, SRC_AUTO, -1, r, NULL);
    CHECK(rc == FD_IP_OK, "clean update: %d (%s)", rc, fd_ip_strerror(rc));
    total = s->ops;
    /* Wear: each block of the slot is erased and written at most once. */
    for (uint32_t b = 0; b < s->f.slot_size / s->bs; b++)
        CHECK(s->slot_erases[b] <= 1 && s->slot_writes[b] <= 1,
              "clean update: slot block %u erased %u and written %u times", (unsigned)b, s->slot_erases[b],
              s->slot_writes[b]);
    if (verbose)
        printf("%s: %lu operations\n", current_case, total);
    if (rc != FD_IP_OK)
        return;
    check_finished(s, p, im->new_, im->new_len, r, "clean update");
    every = (uint32_t)(total / max_scenarios) + 1;
    for (unsigned long k = below(r, every); k < total; k += every) {
        long second;
        int rc1, rc2, rc3 = FD_IP_OK;
        sim_load(s, p, im->old, im->old_len, (int)below(r, SPARE_MODES), (int)below(r, 2), r);
        rc1 = run(s, p, p->len, p->h.work_need, SRC_AUTO, (long)k, r, NULL);
        cuts++;
        CHECK(rc1 == FD_IP_EIO && s->dead, "cut at operation %lu of %lu: %d after %lu operations", k, total, rc1,
              s->ops);
        second = (long)below(r, (uint32_t)(total - k + 3));
        rc2 = run(s, p, p->len, p->h.work_need, SRC_AUTO, second, r, NULL);
        CHECK(rc2 == (s->dead ? FD_IP_EIO : FD_IP_OK), "cut at %lu, recovery cut at %ld: %d (%s)", k, second, rc2,
              fd_ip_strerror(rc2));
        if (s->dead) {
            cuts++;
            rc3 = run(s, p, p->len, p->h.work_need, SRC_AUTO, -1, r, NULL);
            CHECK(rc3 == FD_IP_OK, "cut at %lu, recovery cut at %ld, last recovery: %d (%s)", k, second, rc3,
                  fd_ip_strerror(rc3));
        }
        recoveries++;
        if (rc2 == FD_IP_OK || rc3 == FD_IP_OK) {
            char when[96];
            snprintf(when, sizeof when, "cut at %lu, then at %ld", k, second);
            check_finished(s, p, im->new_, im->new_len, r, when);
        } else if (failures > 40) {
            return;
        }
    }
}

/* Fresh starts on flash holding leftovers. */
static void hostile_starts(sim *s, const patch_t *p, const pair *im, rng *r)
{
    for (int mode = SPARE_GARBAGE; mode < SPARE_MODES; mode++) {
        int rc;
        sim_load(s, p, im->old, im->old_len, mode, 1, r);
        rc = run(s, p, p->len, p->h.work_need, SRC_AUTO, -1, r, NULL);
        CHECK(rc == FD_IP_OK, "fresh start on flash with leftovers (mode %d): %d (%s)", mode, rc, fd_ip_strerror(rc));
        if (rc == FD_IP_OK)
            check_finished(s, p, im->new_, im->new_len, r, "fresh start on leftovers");
    }
}

/* A refused call: the expected code (or any error when expect is 1) and not a
 * single erase or write. */
static void expect_refusal(sim *s, int rc, int expect, const char *what)
{
    refusals++;
    if (expect == 1)
        CHECK(rc != FD_IP_OK, "%s: accepted", what);
    else
        CHECK(rc == expect, "%s: %d (%s), expected %d (%s)", what, rc, fd_ip_strerror(rc), expect,
              fd_ip_strerror(expect));
    CHECK(s->erases == 0 && s->writes == 0, "%s: %lu erases and %lu writes before refusing", what, s->erases,
          s->writes);
}

static void refusals_of(sim *s, const patch_t *p, const pair *im, rng *r)
{
    patch_t bad = {NULL, 0, p->h};
    unsigned long outside;
    char what[96];
    int rc;

    /* Every header byte damaged, and payload bytes. */
    for (uint32_t i = 0; i < p->len; i += i < p->h.header_len ? 1 : 1 + below(r, p->len / 24 + 1)) {
        copy_patch(&bad, p);
        bad.data[i] ^= (uint8_t)(1 + below(r, 255));
        sim_load(s, p, im->old, im->old_len, SPARE_ERASED, 0, r);
        rc = run(s, &bad, bad.len, p->h.work_need, SRC_AUTO, -1, r, &outside);
        snprintf(what, sizeof what, "byte %u of %u damaged", (unsigned)i, (unsigned)p->len);
        expect_refusal(s, rc, 1, what);
    }
    /* Truncated. */
    {
        /* Within the fixed fields, within the varints, and past the header. */
        const uint32_t lens[] = {0, 10, FD_IP_FIXED_SIZE - 1, FD_IP_FIXED_SIZE, p->h.header_len - 1, p->h.header_len,
                                 p->len / 2, p->len - 1};
        for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
            if (lens[i] >= p->len)
                continue;
            sim_load(s, p, im->old, im->old_len, SPARE_ERASED, 0, r);
            rc = run(s, p, lens[i], p->h.work_need, SRC_AUTO, -1, r, &outside);
            snprintf(what, sizeof what, "truncated to %u bytes", (unsigned)lens[i]);
            expect_refusal(s, rc, 1, what);
        }
    }
    /* Too little work memory. */
    sim_load(s, p, im->old, im->old_len, SPARE_ERASED, 0, r);
    rc = run(s, p, p->len, p->h.work_need - 1, SRC_AUTO, -1, r, NULL);
    expect_refusal(s, rc, FD_IP_ENOMEM, "work_need - 1 bytes of work memory");
    rc = run(s, p, p->len, s->bs - 1, SRC_AUTO, -1, r, NULL);
    expect_refusal(s, rc, FD_IP_ENOMEM, "less than a block of work memory");
    rc = run(s, p, p->len, 0, SRC_AUTO, -1, r, NULL);
    expect_refusal(s, rc, FD_IP_ENOMEM, "no work memory");
    /* No decoder for a compressed payload. */
    if (p->h.codec != FD_IP_CODEC_STORED) {
        rc = run(s, p, p->len, p->h.work_need, SRC_NONE, -1, r, NULL);
        expect_refusal(s, rc, FD_IP_EFORMAT, "compressed payload without a source");
    }
    /* Wrong source images: one byte changed, and the new image. */
    if (im->old_len) {
        uint32_t at = below(r, im->old_len);
        sim_load(s, p, im->old, im->old_len, SPARE_ERASED, 0, r);
        s->mem[s->f.slot + at] ^= (uint8_t)(1 + below(r, 255));
        rc = run(s, p, p->len, p->h.work_need, SRC_AUTO, -1, r, NULL);
        snprintf(what, sizeof what, "source byte %u changed", (unsigned)at);
        expect_refusal(s, rc, FD_IP_ESOURCE, what);
        if (im->new_len >= im->old_len && memcmp(im->old, im->new_, im->old_len) != 0) {
            sim_load(s, p, im->new_, im->new_len, SPARE_GARBAGE, 0, r);
            rc = run(s, p, p->len, p->h.work_need, SRC_AUTO, -1, r, NULL);
            expect_refusal(s, rc, FD_IP_ESOURCE, "new image as the source");
        }
    }
    /* Geometry that does not fit. */
    {
        const uint32_t span = p->h.new_size > p->h.old_size ? p->h.new_size : p->h.old_size;
        sim t = *s;
        sim_load(s, p, im->old, im->old_len, SPARE_ERASED, 0, r);
        s->f.block_size = s->bs * 2;
        /* Work memory for a block of the flash's size, so that only the block
         * size is wrong: with less, the check of work memory for a block,
         * which comes first, refuses. */
        rc = run(s, p, p->len, p->h.work_need > 2 * s->bs ? p->h.work_need : 2 * s->bs, SRC_AUTO, -1, r, NULL);
        expect_refusal(s, rc, FD_IP_EGEOMETRY, "other block size");
        if (p->h.work_need < 2 * s->bs) {
            rc = run(s, p, p->len, p->h.work_need, SRC_AUTO, -1, r, NULL);
            expect_refusal(s, rc, FD_IP_ENOMEM, "other block size and less work memory than it");
        }
        s->f = t.f;
        s->f.write_size = 3;
        rc = run(s, p, p->len, p->h.work_need, SRC_AUTO, -1, r, NULL);
        expect_refusal(s, rc, FD_IP_EGEOMETRY, "write size not dividing the block");
        s->f = t.f;
        s->f.write_size = 0;
        rc = run(s, p, p->len, p->h.work_need, SRC_AUTO, -1, r, NULL);
        expect_refusal(s, rc, FD_IP_EGEOMETRY, "write size 0");
        s->f = t.f;
        s->f.slot_size = (span + s->bs - 1) / s->bs * s->bs - s->bs;
        rc = run(s, p, p->len, p->h.work_need, SRC_AUTO, -1, r, NULL);
        expect_refusal(s, rc, FD_IP_EGEOMETRY, "slot a block too small");
        s->f = t.f;
        if (p->h.park_slots) {
            s->f.park_blocks = p->h.park_slots - 1u;
            rc = run(s, p, p->len, p->h.work_need, SRC_AUTO, -1, r, NULL);
            expect_refusal(s, rc, FD_IP_EGEOMETRY, "fewer park blocks than the patch uses");
            s->f = t.f;
        }
    }
    /* A grouping past the last (spans of FD_SPAN_MAX bytes), resealed:
     * malformed, whatever the codec. */
    for (unsigned g = (FD_IP_FLAG_SPANS(FD_SPAN_MAX) >> 4) + 1; g < 16; g += 9) {
        copy_patch(&bad, p);
        bad.data[5] = (uint8_t)((bad.data[5] & 0x0F) | g << 4);
        reseal(&bad);
        sim_load(s, p, im->old, im->old_len, SPARE_ERASED, 0, r);
        rc = run(s, &bad, bad.len, p->h.work_need, SRC_AUTO, -1, r, NULL);
        expect_refusal(s, rc, FD_IP_EFORMAT, "a grouping of the differences the format does not have");
    }
    /* Damage with a valid digest (a planner or signing bug): whatever the
     * code, no flash rule broken and OK only with the new image. */
    for (int n = 0; n < 24; n++) {
        copy_patch(&bad, p);
        if (n < 5) {
            /* Header fields the patcher trusts once the digest matches: fewer
             * park slots (more would not fit the device), the new image's
             * size and each lane's decoded size one more or one less. */
            fd_ip_header h = p->h;
            const uint32_t delta = below(r, 2) ? 1u : 0xffffffffu;
            if (n == 0)
                h.park_slots = (uint8_t)(p->h.park_slots ? p->h.park_slots - 1 : 0);
            else if (n == 1)
                h.new_size += delta;
            else
                h.lane_raw[n - 2] += delta;
            reheader(&bad, &h);
            snprintf(what, sizeof what, "header field %d", n);
        } else {
            const uint32_t i = p->h.header_len + below(r, p->len - p->h.header_len);
            bad.data[i] ^= (uint8_t)(1 + below(r, 255));
            reseal(&bad);
            snprintf(what, sizeof what, "byte %u", (unsigned)i);
        }
        sim_load(s, p, im->old, im->old_len, SPARE_ERASED, 0, r);
        rc = run(s, &bad, bad.len, p->h.work_need, SRC_AUTO, -1, r, &outside);
        resealed++;
        if (rc == FD_IP_OK)
            CHECK(slot_holds(s, im->new_, im->new_len), "resealed damage at %s: OK without the new image", what);
    }
    free(bad.data);
}

/* The next update on the same device: the journal holds the finished
 * update of another patch. */
static void chained(sim *s, const patch_t *p, const pair *im, const patch_t *back, rng *r)
{
    int rc;
    sim_load(s, p, im->old, im->old_len, SPARE_ERASED, 0, r);
    rc = run(s, p, p->len, p->h.work_need, SRC_AUTO, -1, r, NULL);
    CHECK(rc == FD_IP_OK, "first update of a chain: %d", rc);
    rc = run(s, back, back->len, back->h.work_need, SRC_AUTO, -1, r, NULL);
    CHECK(rc == FD_IP_OK, "update back after a finished update: %d (%s)", rc, fd_ip_strerror(rc));
    if (rc == FD_IP_OK)
        check_finished(s, back, im->old, im->old_len, r, "update back");
}

/* Every check on one patch; back (may be NULL) goes from new to old. */
static void test_patch(const patch_t *p, const pair *im, const patch_t *back, unsigned max_scenarios, int full,
                       unsigned variant, rng *r)
{
    static const uint32_t write_sizes[] = {4, 16};
    char saved[sizeof current_case];

    memcpy(saved, current_case, sizeof saved);
    patches++;
    for (int w = 0; w < 2; w++) {
        sim s;
        sim_init(&s, &p->h, write_sizes[w], variant + (unsigned)w);
        snprintf(current_case, sizeof current_case, "%.170s ws %u layout %u", saved, (unsigned)write_sizes[w],
                 (variant + (unsigned)w) & 7u);
        powercuts(&s, p, im, max_scenarios, r);
        if (full || w == 0)
            hostile_starts(&s, p, im, r);
        if (full && w == 0)
            refusals_of(&s, p, im, r);
        if (back && w == 1)
            chained(&s, p, im, back, r);
        free(s.mem);
        free(s.slot_erases);
        free(s.slot_writes);
    }
    memcpy(current_case, saved, sizeof current_case);
}

/* ---- generated cases ---------------------------------------------------------- */

static unsigned plans_made;

/* grouping: of the differences (FD_GROUP_*); -1: as the plan count says. */
static int plan(const uint8_t *old, uint32_t old_len, const uint8_t *new_, uint32_t new_len, uint32_t bs,
                uint32_t park, const fd_ip_code_plan *code, int grouping, fd_ipdelta *d)
{
    fd_index *ix = NULL;
    fd_diff_params params;
    int rc = fd_index_build(&ix, old, old_len, 2, NULL);
    if (rc) {
        fail("fd_index_build: %d", rc);
        return rc;
    }
    fd_diff_default_params(&params);
    /* Every other plan copies literals from where the slot holds them,
     * every other pair of plans gives up whole blocks when parks run out,
     * every other four search the write order, every other eight let
     * the copies from the slot differ in places and runs of sixteen group
     * the differences by word, by byte, as sums and as spans (of 2, 3 and 4
     * bytes in turn) in turn. */
    plans_made++;
    rc = fd_inplace_diff(ix, old, old_len, new_, new_len, &params, bs, park, (plans_made >> 1) & 1u,
                         code, plans_made & 1u ? 16 : 0, (plans_made >> 3) & 1u,
                         grouping < 0 ? (plans_made >> 4) % 4u : (uint32_t)grouping,
                         FD_SPAN_MIN + (plans_made >> 6) % (FD_SPAN_MAX - FD_SPAN_MIN + 1),
                         (plans_made >> 2) & 1u ? FD_IP_SEARCH_WORK : 0, NULL, d, NULL, NULL);
    fd_index_free(ix);
    if (rc)
        fail("fd_inplace_diff: %d", rc);
    return rc;
}

static unsigned long total_steps, total_staged, total_parked;

static void write_file(const char *dir, const char *name, const uint8_t *data, size_t len)
{
    char path[1024];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
}

static void generated(int quick, const char *emit)
{
    static const uint32_t block_sizes[] = {256, 1024, 4096};
    static const uint32_t parks[] = {0, 2, 8};
    static const uint32_t min_blocks[] = {28, 14, 8}, spread[] = {40, 14, 8};
    unsigned variant = 0;

    for (int bi = 0; bi < 3; bi++) {
        const uint32_t bs = block_sizes[bi];
        for (int pi = 0; pi < 3; pi++) {
            const uint32_t park = parks[pi];
            for (unsigned pairno = 0; pairno < 3; pairno++) {
                rng r = {0x1234567ull + 1000003ull * (uint64_t)(bi * 9 + pi * 3) + pairno};
                const unsigned flavour = pairno == 2 ? 64u : (unsigned)(bi * 3 + pi) * 2 + pairno;
                uint32_t old_len = (min_blocks[bi] + below(&r, spread[bi])) * bs + below(&r, bs);
                uint8_t *old = xmalloc(old_len);
                image nw;
                fd_ipdelta fwd, bwd;
                pair im;

                firmware_like(&r, old, old_len);
                derive_new(&r, old, old_len, bs, flavour, &nw);
                im.old = old;
                im.old_len = old_len;
                im.new_ = nw.p;
                im.new_len = (uint32_t)nw.len;
                if (plan(old, old_len, nw.p, im.new_len, bs, park, NULL, -1, &fwd) == 0) {
                    const int with_back = pairno == 0;
                    int have_back = with_back && plan(nw.p, im.new_len, old, old_len, bs, park, NULL, -1, &bwd) == 0;
                    total_steps += fwd.steps;
                    total_staged += fwd.staged;
                    total_parked += fwd.parked;
                    for (uint8_t codec = FD_IP_CODEC_STORED; codec <= FD_IP_CODEC_LZ; codec++) {
                        patch_t p, back;
                        make_patch(&p, codec, bs, park, old, old_len, nw.p, im.new_len, &fwd, NULL);
                        if (have_back)
                            make_patch(&back, codec, bs, park, nw.p, im.new_len, old, old_len, &bwd, NULL);
                        snprintf(current_case, sizeof current_case,
                                 "bs %u park %u pair %u (old %u new %u, %u steps, %u staged, %u parked) %s",
                                 (unsigned)bs, (unsigned)park, pairno, (unsigned)old_len, (unsigned)im.new_len,
                                 (unsigned)fwd.steps, (unsigned)fwd.staged, (unsigned)fwd.parked,
                                 codec == FD_IP_CODEC_LZ ? "lz" : "stored");
                        test_patch(&p, &im, have_back ? &back : NULL, quick ? 25u : 100000u,
                                   pairno == 0, variant++, &r);
                        if (emit && bs == 1024 && park == 2 && pairno == 0) {
                            const char *tag = codec == FD_IP_CODEC_LZ ? "lz" : "stored";
                            char name[32];
                            snprintf(name, sizeof name, "%s.old", tag);
                            write_file(emit, name, old, old_len);
                            snprintf(name, sizeof name, "%s.new", tag);
                            write_file(emit, name, nw.p, im.new_len);
                            snprintf(name, sizeof name, "%s.patch", tag);
                            write_file(emit, name, p.data, p.len);
                        }
                        free_patch(&p);
                        if (have_back)
                            free_patch(&back);
                    }
                    if (have_back)
                        fd_ipdelta_free(&bwd);
                    fd_ipdelta_free(&fwd);
                }
                free(old);
                free(nw.p);
            }
        }
    }
}

/* ---- code relocation ------------------------------------------------------------ */

/* Code of one architecture as a compiler lays it out: functions of filler
 * instructions (none of them a reference the relocation rewrites) and calls
 * to other functions' starts. The new version grows one function, so that
 * every function after it moves, and encodes every call for where its target
 * now is: exactly what relocated copies reproduce, given the move. */
typedef struct {
    uint8_t arch;
    uint32_t unit;     /* filler instruction bytes; function starts are aligned to align */
    uint32_t call_len; /* bytes of a call */
    uint32_t align;
} code_arch;

static const code_arch CODE_ARCHS[] = {
    {FD_CODE_THUMB2, 2, 4, 2}, {FD_CODE_AARCH64, 4, 4, 4}, {FD_CODE_X86_64, 1, 5, 1},
    {FD_CODE_XTENSA, 3, 3, 1}, {FD_CODE_RISCV, 4, 4, 2}, {FD_CODE_POWER, 4, 4, 4},
    {FD_CODE_SPARC, 4, 4, 4}, {FD_CODE_X86_32, 1, 5, 1}, {FD_CODE_A32, 4, 4, 4},
};

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void filler(rng *r, const code_arch *a, uint8_t *b)
{
    static const uint8_t x86[] = {0x90, 0x50, 0x53, 0x55, 0x5D, 0x5B, 0x58, 0xC3, 0xCC, 0x99};
    uint32_t w = (uint32_t)rnd64(r);
    switch (a->arch) {
    case FD_CODE_THUMB2: /* not the first halfword of BL / B.W */
        if (((w >> 11) & 0x1F) == 0x1E)
            w ^= 1u << 15;
        b[0] = (uint8_t)w;
        b[1] = (uint8_t)(w >> 8);
        break;
    case FD_CODE_AARCH64: /* neither B/BL nor ADRP */
        if ((w & 0x7C000000) == 0x14000000 || (w & 0x9F000000) == 0x90000000)
            w ^= 0x40000000;
        put32(b, w);
        break;
    case FD_CODE_X86_64:
    case FD_CODE_X86_32:
        b[0] = x86[w % sizeof x86];
        break;
    case FD_CODE_A32: /* data processing, condition AL */
        put32(b, 0xE0000000u | (w & 0x03FFFFFF));
        break;
    case FD_CODE_XTENSA: /* op0 0, 2, 3, 4 or 7: three bytes, no reference */
        b[0] = (uint8_t)((w & 0xF0) | "\x00\x02\x03\x04\x07"[w % 5]);
        b[1] = (uint8_t)(w >> 8);
        b[2] = (uint8_t)(w >> 16);
        break;
    case FD_CODE_POWER: /* addi */
        put_be32(b, 0x38000000u | (w & 0x03FFFFFF));
        break;
    case FD_CODE_SPARC: /* format 3 (arithmetic) */
        put_be32(b, 0x80000000u | (w & 0x3FFFFFFF));
        break;
    default: /* RISC-V OP-IMM */
        put32(b, (w & ~0x7Fu) | 0x13);
        break;
    }
}

/* A call at pc to target t. */
static void encode_call(const code_arch *a, uint8_t *b, uint32_t pc, uint32_t t)
{
    uint32_t v;
    switch (a->arch) {
    case FD_CODE_THUMB2: /* BL, J1 = J2 = 1 */
        v = (t - (pc + 4)) >> 1;
        b[0] = (uint8_t)(v >> 11);
        b[1] = (uint8_t)(0xF0 | ((v >> 19) & 7));
        b[2] = (uint8_t)v;
        b[3] = (uint8_t)(0xF8 | ((v >> 8) & 7));
        break;
    case FD_CODE_AARCH64: /* BL */
        put32(b, 0x94000000u | (((t - pc) >> 2) & 0x03FFFFFF));
        break;
    case FD_CODE_X86_64: /* CALL rel32 */
    case FD_CODE_X86_32:
        b[0] = 0xE8;
        put32(b + 1, t - (pc + 5));
        break;
    case FD_CODE_A32: /* BL */
        put32(b, 0xEB000000u | (((t - (pc + 8)) >> 2) & 0x00FFFFFF));
        break;
    case FD_CODE_XTENSA: /* J */
        v = t - (pc + 4);
        b[0] = (uint8_t)(0x06 | (v << 6));
        b[1] = (uint8_t)(v >> 2);
        b[2] = (uint8_t)(v >> 10);
        break;
    case FD_CODE_POWER: /* BL */
        put_be32(b, 0x48000001u | ((t - pc) & 0x03FFFFFC));
        break;
    case FD_CODE_SPARC: /* CALL */
        put_be32(b, 0x40000000u | (((t - pc) >> 2) & 0x3FFFFFFF));
        break;
    default: { /* JAL ra */
        uint32_t imm = t - pc;
        put32(b, 0x6F | 1u << 7 | (imm >> 20 & 1) << 31 | (imm >> 1 & 0x3FF) << 21 | (imm >> 11 & 1) << 20 |
                     (imm >> 12 & 0xFF) << 12);
        break;
    }
    }
}

typedef struct {
    uint32_t start, len; /* in the old layout */
} func;

/* Lays out nf functions (calls into each other) with function `grown`
 * longer by growth bytes; returns the image length. */
static uint32_t lay_out(const code_arch *a, const func *f, uint32_t nf, const uint32_t *calls, uint32_t grown,
                        uint32_t growth, uint8_t *out, const uint8_t *body)
{
    uint32_t pos = 0;
    for (uint32_t k = 0; k < nf; k++) {
        uint32_t start = f[k].start + (k > grown ? growth : 0), len = f[k].len + (k == grown ? growth : 0);
        memcpy(out + start, body + f[k].start, f[k].len);
        if (k == grown)
            memcpy(out + start + f[k].len, body + f[k].start, growth); /* grown: a part repeated */
        for (uint32_t c = 0; c < f[k].len / (4 * a->call_len); c++) {
            uint32_t at = start + c * 4 * a->call_len, to = calls[k * 64 + c];
            uint32_t t = f[to].start + (to > grown ? growth : 0);
            encode_call(a, out + at, at, t);
        }
        pos = start + len;
    }
    return pos;
}

/* old and new of one architecture, and the move that relates them. */
static void code_pair(rng *r, const code_arch *a, uint8_t **old, uint32_t *old_len, uint8_t **new_,
                      uint32_t *new_len, uint8_t table[FD_IP_MOVE_SIZE])
{
    enum { NF = 48 };
    func f[NF];
    uint32_t calls[NF * 64], pos = 0, grown = NF / 3 + below(r, NF / 3);
    uint32_t growth = (16 + below(r, 600)) / a->align * a->align * a->unit;
    uint8_t *body;

    for (uint32_t k = 0; k < NF; k++) {
        /* A function: a call every fourth instruction slot, filler in between. */
        uint32_t len = (8 + below(r, 40)) * 4 * a->call_len;
        f[k].start = pos;
        f[k].len = len;
        pos += len;
        for (uint32_t c = 0; c < 64; c++)
            calls[k * 64 + c] = below(r, NF);
    }
    body = xmalloc(pos + growth);
    for (uint32_t at = 0; at + a->unit <= pos; at += a->unit)
        filler(r, a, body + at);
    *old = xmalloc(pos);
    *new_ = xmalloc(pos + growth);
    *old_len = lay_out(a, f, NF, calls, NF, 0, *old, body);
    *new_len = lay_out(a, f, NF, calls, grown, growth, *new_, body);
    /* Targets from the function after the grown one on moved by growth. */
    put32(table, f[grown + 1].start);
    put32(table + 4, growth);
    free(body);
}

static void code_cases(int quick)
{
    unsigned variant = 100;
    for (size_t ai = 0; ai < sizeof CODE_ARCHS / sizeof CODE_ARCHS[0]; ai++) {
        const code_arch *a = &CODE_ARCHS[ai];
        const uint32_t bs = 1024, park = 2;
        rng r = {0xc0deull + ai};
        uint8_t *old, *new_, table[FD_IP_MOVE_SIZE];
        uint32_t old_len, new_len;
        fd_ip_code_plan code = {a->arch, table, 1, NULL};
        fd_ipdelta d, plain;
        pair im;

        code_pair(&r, a, &old, &old_len, &new_, &new_len, table);
        im.old = old;
        im.old_len = old_len;
        im.new_ = new_;
        im.new_len = new_len;
        /* (By word: the words relocation leaves to correct have all four bytes
         * changed, the calls left plain two or three, so counting bytes would
         * understate the gain.) */
        if (plan(old, old_len, new_, new_len, bs, park, &code, 0, &d) == 0 &&
            plan(old, old_len, new_, new_len, bs, park, NULL, 0, &plain) == 0) {
            /* Relocated copies must leave far fewer words to correct than plain ones. */
            CHECK(d.relocated > 0 && d.changed_words * 4 < plain.changed_words,
                  "arch %u: %lu relocated records leave %lu changed words, %lu without relocation",
                  (unsigned)a->arch, (unsigned long)d.relocated, (unsigned long)d.changed_words,
                  (unsigned long)plain.changed_words);
            total_steps += d.steps;
            total_staged += d.staged;
            total_parked += d.parked;
            for (uint8_t codec = FD_IP_CODEC_STORED; codec <= FD_IP_CODEC_LZ; codec++) {
                patch_t p;
                make_patch(&p, codec, bs, park, old, old_len, new_, new_len, &d, &code);
                snprintf(current_case, sizeof current_case,
                         "code arch %u (old %u new %u, %u steps, %lu relocated, %lu changed words) %s",
                         (unsigned)a->arch, (unsigned)old_len, (unsigned)new_len, (unsigned)d.steps,
                         (unsigned long)d.relocated, (unsigned long)d.changed_words,
                         codec == FD_IP_CODEC_LZ ? "lz" : "stored");
                test_patch(&p, &im, NULL, quick ? 25u : 100000u, codec == FD_IP_CODEC_LZ, variant++, &r);
                free_patch(&p);
            }
            fd_ipdelta_free(&d);
            fd_ipdelta_free(&plain);
        }
        free(old);
        free(new_);
    }
}

/* ---- hand-made patches --------------------------------------------------------------- */

/* Headers whose image sizes exceed the slot, with a valid patch digest (the
 * digest tells damage, not intent): one write step for the first block past
 * the slot. The geometry check must refuse them before anything is written,
 * also where max(old, new) rounded up to a block passes 2^32. */
static void oversized_sizes(void)
{
    static const uint32_t block_sizes[] = {256, 1024, 4096};
    for (int bi = 0; bi < 3; bi++) {
        const uint32_t bs = block_sizes[bi], old_len = 4 * bs + 100;
        const uint32_t sizes[] = {5 * bs + 1, 0x80000000u, 0xffffffffu - bs + 2, 0xffffffffu};
        rng r = {0xb16ull + bs};
        uint8_t *old = xmalloc(old_len);
        firmware_like(&r, old, old_len);
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            const uint32_t block = 5; /* the slot holds blocks 0-4 */
            fd_buf payload = {0};
            fd_ip_header h, sane;
            patch_t p;
            sim s;
            int rc;

            snprintf(current_case, sizeof current_case, "bs %u slot of 5 blocks, header new_size 0x%x",
                     (unsigned)bs, (unsigned)sizes[si]);
            uint32_t lanes_raw[FD_IP_LANES];
            fd_buf_varint(&payload, fd_zigzag((int64_t)block) << 2 | FD_IP_STEP_WRITE);
            fd_buf_varint(&payload, 0);  /* seek */
            fd_buf_varint(&payload, 0);  /* add */
            fd_buf_varint(&payload, bs); /* insert */
            fd_buf_varint(&payload, 0);  /* no changed words */
            lanes_raw[FD_IP_LANE_CONTROL] = (uint32_t)payload.len;
            for (uint32_t k = 0; k < bs; k++) /* the literals lane */
                fd_buf_byte(&payload, 0xa5);
            lanes_raw[FD_IP_LANE_LITERALS] = bs;
            lanes_raw[FD_IP_LANE_DIFFS] = 0;
            seal(&p, FD_IP_CODEC_STORED, bs, 0, old, old_len, old, old_len, lanes_raw, payload.data,
                 (uint32_t)payload.len, bs, NULL);
            h = p.h;
            h.new_size = sizes[si];
            reheader(&p, &h);
            sane = p.h;
            sane.new_size = old_len;
            sim_init(&s, &sane, 4, 0);
            sim_load(&s, &p, old, old_len, SPARE_ERASED, 0, &r);
            rc = run(&s, &p, p.len, bs, SRC_AUTO, -1, &r, NULL);
            expect_refusal(&s, rc, FD_IP_EGEOMETRY, "image sizes beyond the slot");
            free(s.mem);
            free(s.slot_erases);
            free(s.slot_writes);
            free_patch(&p);
            fd_buf_free(&payload);
        }
        free(old);
    }
}

/* ---- existing patches ----------------------------------------------------------- */

static uint8_t *read_file(const char *path, uint32_t *len)
{
    FILE *f = fopen(path, "rb");
    long n;
    uint8_t *data;
    if (!f || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    data = xmalloc((size_t)n);
    if (fread(data, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    *len = (uint32_t)n;
    return data;
}

static void given(const char *old_path, const char *new_path, const char *patch_path, int quick)
{
    pair im;
    patch_t p;
    rng r = {0x5eedull};
    uint8_t *old, *new_;
    int rc;

    snprintf(current_case, sizeof current_case, "%s", patch_path);
    im.old = old = read_file(old_path, &im.old_len);
    im.new_ = new_ = read_file(new_path, &im.new_len);
    p.data = read_file(patch_path, &p.len);
    rc = read_header(&p);
    CHECK(rc == FD_IP_OK, "not an in-place patch: %d", rc);
    if (rc == FD_IP_OK) {
        CHECK(p.h.old_size == im.old_len && p.h.new_size == im.new_len && p.len - p.h.header_len == p.h.payload_len,
              "sizes in the header do not match the files");
        if (p.h.codec <= FD_IP_CODEC_LZ && p.h.old_size == im.old_len && p.h.new_size == im.new_len)
            test_patch(&p, &im, NULL, quick ? 25u : 100000u, 1, 0, &r);
    }
    free(old);
    free(new_);
    free_patch(&p);
}

int main(int argc, char **argv)
{
    int quick = 0, external = 0, parts = 3;
    const char *emit = NULL;
    clock_t t0 = clock();

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = 1;
        } else if (strcmp(argv[i], "--verbose") == 0) {
            verbose = 1;
        } else if (strcmp(argv[i], "--part") == 0 && i + 1 < argc &&
                   (strcmp(argv[i + 1], "generated") == 0 || strcmp(argv[i + 1], "oversized") == 0)) {
            parts = strcmp(argv[++i], "generated") == 0 ? 1 : 2;
        } else if (strcmp(argv[i], "--emit") == 0 && i + 1 < argc) {
            emit = argv[++i];
        } else if (strcmp(argv[i], "--patch") == 0 && i + 3 < argc) {
            external = 1;
            i += 3;
        } else {
            fprintf(stderr, "usage: ip_test [--quick] [--verbose] [--part generated|oversized] [--emit DIR] "
                            "[--patch OLD NEW PATCH]...\n");
            return 2;
        }
    }
    if (external) {
        for (int i = 1; i < argc; i++)
            if (strcmp(argv[i], "--patch") == 0) {
                given(argv[i + 1], argv[i + 2], argv[i + 3], quick);
                i += 3;
            }
    } else {
        if (parts & 2)
            oversized_sizes();
        if (parts & 1) {
            generated(quick, emit);
            code_cases(quick);
        }
    }
    printf("ip_test: %lu patches (%lu steps, %lu staged, %lu parked), %lu applies, %lu power cuts, "
           "%lu recoveries, %lu refusals, %lu resealed mutants, %lu checks, %.1f s: %s\n",
           patches, total_steps, total_staged, total_parked, applies, cuts, recoveries, refusals, resealed, checks,
           (double)(clock() - t0) / CLOCKS_PER_SEC,
           failures ? "FAILED" : "all checks passed");
    if (failures)
        fprintf(stderr, "%lu failures\n", failures);
    return failures ? 1 : 0;
}
