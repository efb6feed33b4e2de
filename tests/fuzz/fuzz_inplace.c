/* libFuzzer target for the device patcher, csrc/fd_inplace.c with the MCU
 * payload decoder and the code relocation (build: tests/fuzz/run.sh).
 *
 * Input layout:
 *   [0]     cfg: bit 0 write size 16 (else 4); bits 1-2: spare work memory
 *           (0, 2, 64 or 1000 bytes); bit 3: the spare blocks start as
 *           garbage (else erased); bits 4-7: the power fails after
 *           (cfg >> 4) * 7 flash operations (0: never), then the update is
 *           resumed
 *   [1..2]  old image length, little-endian (clamped to the bytes present)
 *   then the old image and the patch (the rest of the input).
 *
 * Before the patcher sees it, the patch's header (read by fd_ip_read_header)
 * is written anew with the length of what follows it as the payload's, the
 * digest of the given old image and a patch digest recomputed over the
 * (fuzzed) header and payload, so that the payload reaches the step decoder,
 * the moves table and the relocation instead of stopping at the digest check.
 * Headers whose images or blocks are larger than this target allows (64 KiB
 * images, 4 KiB blocks) are skipped. The flash enforces what NOR flash does: erases are
 * block-aligned, writes write-size-aligned, to erased bytes, inside the slot,
 * scratch, park and journal areas. Aborts when the patcher returns an unknown
 * code, breaks a flash rule, reads past the patch, or reports success with
 * anything but the header's new image in the slot. Memory errors are the
 * sanitizers'.
 *
 * Built with -DFUZZ_INPLACE_SEEDS instead, the file is a seed maker:
 *   inplace_seeds DIR
 * writes patches planned by fd_inplace_diff for generated pairs: firmware-like
 * data with moved and swapped blocks (park and staged steps), and code of each
 * architecture moved by an insertion with its copies relocated; stored and
 * MCU-coded, 256- and 1024-byte blocks, differences by word and by byte. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exact.h"
#include "fd_inplace.h"
#include "fd_ip_lz.h"
#include "fd_sha256.h"
#include "../c/ip_header.h"

#define MAX_IMAGE (64u << 10)
#define MAX_BLOCK_LOG 12
#define ERASED 0xFFu

static void digest(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len, uint8_t *out, size_t n)
{
    fd_sha256 h;
    uint8_t full[FD_SHA256_LEN];
    fd_sha256_init(&h);
    fd_sha256_update(&h, a, a_len);
    fd_sha256_update(&h, b, b_len);
    fd_sha256_final(&h, full);
    memcpy(out, full, n);
}

typedef struct {
    uint8_t *mem;
    uint32_t size, bs, write_size;
    uint32_t slot_end, scratch, park, park_end, journal, journal_end;
    long ops_left; /* operations until the power fails; < 0: never */
} nor;

static int in_areas(const nor *n, uint32_t addr, uint32_t len)
{
    uint32_t end = addr + len;
    if (end < addr || end > n->size)
        return 0;
    return end <= n->slot_end || (addr >= n->scratch && end <= n->scratch + n->bs) ||
           (addr >= n->park && end <= n->park_end) || (addr >= n->journal && end <= n->journal_end);
}

static int power(nor *n)
{
    if (n->ops_left == 0)
        return 1;
    if (n->ops_left > 0)
        n->ops_left--;
    return 0;
}

static int nor_read(void *user, uint32_t addr, uint8_t *dst, uint32_t len)
{
    nor *n = user;
    if (addr > n->size || len > n->size - addr)
        abort(); /* reads stay inside the flash */
    memcpy(dst, n->mem + addr, len);
    return 0;
}

static int nor_erase(void *user, uint32_t addr)
{
    nor *n = user;
    if (addr % n->bs || !in_areas(n, addr, n->bs))
        abort();
    if (power(n))
        return 1;
    memset(n->mem + addr, ERASED, n->bs);
    return 0;
}

static int nor_write(void *user, uint32_t addr, const uint8_t *src, uint32_t len)
{
    nor *n = user;
    if (addr % n->write_size || len % n->write_size || !in_areas(n, addr, len))
        abort();
    for (uint32_t i = 0; i < len; i++)
        if (n->mem[addr + i] != ERASED)
            abort(); /* NOR: only erased bytes are written */
    if (power(n))
        return 1;
    memcpy(n->mem + addr, src, len);
    return 0;
}

