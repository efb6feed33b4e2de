#include "fd_buf.h"

#include <stdlib.h>
#include <string.h>

void fd_buf_free(fd_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static int reserve(fd_buf *b, size_t extra)
{
    size_t want = b->len + extra, cap = b->cap ? b->cap : 256;
    uint8_t *p;

    if (b->failed)
        return 0;
    if (want <= b->cap)
        return 1;
    while (cap < want)
        cap *= 2;
    p = realloc(b->data, cap);
    if (!p) {
        b->failed = 1;
        return 0;
    }
    b->data = p;
    b->cap = cap;
    return 1;
}

void fd_buf_append(fd_buf *b, const uint8_t *src, size_t n)
{
    if (n && reserve(b, n)) {
        memcpy(b->data + b->len, src, n);
        b->len += n;
    }
}

void fd_buf_byte(fd_buf *b, uint8_t v)
{
    if (reserve(b, 1))
        b->data[b->len++] = v;
}

void fd_buf_varint(fd_buf *b, uint64_t v)
{
    uint8_t tmp[10];
    size_t n = 0;

    while (v >= 0x80) {
        tmp[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    tmp[n++] = (uint8_t)v;
    fd_buf_append(b, tmp, n);
}

int fd_read_varint(const uint8_t **at, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        uint8_t b;
        if (*at == end)
            return -1;
        b = *(*at)++;
        *v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80))
            return 0;
    }
    return -1;
}
