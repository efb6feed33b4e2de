/* Relocating copies of machine code in in-place patches. When a copy moves
 * code, every relative branch, call or PC-relative reference in it whose
 * target did not move by the same amount comes out wrong, and the patch
 * would have to carry the difference. A relocated copy rewrites each such
 * reference in the copied bytes instead: its target (as read at the copy's
 * source) is moved to where that old byte lies in the new image, and encoded
 * again relative to the copy's destination. Where the old bytes went is a
 * step function over old image offsets, a table of moves stored in the patch
 * that the patcher searches in place (no RAM). Addresses are image offsets.
 * docs/inplace.md#code-relocation lists the instructions. The host planner
 * calls the same function, so both sides agree on every byte. */
#ifndef FD_IP_CODE_H
#define FD_IP_CODE_H

#include <stdint.h>

#include "fd_code.h"    /* architecture numbers FD_CODE_* */
#include "fd_inplace.h" /* fd_patch_read_fn */

/* The architectures this build relocates, one bit per FD_CODE_* number; a
 * patch for another is refused before any flash write. A bootloader keeps
 * its own, e.g. -DFD_IP_ARCHS='(1u << FD_CODE_THUMB2)' on a Cortex-M. */
#ifndef FD_IP_ARCHS
#define FD_IP_ARCHS 0x3FEu
#endif

/* A table entry: the first old offset it covers and the delta (modulo 2^32)
 * added to offsets from there up to the next entry's, both little-endian;
 * entries in strictly increasing order of offset. */
#define FD_IP_MOVE_SIZE 8

typedef struct {
    uint8_t arch;      /* FD_CODE_*, 0 for none */
    uint32_t moves;    /* table entries */
    uint32_t table;    /* offset of the table for read */
    fd_patch_read_fn read;
    void *user;
} fd_ip_code;

/* Whether this build relocates code of arch (0: nothing to relocate). */
#define FD_IP_ARCH_BUILT(arch) ((arch) == 0 || ((arch) < FD_CODE_ARCH_END && ((FD_IP_ARCHS >> (arch)) & 1u)))

/* Rewrites the references in buf[0, len), bytes copied from image offset src
 * to image offset dst. FD_IP_OK, or FD_IP_EIO when reading the table fails. */
int fd_ip_relocate(const fd_ip_code *c, uint8_t *buf, uint32_t len, uint32_t src, uint32_t dst);

#endif
