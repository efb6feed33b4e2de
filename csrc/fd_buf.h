/* Growable byte buffer, LEB128 varints and a match-length helper, shared by
 * the host-side encoders. */
#ifndef FD_BUF_H
#define FD_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
    int failed; /* set once an allocation fails; later appends are dropped */
} fd_buf;

void fd_buf_free(fd_buf *b);
void fd_buf_append(fd_buf *b, const uint8_t *src, size_t n);
void fd_buf_byte(fd_buf *b, uint8_t v);
void fd_buf_varint(fd_buf *b, uint64_t v);

/* Reads a LEB128 varint at *at (before end) into v and moves *at past it;
 * -1 when it runs past end or over ten bytes. */
int fd_read_varint(const uint8_t **at, const uint8_t *end, uint64_t *v);

static inline uint64_t fd_zigzag(int64_t v)
{
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

/* Bytes fd_buf_varint writes for v. */
static inline int fd_varint_len(uint64_t v)
{
    int n = 1;

    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline int64_t fd_unzigzag(uint64_t v)
{
    return (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
}

/* Length of the common prefix of a and b, at most limit bytes. */
static inline size_t fd_match_len(const uint8_t *a, const uint8_t *b, size_t limit)
{
    size_t i = 0;
#if defined(__GNUC__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (i + 8 <= limit) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y)
            return i + ((size_t)__builtin_ctzll(x ^ y) >> 3);
        i += 8;
    }
#endif
    while (i < limit && a[i] == b[i])
        i++;
    return i;
}

#endif
