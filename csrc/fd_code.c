#include "fd_code.h"
#include "fd_insn.h"

#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static uint32_t le16(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Inverse transform of a field: the absolute value back to an offset from
 * base, modulo 2^32; the callers mask to their field width. */
static uint32_t back(uint32_t field, uint32_t base)
{
    return field - base;
}

/* The low bits of v as a signed number (bits <= 32). */
static int64_t sext(uint32_t v, unsigned bits)
{
    const uint64_t sign = (uint64_t)1 << (bits - 1);
    return (int64_t)(((uint64_t)v & ((sign << 1) - 1)) ^ sign) - (int64_t)sign;
}

/* What a pass over a block does at each reference it finds: the forward
 * transform (relative to absolute) of bytes that run at from plus their
 * offset in the block, targets through remap unless it is NULL, then the
 * inverse one of bytes that run at to plus their offset. fd_code_block does
 * one half, fd_code_relocate both: the instructions are found on bits that
 * neither half changes, so one pass does what the two halves in turn would,
 * with one decode of the instructions instead of two. */
typedef struct {
    uint64_t from, to;
    int forward, inverse;
    const fd_code_remap *remap;
} pass;

/* The target the forward transform writes: remapped when there is a remap. */
static uint64_t target(const pass *ps, uint64_t pc, uint64_t t)
{
    return ps->remap ? ps->remap->fn(ps->remap->user, pc, t) : t;
}

#if !defined(__SSE2__)
/* The bytes at p as a little-endian word, whatever the host's byte order. */
static uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}
#endif

/* 64 flags of 0 or 1 as the bits of a word, flag k to bit k. */
static uint64_t flag_bits(const uint8_t *flag)
{
    uint64_t bits = 0;

#if defined(__SSE2__)
    /* Sixteen at a time, as 0 or 0xFF bytes whose top bits are gathered (every x86-64
     * has SSE2): against the multiplies below, a Thumb-2 transform of 1 KiB blocks takes
     * 27% fewer instructions, an x86-64 one 12% fewer. */
    for (unsigned w = 0; w < 4; w++) {
        __m128i f = _mm_loadu_si128((const __m128i *)(const void *)(flag + 16 * w));
        bits |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_sub_epi8(_mm_setzero_si128(), f)) << (16 * w);
    }
#else
    /* Eight 0/1 bytes at a time, gathered into the product's top byte. */
    for (unsigned w = 0; w < 8; w++)
        bits |= (le64(flag + 8 * w) * UINT64_C(0x0102040810204080) >> 56) << (8 * w);
#endif
    return bits;
}

/* The index of the lowest set bit of m, which is not zero. */
static unsigned lowest_bit(uint64_t m)
{
#if defined(__GNUC__)
    return (unsigned)__builtin_ctzll(m);
#else
    unsigned k = 0;
    while (!(m >> k & 1))
        k++;
    return k;
#endif
}

/* BL and B.W (T4) with J1 = J2 = 1, i.e. offsets within +-4 MiB: hw1 is
 * 11110 S imm10, hw2 is 11111 imm11 (BL) or 10111 imm11 (B.W). The 22-bit
 * halfword offset S:imm10:imm11 becomes the target's halfword address. The
 * top five bits of both halfwords, which select the instruction, stay.
 *
 * Halfwords are taken in turn from the block start, an instruction that is
 * rewritten taking two. An hw2 never looks like an hw1 (bit 11 is set in one
 * and clear in the other), so no two candidates overlap: every halfword pair
 * that matches is one, whatever came before it. */
static int thumb2_is(const uint8_t *p)
{
    return ((p[1] & 0xF8) == 0xF0) & ((p[3] & 0xB8) == 0xB8);
}

/* The instruction at b + i, hw1 in the low half of the little-endian word. */
static inline void thumb2_at(uint8_t *b, size_t i, const pass *ps)
{
    uint32_t w = le32(b + i), v = (w & 0x7FF) << 11 | (w >> 16 & 0x7FF);
    if (ps->forward) {
        uint64_t pc = ps->from + i;
        if (ps->remap)
            v = (uint32_t)(target(ps, pc, pc + 4 + 2 * (uint64_t)sext(v, 22)) >> 1);
        else
            v += (uint32_t)((pc + 4) >> 1); /* the same, modulo 2^22 */
    }
    if (ps->inverse)
        v = back(v, (uint32_t)((ps->to + i + 4) >> 1));
    fd_insn_put32(b + i, (w & 0xF800F800) | (v >> 11 & 0x7FF) | (v & 0x7FF) << 16);
}

