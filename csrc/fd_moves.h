/* Host side of code transforms: where the references of an image are, and
 * where the old image's targets moved (fd_code.h), learnt from a delta.
 *
 * A plain delta's copies pair up code of both images. Each reference in a
 * copied run of the new image meets, at the same place in the old image's
 * run, the old reference it replaces: the difference of their targets is how
 * far the old target moved (when both refer to the same function). The moves
 * are a step function over old targets: for each old target the distance most
 * of its references agree on, a new step only where it makes at least
 * FD_MOVES_MIN_GAIN more references agree than the step before it would (a
 * step costs a few bytes in the patch, about what a reference left changed
 * costs). Allocates; not for devices. */
#ifndef FD_MOVES_H
#define FD_MOVES_H

#include <stddef.h>
#include <stdint.h>

#include "fd_code.h"
#include "fd_diff.h"

#define FD_MOVES_MIN_GAIN 2

/* A reference the forward transform rewrites: the image offset it is known
 * by (its instruction's; its rel32 field's on x86-64) and its target. */
typedef struct {
    uint64_t offset;
    uint64_t target;
} fd_code_site;

enum { FD_MOVES_OK = 0, FD_MOVES_ENOMEM = -1, FD_MOVES_EINVAL = -2 };

/* Every reference of the image's code, in offset order (free *out). The map
 * must have passed fd_code_check for this image. */
int fd_code_sites(const uint8_t *image, size_t len, const fd_code_map *map, fd_code_site **out, size_t *count);

/* How much an image reads as code of the map's architecture, for telling the
 * architecture of an image without headers: its references (*sites) and those
 * whose target lies in [0, len) and is also another one's (*shared). Code
 * calls the same functions from many places; references read from data or
 * from code of another architecture point anywhere, rarely twice at one
 * place. The map runs the image at address 0. */
int fd_code_score(const uint8_t *image, size_t len, const fd_code_map *map, uint64_t *sites, uint64_t *shared);

typedef struct {
    fd_code_step *steps; /* the moves (free), at most FD_CODE_MAX_MOVES */
    size_t count;
    /* References in copied code that agree once moved and differed before,
     * less those that agreed before and no longer do, less FD_MOVES_MIN_GAIN
     * per step: what the transform is expected to save, in references. */
    int64_t gain;
    uint64_t paired; /* references of new that lie in copied code */
} fd_moves;

/* Learns the moves from the records of a delta of old -> new (records in
 * new-image order, covering it, as fd_diff_records or fd_ctrl_records give). */
int fd_moves_learn(const uint8_t *old, size_t old_len, const fd_code_map *old_map, const uint8_t *new_,
                   size_t new_len, const fd_code_map *new_map, const fd_record *recs, size_t nrec, fd_moves *out);

#endif
