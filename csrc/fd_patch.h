/* The plain patch container (docs/format.md), read in place: where each
 * field and stream lies, every length checked against the patch and against
 * what the records can produce, before anything is decoded or allocated.
 * And the code transform's stream (fd_code.h): the two code maps and the
 * moves. No allocation: the caller provides the moves' memory. */
#ifndef FD_PATCH_H
#define FD_PATCH_H

#include <stddef.h>
#include <stdint.h>

#include "fd_code.h"

/* COMPACT (version 4): a flags byte, which may be 0, and a 64-bit new digest
 * (docs/format.md); versions 1 to 3 carry a 128-bit one. IMPLIED (version 5):
 * as version 4, with a 32-bit fingerprint and no length that the rest of the
 * header implies: the raw length of a full, referenced or solid stream (the new
 * size, the sum of the parts) and the stored length of a stored stream (its
 * raw length). */
enum { FD_PATCH_VERSION_PLAIN = 1, FD_PATCH_VERSION_CODE = 2, FD_PATCH_VERSION_LAYERED = 3, FD_PATCH_VERSION_COMPACT = 4,
       FD_PATCH_VERSION_IMPLIED = 5 };
/* REFERENCED: the new image as one zstd or LZMA stream that takes the old image as
 * its prefix (hosts decode it; docs/format.md). */
enum { FD_PATCH_DELTA = 0, FD_PATCH_FULL = 1, FD_PATCH_SOLID = 2, FD_PATCH_REFERENCED = 3, FD_PATCH_KINDS };
/* BYTES: the differences are grouped by single bytes, not FD_WORD words; SUMS:
 * by words, as little-endian sums (FD_GROUP_* of fd_format.h; version 3,
 * docs/format.md). SPAN (two bits, version 4, with SUMS): the sums are of
 * spans of FD_PATCH_SPAN(flags) bytes that start at any byte. HEX and UF2
 * (version 4), one at most: the delta is between the payloads of Intel HEX
 * (fd_hex.h) or UF2 (fd_uf2.h) images, whose layout the patch carries. */
/* RELOC (version 5, not with CODE): relocated copies (fd_reloc.h); the
 * stream in the code transform's place holds the relocation plan. */
enum { FD_PATCH_FLAG_CODE = 1, FD_PATCH_FLAG_HEX = 2, FD_PATCH_FLAG_BYTES = 4, FD_PATCH_FLAG_SUMS = 8,
       FD_PATCH_FLAG_SPAN = 0x30, FD_PATCH_FLAG_UF2 = 0x40, FD_PATCH_FLAG_LAYER = FD_PATCH_FLAG_HEX | FD_PATCH_FLAG_UF2,
       FD_PATCH_FLAG_RELOC = 0x80 };
#define FD_PATCH_SPAN_SHIFT 4
/* Bytes per span of a patch's flags (FD_SPAN_MIN to FD_SPAN_MAX), 0 for none. */
#define FD_PATCH_SPAN(flags) ((flags) & FD_PATCH_FLAG_SPAN ? (((flags) & FD_PATCH_FLAG_SPAN) >> FD_PATCH_SPAN_SHIFT) + 1 : 0)
enum { FD_CODEC_STORED = 0, FD_CODEC_ZSTD = 1, FD_CODEC_LZMA = 2, FD_CODECS };

#define FD_PATCH_FINGERPRINT_LEN 8
#define FD_PATCH_SHORT_FINGERPRINT_LEN 4 /* version 5's */
#define FD_PATCH_DIGEST_LEN 16
#define FD_PATCH_COMPACT_DIGEST_LEN 8
/* The diff takes images below 2 GiB: a patch declaring more is not one of ours. */
#define FD_PATCH_MAX_IMAGE ((UINT64_C(1) << 31) - 1)
/* Bound on the code stream before it is decoded: the ranges and the most moves. */
#define FD_PATCH_CODE_RAW_MAX (1 + 2 * (1 + FD_CODE_MAX_RANGES * 31) + 10 + (uint64_t)FD_CODE_MAX_MOVES * 20)

/* Errors: what is wrong, with fd_patch.bad (and .stream) saying where. */
enum {
    FD_PATCH_OK = 0,
    FD_PATCH_EMAGIC = -1,     /* not a fotadelta patch */
    FD_PATCH_EVERSION = -2,   /* bad = the version */
    FD_PATCH_EKIND = -3,      /* bad = the kind byte */
    FD_PATCH_EFLAGS = -4,     /* bad = the flags byte */
    FD_PATCH_EFULLFLAGS = -5, /* a full or referenced image with a code transform or layer */
    FD_PATCH_ETRUNCATED = -6,
    FD_PATCH_EVARINT = -7,    /* a varint of more than 10 bytes or 2^63 or more */
    FD_PATCH_ECODEC = -8,     /* bad = the codec byte (not zstd for a referenced image), stream = the stream's FD_PATCH_S_* */
    FD_PATCH_ETRAILING = -9,  /* bad = bytes after the last stream */
    FD_PATCH_ELAYER = -10,    /* layer sizes do not fit the images */
    FD_PATCH_ECODELEN = -11,  /* code stream implausibly long */
    FD_PATCH_EHUGE = -12,     /* an image of 2 GiB or more */
    FD_PATCH_EIMAGELEN = -13, /* full image stream length differs from the new size */
    FD_PATCH_EPARTS = -14,    /* solid stream length differs from its parts' sum */
    FD_PATCH_EDATA = -15,     /* words and extra longer than the new image */
    FD_PATCH_EWMAP = -16,     /* word map implausibly long */
    FD_PATCH_ECTRL = -17,     /* control stream implausibly long */
    FD_PATCH_ENEWSIZE = -18   /* new image larger than the records can produce */
};