/* Bit k set where a halfword at p + k (k even, below 64) is hw1 of one and
 * the next its hw2 (p[0, 67) is read): a loop over bytes, which compilers
 * vectorise. These instructions are about one in a hundred bytes, and a test
 * and branch per halfword took most of the apply time of a small Thumb
 * image. */
static uint64_t thumb2_starts(const uint8_t *p)
{
    uint8_t flag[64];

    for (unsigned k = 0; k < 64; k++)
        flag[k] = (uint8_t)thumb2_is(p + k);
#if !defined(__SSE2__)
    {
        /* Half the chunks have none: they are told by one test, without flag_bits's
         * multiplies. */
        uint64_t any = 0;
        for (unsigned w = 0; w < 8; w++)
            any |= le64(flag + 8 * w);
        if (!any)
            return 0;
    }
#endif
    return flag_bits(flag) & UINT64_C(0x5555555555555555);
}

static void thumb2(uint8_t *b, size_t n, const pass *ps)
{
    size_t i = 0;

    /* Candidates do not overlap: each one found is taken. */
    for (; i + 67 <= n; i += 64)
        for (uint64_t starts = thumb2_starts(b + i); starts; starts &= starts - 1)
            thumb2_at(b, i + lowest_bit(starts), ps);
    while (i + 4 <= n) {
        if (thumb2_is(b + i)) {
            thumb2_at(b, i, ps);
            i += 4;
        } else {
            i += 2;
        }
    }
}

/* ADRP's 21-bit page field as both transforms write it: within +-512 MiB,
 * bits 18-20 copying bit 17. */
static uint32_t aarch64_page(uint64_t page)
{
    uint32_t v = (uint32_t)page & 0x3FFFF;
    return v | ((0u - (v >> 17)) & 0x1C0000);
}

/* B and BL (imm26, words) and ADRP (imm21, pages) on aligned words. ADRP is
 * rewritten only within +-512 MiB (bits 18-20 of imm21 copy bit 17), which
 * the result keeps, so that stray data words rarely qualify. The low 12 bits
 * that the paired ADD/LDR adds are absolute already. */
static inline void aarch64_at(uint8_t *b, size_t i, const pass *ps)
{
    const uint64_t pc = ps->from + i, to = ps->to + i;
    uint32_t w = le32(b + i), v;
    if ((w & 0x7C000000) == 0x14000000) {
        if (ps->forward) {
            v = (uint32_t)(target(ps, pc, pc + 4 * (uint64_t)sext(w, 26)) >> 2);
            w = (w & 0xFC000000) | (v & 0x03FFFFFF);
        }
        if (ps->inverse)
            w = (w & 0xFC000000) | (back(w, (uint32_t)(to >> 2)) & 0x03FFFFFF);
    } else if ((w & 0x9F000000) == 0x90000000) {
        v = (w >> 29 & 3) | (w >> 3 & 0x1FFFFC);
        /* What either half writes passes this test. */
        if (((v + 0x20000) & 0x1C0000) != 0)
            return;
        if (ps->forward)
            v = aarch64_page(target(ps, pc, (pc & ~(uint64_t)0xFFF) + ((uint64_t)sext(v, 21) << 12)) >> 12);
        if (ps->inverse)
            v = aarch64_page(back(v, (uint32_t)(to >> 12)));
        w = (w & 0x9F00001F) | (v & 3) << 29 | (v & 0x1FFFFC) << 3;
    } else {
        return;
    }
    fd_insn_put32(b + i, w);
}

/* Bit k + 3 set where the word at p + k (k a multiple of 4, below 64) may be
 * B, BL or ADRP (its top byte): a loop over bytes, which compilers vectorise.
 * About one word in twelve is, and a branch per word mispredicted often. */
static uint64_t aarch64_starts(const uint8_t *p)
{
    uint8_t flag[64];

    for (unsigned k = 0; k < 64; k++)
        flag[k] = (uint8_t)(((p[k] & 0x7C) == 0x14) | ((p[k] & 0x9F) == 0x90));
    return flag_bits(flag) & UINT64_C(0x8888888888888888);
}

static void aarch64(uint8_t *b, size_t n, const pass *ps)
{
    size_t i = 0;

    for (; i + 64 <= n; i += 64)
        for (uint64_t starts = aarch64_starts(b + i); starts; starts &= starts - 1)
            aarch64_at(b, i + lowest_bit(starts) - 3, ps);
    for (; i + 4 <= n; i += 4)
        aarch64_at(b, i, ps);
}