typedef struct {
    const uint8_t *data;
    uint32_t len;
} patch_mem;

static int read_patch(void *user, uint32_t offset, uint8_t *dst, uint32_t len)
{
    const patch_mem *p = user;
    if (offset > p->len || len > p->len - offset)
        return 1;
    memcpy(dst, p->data + offset, len);
    return 0;
}

static int known(int rc)
{
    return rc <= FD_IP_OK && rc >= FD_IP_EVERIFY;
}

/* One fd_inplace_apply call as a bootloader makes it. */
static int apply(const fd_flash *f, const patch_mem *pm, const fd_ip_header *h, uint32_t work_len)
{
    fd_ip_lz lz;
    fd_payload_source src;
    uint8_t *work = alloc_exact(work_len);
    int rc;

    memset(work, 0xA5, work_len);
    fd_ip_lz_source(&lz, &src, read_patch, (void *)pm);
    rc = fd_inplace_apply(f, read_patch, (void *)pm, h->codec == FD_IP_CODEC_LZ ? &src : NULL, work, work_len);
    free_exact(work);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint32_t spare[4] = {0, 2, 64, 1000};
    uint32_t old_len, bs, span, slot_size, work_len, head_len;
    uint8_t raw[FD_IP_FIXED_SIZE], head[FD_IP_HEADER_MAX], *patch, *sealed;
    patch_mem pm;
    fd_ip_header h;
    fd_flash f;
    nor n;
    int rc;

    if (size < 3)
        return 0;
    old_len = (uint32_t)data[1] | (uint32_t)data[2] << 8;
    if (old_len > size - 3)
        old_len = (uint32_t)(size - 3);
    if (size - 3 - old_len < FD_IP_FIXED_SIZE)
        return 0;
    pm.len = (uint32_t)(size - 3 - old_len);
    patch = alloc_exact(pm.len);
    memcpy(patch, data + 3 + old_len, pm.len);
    pm.data = patch;
    if (fd_ip_read_header(read_patch, &pm, raw, &h) != FD_IP_OK || h.block_log > MAX_BLOCK_LOG ||
        h.new_size > MAX_IMAGE || h.old_size != old_len || h.work_need > (16u << 10) || h.codec == FD_IP_CODEC_LZMA) {
        free_exact(patch);
        return 0;
    }
    /* What a genuine patch for this old image would carry. The payload
     * length is a varint, whose length may change: the header is written
     * anew (its varints in their shortest form) before the payload. */
    h.payload_len = pm.len - h.header_len;
    head_len = put_header(head, &h);
    digest(data + 3, old_len, NULL, 0, head + FD_IP_OLD_DIGEST_AT, FD_IP_DIGEST_LEN);
    memcpy(head + FD_IP_NEW_DIGEST_AT, raw + FD_IP_NEW_DIGEST_AT, FD_IP_DIGEST_LEN);
    sealed = alloc_exact(head_len + h.payload_len);
    memcpy(sealed, head, head_len);
    memcpy(sealed + head_len, patch + h.header_len, h.payload_len);
    free_exact(patch);
    patch = sealed;
    pm.data = patch;
    pm.len = head_len + h.payload_len;
    h.header_len = head_len;
    digest(patch, FD_IP_PATCH_DIGEST_AT, patch + FD_IP_FIXED_SIZE, pm.len - FD_IP_FIXED_SIZE,
           patch + FD_IP_PATCH_DIGEST_AT, FD_IP_DIGEST_LEN);

    bs = 1u << h.block_log;
    span = h.old_size > h.new_size ? h.old_size : h.new_size;
    slot_size = (span + bs - 1) / bs * bs + bs;
    memset(&n, 0, sizeof n);
    n.bs = bs;
    n.write_size = data[0] & 1 ? 16 : 4;
    n.slot_end = slot_size;
    n.scratch = slot_size;
    n.park = n.scratch + bs;
    n.park_end = n.park + h.park_slots * bs;
    n.journal = n.park_end;
    n.journal_end = n.journal + 2 * bs;
    n.size = n.journal_end;
    n.mem = alloc_exact(n.size);
    memset(n.mem, data[0] & 8 ? 0x5A : ERASED, n.size);
    memset(n.mem, ERASED, slot_size);
    memcpy(n.mem, data + 3, old_len);
    memset(&f, 0, sizeof f);
    f.read = nor_read;
    f.erase = nor_erase;
    f.write = nor_write;
    f.user = &n;
    f.block_size = bs;
    f.write_size = n.write_size;
    f.slot = 0;
    f.slot_size = slot_size;
    f.scratch = n.scratch;
    f.park = n.park;
    f.park_blocks = h.park_slots;
    f.journal = n.journal;
    work_len = h.work_need + spare[data[0] >> 1 & 3];

    n.ops_left = data[0] >> 4 ? (long)(data[0] >> 4) * 7 : -1;
    rc = apply(&f, &pm, &h, work_len);
    if (!known(rc))
        abort();
    if (rc == FD_IP_EIO && n.ops_left == 0) { /* the power failed: resume */
        n.ops_left = -1;
        rc = apply(&f, &pm, &h, work_len);
        if (!known(rc))
            abort();
    }
    if (rc == FD_IP_OK) {
        uint8_t d[FD_IP_DIGEST_LEN];
        digest(n.mem, h.new_size, NULL, 0, d, FD_IP_DIGEST_LEN);
        if (memcmp(d, patch + FD_IP_NEW_DIGEST_AT, FD_IP_DIGEST_LEN) != 0)
            abort(); /* success only with the new image in the slot */
    }
    free_exact(n.mem);
    free_exact(patch);
    return 0;
}

