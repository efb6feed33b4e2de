/* Code transforms: relative branch, call and PC-relative load targets of
 * machine code rewritten as absolute ones, so that a function that moves does
 * not change every call to it, and calls whose site moved but whose target did
 * not stay the same bytes. The delta is made between the transformed images;
 * apply reads the old image through the forward transform and undoes the
 * transform on its output.
 *
 * An image's code lies in ranges (an ELF or PE code section, or the whole raw
 * image), each with an architecture and the address its first byte runs at.
 * A range is cut into blocks of 1 << block_log bytes from its start, and each
 * block is transformed on its own: an instruction is rewritten only when it
 * lies wholly inside its block. So any byte of the transformed image depends
 * only on its own block, a reader needs one block of memory, and the output
 * is undone block by block as it is produced.
 *
 * In each architecture the decision to rewrite an instruction looks only at
 * bits the transform never changes (opcodes, registers, marker bits), and the
 * rewrite adds or subtracts the instruction's address modulo the field width:
 * a bijection, undone exactly by the inverse. docs/format.md lists the
 * instructions. */
#ifndef FD_CODE_H
#define FD_CODE_H

#include <stddef.h>
#include <stdint.h>

enum {
    FD_CODE_THUMB2 = 1,  /* Thumb-2: BL, B.W */
    FD_CODE_AARCH64 = 2, /* A64: BL, B, ADRP */
    FD_CODE_X86_64 = 3,  /* x86-64: CALL/JMP/Jcc rel32, RIP-relative operands */
    FD_CODE_XTENSA = 4,  /* Xtensa: CALL0/4/8/12, J, L32R */
    FD_CODE_RISCV = 5,   /* RISC-V (RV32/RV64, C extension): JAL, AUIPC pairs */
    FD_CODE_POWER = 6,   /* Power, big-endian: B, BL */
    FD_CODE_SPARC = 7,   /* SPARC: CALL */
    FD_CODE_X86_32 = 8,  /* x86 (32-bit): CALL/JMP/Jcc rel32; absolute disp32 operands moved */
    FD_CODE_A32 = 9,     /* Arm A32 (ARM state): BL */
    FD_CODE_ARCH_END
};

#define FD_CODE_MAX_RANGES 64
#define FD_CODE_BLOCK_LOG_MIN 8
#define FD_CODE_BLOCK_LOG_MAX 16

enum { FD_CODE_OK = 0, FD_CODE_EINVAL = -1, FD_CODE_EIO = -2 };

typedef struct {
    uint64_t start; /* offset in the image */
    uint64_t len;
    uint64_t addr; /* address of the first byte when the code runs */
    uint8_t arch;
} fd_code_range;

/* The code ranges of one image: sorted by start, disjoint, non-empty. */
typedef struct {
    const fd_code_range *ranges;
    uint32_t count;
    uint8_t block_log;
} fd_code_map;

/* The forward transform of an old image can write, for each reference, the
 * place its target has in the new image rather than its own target: then a
 * call to a function that moved is the same bytes in both transformed images.
 * The old image's transform need not be inverted, so any function will do;
 * fn gets the reference's address (of the instruction; of its 32-bit field
 * on x86) and its target, and returns the target to write. */
typedef struct {
    uint64_t (*fn)(void *user, uint64_t pc, uint64_t target);
    void *user;
} fd_code_remap;

/* A remap by steps: targets from `from` on (up to the next step) move by
 * delta (modulo 2^64); targets below the first step stay. */
typedef struct {
    uint64_t from;
    int64_t delta;
} fd_code_step;

typedef struct {
    const fd_code_step *steps; /* sorted by from, strictly increasing */
    uint32_t count;
} fd_code_moves;

#define FD_CODE_MAX_MOVES (1u << 20)

/* Moves with a table that narrows each lookup to the steps of one bucket of
 * targets: bucket b holds the targets from base + (b << shift) on, and first[b]
 * counts the steps below its start (first[buckets] = count). The forward
 * transform of a large image looks a target up at every reference: a binary
 * search over all of 9,000 steps had taken a fifth of a 30 MB x86-64
 * image's transform. */