/* v within +-16 MiB, as its low 25 bits sign-extended. */
static uint32_t x86_near(uint32_t v)
{
    v &= 0x01FFFFFF;
    return v | ((0u - (v >> 24)) & 0xFE000000);
}

/* The rel32 field that ends at b + end, relative to its end: rewritten when
 * it lies within +-16 MiB (its top byte 0x00 or 0xFF), as an absolute 25-bit
 * value sign-extended the same way. */
static void x86_rel32(uint8_t *b, size_t end, const pass *ps)
{
    uint8_t *p = b + end - 4;
    uint32_t v = le32(p);
    /* What either half writes passes this test. */
    if ((((v >> 24) + 1) & 0xFE) != 0)
        return;
    if (ps->forward)
        v = x86_near((uint32_t)target(ps, ps->from + end - 4, ps->from + end + (uint64_t)sext(v, 32)));
    if (ps->inverse)
        v = x86_near(back(v, (uint32_t)(ps->to + end)));
    fd_insn_put32(p, v);
}

/* The x86-64 scan looks at three bytes at each position. x86_first[b] says
 * what b starts: E8/E9 call/jmp (X86_REL), the 0F escape (X86_JCC), FF
 * (X86_FF), one of the opcodes taking a ModRM operand and no immediate whose
 * memory operand may be RIP-relative (X86_MODRM: add, sub, xor, cmp both
 * directions, test, xchg, mov both directions, lea, movsxd), or a REX prefix
 * (X86_REX). x86_second[b] says which of those b completes as the next byte:
 * 0F 8x (jcc), FF 15/25 (call/jmp through a RIP-relative pointer), a ModRM
 * byte with mod=00 r/m=101 (RIP-relative), or, after REX, one of the ModRM
 * opcodes. Tables and a bitwise test rather than a branch per case: x86
 * code is dense in these bytes, and mispredicted branches had made the scan
 * several times slower than memory. */
enum { X86_JCC = 1, X86_FF = 2, X86_MODRM = 4, X86_REX = 8, X86_REL = 16 };

static const uint8_t x86_first[256] = {
    [0x01] = X86_MODRM, [0x03] = X86_MODRM, [0x29] = X86_MODRM, [0x2B] = X86_MODRM, [0x31] = X86_MODRM,
    [0x33] = X86_MODRM, [0x39] = X86_MODRM, [0x3B] = X86_MODRM, [0x63] = X86_MODRM, [0x85] = X86_MODRM,
    [0x87] = X86_MODRM, [0x89] = X86_MODRM, [0x8B] = X86_MODRM, [0x8D] = X86_MODRM,
    [0x40] = X86_REX, [0x41] = X86_REX, [0x42] = X86_REX, [0x43] = X86_REX, [0x44] = X86_REX, [0x45] = X86_REX,
    [0x46] = X86_REX, [0x47] = X86_REX, [0x48] = X86_REX, [0x49] = X86_REX, [0x4A] = X86_REX, [0x4B] = X86_REX,
    [0x4C] = X86_REX, [0x4D] = X86_REX, [0x4E] = X86_REX, [0x4F] = X86_REX,
    [0x0F] = X86_JCC, [0xFF] = X86_FF, [0xE8] = X86_REL, [0xE9] = X86_REL,
};

/* x86_first's X86_MODRM opcodes are marked X86_REX here (they follow a REX
 * prefix); ModRM bytes with mod=00 r/m=101 X86_MODRM; 0x15 and 0x25, which
 * are such ModRM bytes too, also X86_FF; 0x80-0x8F X86_JCC. */
static const uint8_t x86_second[256] = {
    [0x01] = X86_REX, [0x03] = X86_REX, [0x05] = X86_MODRM, [0x0D] = X86_MODRM, [0x15] = X86_FF | X86_MODRM,
    [0x1D] = X86_MODRM, [0x25] = X86_FF | X86_MODRM, [0x29] = X86_REX, [0x2B] = X86_REX, [0x2D] = X86_MODRM,
    [0x31] = X86_REX, [0x33] = X86_REX, [0x35] = X86_MODRM, [0x39] = X86_REX, [0x3B] = X86_REX,
    [0x3D] = X86_MODRM, [0x63] = X86_REX, [0x80] = X86_JCC, [0x81] = X86_JCC, [0x82] = X86_JCC,
    [0x83] = X86_JCC, [0x84] = X86_JCC, [0x85] = X86_JCC | X86_REX, [0x86] = X86_JCC,
    [0x87] = X86_JCC | X86_REX, [0x88] = X86_JCC, [0x89] = X86_JCC | X86_REX, [0x8A] = X86_JCC,
    [0x8B] = X86_JCC | X86_REX, [0x8C] = X86_JCC, [0x8D] = X86_JCC | X86_REX, [0x8E] = X86_JCC,
    [0x8F] = X86_JCC,
};

