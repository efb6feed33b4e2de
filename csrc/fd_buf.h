/* Growable byte buffer and LEB128 varints, shared by the host-side encoders. */
#ifndef FD_BUF_H
#define FD_BUF_H

#include <stddef.h>
#include <stdint.h>

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

static inline uint64_t fd_zigzag(int64_t v)
{
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static inline int64_t fd_unzigzag(uint64_t v)
{
    return (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
}

#endif
