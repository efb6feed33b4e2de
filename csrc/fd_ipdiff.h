/* Host side of in-place patches: plans the order in which the new image's
 * blocks are written so that no block is read after it has been overwritten,
 * and writes the decoded payload that csrc/fd_inplace.c consumes: three
 * lanes, control (steps, records, word gaps), the records' literals and the
 * changed words' differences, with the order in which the patcher reads them. */
#ifndef FD_IPDIFF_H
#define FD_IPDIFF_H

#include <stddef.h>
#include <stdint.h>

#include "fd_buf.h"
#include "fd_diff.h"
#include "fd_inplace.h"

typedef struct {
    fd_buf lanes[FD_IP_LANES]; /* FD_IP_LANE_* */
    fd_buf turns;              /* uint32_t byte counts read from lane 0, 1, 2, 0, 1, ... in turn */
    unsigned lane_now;         /* the lane of the turn in progress */
    size_t turn_start[FD_IP_LANES]; /* each lane's length when its turn in progress began */
    uint32_t steps;            /* steps in the payload */
    uint32_t staged;           /* blocks that read their own old bytes */
    uint32_t parked;           /* blocks built early and parked to break a cycle */
    uint32_t park_used;        /* park slots needed at once: what the device must set aside */
    uint32_t unchanged;        /* blocks left as they are */
    uint32_t cycles_broken;    /* blocks whose readers had to give up copies */
    uint32_t starved;          /* cycles broken by giving up copies with every park slot busy */
    uint64_t given_up;         /* copied bytes given up to break cycles (then moved or literalized) */
    uint64_t moved;            /* copied bytes re-sourced from rewritten blocks that hold them */
    uint64_t literalized;      /* copied bytes turned into literals to break cycles */
    uint64_t found;            /* bytes of literals found in the slot and copied from there instead */
    uint64_t records;
    uint64_t relocated;        /* records whose copies were relocated */
    uint64_t changed_words;    /* changed bytes when grouped by byte */
    uint8_t grouping;          /* of the differences, FD_GROUP_*: the header's FD_IP_FLAG_BYTEWISE, _SUMS or _SPANS */
    uint8_t span;              /* bytes per span of FD_GROUP_SPANS */
} fd_ipdelta;

/* Code relocation (fd_ip_code.h): copies whose references come out closer
 * to the new image when relocated are flagged so. */
typedef struct {
    uint8_t arch;         /* FD_CODE_*; 0: no relocation */
    const uint8_t *table; /* the moves table as the patch carries it */
    uint32_t moves;       /* its entries */
    /* The images the records are searched between, when not old and new:
     * both with their code transformed (fd_code.h), so that records follow
     * the code that moved; ix indexes the old one. Same lengths as old and
     * new. */
    const uint8_t *match_new;
} fd_ip_code_plan;

/* Besides FD_DIFF_*: a block size, park slot count or architecture the
 * device format does not allow. */
#define FD_IPDIFF_EPARAM (-16)

/* What the planner gives up when a write-order cycle finds every park block
 * busy: the lightest pending copy, or every pending copy from the block its
 * pending readers copy the fewest bytes from, which can then be written.
 * One copy at a time may spread the loss over blocks that stay blocked by
 * their other readers; whole blocks may give up more than needed. Which
 * loses fewer bytes depends on the images. */
#define FD_IP_GIVE_UP_COPY 0u
#define FD_IP_GIVE_UP_BLOCK 1u

/* park_slots: spare blocks the device sets aside to break write-order
 * cycles (0 to FD_IP_MAX_PARK); each saves copies that would otherwise
 * become literals. give_up: FD_IP_GIVE_UP_*. code: NULL for none.
 * copy_min: runs of literals (inserted bytes, and copies given up) of at
 * least this many bytes that the slot holds when the block is written (old
 * bytes not yet overwritten, new bytes already written) become copies from
 * there; 0: none. Looking costs 4 bytes of host memory per byte of either
 * image plus two hash tables of up to 64 MiB. approx (with copy_min): such a
 * run may go on past bytes that differ, which the block's changed words
 * then correct, as long as the bytes that match outweigh those words: the
 * literals lane's small decoder window makes data repeated with small
 * changes far apart cost its full size twice otherwise. grouping
 * (FD_GROUP_* of fd_format.h): the differences are of words, of single
 * changed bytes (FD_IP_FLAG_BYTEWISE), of words as sums (FD_IP_FLAG_SUMS) or
 * the sums of spans of span bytes (FD_IP_FLAG_SPANS; span is ignored
 * otherwise).
 * search_work: when the park slots run out, how much work (an
 * estimate in edge visits) may go into
 * searching for a write order that gives up fewer copied bytes than the
 * heuristic's; 0: the heuristic's order. At FD_IP_SEARCH_WORK a search took
 * up to a quarter of a second on the broad corpus's 1.4 MB Realtek Wi-Fi
 * firmware at 4 KiB blocks. */
#define FD_IP_SEARCH_WORK 12000000u

/* What plans of the same records (the same index, images and params) can
 * share instead of working it out again: the records, the write orders
 * planned for them (by park slots, give_up and search_work) and the hash
 * tables of the slot's bytes. A diff's trials differ mostly in what comes
 * after those. */
typedef struct fd_ip_memo fd_ip_memo;
fd_ip_memo *fd_ip_memo_new(void);
void fd_ip_memo_free(fd_ip_memo *m);

/* memo: NULL for none; else filled on first use, and a later call with
 * other images, index or params gets FD_IPDIFF_EPARAM. */
int fd_inplace_diff(const fd_index *ix, const uint8_t *old, size_t old_len, const uint8_t *new_, size_t new_len,
                    const fd_diff_params *params, uint32_t block_size, uint32_t park_slots, uint32_t give_up,
                    const fd_ip_code_plan *code, uint32_t copy_min, uint32_t approx, uint32_t grouping,
                    uint32_t span, uint64_t search_work, fd_ip_memo *memo, fd_ipdelta *out, fd_progress_fn progress,
                    void *user);
void fd_ipdelta_free(fd_ipdelta *d);

#endif