/* A scan over the bytes: at each position the opcode bytes (never a rel32
 * field) decide whether an instruction with a rel32 operand starts there:
 * E8/E9 (call, jmp), 0F 8x (jcc), FF 15/25 (call/jmp through a RIP-relative
 * pointer), and [REX] op ModRM disp32 with ModRM mod=00 r/m=101 (RIP-relative).
 * Such an instruction is skipped whole when its field lies in the buffer,
 * whether or not the field qualifies, so the scan takes the same path over
 * the transformed bytes. An instruction is at least 5 bytes: none starts in
 * the last 4. */
/* Where an instruction may start in p[0, 64): E8/E9 there, 0F 8x there, a
 * ModRM byte with mod=00 r/m=101 next, or (wide: x86-64) a REX prefix there
 * and such a ModRM byte two on; bit k for p + k (p[0, 66) is read). One byte
 * in twenty-five passes in x86-64 code, where x86_first marks nearly one in
 * two; each is checked by x86_step. The tests are a loop over bytes, which
 * compilers vectorise. */
static uint64_t x86_starts(const uint8_t *p, int wide)
{
    uint8_t flag[64];

    for (unsigned k = 0; k < 64; k++)
        flag[k] = (uint8_t)(((p[k] & 0xFE) == 0xE8) | ((p[k] == 0x0F) & ((p[k + 1] & 0xF0) == 0x80)) |
                            ((p[k + 1] & 0xC7) == 0x05) |
                            (wide & ((p[k] & 0xF0) == 0x40) & ((p[k + 2] & 0xC7) == 0x05)));
    return flag_bits(flag);
}

/* A 32-bit absolute address field at b + at (x86 without REX: a ModRM operand
 * with mod=00 r/m=101, call/jmp through a pointer): the old image's gets the
 * target's place in the new one; the new image's stays as it is, so there is
 * nothing to undo. */
static void x86_abs32(uint8_t *b, size_t at, const pass *ps)
{
    if (ps->forward && ps->remap)
        fd_insn_put32(b + at, (uint32_t)target(ps, ps->from + at, le32(b + at)));
}

/* The scan's step at i: the position after the instruction starting there.
 * wide: x86-64, where REX prefixes exist and disp32 operands are
 * RIP-relative; else x86 in 32-bit mode, where they are absolute. */
static inline size_t x86_step(uint8_t *b, size_t n, size_t i, const pass *ps, int wide)
{
    /* After REX the ModRM byte is the third: it must be mod=00 r/m=101. */
    unsigned third = wide && (b[i + 2] & 0xC7) == 0x05 ? X86_REX : 0;
    unsigned hit = x86_first[b[i]] & (X86_REL | (x86_second[b[i + 1]] & (X86_JCC | X86_FF | X86_MODRM | third)));
    /* Where the rel32 field of each kind of hit lies: a lookup, since the kinds
     * mix too much for a branch to predict. */
    static const uint8_t field[X86_REL + 1] = {[X86_JCC] = 2, [X86_FF] = 2, [X86_MODRM] = 2, [X86_REX] = 3,
                                               [X86_REL] = 1};
    size_t end;
    if (!hit)
        return i + 1;
    end = i + field[hit] + 4;
    if (end > n)
        return i + 1;
    if (wide || (hit & (X86_REL | X86_JCC)))
        x86_rel32(b, end, ps);
    else
        x86_abs32(b, end - 4, ps);
    return end;
}

/* x86_step at each of starts (bit k: position base + k) that the instruction
 * before it does not cover; the position after the last (base if none). */
static size_t x86_run(uint8_t *b, size_t n, size_t base, uint64_t starts, const pass *ps, int wide)
{
    size_t i = base;

    while (starts) {
        size_t k;
        i = x86_step(b, n, base + lowest_bit(starts), ps, wide);
        k = i - base;
        starts = k < 64 ? starts & (~(uint64_t)0 << k) : 0;
    }
    return i;
}

