/* Size estimates for LZMA-coded streams, without running an LZMA encoder.
 *
 * The encoder chooses between layouts, match thresholds, code transforms and
 * the full image by what their streams will cost once compressed, and picks
 * the literal context shape (lc, lp, pb) each stream is coded with. Setting up
 * a real LZMA encoder costs about half a millisecond, and a diff used to run
 * a hundred of them. fd_est parses the data once, greedily with one step of
 * lazy matching (a hash-chain match finder plus LZMA's four repeat distances),
 * and prices that parse with LZMA's adaptive binary models for several shapes
 * at once: the same bits a real encoder would pay for the same parse. LZMA's
 * optimal parser does a few percent better; the bias is alike for all
 * candidates, which is what the choices need. Host side only: it allocates. */
#ifndef FD_EST_H
#define FD_EST_H

#include <stddef.h>
#include <stdint.h>

#define FD_EST_MAX_SHAPES 8

typedef struct {
    uint8_t lc; /* literal context bits, 0..4, lc + lp <= 4 */
    uint8_t lp; /* literal position bits, 0..4 */
    uint8_t pb; /* position bits of the match models, 0..4 */
} fd_est_shape;

enum { FD_EST_OK = 0, FD_EST_ENOMEM = -1, FD_EST_EINVAL = -2 };

/* Estimated coded size of data in bits, per shape (bits[k] for shapes[k]). */
int fd_est(const uint8_t *data, size_t len, const fd_est_shape *shapes, unsigned nshapes, uint64_t *bits);

#endif
