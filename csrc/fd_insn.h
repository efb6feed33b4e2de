#ifndef FD_INSN_H
#define FD_INSN_H

/* Instruction-field helpers shared by the host's code transforms (fd_code.c)
 * and the device's code relocation (fd_ip_code.c): one definition of each
 * encoding, so the two sides cannot disagree on it. */

#include <stdint.h>

static inline void fd_insn_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline uint32_t fd_insn_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline void fd_insn_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Big-endian branches as (mask, match, shift, bits): words w with
 * (w & mask) == match whose field of bits bits from bit shift is a word
 * offset from the instruction. Power: B and BL with AA = 0 (primary opcode
 * 18, LI of 24 bits from bit 2). SPARC: CALL (op 01, disp30). */
#define FD_INSN_POWER_BRANCH 0xFC000002u, 0x48000000u, 2u, 24u
#define FD_INSN_SPARC_CALL 0xC0000000u, 0x40000000u, 0u, 30u
/* Little-endian, from the instruction's address plus 8: A32 BL with the
 * condition AL (imm24). */
#define FD_INSN_A32_BL 0xFF000000u, 0xEB000000u, 0u, 24u

/* RISC-V JAL: the immediate of an instruction word, and the word's field for an immediate. */
static inline uint32_t fd_insn_jal_imm(uint32_t w)
{
    return (w >> 31 & 1) << 20 | (w >> 21 & 0x3FF) << 1 | (w >> 20 & 1) << 11 | (w >> 12 & 0xFF) << 12;
}

static inline uint32_t fd_insn_jal_field(uint32_t imm)
{
    return (imm >> 20 & 1) << 31 | (imm >> 1 & 0x3FF) << 21 | (imm >> 11 & 1) << 20 | (imm >> 12 & 0xFF) << 12;
}

/* How the instruction after AUIPC rd completes the address: 'I' for
 * addi/jalr/load (I-type), 'S' for a store (S-type), with rs1 = rd; else 0. */
static inline int fd_insn_riscv_low_kind(uint32_t w, uint32_t rd)
{
    uint32_t op = w & 0x7F, funct3 = w >> 12 & 7;
    if ((w >> 15 & 31) != rd)
        return 0;
    if (((op == 0x13 || op == 0x67) && funct3 == 0) || op == 0x03 || op == 0x07)
        return 'I';
    if (op == 0x23 || op == 0x27)
        return 'S';
    return 0;
}

#endif