static void x86(uint8_t *b, size_t n, const pass *ps, int wide)
{
    size_t i = 0, base;
    uint8_t tail[66] = {0};

    /* The possible starts of 64 positions at a time. */
    while (i + 66 <= n) {
        base = i;
        i = x86_run(b, n, base, x86_starts(b + base, wide), ps, wide);
        if (i < base + 64)
            i = base + 64;
    }
    /* Those of the last positions (fewer than 66 bytes are left) from a copy padded with zero
     * bytes, on which no start passes: a step at each had taken a tenth of the instructions
     * of both transforms of 1 KiB blocks of x86-64 code. */
    if (i + 5 <= n) {
        memcpy(tail, b + i, n - i);
        x86_run(b, n, i, x86_starts(tail, wide) & ((UINT64_C(1) << (n - i - 4)) - 1), ps, wide);
    }
}

/* Instructions are decoded from the block start by length (op0, the low four
 * bits of the first byte: 8-13 are the 16-bit density forms). CALLn and J
 * keep op0 and n (bits 0-5) and have an 18-bit offset in bits 6-23; L32R has a
 * 16-bit word offset in bits 8-23 from (PC + 3) & ~3, always negative. */
static void xtensa(uint8_t *b, size_t n, const pass *ps)
{
    size_t i = 0;

    while (i < n) {
        unsigned op0 = b[i] & 15u;
        /* 2 for op0 8-13, else 3: without a branch, which the mix of lengths
         * mispredicts. */
        size_t len = 3u - (0x3F00u >> op0 & 1u);
        uint64_t pc = ps->from + i, to = ps->to + i;
        uint32_t v;
        if (i + len > n)
            break;
        if (op0 == 5 || (op0 == 6 && (b[i] & 0x30) == 0)) {
            v = (uint32_t)b[i] >> 6 | (uint32_t)b[i + 1] << 2 | (uint32_t)b[i + 2] << 10;
            if (op0 == 5) { /* CALLn: words from (PC >> 2) + 1 */
                if (ps->forward)
                    v = (uint32_t)(target(ps, pc, ((pc >> 2) + 1 + (uint64_t)sext(v, 18)) << 2) >> 2) & 0x3FFFF;
                if (ps->inverse)
                    v = back(v, (uint32_t)(to >> 2) + 1) & 0x3FFFF;
            } else { /* J: bytes from PC + 4 */
                if (ps->forward)
                    v = (uint32_t)target(ps, pc, pc + 4 + (uint64_t)sext(v, 18)) & 0x3FFFF;
                if (ps->inverse)
                    v = back(v, (uint32_t)to + 4) & 0x3FFFF;
            }
            b[i] = (uint8_t)((b[i] & 0x3F) | (v << 6));
            b[i + 1] = (uint8_t)(v >> 2);
            b[i + 2] = (uint8_t)(v >> 10);
        } else if (op0 == 1) {
            v = le16(b + i + 1);
            if (ps->forward)
                v = (uint32_t)(target(ps, pc, (((pc + 3) >> 2) + v - 0x10000) << 2) >> 2) & 0xFFFF;
            if (ps->inverse)
                v = back(v, (uint32_t)((to + 3) >> 2));
            b[i + 1] = (uint8_t)v;
            b[i + 2] = (uint8_t)(v >> 8);
        }
        i += len;
    }
}

/* Instructions are decoded by length (the low two bits of a halfword: 11 for
 * 32 bits, else 16). JAL's 21-bit offset becomes the target address; an AUIPC
 * followed by the instruction that adds the low 12 bits becomes the absolute
 * target (low 32 bits) split the same way: hi20 rounded, lo12 signed. Opcodes,
 * rd, rs1 and funct3 stay. */