#ifdef FUZZ_INPLACE_SEEDS
#include "fd_buf.h"
#include "fd_code.h"
#include "fd_diff.h"
#include "fd_ip_code.h"
#include "fd_ipdiff.h"
#include "fd_lz_enc.h"

#include "seed_images.h"

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* Thumb-2 BL / AArch64 BL / CALL rel32 / Xtensa J / RISC-V JAL / Power BL /
 * SPARC CALL / A32 BL at b to t. */
static size_t call(uint8_t arch, uint8_t *b, uint32_t pc, uint32_t t)
{
    uint32_t v;
    switch (arch) {
    case FD_CODE_THUMB2:
        v = (t - (pc + 4)) >> 1;
        b[0] = (uint8_t)(v >> 11);
        b[1] = (uint8_t)(0xF0 | ((v >> 19) & 7));
        b[2] = (uint8_t)v;
        b[3] = (uint8_t)(0xF8 | ((v >> 8) & 7));
        return 4;
    case FD_CODE_AARCH64:
        put32(b, 0x94000000u | (((t - pc) >> 2) & 0x03FFFFFF));
        return 4;
    case FD_CODE_X86_64:
    case FD_CODE_X86_32:
        b[0] = 0xE8;
        put32(b + 1, t - (pc + 5));
        return 5;
    case FD_CODE_A32:
        put32(b, 0xEB000000u | (((t - (pc + 8)) >> 2) & 0x00FFFFFF));
        return 4;
    case FD_CODE_XTENSA:
        v = t - (pc + 4);
        b[0] = (uint8_t)(0x06 | (v << 6));
        b[1] = (uint8_t)(v >> 2);
        b[2] = (uint8_t)(v >> 10);
        return 3;
    case FD_CODE_POWER: /* BL, big-endian */
    case FD_CODE_SPARC: /* CALL, big-endian */
        v = arch == FD_CODE_POWER ? 0x48000001u | ((t - pc) & 0x03FFFFFC) : 0x40000000u | ((t - pc) >> 2 & 0x3FFFFFFF);
        b[0] = (uint8_t)(v >> 24);
        b[1] = (uint8_t)(v >> 16);
        b[2] = (uint8_t)(v >> 8);
        b[3] = (uint8_t)v;
        return 4;
    default:
        v = t - pc;
        put32(b, 0x6F | 1u << 7 | (v >> 20 & 1) << 31 | (v >> 1 & 0x3FF) << 21 | (v >> 11 & 1) << 20 |
                     (v >> 12 & 0xFF) << 12);
        return 4;
    }
}

