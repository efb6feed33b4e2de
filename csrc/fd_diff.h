/* Delta generation: old + new image -> instruction and data streams.
 *
 * The delta is a sequence of records. Each record moves the old cursor by
 * seek, COPYs add_len bytes from the old image at the cursor, ADDing (mod 256)
 * a difference byte to each, then INSERTs insert_len literal bytes taken from
 * the extra stream. Scattered changes inside a copied run
 * (relocated addresses in recompiled code) so cost a few difference bytes
 * instead of breaking the match.
 *
 * Difference bytes are sparse and given in new-image coordinates: the new
 * image is cut into aligned words of FD_WORD bytes, and a word is "changed"
 * when one of its COPY/ADD bytes has a non-zero difference. The wmap stream
 * holds, per changed word, the number of unchanged words before it (since
 * the previous changed word); the words stream holds, per changed word, the
 * differences of its COPY/ADD bytes in address order. Every other COPY/ADD
 * byte has difference zero. docs/format.md gives the byte layout. */
#ifndef FD_DIFF_H
#define FD_DIFF_H

#include <stddef.h>
#include <stdint.h>

#include "fd_buf.h"
#include "fd_format.h"
#include "fd_reloc.h"

typedef struct {
    /* A new match must beat the running alignment by more than this many
     * bytes to start a new record. Larger gives fewer, longer records. */
    int32_t min_gain;
    /* Matches shorter than this are never worth a record. */
    int32_t min_match;
    /* Threads that scan the new image (1 to FD_DIFF_MAX_THREADS); the
     * output does not depend on it. */
    int32_t threads;
} fd_diff_params;

#define FD_DIFF_MAX_THREADS 64

typedef struct {
    fd_buf ctrl;  /* varints: zigzag(seek), add_len, insert_len per record */
    fd_buf wmap;  /* varint per changed word: unchanged words skipped before it */
    fd_buf words; /* difference bytes of the changed words */
    fd_buf sums;  /* by words or spans: the same as little-endian sums (FD_GROUP_SUMS, _SPANS) */
    fd_buf extra; /* insert_len literal bytes per record */
    uint64_t records;
    uint64_t copied;     /* bytes taken from old */
    uint64_t changed;    /* of those, bytes with a non-zero diff */
    uint64_t carried;    /* sums' digits that differ from the bytes' differences */
    uint64_t inserted;   /* literal bytes */
    uint64_t relocated;  /* of the copied bytes, those relocated (fd_reloc.h) */
} fd_delta;

/* One record of the scan: new[new_pos, +add_len) comes from old[old_pos, ...]
 * with differences, new[new_pos + add_len, +insert_len) is inserted. */
typedef struct {
    int64_t new_pos;
    int64_t old_pos;
    int64_t add_len;
    int64_t insert_len;
} fd_record;

/* Called now and then with the number of new bytes processed; a non-zero
 * return cancels the diff. */
typedef int (*fd_progress_fn)(void *user, uint64_t done, uint64_t total);

enum {
    FD_DIFF_OK = 0,
    FD_DIFF_ENOMEM = -1,
    FD_DIFF_ETOOBIG = -2,
    FD_DIFF_CANCELLED = -3,
    FD_DIFF_EINVAL = -4
};

/* A suffix sorter with fd_sais's contract (fd_sais.h): sa[0..n) gets the
 * suffixes of text in lexicographic order; returns 0, or negative on failure.
 * libdivsufsort's divsufsort() has it. Every such sorter gives the same
 * array, so the choice changes only the time an index takes. */
typedef int (*fd_sort_fn)(const uint8_t *text, int32_t *sa, int32_t n);

/* Search structure over an old image (suffix arrays, about 4x its size less
 * the inside of its long runs of one byte value);
 * build once, diff several new images or parameter sets against it. The old
 * image must outlive the index. threads > 1 builds the two suffix arrays of
 * a large image at once; the index is the same either way. sort is the
 * suffix sorter, NULL for fd_sais. */
typedef struct fd_index fd_index;

int fd_index_build(fd_index **out, const uint8_t *old, size_t old_len, int threads, fd_sort_fn sort);
void fd_index_free(fd_index *ix);

void fd_diff_default_params(fd_diff_params *p);
int fd_diff(const fd_index *ix, const uint8_t *new_, size_t new_len, const fd_diff_params *params,
            fd_delta *out, fd_progress_fn progress, void *user);
void fd_delta_free(fd_delta *d);
/* The records alone, in new-image order, covering all of new (free *out). */
int fd_diff_records(const fd_index *ix, const uint8_t *new_, size_t new_len, const fd_diff_params *params,
                    fd_record **out, size_t *count, fd_progress_fn progress, void *user);

/* The records of a delta's ctrl stream, in new-image order (free *out);
 * FD_DIFF_EINVAL unless they cover exactly new_len bytes within old_len. */
int fd_ctrl_records(const uint8_t *ctrl, size_t ctrl_len, size_t old_len, size_t new_len, fd_record **out,
                    size_t *count);
/* The delta of old -> new along given records (in new-image order, covering
 * new): another pair's records on these images, e.g. a plain delta's on the
 * code-transformed images, costs one pass instead of an index and a scan.
 * The differences are grouped as grouping says (fd_format.h): FD_GROUP_WORDS
 * (sums too, as fd_diff gives), FD_GROUP_BYTES, or FD_GROUP_SPANS of span
 * bytes (their sums in out->sums). With reloc (NULL for none), each copy is
 * relocated where that leaves fewer of its words changed (fd_reloc.h): the
 * same records make the same choices whatever the grouping. */
int fd_delta_from_records(const uint8_t *old, size_t old_len, const uint8_t *new_, size_t new_len,
                          const fd_record *recs, size_t n, int grouping, size_t span, const fd_reloc *reloc,
                          fd_delta *out);

#endif