static void riscv(uint8_t *b, size_t n, const pass *ps)
{
    size_t i = 0;

    while (i + 2 <= n) {
        uint64_t pc = ps->from + i, to = ps->to + i;
        uint32_t w;
        if ((le16(b + i) & 3) != 3) {
            i += 2;
            continue;
        }
        if (i + 4 > n)
            break;
        w = le32(b + i);
        if ((w & 0x7F) == 0x6F) {
            uint32_t v = fd_insn_jal_imm(w);
            if (ps->forward)
                v = (uint32_t)target(ps, pc, (pc & ~(uint64_t)1) + (uint64_t)sext(v, 21)) & 0x1FFFFE;
            if (ps->inverse)
                v = back(v, (uint32_t)to & ~1u);
            fd_insn_put32(b + i, (w & 0xFFF) | fd_insn_jal_field(v & 0x1FFFFE));
        } else if ((w & 0x7F) == 0x17 && (w >> 7 & 31) != 0 && i + 8 <= n) {
            uint32_t w2 = le32(b + i + 4), lo, x, hi;
            int kind = fd_insn_riscv_low_kind(w2, w >> 7 & 31);
            if (kind) {
                lo = kind == 'I' ? w2 >> 20 : (w2 >> 25) << 5 | (w2 >> 7 & 31);
                x = (w & 0xFFFFF000) + (uint32_t)sext(lo, 12);
                /* The forward half's hi20 and lo12 add up to the x it wrote. */
                if (ps->forward)
                    x = (uint32_t)target(ps, pc, pc + (uint64_t)sext(x, 32));
                if (ps->inverse)
                    x = back(x, (uint32_t)to);
                hi = (x + 0x800) & 0xFFFFF000;
                lo = (x - hi) & 0xFFF;
                fd_insn_put32(b + i, hi | (w & 0xFFF));
                if (kind == 'I')
                    w2 = (w2 & 0xFFFFF) | lo << 20;
                else
                    w2 = (w2 & 0x01FFF07F) | (lo >> 5) << 25 | (lo & 31) << 7;
                fd_insn_put32(b + i + 4, w2);
                i += 4;
            }
        }
        i += 4;
    }
}

/* Branches on aligned words (fd_insn.h: FD_INSN_POWER_BRANCH,
 * FD_INSN_SPARC_CALL big-endian, FD_INSN_A32_BL little-endian), their field a
 * word offset from the instruction's address plus bias: the field becomes the
 * target's word address; the other bits stay. */
static void words(uint8_t *b, size_t n, const pass *ps, int big, unsigned bias, uint32_t mask, uint32_t match,
                  unsigned shift, unsigned bits)
{
    const uint32_t field = ((1u << bits) - 1) << shift;

    for (size_t i = 0; i + 4 <= n; i += 4) {
        uint64_t pc = ps->from + i;
        uint32_t w = big ? fd_insn_be32(b + i) : le32(b + i), v;
        if ((w & mask) != match)
            continue;
        v = (w & field) >> shift;
        if (ps->forward)
            v = (uint32_t)(target(ps, pc, pc + bias + ((uint64_t)sext(v, bits) << 2)) >> 2) & (field >> shift);
        if (ps->inverse)
            v = back(v, (uint32_t)((ps->to + i + bias) >> 2));
        w = (w & ~field) | (v << shift & field);
        if (big)
            fd_insn_put_be32(b + i, w);
        else
            fd_insn_put32(b + i, w);
    }
}

static void run(uint8_t arch, uint8_t *buf, size_t len, const pass *ps)
{
    switch (arch) {
    case FD_CODE_THUMB2:
        thumb2(buf, len, ps);
        break;
    case FD_CODE_AARCH64:
        aarch64(buf, len, ps);
        break;
    case FD_CODE_X86_64:
        x86(buf, len, ps, 1);
        break;
    case FD_CODE_X86_32:
        x86(buf, len, ps, 0);
        break;
    case FD_CODE_XTENSA:
        xtensa(buf, len, ps);
        break;
    case FD_CODE_RISCV:
        riscv(buf, len, ps);
        break;
    case FD_CODE_POWER:
        words(buf, len, ps, 1, 0, FD_INSN_POWER_BRANCH);
        break;
    case FD_CODE_SPARC:
        words(buf, len, ps, 1, 0, FD_INSN_SPARC_CALL);
        break;
    case FD_CODE_A32:
        words(buf, len, ps, 0, 8, FD_INSN_A32_BL);
        break;
    default:
        break;
    }
}

void fd_code_block(uint8_t arch, uint8_t *buf, size_t len, uint64_t addr, int inverse, const fd_code_remap *remap)
{
    const pass ps = {addr, addr, !inverse, inverse != 0, inverse ? NULL : remap};

    run(arch, buf, len, &ps);
}

void fd_code_relocate(uint8_t arch, uint8_t *buf, size_t len, uint64_t from, uint64_t to, const fd_code_remap *remap)
{
    const pass ps = {from, to, 1, 1, remap};

    run(arch, buf, len, &ps);
}

int fd_code_check(const fd_code_map *m, uint64_t image_len)
{
    uint64_t end = 0;

    if (m->count > FD_CODE_MAX_RANGES || m->block_log < FD_CODE_BLOCK_LOG_MIN ||
        m->block_log > FD_CODE_BLOCK_LOG_MAX)
        return FD_CODE_EINVAL;
    for (uint32_t k = 0; k < m->count; k++) {
        const fd_code_range *r = &m->ranges[k];
        if (r->arch == 0 || r->arch >= FD_CODE_ARCH_END || r->len == 0 || r->start < end ||
            r->start > image_len || r->len > image_len - r->start)
            return FD_CODE_EINVAL;
        end = r->start + r->len;
    }
    return FD_CODE_OK;
}

