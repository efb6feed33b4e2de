/* UF2 images as the bytes they flash plus a layout, and back, exactly.
 *
 * UF2 (the USB Flashing Format of RP2040/RP2350, SAMD21/51, nRF52840 and
 * ESP32-S2/S3 boot loaders) ships firmware in 512-byte blocks: a 32-byte
 * header (two magic words, flags, target address, payload size, block
 * number, block count, family id or file size), up to 476 bytes of data of
 * which the first payload-size bytes are flashed, and an end magic word. A
 * release that moves code by a few bytes moves it across every later block's
 * header, so a delta of the file is up to twice one of the bytes it flashes.
 * The split takes the flashed bytes of every block, in file order (the
 * payload, what the delta is made of), and a layout that rebuilds the file
 * from them. Blocks are predicted from the block before (same flags, payload
 * size, block count and family; the address where its payload ended; the
 * next block number; zero bytes after the payload), and only the blocks that
 * break the prediction are spelt out. A file that is not whole blocks with
 * the three magic words and payloads of at most 476 bytes is not split.
 *
 * Layout, as bytes, a sequence of operations:
 *   0 count                  count blocks as predicted
 *   1 flags addr size number blocks family tail
 *                            one block: its six header words, then its
 *                            476 - size bytes after the payload
 * (count and the header words are LEB128 varints, header words below 2^32,
 * size at most 476). Before the first block the prediction is all zero and
 * block number 2^32 - 1. Host side only: it allocates. */
#ifndef FD_UF2_H
#define FD_UF2_H

#include <stddef.h>
#include <stdint.h>

#include "fd_buf.h"
#include "fd_format.h"

enum { FD_UF2_OK = 0, FD_UF2_ENOTUF2 = -1, FD_UF2_ECORRUPT = -2, FD_UF2_ENOMEM = -3 };

/* Splits image into payload and layout (appended to both; on an error they
 * may hold part of it). FD_UF2_ENOTUF2 when the image is not UF2 blocks that
 * the layout rebuilds exactly. */
int fd_uf2_split(const uint8_t *image, size_t len, fd_buf *payload, fd_buf *layout);

/* Rebuilds exactly image_len bytes of UF2 blocks from a payload and a layout
 * into out; FD_UF2_ECORRUPT unless the layout uses up the payload and makes
 * exactly image_len bytes (one block or more). */
int fd_uf2_join(const uint8_t *payload, size_t payload_len, const uint8_t *layout, size_t layout_len, uint8_t *out,
                size_t image_len);

#endif