/* Code of arch: firmware-like filler with a call every 64 bytes to a target
 * 16-aligned; in new, 48 bytes inserted at `at`, and every call encoded for
 * where its target now is. */
static void code_pair(uint64_t *r, uint8_t arch, uint8_t *old, uint8_t *new_, uint32_t len, uint32_t at)
{
    firmware_like(r, old, len);
    memcpy(new_, old, at);
    firmware_like(r, new_ + at, 48);
    memcpy(new_ + at + 48, old + at, len - at);
    for (uint32_t pc = 0; pc + 8 <= len; pc += 64) {
        uint32_t t = (rnd(r) % (len / 16)) * 16, npc = pc < at ? pc : pc + 48, nt = t < at ? t : t + 48;
        if (pc < at && pc + 8 > at)
            continue;
        call(arch, old + pc, pc, t);
        call(arch, new_ + npc, npc, nt);
    }
}

static void write_seed(const char *dir, int k, uint8_t cfg, const uint8_t *old, uint32_t old_len,
                       const uint8_t *patch, size_t len)
{
    char path[4096];
    FILE *f;
    snprintf(path, sizeof path, "%s/ip-%03d", dir, k);
    f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fputc(cfg, f);
    fputc((int)(old_len & 0xFF), f);
    fputc((int)(old_len >> 8), f);
    fwrite(old, 1, old_len, f);
    fwrite(patch, 1, len, f);
    fclose(f);
}

/* Plans old -> new and writes the patch, stored or MCU-coded, as a seed. */
static int seed(const char *dir, int k, uint8_t cfg, const uint8_t *old, uint32_t old_len, const uint8_t *new_,
                uint32_t new_len, uint32_t bs, uint32_t park, const fd_ip_code_plan *code, int lz)
{
    static const uint8_t logs[FD_IP_LANES] = {8, 9, 9};
    fd_index *ix = NULL;
    fd_diff_params params;
    fd_ipdelta d;
    fd_buf out = {0};
    fd_ip_header h;
    uint8_t head[FD_IP_HEADER_MAX];
    uint32_t moves = code ? code->moves : 0, table = moves * FD_IP_MOVE_SIZE, head_len;

    memset(&h, 0, sizeof h);
    while ((1u << h.block_log) < bs)
        h.block_log++;
    fd_diff_default_params(&params);
    if (fd_index_build(&ix, old, old_len, 1, NULL) != FD_DIFF_OK ||
        /* Odd seeds give up whole blocks when the park slots run out; every
         * other pair searches the write order, every other four copies runs
         * from the slot that differ in places, runs of eight group its
         * differences by word, by byte, as sums and as spans of 2 to 4 bytes
         * in turn. */
        fd_inplace_diff(ix, old, old_len, new_, new_len, &params, bs, park, (uint32_t)k & 1u, code, 16,
                        (uint32_t)(k >> 2) & 1u, (uint32_t)(k >> 3) % 4u,
                        FD_SPAN_MIN + (uint32_t)(k >> 5) % (FD_SPAN_MAX - FD_SPAN_MIN + 1),
                        k & 2 ? FD_IP_SEARCH_WORK : 0, NULL, &d, NULL, NULL) != FD_DIFF_OK) {
        fprintf(stderr, "inplace_seeds: planning failed\n");
        exit(2);
    }
    fd_index_free(ix);
    if (lz) {
        fd_lz_lane_src lanes[FD_IP_LANES];
        for (int l = 0; l < FD_IP_LANES; l++) {
            lanes[l].data = d.lanes[l].data;
            lanes[l].len = d.lanes[l].len;
            lanes[l].window_log = logs[l];
        }
        if (fd_lz_compress_lanes(lanes, FD_IP_LANES, (const uint32_t *)(const void *)d.turns.data,
                                 d.turns.len / 4, 0, &out) != FD_LZ_OK) {
            fprintf(stderr, "inplace_seeds: coding failed\n");
            exit(2);
        }
    } else {
        for (int l = 0; l < FD_IP_LANES; l++)
            fd_buf_append(&out, d.lanes[l].data, d.lanes[l].len);
    }
    h.codec = lz ? FD_IP_CODEC_LZ : FD_IP_CODEC_STORED;
    h.grouping = (uint8_t)(d.grouping == FD_GROUP_BYTES   ? FD_IP_FLAG_BYTEWISE >> 4
                           : d.grouping == FD_GROUP_SUMS  ? FD_IP_FLAG_SUMS >> 4
                           : d.grouping == FD_GROUP_SPANS ? FD_IP_FLAG_SPANS(d.span) >> 4
                                                          : 0);
    h.park_slots = (uint8_t)d.park_used;
    h.arch = code ? code->arch : 0;
    h.old_size = old_len;
    h.new_size = new_len;
    for (int l = 0; l < FD_IP_LANES; l++)
        h.lane_raw[l] = (uint32_t)d.lanes[l].len;
    h.payload_len = table + (uint32_t)out.len;
    h.work_need = bs + (lz ? (uint32_t)fd_lz_work_size(FD_IP_LANES, logs) : 0);
    h.moves = moves;
    /* The old image's digest and the patch digest are the target's to fill. */
    head_len = put_header(head, &h);
    digest(new_, new_len, NULL, 0, head + FD_IP_NEW_DIGEST_AT, FD_IP_DIGEST_LEN);
    {
        size_t len = head_len + table + out.len;
        uint8_t *patch = malloc(len);
        if (!patch)
            exit(2);
        memcpy(patch, head, head_len);
        if (table)
            memcpy(patch + head_len, code->table, table);
        memcpy(patch + head_len + table, out.data, out.len);
        write_seed(dir, k, cfg, old, old_len, patch, len);
        free(patch);
    }
    fd_buf_free(&out);
    fd_ipdelta_free(&d);
    return k + 1;
}