#define FD_CODE_MOVES_BUCKETS 4096

typedef struct {
    const fd_code_moves *moves;
    uint64_t base; /* the first step's from */
    unsigned shift;
    uint32_t buckets; /* a power of two, at most FD_CODE_MOVES_BUCKETS */
    uint32_t first[FD_CODE_MOVES_BUCKETS + 1];
} fd_code_moves_index;

/* Builds x over m (which must have passed fd_code_moves_check and outlive x). */
void fd_code_moves_index_init(fd_code_moves_index *x, const fd_code_moves *m);
/* fd_code_remap.fn for an fd_code_moves_index (user): fd_code_moved's result. */
uint64_t fd_code_moved_indexed(void *index, uint64_t pc, uint64_t target);

/* FD_CODE_OK when count is in bounds and the steps are strictly increasing. */
int fd_code_moves_check(const fd_code_moves *m);
/* fd_code_remap.fn for an fd_code_moves (user). */
uint64_t fd_code_moved(void *moves, uint64_t pc, uint64_t target);

/* FD_CODE_OK when the map is well-formed for an image of image_len bytes:
 * count and block_log in bounds, known architectures, ranges sorted, disjoint,
 * non-empty and inside the image. */
int fd_code_check(const fd_code_map *m, uint64_t image_len);

/* Transforms buf, one block of an arch range running at addr, forward
 * (relative targets to absolute, through remap unless it is NULL) or back
 * (inverse != 0; remap is not used). */
void fd_code_block(uint8_t arch, uint8_t *buf, size_t len, uint64_t addr, int inverse, const fd_code_remap *remap);
/* fd_code_block forward at from (through remap unless it is NULL), then back
 * at to, in one pass over buf. */
void fd_code_relocate(uint8_t arch, uint8_t *buf, size_t len, uint64_t from, uint64_t to, const fd_code_remap *remap);

/* Transforms an image in place, the blocks that start in [lo, hi) (0 and
 * UINT64_MAX: all); the map must have passed fd_code_check. Calls over spans
 * that tile the image transform each block once, so they may run on threads. */
void fd_code_image(const fd_code_map *m, uint8_t *image, uint64_t lo, uint64_t hi, int inverse,
                   const fd_code_remap *remap);
/* fd_code_image on a copy: dst gets the len bytes at src, transformed (the
 * ranges must lie within len). */
void fd_code_copy_image(const fd_code_map *m, uint8_t *dst, const uint8_t *src, uint64_t len, int inverse,
                        const fd_code_remap *remap);

typedef int (*fd_code_read_fn)(void *user, uint64_t offset, uint8_t *dst, size_t len);
typedef int (*fd_code_write_fn)(void *user, const uint8_t *src, size_t len);

/* Random access to the forward-transformed image through a read callback on
 * the plain one; keeps the last transformed block. */
typedef struct {
    const fd_code_map *map;
    const fd_code_remap *remap; /* NULL for none */
    uint8_t *block;             /* 1 << map->block_log bytes */
    uint64_t block_start;
    uint64_t block_len; /* 0: nothing cached */
    uint32_t hint;      /* range of the last read */
} fd_code_reader;

void fd_code_reader_init(fd_code_reader *r, const fd_code_map *map, const fd_code_remap *remap, uint8_t *block);
/* Transformed bytes [pos, pos + len) of the image; the caller checks bounds.
 * FD_CODE_EIO when read fails. */
int fd_code_read(fd_code_reader *r, fd_code_read_fn read, void *user, uint64_t pos, uint8_t *dst, size_t len);

/* Undoes the transform on an image produced front to back: bytes outside the
 * ranges go straight to write, a block's bytes once the block is complete. */
typedef struct {
    const fd_code_map *map;
    uint8_t *block; /* 1 << map->block_log bytes */
    uint64_t pos;   /* image offset of the next byte */
    uint32_t hint;
} fd_code_writer;

void fd_code_writer_init(fd_code_writer *w, const fd_code_map *map, uint8_t *block);
int fd_code_write(fd_code_writer *w, fd_code_write_fn write, void *user, const uint8_t *src, size_t len);

#endif