void fd_code_image(const fd_code_map *m, uint8_t *image, uint64_t lo, uint64_t hi, int inverse,
                   const fd_code_remap *remap)
{
    const uint64_t block = (uint64_t)1 << m->block_log;

    for (uint32_t k = 0; k < m->count; k++) {
        const fd_code_range *r = &m->ranges[k];
        for (uint64_t off = 0; off < r->len; off += block) {
            uint64_t n = r->len - off < block ? r->len - off : block;
            if (r->start + off >= lo && r->start + off < hi)
                fd_code_block(r->arch, image + r->start + off, (size_t)n, r->addr + off, inverse, remap);
        }
    }
}

void fd_code_copy_image(const fd_code_map *m, uint8_t *dst, const uint8_t *src, uint64_t len, int inverse,
                        const fd_code_remap *remap)
{
    const uint64_t block = (uint64_t)1 << m->block_log;
    uint64_t at = 0;

    /* Each block is transformed just after its copy, while it is in the cache: a copy of the
     * whole image first had gone through memory twice (a 30 MB x86-64 image). */
    for (uint32_t k = 0; k < m->count; k++) {
        const fd_code_range *r = &m->ranges[k];
        memcpy(dst + at, src + at, (size_t)(r->start - at));
        for (uint64_t off = 0; off < r->len; off += block) {
            uint64_t n = r->len - off < block ? r->len - off : block;
            memcpy(dst + r->start + off, src + r->start + off, (size_t)n);
            fd_code_block(r->arch, dst + r->start + off, (size_t)n, r->addr + off, inverse, remap);
        }
        at = r->start + r->len;
    }
    memcpy(dst + at, src + at, (size_t)(len - at));
}

/* The range holding pos, or the first one after it (count if none); hint is
 * where the previous search ended, since reads and writes mostly go forward. */
static uint32_t find_range(const fd_code_map *m, uint64_t pos, uint32_t hint)
{
    uint32_t k = hint < m->count ? hint : 0;

    if (k > 0 && m->ranges[k - 1].start + m->ranges[k - 1].len > pos)
        k = 0;
    while (k < m->count && m->ranges[k].start + m->ranges[k].len <= pos)
        k++;
    return k;
}

void fd_code_reader_init(fd_code_reader *r, const fd_code_map *map, const fd_code_remap *remap, uint8_t *block)
{
    memset(r, 0, sizeof *r);
    r->map = map;
    r->remap = remap;
    r->block = block;
}

int fd_code_read(fd_code_reader *r, fd_code_read_fn read, void *user, uint64_t pos, uint8_t *dst, size_t len)
{
    const unsigned log = r->map->block_log;

    while (len > 0) {
        uint32_t k = r->hint = find_range(r->map, pos, r->hint);
        const fd_code_range *rg = k < r->map->count ? &r->map->ranges[k] : NULL;
        size_t n;
        if (!rg || pos < rg->start) {
            /* Plain bytes up to the next range. */
            n = (!rg || rg->start - pos > len) ? len : (size_t)(rg->start - pos);
            if (read(user, pos, dst, n))
                return FD_CODE_EIO;
        } else {
            uint64_t off = ((pos - rg->start) >> log) << log, start = rg->start + off;
            uint64_t blen = rg->len - off < ((uint64_t)1 << log) ? rg->len - off : (uint64_t)1 << log;
            if (pos == start && len >= blen) {
                /* A whole block is transformed where it is wanted, past the cache. */
                n = (size_t)blen;
                if (read(user, pos, dst, n))
                    return FD_CODE_EIO;
                fd_code_block(rg->arch, dst, n, rg->addr + off, 0, r->remap);
            } else {
                if (r->block_len == 0 || r->block_start != start) {
                    r->block_len = 0;
                    if (read(user, start, r->block, (size_t)blen))
                        return FD_CODE_EIO;
                    fd_code_block(rg->arch, r->block, (size_t)blen, rg->addr + off, 0, r->remap);
                    r->block_start = start;
                    r->block_len = blen;
                }
                n = r->block_start + r->block_len - pos < len ? (size_t)(r->block_start + r->block_len - pos) : len;
                memcpy(dst, r->block + (pos - r->block_start), n);
            }
        }
        pos += n;
        dst += n;
        len -= n;
    }
    return FD_CODE_OK;
}