int main(int argc, char **argv)
{
    uint64_t r = 0x1b5eed;
    int k = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: inplace_seeds DIR\n");
        return 2;
    }
    for (int i = 0; i < 8; i++) {
        const uint32_t bs = i % 2 ? 1024 : 256, len = 6 * bs + rnd(&r) % (4 * bs);
        uint8_t *old = malloc(len), *new_ = malloc(len + 64);
        uint32_t a = rnd(&r) % (len / 3), b = len / 2 + rnd(&r) % (len / 3), n = bs / 2 + rnd(&r) % bs;
        firmware_like(&r, old, len);
        memcpy(new_, old, len);
        /* Two chunks swapped (a write-order cycle), a few words changed. */
        if (b + n <= len && a + n <= b) {
            memcpy(new_ + a, old + b, n);
            memcpy(new_ + b, old + a, n);
        }
        for (int w = 0; w < 6; w++)
            new_[rnd(&r) % len] ^= (uint8_t)(1 + rnd(&r) % 255);
        k = seed(argv[1], k, (uint8_t)(rnd(&r) & 0x0F), old, len, new_, len, bs, i < 4 ? 2 : 0, NULL, i & 2);
        k = seed(argv[1], k, (uint8_t)rnd(&r), old, len, new_, len, bs, 4, NULL, 1);
        free(old);
        free(new_);
    }
    for (uint8_t arch = FD_CODE_THUMB2; arch < FD_CODE_ARCH_END; arch++) {
        const uint32_t len = 6000, at = 2000 + rnd(&r) % 1000;
        if (!(FD_IP_ARCHS >> arch & 1u))
            continue; /* transformed by plain patches only */
        uint8_t *old = malloc(len), *new_ = malloc(len + 48), table[FD_IP_MOVE_SIZE];
        fd_ip_code_plan code;
        code_pair(&r, arch, old, new_, len, at);
        put32(table, at);
        put32(table + 4, 48);
        code.arch = arch;
        code.table = table;
        code.moves = 1;
        code.match_new = NULL;
        k = seed(argv[1], k, 0, old, len, new_, len + 48, 1024, 2, &code, 1);
        k = seed(argv[1], k, 0x31, old, len, new_, len + 48, 256, 0, &code, 0);
        free(old);
        free(new_);
    }
    printf("inplace_seeds: %d seeds in %s\n", k, argv[1]);
    return 0;
}
#endif
