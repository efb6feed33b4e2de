/* Intel HEX images as their data bytes plus a layout, and back, exactly.
 *
 * Firmware is often shipped as Intel HEX text: each line a record of up to
 * 255 data bytes spelt as hex digits, with its address, type and checksum.
 * Releases that differ by a few bytes of code differ in whole lines of text
 * (every byte twice, the checksums, lines shifted by an insertion), so a
 * delta of the text is several times one of the bytes the text spells. The
 * split takes the data bytes of the data records, in file order (the
 * payload, what the delta is made of), and a layout that rebuilds the text
 * from them: runs of data records whose addresses follow on, the records that
 * break a run, the other records whole, the line ending and the case of the
 * digits. Text that the layout cannot rebuild exactly (wrong checksums, mixed
 * line endings or case, anything that is not a record) is not split.
 *
 * Layout, as bytes: a flags byte (bit 0 CRLF line ends, bit 1 lower-case
 * digits, bit 2 no line end after the last record), then operations:
 *   0 count len         count data records of len bytes, each at the address
 *                       where the previous data record ended (mod 2^16)
 *   1 addr len          one data record of len bytes at addr
 *   2 type addr len ... a record of another type with its len data bytes
 * (count, len and addr are LEB128 varints, type one byte). The running
 * address starts at 0. Host side only: it allocates. */
#ifndef FD_HEX_H
#define FD_HEX_H

#include <stddef.h>
#include <stdint.h>

#include "fd_buf.h"

enum { FD_HEX_OK = 0, FD_HEX_ENOTHEX = -1, FD_HEX_ECORRUPT = -2, FD_HEX_ENOMEM = -3 };

/* Splits text into payload and layout (appended to both). FD_HEX_ENOTHEX when
 * the text is not Intel HEX that its layout rebuilds exactly. */
int fd_hex_split(const uint8_t *text, size_t len, fd_buf *payload, fd_buf *layout);

/* Rebuilds exactly text_len bytes of text from a payload and a layout into
 * out; FD_HEX_ECORRUPT unless the layout uses up the payload and makes
 * exactly text_len bytes. */
int fd_hex_join(const uint8_t *payload, size_t payload_len, const uint8_t *layout, size_t layout_len, uint8_t *out,
                size_t text_len);

#endif
