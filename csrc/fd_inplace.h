/* In-place patcher for a device with one image slot: rewrites the old image
 * into the new one erase block by erase block, in the order the patch gives,
 * with a scratch block and a two-block journal so that a power cut at any
 * instant is recovered by simply calling fd_inplace_apply() again.
 * No allocation: the caller passes work memory of fd_inplace_work_size()
 * bytes. docs/inplace.md describes the patch and the journal. */
#ifndef FD_INPLACE_H
#define FD_INPLACE_H

#include <stdint.h>

#include "fd_format.h"

/* The header: FD_IP_FIXED_SIZE bytes of fixed fields (digests included),
 * then FD_IP_VARINTS varints; FD_IP_HEADER_MAX bytes at most. */
#define FD_IP_FIXED_SIZE 33
#define FD_IP_VARINTS 8
#define FD_IP_HEADER_MAX (FD_IP_FIXED_SIZE + 5 * FD_IP_VARINTS)
#define FD_IP_FORMAT_VERSION 4
/* Erase blocks of 256 B to 128 KiB; images below 2 GiB. */
#define FD_IP_BLOCK_LOG_MIN 8
#define FD_IP_BLOCK_LOG_MAX 17
#define FD_IP_BLOCK_MIN (1u << FD_IP_BLOCK_LOG_MIN)
#define FD_IP_BLOCK_MAX (1u << FD_IP_BLOCK_LOG_MAX)
#define FD_IP_IMAGE_MAX 0x7FFFFFFFu
/* Most park blocks a patch may use. */
#define FD_IP_MAX_PARK 32
/* Step kinds (low two bits of a step's code). */
enum { FD_IP_STEP_WRITE = 0, FD_IP_STEP_STAGED = 1, FD_IP_STEP_PARK = 2, FD_IP_STEP_UNPARK = 3 };
/* The decoded payload's three lanes: steps, records and the gaps between
 * changed words (or bytes); the records' literal bytes; the differences. */
enum { FD_IP_LANE_CONTROL = 0, FD_IP_LANE_LITERALS = 1, FD_IP_LANE_DIFFS = 2, FD_IP_LANES = 3 };
/* Each digest is SHA-256 truncated to 64 bits. */
#define FD_IP_DIGEST_LEN 8

enum {
    FD_IP_OK = 0,
    FD_IP_EIO = -1,          /* a flash or patch callback failed (power loss included) */
    FD_IP_EFORMAT = -2,      /* not an in-place patch, or a version/codec this build lacks */
    FD_IP_EGEOMETRY = -3,    /* block size, slot or write size do not fit the patch */
    FD_IP_ENOMEM = -4,       /* less work memory than the patch needs */
    FD_IP_ECORRUPT = -5,     /* the payload does not match its digest or is malformed */
    FD_IP_ESOURCE = -6,      /* the slot does not hold the image the patch was made from */
    FD_IP_EVERIFY = -7       /* the finished image does not match the target digest */
};

/* Payload codecs (header byte 5, bits 0-3). Stored payloads are read
 * straight from the patch; the others are decoded by a fd_payload_source:
 * fd_ip_lz.h for the MCU codec, the host's own LZMA for emulators and tests. */
enum { FD_IP_CODEC_STORED = 0, FD_IP_CODEC_LZ = 1, FD_IP_CODEC_LZMA = 2 };
/* Header byte 5, bits 4-7, how the differences are grouped: 0 by 4-byte
 * word; FD_IP_FLAG_BYTEWISE by single changed byte (code whose changes are
 * one byte in a word: displacements); FD_IP_FLAG_SUMS a word's differences
 * are the digits of a little-endian sum, each byte's carry going into the
 * next (addresses moved by a constant); FD_IP_FLAG_SPANS(n) the same sums
 * over spans of n bytes (FD_SPAN_MIN to FD_SPAN_MAX) that start at any byte
 * (offsets at any alignment). */
#define FD_IP_FLAG_BYTEWISE 0x10u
#define FD_IP_FLAG_SUMS 0x20u
#define FD_IP_FLAG_SPANS(n) ((uint8_t)(((n) + 1u) << 4))