/* Streams by role, for error reports (and the order they are stored in). */
enum { FD_PATCH_S_LAYOUT, FD_PATCH_S_CODE, FD_PATCH_S_CTRL, FD_PATCH_S_WMAP, FD_PATCH_S_WORDS, FD_PATCH_S_EXTRA,
       FD_PATCH_S_IMAGE, FD_PATCH_S_RECORDS };

typedef struct {
    uint8_t codec;
    uint64_t raw_len;
    size_t offset; /* of the stored bytes in the patch */
    size_t len;    /* stored bytes */
} fd_patch_stream;

typedef struct {
    uint8_t version, kind, flags;
    uint64_t old_size, new_size;
    size_t fingerprint, digest; /* offsets of the fixed-width hashes */
    size_t fingerprint_len;     /* FD_PATCH_FINGERPRINT_LEN, or FD_PATCH_SHORT_FINGERPRINT_LEN in version 5 */
    size_t digest_len;          /* FD_PATCH_DIGEST_LEN, or FD_PATCH_COMPACT_DIGEST_LEN from version 4 on */
    uint64_t inner_old, inner_new; /* HEX or UF2 layer: the payloads' sizes */
    fd_patch_stream layout, code;  /* when flags say so (code: the transform or the relocation plan) */
    uint64_t parts[4];             /* solid: the record streams' raw lengths */
    fd_patch_stream streams[4];    /* 4 record streams, or 1 image or records stream */
    uint32_t nstreams;
    uint64_t bad;   /* the offending value of an error */
    unsigned stream; /* the stream (FD_PATCH_S_*) of FD_PATCH_ECODEC */
} fd_patch;

int fd_patch_parse(const uint8_t *data, size_t len, fd_patch *p);

/* The code transform's decoded stream: block log, old and new ranges (at most
 * FD_CODE_MAX_RANGES each, checked against the image sizes), then the moves.
 * fd_code_plan_parse fills the maps (over the callers' range arrays) and
 * says how many moves follow and where; fd_code_plan_moves reads them into
 * steps (count entries). */
enum {
    FD_CODE_PLAN_OK = 0,
    FD_CODE_PLAN_ETRUNCATED = -1,
    FD_CODE_PLAN_EVARINT = -2,
    FD_CODE_PLAN_EBLOCK = -3,    /* bad = the block log */
    FD_CODE_PLAN_ERANGES = -4,   /* bad = the range count */
    FD_CODE_PLAN_EARCH = -5,     /* bad = the architecture */
    FD_CODE_PLAN_ERANGE = -6,    /* a range outside its image */
    FD_CODE_PLAN_EMOVES = -7,    /* bad = the move count */
    FD_CODE_PLAN_EORDER = -8,    /* moves not in increasing order */
    FD_CODE_PLAN_EMOVE = -9,     /* a move at 2^63 or more */
    FD_CODE_PLAN_ETRAILING = -10
};

typedef struct {
    fd_code_map old_map, new_map;
    uint32_t moves;     /* count */
    size_t moves_at;    /* offset of the first move */
    uint64_t bad;
} fd_code_plan;

int fd_code_plan_parse(const uint8_t *data, size_t len, uint64_t old_size, uint64_t new_size,
                       fd_code_range *old_ranges, fd_code_range *new_ranges, fd_code_plan *plan);
int fd_code_plan_moves(const uint8_t *data, size_t len, const fd_code_plan *plan, fd_code_step *steps);

/* The relocation plan's decoded stream (FD_PATCH_FLAG_RELOC): the
 * architecture (FD_CODE_*), then the moves as the code transform's.
 * fd_reloc_plan_parse says how many moves follow
 * and where (FD_CODE_PLAN_* errors); fd_reloc_plan_moves reads them. */
typedef struct {
    uint8_t arch;
    uint32_t moves;
    size_t moves_at;
    uint64_t bad;
} fd_reloc_plan;

int fd_reloc_plan_parse(const uint8_t *data, size_t len, fd_reloc_plan *plan);
int fd_reloc_plan_moves(const uint8_t *data, size_t len, const fd_reloc_plan *plan, fd_code_step *steps);

#endif
