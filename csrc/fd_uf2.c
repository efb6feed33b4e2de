#include "fd_uf2.h"

#include <string.h>

#define MAGIC_START0 0x0A324655u
#define MAGIC_START1 0x9E5D5157u
#define MAGIC_END 0x0AB16F30u
#define OP_RUN 0
#define OP_BLOCK 1
/* The header words after the two magic words: flags, address, payload size,
 * block number, block count, family; the prediction changes only these. */
#define HEADER_WORDS 6
#define W_ADDR 1
#define W_SIZE 2
#define W_NUMBER 3

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}

/* The header words the block after one with these words is expected to have. */
static void predict(uint32_t w[HEADER_WORDS])
{
    w[W_ADDR] += w[W_SIZE];
    w[W_NUMBER] += 1;
}

static void start(uint32_t w[HEADER_WORDS])
{
    memset(w, 0, HEADER_WORDS * sizeof *w);
    w[W_NUMBER] = UINT32_MAX;
}

static int zeros(const uint8_t *p, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (p[k])
            return 0;
    return 1;
}

static void flush_run(uint64_t *count, fd_buf *layout)
{
    if (*count) {
        fd_buf_byte(layout, OP_RUN);
        fd_buf_varint(layout, *count);
    }
    *count = 0;
}

int fd_uf2_split(const uint8_t *image, size_t len, fd_buf *payload, fd_buf *layout)
{
    uint32_t expected[HEADER_WORDS];
    uint64_t run = 0;

    if (len == 0 || len % FD_UF2_BLOCK)
        return FD_UF2_ENOTUF2;
    start(expected);
    for (size_t at = 0; at < len; at += FD_UF2_BLOCK) {
        const uint8_t *b = image + at;
        uint32_t w[HEADER_WORDS];
        if (get32(b) != MAGIC_START0 || get32(b + 4) != MAGIC_START1 || get32(b + FD_UF2_BLOCK - 4) != MAGIC_END ||
            get32(b + 16) > FD_UF2_DATA)
            return FD_UF2_ENOTUF2;
        for (unsigned k = 0; k < HEADER_WORDS; k++)
            w[k] = get32(b + 8 + 4 * k);
        predict(expected);
        fd_buf_append(payload, b + 32, w[W_SIZE]);
        if (!memcmp(w, expected, sizeof w) && zeros(b + 32 + w[W_SIZE], FD_UF2_DATA - w[W_SIZE])) {
            run++;
        } else {
            flush_run(&run, layout);
            fd_buf_byte(layout, OP_BLOCK);
            for (unsigned k = 0; k < HEADER_WORDS; k++)
                fd_buf_varint(layout, w[k]);
            fd_buf_append(layout, b + 32 + w[W_SIZE], FD_UF2_DATA - w[W_SIZE]);
            memcpy(expected, w, sizeof w);
        }
    }
    flush_run(&run, layout);
    return payload->failed || layout->failed ? FD_UF2_ENOMEM : FD_UF2_OK;
}

typedef struct {
    const uint8_t *at, *end;
} cursor;

static int read_varint(cursor *c, uint64_t *v)
{
    return fd_read_varint(&c->at, c->end, v) ? FD_UF2_ECORRUPT : FD_UF2_OK;
}

/* Writes the block of header words w, its payload (payload[at...]) and then
 * tail (or zeros when tail is NULL) at out. Nothing is read of an empty
 * payload, which may be NULL. */
static void put_block(uint8_t *out, const uint32_t w[HEADER_WORDS], const uint8_t *payload, size_t at,
                      const uint8_t *tail)
{
    put32(out, MAGIC_START0);
    put32(out + 4, MAGIC_START1);
    for (unsigned k = 0; k < HEADER_WORDS; k++)
        put32(out + 8 + 4 * k, w[k]);
    if (w[W_SIZE])
        memcpy(out + 32, payload + at, w[W_SIZE]);
    if (tail)
        memcpy(out + 32 + w[W_SIZE], tail, FD_UF2_DATA - w[W_SIZE]);
    else
        memset(out + 32 + w[W_SIZE], 0, FD_UF2_DATA - w[W_SIZE]);
    put32(out + FD_UF2_BLOCK - 4, MAGIC_END);
}

int fd_uf2_join(const uint8_t *payload, size_t payload_len, const uint8_t *layout, size_t layout_len, uint8_t *out,
                size_t image_len)
{
    cursor c = {layout, layout + layout_len};
    uint32_t w[HEADER_WORDS];
    size_t used = 0, pos = 0;
    int rc;

    if (image_len == 0 || image_len % FD_UF2_BLOCK)
        return FD_UF2_ECORRUPT;
    start(w);
    while (c.at < c.end) {
        uint8_t op = *c.at++;
        if (op == OP_RUN) {
            uint64_t count;
            if ((rc = read_varint(&c, &count)))
                return rc;
            if (count == 0 || count > (image_len - pos) / FD_UF2_BLOCK)
                return FD_UF2_ECORRUPT;
            for (uint64_t k = 0; k < count; k++) {
                predict(w);
                if (w[W_SIZE] > payload_len - used)
                    return FD_UF2_ECORRUPT;
                put_block(out + pos, w, payload, used, NULL);
                used += w[W_SIZE];
                pos += FD_UF2_BLOCK;
            }
        } else if (op == OP_BLOCK) {
            for (unsigned k = 0; k < HEADER_WORDS; k++) {
                uint64_t v;
                if ((rc = read_varint(&c, &v)))
                    return rc;
                if (v > UINT32_MAX)
                    return FD_UF2_ECORRUPT;
                w[k] = (uint32_t)v;
            }
            if (w[W_SIZE] > FD_UF2_DATA || w[W_SIZE] > payload_len - used ||
                FD_UF2_DATA - w[W_SIZE] > (size_t)(c.end - c.at) || pos == image_len)
                return FD_UF2_ECORRUPT;
            put_block(out + pos, w, payload, used, c.at);
            c.at += FD_UF2_DATA - w[W_SIZE];
            used += w[W_SIZE];
            pos += FD_UF2_BLOCK;
        } else {
            return FD_UF2_ECORRUPT;
        }
    }
    return used == payload_len && pos == image_len ? FD_UF2_OK : FD_UF2_ECORRUPT;
}
