#include "fd_ip_code.h"
#include "fd_insn.h"

/* Each architecture scans the copied bytes the way its instructions are laid
 * out, decides from opcode bits alone whether a reference starts there, reads
 * its target as seen from src, moves it, and writes it back as seen from dst.
 * Nothing here has to be invertible: the host computes the same bytes and the
 * patch corrects whatever a data word that looked like code turned into. */

#define BUILT(arch) ((FD_IP_ARCHS >> (arch)) & 1u)

typedef struct {
    const fd_ip_code *c;
    int failed;
} reloc;

/* A macro rather than a function: GCC -Os then makes each a single load on
 * targets that allow unaligned ones, where a call costs more. */
#define le32(p) ((uint32_t)(p)[0] | (uint32_t)(p)[1] << 8 | (uint32_t)(p)[2] << 16 | (uint32_t)(p)[3] << 24)

/* The low bits of v, sign-extended (modulo 2^32). */
static uint32_t sext(uint32_t v, unsigned bits)
{
    const uint32_t sign = 1u << (bits - 1);
    return ((v & ((sign << 1) - 1)) ^ sign) - sign;
}

/* Where old offset t lies in the new image: t plus the delta of the last
 * entry at or below it, t itself below the first. */
static uint32_t moved(reloc *r, uint32_t t)
{
    const fd_ip_code *c = r->c;
    uint32_t lo = 0, hi = c->moves;
    uint8_t e[4];

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (c->read(c->user, c->table + mid * FD_IP_MOVE_SIZE, e, 4)) {
            r->failed = 1;
            return t;
        }
        if (le32(e) <= t)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return t;
    if (c->read(c->user, c->table + lo * FD_IP_MOVE_SIZE - 4, e, 4)) {
        r->failed = 1;
        return t;
    }
    return t + le32(e);
}

/* BL and B.W (T4) with J1 = J2 = 1, i.e. offsets within +-4 MiB, on
 * halfword boundaries: hw1 is 11110 S imm10, hw2 11111 imm11 (BL) or
 * 10111 imm11 (B.W), the offset S:imm10:imm11 in halfwords from PC + 4. */
static void thumb2(reloc *r, uint8_t *b, uint32_t n, uint32_t src, uint32_t dst)
{
    uint32_t i = src & 1;

    while (i + 4 <= n) {
        uint8_t h1 = b[i + 1], h2 = b[i + 3];
        if ((h1 & 0xF8) == 0xF0 && (h2 & 0xB8) == 0xB8) {
            uint32_t v = (uint32_t)(h1 & 7) << 19 | (uint32_t)b[i] << 11 | (uint32_t)(h2 & 7) << 8 | b[i + 2];
            v = (moved(r, src + i + 4 + 2 * sext(v, 22)) >> 1) - ((dst + i + 4) >> 1);
            b[i] = (uint8_t)(v >> 11);
            b[i + 1] = (uint8_t)((h1 & 0xF8) | ((v >> 19) & 7));
            b[i + 2] = (uint8_t)v;
            b[i + 3] = (uint8_t)((h2 & 0xF8) | ((v >> 8) & 7));
            i += 4;
        } else {
            i += 2;
        }
    }
}

/* B and BL (imm26, words from PC) and ADRP (imm21, pages from PC's page)
 * on aligned words; ADRP only within +-512 MiB, so that stray data words
 * rarely qualify. The low 12 bits that a paired ADD or LDR adds are absolute
 * and stay. */
static void aarch64(reloc *r, uint8_t *b, uint32_t n, uint32_t src, uint32_t dst)
{
    for (uint32_t i = (0u - src) & 3; i + 4 <= n; i += 4) {
        uint32_t w = le32(b + i), pc = src + i, v;
        if ((w & 0x7C000000) == 0x14000000) {
            v = (moved(r, pc + 4 * sext(w, 26)) >> 2) - ((dst + i) >> 2);
            w = (w & 0xFC000000) | (v & 0x03FFFFFF);
        } else if ((w & 0x9F000000) == 0x90000000) {
            v = (w >> 29 & 3) | (w >> 3 & 0x1FFFFC);
            if (((v + 0x20000) & 0x1C0000) != 0)
                continue;
            v = (moved(r, (pc & ~0xFFFu) + (sext(v, 21) << 12)) >> 12) - ((dst + i) >> 12);
            w = (w & 0x9F00001F) | (v & 3) << 29 | (v & 0x1FFFFC) << 3;
        } else {
            continue;
        }
        fd_insn_put32(b + i, w);
    }
}

