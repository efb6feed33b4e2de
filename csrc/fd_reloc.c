#include "fd_reloc.h"

int fd_reloc_check(const fd_reloc *r)
{
    if (r->arch == 0 || r->arch >= FD_CODE_ARCH_END || !r->moves)
        return FD_CODE_EINVAL;
    return fd_code_moves_check(r->moves);
}

void fd_reloc_copy(const fd_reloc *r, uint8_t *buf, size_t len, uint64_t src, uint64_t dst)
{
    fd_code_remap remap;

    remap.fn = r->index ? fd_code_moved_indexed : fd_code_moved;
    remap.user = r->index ? (void *)r->index : (void *)r->moves;
    for (size_t at = 0; at < len; at += FD_RELOC_PIECE) {
        size_t n = len - at < FD_RELOC_PIECE ? len - at : FD_RELOC_PIECE;
        /* The transforms read instructions aligned to their block's start:
         * a piece starts where the old image's are. */
        size_t skip = (size_t)((0u - (src + at)) & 3u);
        if (skip < n)
            fd_code_relocate(r->arch, buf + at + skip, n - skip, src + at + skip, dst + at + skip, &remap);
    }
}
