/* Streaming apply of a plain (not in-place) delta: the record streams of
 * fd_diff.h are read through fd_reader, the old image and the output either
 * sit in memory or are reached through callbacks. No allocation. */
#ifndef FD_APPLY_H
#define FD_APPLY_H

#include <stddef.h>
#include <stdint.h>

#include "fd_code.h"
#include "fd_format.h"
#include "fd_reloc.h"

enum {
    FD_OK = 0,
    FD_ETRUNCATED = -1, /* a stream ended before the records were complete */
    FD_ECORRUPT = -2,   /* a record points outside the images, or data is left over */
    FD_EIO = -3,        /* a callback reported failure */
    FD_EPARAM = -4      /* the context is not set up correctly */
};

/* Refills buf with up to cap bytes; *got = 0 marks the end of the stream.
 * Returns 0, or non-zero on failure. */
typedef int (*fd_fill_fn)(void *user, uint8_t *buf, size_t cap, size_t *got);
typedef int (*fd_read_at_fn)(void *user, uint64_t offset, uint8_t *dst, size_t len);
typedef int (*fd_write_fn)(void *user, const uint8_t *src, size_t len);

typedef struct {
    const uint8_t *cur;
    const uint8_t *end;
    fd_fill_fn fill; /* NULL: the whole stream is [cur, end) */
    void *user;
    uint8_t *buf;
    size_t cap;
} fd_reader;

void fd_reader_init_mem(fd_reader *r, const uint8_t *data, size_t len);
void fd_reader_init_fill(fd_reader *r, fd_fill_fn fill, void *user, uint8_t *buf, size_t cap);

typedef struct {
    /* Old image: old != NULL for memory, else read_old. */
    const uint8_t *old;
    fd_read_at_fn read_old;
    void *old_user;
    uint64_t old_len;
    /* Output: out != NULL for memory (new_len bytes), else write_out. In memory
     * the extra stream may be out's last bytes (it is read ahead of the writes). */
    uint8_t *out;
    fd_write_fn write_out;
    void *out_user;
    uint64_t new_len;
    fd_reader ctrl;
    fd_reader wmap;
    fd_reader words;
    fd_reader extra;
    /* Output staging for callback mode: FD_APPLY_MIN_WORK bytes or more. */
    uint8_t *work;
    size_t work_len;
    /* Code transforms (fd_code.h), NULL for none: the records turn the
     * transformed old image, its targets moved by old_moves (NULL for none),
     * into the transformed new one. Both maps have the same block_log;
     * code_work holds FD_APPLY_CODE_WORK(block_log) bytes. */
    const fd_code_map *old_code;
    const fd_code_map *new_code;
    const fd_code_moves *old_moves;
    uint8_t *code_work;
    size_t code_work_len;
    /* Relocated copies (fd_reloc.h), NULL for none: each record's copy
     * length in ctrl is doubled, plus one where its copy is relocated. Not
     * with the code transforms above; in callback mode work_len is
     * FD_RELOC_PIECE or more. */
    const fd_reloc *reloc;
    /* How the differences are grouped: FD_GROUP_WORDS, FD_GROUP_BYTES (wmap
     * counts bytes), FD_GROUP_SUMS or FD_GROUP_SPANS (fd_format.h), the last
     * with span bytes per span (FD_SPAN_MIN to FD_SPAN_MAX). */
    uint8_t grouping;
    uint8_t span;
    /* Set by fd_apply: offset in new of the next changed word (or byte or
     * span), FD_NO_WORD when none; with sums, the carry out of the byte
     * before carry_at. */
    uint64_t next_word;
    uint64_t carry_at;
    uint8_t carry;
    fd_code_remap old_remap;
    fd_code_reader old_reader;
    fd_code_writer new_writer;
    /* Set by fd_apply in memory mode with new_code: the output's transform
     * has been undone before offset undone, whose range is undo_range. */
    uint64_t undone;
    uint32_t undo_range;
} fd_apply_ctx;

/* One block to read the old image through and one to undo the new one's. */
#define FD_APPLY_CODE_WORK(block_log) ((size_t)2 << (block_log))

#define FD_NO_WORD UINT64_MAX

#define FD_APPLY_MIN_WORK 64

int fd_apply(fd_apply_ctx *ctx);
const char *fd_strerror(int code);

#endif