/* x86-64 opcodes with a ModRM operand and no immediate whose memory operand
 * may be RIP-relative: add, sub, xor, cmp (both directions), movsxd, test,
 * xchg, mov (both directions), lea. */
static int rip_opcode(uint8_t op)
{
    static const uint8_t ops[] = {0x01, 0x03, 0x29, 0x2B, 0x31, 0x33, 0x39, 0x3B,
                                  0x63, 0x85, 0x87, 0x89, 0x8B, 0x8D};
    for (unsigned k = 0; k < sizeof ops; k++)
        if (ops[k] == op)
            return 1;
    return 0;
}

/* A byte scan: at each position the opcode bytes decide whether an
 * instruction with a rel32 operand starts there: E8/E9 (call, jmp), 0F 8x
 * (jcc), FF 15/25 (call/jmp through a RIP-relative pointer), [REX] op ModRM
 * disp32 with mod = 00, r/m = 101 (RIP-relative). The field counts from the
 * end of the field; it is rewritten when within +-16 MiB (top byte 00 or FF).
 * Such an instruction is skipped whole either way. Not wide (x86 in 32-bit
 * mode): no REX prefixes, and the disp32 fields are absolute addresses, which
 * stay. */
static void x86(reloc *r, uint8_t *b, uint32_t n, uint32_t src, uint32_t dst, int wide)
{
    uint32_t i = 0;

    while (i < n) {
        uint32_t field = 0, k, relative = 1;
        uint8_t op = b[i];
        if (op == 0xE8 || op == 0xE9) {
            field = 1;
        } else if (i + 1 < n && op == 0x0F && (b[i + 1] & 0xF0) == 0x80) {
            field = 2;
        } else if (i + 1 < n && op == 0xFF && (b[i + 1] == 0x15 || b[i + 1] == 0x25)) {
            field = 2;
            relative = wide;
        } else {
            k = i + (wide && (op & 0xF0) == 0x40); /* REX prefix */
            if (k + 1 < n && rip_opcode(b[k]) && (b[k + 1] & 0xC7) == 0x05)
                field = k + 2 - i;
            relative = wide;
        }
        if (field && i + field + 4 <= n) {
            uint8_t *p = b + i + field;
            uint32_t v = le32(p), end = i + field + 4;
            if (relative && (((v >> 24) + 1) & 0xFE) == 0)
                fd_insn_put32(p, moved(r, src + end + v) - (dst + end));
            i += field + 4;
        } else {
            i++;
        }
    }
}

/* Instructions decoded by length from the copy's start (op0, the low four
 * bits of the first byte: 8-13 are 16-bit density forms). CALLn (op0 5) has
 * an 18-bit word offset in bits 6-23 from (PC >> 2) + 1, J (op0 6, n 0) an
 * 18-bit byte offset from PC + 4, L32R (op0 1) a 16-bit word offset in bits
 * 8-23 from (PC + 3) >> 2, less 2^16. */
static void xtensa(reloc *r, uint8_t *b, uint32_t n, uint32_t src, uint32_t dst)
{
    uint32_t i = 0;

    while (i < n) {
        unsigned op0 = b[i] & 15u;
        uint32_t len = (op0 >= 8 && op0 <= 13) ? 2 : 3, pc = src + i, to = dst + i, v;
        if (i + len > n)
            break;
        if (op0 == 5 || (op0 == 6 && (b[i] & 0x30) == 0)) {
            v = (uint32_t)b[i] >> 6 | (uint32_t)b[i + 1] << 2 | (uint32_t)b[i + 2] << 10;
            if (op0 == 5)
                v = (moved(r, ((pc >> 2) + 1 + sext(v, 18)) << 2) >> 2) - ((to >> 2) + 1);
            else
                v = moved(r, pc + 4 + sext(v, 18)) - (to + 4);
            b[i] = (uint8_t)((b[i] & 0x3F) | (v << 6));
            b[i + 1] = (uint8_t)(v >> 2);
            b[i + 2] = (uint8_t)(v >> 10);
        } else if (op0 == 1) {
            v = (uint32_t)b[i + 1] | (uint32_t)b[i + 2] << 8;
            v = (moved(r, (((pc + 3) >> 2) + v - 0x10000) << 2) >> 2) - ((to + 3) >> 2);
            b[i + 1] = (uint8_t)v;
            b[i + 2] = (uint8_t)(v >> 8);
        }
        i += len;
    }
}

