/* MCU LZ codec: LZ77 over a small window (1-4 KiB typical) with adaptive binary
 * range coding. This header is the device-side decoder; the host encoder is in
 * fd_lz_enc.h and the bitstream is described in docs/mcu-codec.md.
 *
 * A stream carries one to three lanes: byte sequences with their own window,
 * LZ state and literal model that share one range coder and the rest of the
 * model. The caller asks for bytes of any lane in the order the encoder was
 * told (see fd_lz_compress_lanes); an in-place patch keeps its control
 * records, its literals and its word differences in lanes of their own.
 *
 * The decoder is portable C99 with no allocation, no globals and no library
 * calls: the caller hands in one block of work memory (fd_lz_work_size bytes,
 * 2-byte aligned) and a callback that supplies the compressed stream, then asks
 * for output in pieces of any size. Malformed input ends in an error code. */
#ifndef FD_LZ_H
#define FD_LZ_H

#include <stddef.h>
#include <stdint.h>

enum {
    FD_LZ_OK = 0,
    FD_LZ_ETRUNCATED = -1, /* the compressed stream ended early */
    FD_LZ_ECORRUPT = -2,   /* invalid header, bad distance, or data left over */
    FD_LZ_EIO = -3,        /* the read callback reported failure */
    FD_LZ_EPARAM = -4,     /* bad arguments (NULL, misaligned work memory) */
    FD_LZ_EWINDOW = -5,    /* the stream's window does not fit the work memory */
    FD_LZ_ENOMEM = -6,     /* encoder only: out of memory */
    FD_LZ_ELIMIT = -7      /* encoder only: the stream would be longer than the limit asked */
};

#define FD_LZ_WINDOW_LOG_MIN 8
#define FD_LZ_WINDOW_LOG_MAX 16
#define FD_LZ_MAX_LANES 3

/* Bytes of the decoder's input buffer (part of the work memory; even). */
#ifndef FD_LZ_INBUF
#define FD_LZ_INBUF 32
#endif

/* Refills buf with up to cap bytes; *got = 0 marks the end of the stream.
 * Returns 0, or non-zero on failure. */
typedef int (*fd_lz_read_fn)(void *user, uint8_t *buf, size_t cap, size_t *got);

/* ---- Model layout, shared with the encoder --------------------------------
 * Every adaptive probability is a uint16_t (12-bit probability of a 0 bit) in
 * one array; these are the offsets of its parts. */
#define FD_LZ_PROB_BITS 12
#define FD_LZ_PROB_ONE (1u << FD_LZ_PROB_BITS)
#define FD_LZ_PROB_SHIFT 4    /* adaptation speed */
#define FD_LZ_STATES 9        /* coder state: the kinds of the last few operations */
#define FD_LZ_LIT_STATES 5    /* states below this follow a literal */
#define FD_LZ_POS_BITS 2      /* output position bits used as context */
#define FD_LZ_MIN_MATCH 2
#define FD_LZ_MAX_MATCH 145   /* 2 + 8 + 8 + 127 */
#define FD_LZ_LEN_HIGH_BITS 7
#define FD_LZ_SLOT_BITS 5     /* distance slot tree: 32 slots cover 16-bit distances */
#define FD_LZ_DIST_CTX 4      /* slot contexts: match length 2, 3, 4, 5+ */
#define FD_LZ_FOOT_END 10     /* slots from here on use direct bits + 4 align bits */
#define FD_LZ_ALIGN_BITS 4

enum {
    /* Shared by the lanes. */
    FD_LZ_P_REP = 0,                                            /* [state] */
    FD_LZ_P_MLEN = FD_LZ_P_REP + FD_LZ_STATES,                  /* length coder, new matches */
    FD_LZ_P_RLEN = FD_LZ_P_MLEN + 72,                           /* length coder, repeat matches */
    FD_LZ_P_HIGH = FD_LZ_P_RLEN + 72,                           /* lengths 18-145 of both coders */
    FD_LZ_P_SLOT = FD_LZ_P_HIGH + (1 << FD_LZ_LEN_HIGH_BITS),   /* [ctx][32] */
    FD_LZ_P_FOOT = FD_LZ_P_SLOT + (FD_LZ_DIST_CTX << FD_LZ_SLOT_BITS), /* slots 4..9 */
    FD_LZ_P_ALIGN = FD_LZ_P_FOOT + 24,                          /* [16] */
    FD_LZ_P_LANES = FD_LZ_P_ALIGN + (1 << FD_LZ_ALIGN_BITS),    /* 449: then each lane's own */
    /* Each lane's own, at FD_LZ_P_LANES + lane * FD_LZ_P_LANE. */
    FD_LZ_P_MATCH = 0,                                          /* [state][pos & 3] */
    FD_LZ_P_LIT = FD_LZ_P_MATCH + (FD_LZ_STATES << FD_LZ_POS_BITS), /* literal tree [1..255] */
    FD_LZ_P_LANE = FD_LZ_P_LIT + 0x100                          /* 292 */
};
/* Probabilities of a stream of n lanes. */
#define FD_LZ_NPROBS(n) (FD_LZ_P_LANES + (n) * FD_LZ_P_LANE)
/* Inside a length coder: choice[4], choice2[4], low[4][8], mid[4][8]; the
 * high tree is shared. */
#define FD_LZ_L_CHOICE2 4
#define FD_LZ_L_LOW 8
#define FD_LZ_L_MID 40

/* One lane's LZ state. */
typedef struct {
    uint8_t *win;
    uint32_t pos;  /* bytes decoded, modulo 2^32 (only the low bits index the window) */
    uint32_t fill; /* bytes of the window holding decoded data */
    uint32_t mask; /* window size - 1 */
    uint32_t rep;  /* distance of the last match; 0 before the first */
    uint16_t left; /* bytes of the current match still to produce */
    uint8_t state;
} fd_lz_lane;

/* Decoder state; treat as opaque. It points into the work memory. */
typedef struct {
    uint16_t *prob;
    uint8_t *in;
    fd_lz_read_fn read;
    void *user;
    uint32_t range;
    uint32_t code;
    uint16_t in_pos;
    uint16_t in_len;
    uint8_t lanes;
    uint8_t pad; /* zero bytes supplied past the end of the stream */
    uint8_t eof;
    int8_t err;  /* first error; sticky */
    fd_lz_lane lane[FD_LZ_MAX_LANES];
} fd_lz_dec;

/* Work memory for a stream of nlanes lanes (1..FD_LZ_MAX_LANES) with these
 * window logs (each FD_LZ_WINDOW_LOG_MIN..MAX), 0 if out of range:
 * FD_LZ_INBUF + 2 * FD_LZ_NPROBS(nlanes) + the sum of 2^window_log bytes. */
size_t fd_lz_work_size(unsigned nlanes, const uint8_t *window_logs);

/* Reads the stream header through read(), checks that the model and windows
 * fit work_len bytes of work (which must be 2-byte aligned and hold at least
 * the input buffer and a one-lane model, else FD_LZ_EPARAM) and primes the
 * range decoder. */
int fd_lz_init(fd_lz_dec *d, void *work, size_t work_len, fd_lz_read_fn read, void *user);

/* Produces exactly n more bytes of the lane at out, or returns an error (which
 * every later call returns again). out may be NULL only when n is 0. */
int fd_lz_decode(fd_lz_dec *d, unsigned lane, uint8_t *out, size_t n);

/* After the last fd_lz_decode: checks that no match is half done and that the
 * stream holds no further bytes. */
int fd_lz_finish(fd_lz_dec *d);

#endif
