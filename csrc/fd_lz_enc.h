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

/* One lane's bytes and window (2^window_log bytes). */
typedef struct {
    const uint8_t *data;
    size_t len;
    unsigned window_log;
} fd_lz_lane_src;

/* Compresses nlanes lanes (1..FD_LZ_MAX_LANES) into one stream. turns[] is
 * the order in which the decoder will ask for the bytes: turns[0] bytes of
 * lane 0, turns[1] of lane 1 (or lane 0 again with one lane), and so on in
 * rotation; the turns of each lane must add up to its length, else
 * FD_LZ_EPARAM. limit (0: none): FD_LZ_ELIMIT when the stream would be
 * longer than limit bytes, as soon as that is known (for a caller that only
 * keeps a stream shorter than one it has). Other results as fd_lz_compress. */
int fd_lz_compress_lanes(const fd_lz_lane_src *lanes, unsigned nlanes, const uint32_t *turns, size_t nturns,
                         size_t limit, fd_buf *out);

/* A short English description of an FD_LZ_* code. */
const char *fd_lz_strerror(int code);

#endif
