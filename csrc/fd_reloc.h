/* Relocated copies in plain patches (docs/format.md#relocated-copies-flags-bit-7): a
 * record's copy may be relocated, its relative branch, call and PC-relative
 * references rewritten for where the copy lands, so that a function that
 * moved does not change every call in the code copied around it. Each record
 * decides for itself, so copies of data are left as they are.
 *
 * Relocating is the code transform of fd_code.h run forward and back on the
 * copy: forward as the old image's bytes at the copy's source, each target
 * moved to where its old byte lies in the new image; back as bytes at the
 * copy's destination (both halves in one pass, fd_code_relocate). A copy is
 * relocated a piece of FD_RELOC_PIECE bytes at a time from its first byte,
 * each piece from its first byte at an old offset that is a multiple of 4 a
 * transform block of its own (instructions lie where the old image has them;
 * a reference across two pieces stays as it is), so a streaming patcher needs
 * one piece of memory. Addresses are image offsets. */
#ifndef FD_RELOC_H
#define FD_RELOC_H

#include <stddef.h>
#include <stdint.h>

#include "fd_code.h"

#define FD_RELOC_PIECE 4096u

typedef struct {
    uint8_t arch;              /* FD_CODE_* */
    const fd_code_moves *moves; /* old offsets to new ones (fd_code_moved) */
    /* NULL, or an index over moves (fd_code_moves_index_init): a lookup at
     * every reference of a relocated copy; with a binary search over the moves
     * those had taken a fifth of an Xtensa image's apply. */
    const fd_code_moves_index *index;
} fd_reloc;

/* FD_CODE_OK when the architecture is known and the moves are well-formed. */
int fd_reloc_check(const fd_reloc *r);

/* Relocates len bytes copied from old offset src to new offset dst (the
 * copy's first bytes), piece by piece. */
void fd_reloc_copy(const fd_reloc *r, uint8_t *buf, size_t len, uint64_t src, uint64_t dst);

#endif