void fd_code_writer_init(fd_code_writer *w, const fd_code_map *map, uint8_t *block)
{
    memset(w, 0, sizeof *w);
    w->map = map;
    w->block = block;
}

int fd_code_write(fd_code_writer *w, fd_code_write_fn write, void *user, const uint8_t *src, size_t len)
{
    const unsigned log = w->map->block_log;

    while (len > 0) {
        uint32_t k = w->hint = find_range(w->map, w->pos, w->hint);
        const fd_code_range *rg = k < w->map->count ? &w->map->ranges[k] : NULL;
        size_t n;
        if (!rg || w->pos < rg->start) {
            n = (!rg || rg->start - w->pos > len) ? len : (size_t)(rg->start - w->pos);
            if (write(user, src, n))
                return FD_CODE_EIO;
        } else {
            uint64_t off = ((w->pos - rg->start) >> log) << log;
            uint64_t blen = rg->len - off < ((uint64_t)1 << log) ? rg->len - off : (uint64_t)1 << log;
            size_t fill = (size_t)(w->pos - rg->start - off);
            n = blen - fill < len ? (size_t)(blen - fill) : len;
            memcpy(w->block + fill, src, n);
            if (fill + n == blen) {
                fd_code_block(rg->arch, w->block, (size_t)blen, rg->addr + off, 1, NULL);
                if (write(user, w->block, (size_t)blen))
                    return FD_CODE_EIO;
            }
        }
        w->pos += n;
        src += n;
        len -= n;
    }
    return FD_CODE_OK;
}

/* The last of the n steps from base whose from is at or below t; base's is. */
static const fd_code_step *last_step_at(const fd_code_step *base, uint32_t n, uint64_t t)
{
    /* Halving without a branch on the data, which a forward transform takes at every
     * reference. */
    while (n > 1) {
        uint32_t half = n / 2;
        base = base[half].from <= t ? base + half : base;
        n -= half;
    }
    return base;
}

uint64_t fd_code_moved(void *moves, uint64_t pc, uint64_t t)
{
    const fd_code_moves *m = moves;
    const fd_code_step *base = m->steps;
    uint32_t n = m->count;

    (void)pc;
    if (n == 0 || t < base[0].from)
        return t;
    return t + (uint64_t)last_step_at(base, n, t)->delta;
}

void fd_code_moves_index_init(fd_code_moves_index *x, const fd_code_moves *m)
{
    uint64_t span;
    uint32_t k = 0;

    x->moves = m;
    x->base = m->count ? m->steps[0].from : 0;
    span = m->count ? m->steps[m->count - 1].from - x->base : 0;
    /* About one step a bucket. */
    x->buckets = 1;
    while (x->buckets < m->count && x->buckets < FD_CODE_MOVES_BUCKETS)
        x->buckets <<= 1;
    x->shift = 0;
    while (span >> x->shift >= x->buckets)
        x->shift++;
    for (uint32_t b = 0; b <= x->buckets; b++) {
        /* A bucket start past 2^64 - 1 has every step below it. */
        if (b > (UINT64_MAX - x->base) >> x->shift) {
            k = m->count;
        } else {
            const uint64_t start = x->base + ((uint64_t)b << x->shift);
            while (k < m->count && m->steps[k].from < start)
                k++;
        }
        x->first[b] = k;
    }
}

uint64_t fd_code_moved_indexed(void *index, uint64_t pc, uint64_t t)
{
    const fd_code_moves_index *x = index;
    const fd_code_moves *m = x->moves;
    uint64_t b;
    uint32_t lo;

    (void)pc;
    if (m->count == 0 || t < x->base)
        return t;
    b = (t - x->base) >> x->shift;
    /* Past the last bucket, which holds the last step, every step is below t. */
    if (b >= x->buckets)
        return t + (uint64_t)m->steps[m->count - 1].delta;
    /* The answer is the last step below the bucket's start (the first step when none is,
     * whose from is the first bucket's start) or one of the bucket's. */
    lo = x->first[b] ? x->first[b] - 1 : 0;
    return t + (uint64_t)last_step_at(m->steps + lo, x->first[b + 1] - lo, t)->delta;
}

int fd_code_moves_check(const fd_code_moves *m)
{
    if (m->count > FD_CODE_MAX_MOVES)
        return FD_CODE_EINVAL;
    for (uint32_t k = 1; k < m->count; k++)
        if (m->steps[k].from <= m->steps[k - 1].from)
            return FD_CODE_EINVAL;
    return FD_CODE_OK;
}
