/* Host-side encoder of the MCU LZ codec (decoder: fd_lz.h, format:
 * docs/mcu-codec.md). Allocates; thread-safe (no shared mutable state). */
#ifndef FD_LZ_ENC_H
#define FD_LZ_ENC_H

#include <stddef.h>
#include <stdint.h>

#include "fd_buf.h"
#include "fd_lz.h"

/* Compresses src[0..len) with a window of 2^window_log bytes
 * (FD_LZ_WINDOW_LOG_MIN..MAX) and appends the stream to out. Returns FD_LZ_OK,
 * FD_LZ_EPARAM for a bad window_log, or FD_LZ_ENOMEM (out may then hold a
 * partial stream; out->failed is set when the buffer itself could not grow). */
int fd_lz_compress(const uint8_t *src, size_t len, unsigned window_log, fd_buf *out);

/* A short English description of an FD_LZ_* code. */
const char *fd_lz_strerror(int code);

#endif