/* Instructions decoded by length from the copy's first halfword boundary
 * (low two bits 11: 32 bits, else 16). JAL's 21-bit offset from PC; AUIPC
 * rd followed by the instruction that adds the low 12 bits with rs1 = rd:
 * hi20 rounded, lo12 signed, from the AUIPC's PC. */
static void riscv(reloc *r, uint8_t *b, uint32_t n, uint32_t src, uint32_t dst)
{
    uint32_t i = src & 1;

    while (i + 2 <= n) {
        uint32_t w, pc = src + i, to = dst + i;
        if ((b[i] & 3) != 3) {
            i += 2;
            continue;
        }
        if (i + 4 > n)
            break;
        w = le32(b + i);
        if ((w & 0x7F) == 0x6F) {
            uint32_t v = moved(r, (pc & ~1u) + sext(fd_insn_jal_imm(w), 21)) - (to & ~1u);
            fd_insn_put32(b + i, (w & 0xFFF) | fd_insn_jal_field(v & 0x1FFFFE));
        } else if ((w & 0x7F) == 0x17 && (w >> 7 & 31) != 0 && i + 8 <= n) {
            uint32_t w2 = le32(b + i + 4), lo, x, hi;
            int kind = fd_insn_riscv_low_kind(w2, w >> 7 & 31);
            if (kind) {
                lo = kind == 'I' ? w2 >> 20 : (w2 >> 25) << 5 | (w2 >> 7 & 31);
                x = moved(r, pc + (w & 0xFFFFF000) + sext(lo, 12)) - to;
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

/* Branches on aligned words, their field a word offset from the
 * instruction's address plus bias (fd_insn.h: FD_INSN_POWER_BRANCH and
 * FD_INSN_SPARC_CALL big-endian, FD_INSN_A32_BL little-endian). */
static void words(reloc *r, uint8_t *b, uint32_t n, uint32_t src, uint32_t dst, int big, uint32_t bias,
                  uint32_t mask, uint32_t match, unsigned shift, unsigned bits)
{
    const uint32_t field = (0xFFFFFFFFu >> (32 - bits)) << shift;

    for (uint32_t i = (0u - src) & 3; i + 4 <= n; i += 4) {
        uint32_t w = big ? fd_insn_be32(b + i) : le32(b + i), v;
        if ((w & mask) != match)
            continue;
        v = (moved(r, src + i + bias + 4 * sext(w >> shift, bits)) >> 2) - ((dst + i + bias) >> 2);
        w = (w & ~field) | (v << shift & field);
        if (big)
            fd_insn_put_be32(b + i, w);
        else
            fd_insn_put32(b + i, w);
    }
}

int fd_ip_relocate(const fd_ip_code *c, uint8_t *buf, uint32_t len, uint32_t src, uint32_t dst)
{
    reloc r;

    r.c = c;
    r.failed = 0;
    if (BUILT(FD_CODE_THUMB2) && c->arch == FD_CODE_THUMB2)
        thumb2(&r, buf, len, src, dst);
    if (BUILT(FD_CODE_AARCH64) && c->arch == FD_CODE_AARCH64)
        aarch64(&r, buf, len, src, dst);
    if (BUILT(FD_CODE_X86_64) && c->arch == FD_CODE_X86_64)
        x86(&r, buf, len, src, dst, 1);
    if (BUILT(FD_CODE_X86_32) && c->arch == FD_CODE_X86_32)
        x86(&r, buf, len, src, dst, 0);
    if (BUILT(FD_CODE_XTENSA) && c->arch == FD_CODE_XTENSA)
        xtensa(&r, buf, len, src, dst);
    if (BUILT(FD_CODE_RISCV) && c->arch == FD_CODE_RISCV)
        riscv(&r, buf, len, src, dst);
    if (BUILT(FD_CODE_POWER) && c->arch == FD_CODE_POWER)
        words(&r, buf, len, src, dst, 1, 0, FD_INSN_POWER_BRANCH);
    if (BUILT(FD_CODE_SPARC) && c->arch == FD_CODE_SPARC)
        words(&r, buf, len, src, dst, 1, 0, FD_INSN_SPARC_CALL);
    if (BUILT(FD_CODE_A32) && c->arch == FD_CODE_A32)
        words(&r, buf, len, src, dst, 0, 8, FD_INSN_A32_BL);
    return r.failed ? FD_IP_EIO : FD_IP_OK;
}