typedef struct {
    uint8_t codec;
    uint8_t grouping;     /* byte 5's bits 4-7: 0, FD_IP_FLAG_BYTEWISE >> 4, ... */
    uint8_t block_log;
    uint8_t park_slots;
    uint8_t arch;         /* code relocated in copies (fd_ip_code.h), 0 for none */
    uint32_t old_size;
    uint32_t new_size;
    uint32_t lane_raw[FD_IP_LANES]; /* decoded bytes of each lane */
    uint32_t payload_len; /* the moves table and the stored lanes */
    uint32_t work_need;
    uint32_t moves;       /* entries of the moves table that starts the payload */
    uint32_t header_len;  /* where the payload starts */
} fd_ip_header;

/* Where the digests are in the header: of the old image, of the new one, and
 * of the patch (every byte of it but this digest's own). */
#define FD_IP_OLD_DIGEST_AT 9
#define FD_IP_NEW_DIGEST_AT 17
#define FD_IP_PATCH_DIGEST_AT 25

/* Flash access. Addresses are absolute; erase takes a block-aligned address.
 * Writes are write_size-aligned multiples of write_size, to erased flash. */
typedef struct {
    int (*read)(void *user, uint32_t addr, uint8_t *dst, uint32_t len);
    int (*erase)(void *user, uint32_t addr);
    int (*write)(void *user, uint32_t addr, const uint8_t *src, uint32_t len);
#ifdef FD_IP_FLASH_DIGEST
    /* Built only with FD_IP_FLASH_DIGEST defined (36 bytes of Cortex-M4 code);
     * optional, NULL for none: the SHA-256 of len bytes at addr (into out, 32
     * bytes) by the platform's own engine, a hardware hash block say; nonzero
     * when the bytes cannot be read. Without it the patcher reads the bytes
     * and hashes them with fd_sha256. Either way it compares the same digests
     * at the same points of the update. */
    int (*digest)(void *user, uint32_t addr, uint32_t len, uint8_t *out);
#endif
    void *user;
    uint32_t block_size;
    uint32_t write_size; /* a power of two that divides block_size */
    uint32_t slot;      /* first block of the image slot */
    uint32_t slot_size; /* bytes */
    uint32_t scratch;   /* a spare block for staging */
    uint32_t park;      /* park_blocks consecutive spare blocks for blocks built early */
    uint32_t park_blocks;
    uint32_t journal;   /* two consecutive spare blocks */
} fd_flash;

/* Random access to the stored patch (header and payload). */
typedef int (*fd_patch_read_fn)(void *user, uint32_t offset, uint8_t *dst, uint32_t len);

/* Decoded lanes of a compressed patch. open() (re)starts at the first byte
 * of the coded lanes, len bytes at offset start of the patch, and may use the
 * work memory it is given (what the patcher's work area holds beyond one
 * block); read() yields exactly the next len bytes of a lane (FD_IP_LANE_*). */
typedef struct {
    int (*open)(void *user, uint32_t start, uint32_t len, uint8_t *work, uint32_t work_len);
    int (*read)(void *user, unsigned lane, uint8_t *dst, uint32_t len);
    void *user;
} fd_payload_source;

/* Reads the patch's header, its fixed fields into raw, and parses it into h
 * (nothing else is checked): FD_IP_OK, FD_IP_EIO (a read failed: the patch
 * may end within the header), FD_IP_EFORMAT (magic, version or a fixed
 * field) or FD_IP_ECORRUPT (a varint over 32 bits). */
int fd_ip_read_header(fd_patch_read_fn read_patch, void *patch_user, uint8_t raw[FD_IP_FIXED_SIZE], fd_ip_header *h);

/* Starts or resumes the update and runs it to the end. Safe to call again
 * after any failure; FD_IP_OK once the slot holds the verified new image.
 * work holds one block plus the payload decoder's memory; the header's
 * work_need says how much. Nothing is written before the patch digest, the
 * geometry, the memory and the source image have been checked. */
int fd_inplace_apply(const fd_flash *flash, fd_patch_read_fn read_patch, void *patch_user,
                     const fd_payload_source *external, void *work, uint32_t work_len);

/* Whether the journal holds an update of this patch: FD_IP_STATE_* (>= 0),
 * or an error code. Reads only; work must hold a block. An update agent uses
 * it to resume after a power cut instead of re-checking a half-new image. */
enum { FD_IP_STATE_NONE = 0, FD_IP_STATE_RUNNING = 1, FD_IP_STATE_COMPLETE = 2 };
int fd_inplace_state(const fd_flash *flash, fd_patch_read_fn read_patch, void *patch_user, void *work,
                     uint32_t work_len);

const char *fd_ip_strerror(int code);

#endif
