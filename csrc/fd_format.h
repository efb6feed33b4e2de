/* Constants of the delta format shared by the encoder and the patchers. */
#ifndef FD_FORMAT_H
#define FD_FORMAT_H

#include <stddef.h>

/* Difference bytes are grouped by aligned words of this many new-image bytes:
 * the width of an instruction or address on the 32-bit targets we update. */
#define FD_WORD 4

/* How a delta's differences are grouped (docs/format.md): per changed word,
 * the byte differences of its COPY/ADD bytes; per changed byte, its
 * difference; per changed word, the digits of the little-endian sum that
 * turns the copied word into the new one (each byte's carry goes into the
 * next byte of the same word: an address that moved by a constant is one
 * constant, whatever carries it crosses); or the same sums over spans of
 * FD_SPAN_MIN to FD_SPAN_MAX bytes that start at any changed byte (offsets
 * packed at any alignment, as in DWARF, whose carries would each be one
 * more changed byte). */
enum { FD_GROUP_WORDS = 0, FD_GROUP_BYTES = 1, FD_GROUP_SUMS = 2, FD_GROUP_SPANS = 3 };
#define FD_SPAN_MIN 2
#define FD_SPAN_MAX 4

/* Whether the format has this grouping (span counts for FD_GROUP_SPANS only). */
static inline int fd_group_valid(unsigned grouping, size_t span)
{
    return grouping <= FD_GROUP_SPANS && (grouping != FD_GROUP_SPANS || (span >= FD_SPAN_MIN && span <= FD_SPAN_MAX));
}

/* Bytes per group of differences. */
static inline unsigned fd_group_len(unsigned grouping, unsigned span)
{
    return grouping == FD_GROUP_BYTES ? 1u : grouping == FD_GROUP_SPANS ? span : FD_WORD;
}

/* What a gap between changed groups counts: words, or bytes where groups may
 * start at any byte. */
static inline unsigned fd_group_stride(unsigned grouping)
{
    return grouping == FD_GROUP_BYTES || grouping == FD_GROUP_SPANS ? 1u : FD_WORD;
}

/* UF2 images (fd_uf2.h) are blocks of FD_UF2_BLOCK bytes, each with at most
 * FD_UF2_DATA bytes of payload. */
#define FD_UF2_BLOCK 512u
#define FD_UF2_DATA 476u

#endif
