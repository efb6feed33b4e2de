#include "fd_hex.h"

#include <string.h>

#define FLAG_CRLF 1
#define FLAG_LOWER 2
#define FLAG_NO_FINAL_EOL 4
#define OP_RUN 0
#define OP_AT 1
#define OP_OTHER 2
/* The shortest record: a colon and five bytes (count, address, type, checksum). */
#define RECORD_MIN_CHARS 11

/* Hex digit -> DIGIT_OK | case bit | value; 0 for any other character. A table
 * lookup per digit: the split reads every character of images of a few MB. */
#define DIGIT_OK 0x80
#define DIGIT_UPPER 0x10
#define DIGIT_LOWER 0x20
static const uint8_t HEX_DIGIT[256] = {
    ['0'] = DIGIT_OK | 0, ['1'] = DIGIT_OK | 1, ['2'] = DIGIT_OK | 2, ['3'] = DIGIT_OK | 3,
    ['4'] = DIGIT_OK | 4, ['5'] = DIGIT_OK | 5, ['6'] = DIGIT_OK | 6, ['7'] = DIGIT_OK | 7,
    ['8'] = DIGIT_OK | 8, ['9'] = DIGIT_OK | 9,
    ['A'] = DIGIT_OK | DIGIT_UPPER | 10, ['B'] = DIGIT_OK | DIGIT_UPPER | 11, ['C'] = DIGIT_OK | DIGIT_UPPER | 12,
    ['D'] = DIGIT_OK | DIGIT_UPPER | 13, ['E'] = DIGIT_OK | DIGIT_UPPER | 14, ['F'] = DIGIT_OK | DIGIT_UPPER | 15,
    ['a'] = DIGIT_OK | DIGIT_LOWER | 10, ['b'] = DIGIT_OK | DIGIT_LOWER | 11, ['c'] = DIGIT_OK | DIGIT_LOWER | 12,
    ['d'] = DIGIT_OK | DIGIT_LOWER | 13, ['e'] = DIGIT_OK | DIGIT_LOWER | 14, ['f'] = DIGIT_OK | DIGIT_LOWER | 15,
};

/* The run of data records being gathered: count records of len bytes. */
typedef struct {
    uint64_t count;
    unsigned len;
} run;

static void flush_run(run *r, fd_buf *layout)
{
    if (r->count) {
        fd_buf_byte(layout, OP_RUN);
        fd_buf_varint(layout, r->count);
        fd_buf_varint(layout, r->len);
    }
    r->count = 0;
}

int fd_hex_split(const uint8_t *text, size_t len, fd_buf *payload, fd_buf *layout)
{
    size_t pos = 0, flags_at = layout->len;
    unsigned cases = 0; /* DIGIT_UPPER and DIGIT_LOWER of the digits seen */
    int crlf = -1, last_eol = 1;
    unsigned expected = 0;
    run r = {0, 0};

    fd_buf_byte(layout, 0); /* the flags, filled in at the end */
    if (len == 0)
        return FD_HEX_ENOTHEX;
    while (pos < len) {
        uint8_t rec[5 + 255];
        size_t n;
        unsigned sum = 0, ok = DIGIT_OK, count, addr, type;
        if (text[pos++] != ':' || len - pos < 2)
            return FD_HEX_ENOTHEX;
        /* The record's length is its first byte: its digits are decoded in one loop,
         * checked once at the end (a line end or any other character is no digit). */
        n = 5u + (unsigned)((HEX_DIGIT[text[pos]] & 15) << 4 | (HEX_DIGIT[text[pos + 1]] & 15));
        if (len - pos < 2 * n)
            return FD_HEX_ENOTHEX;
        for (size_t k = 0; k < n; k++, pos += 2) {
            unsigned hi = HEX_DIGIT[text[pos]], lo = HEX_DIGIT[text[pos + 1]];
            ok &= hi & lo;
            cases |= hi | lo;
            rec[k] = (uint8_t)((hi & 15) << 4 | (lo & 15));
            sum += rec[k];
        }
        if (!ok || (sum & 0xFF) != 0 || (cases & (DIGIT_UPPER | DIGIT_LOWER)) == (DIGIT_UPPER | DIGIT_LOWER) ||
            (pos < len && text[pos] != '\r' && text[pos] != '\n'))
            return FD_HEX_ENOTHEX;
        /* The line end: the same everywhere, and only the last line may lack one. */
        if (pos == len) {
            last_eol = 0;
        } else {
            int is_crlf = text[pos] == '\r';
            if (is_crlf && (pos + 1 == len || text[pos + 1] != '\n'))
                return FD_HEX_ENOTHEX;
            if (crlf >= 0 && crlf != is_crlf)
                return FD_HEX_ENOTHEX;
            crlf = is_crlf;
            pos += is_crlf ? 2 : 1;
        }
        count = rec[0];
        addr = (unsigned)rec[1] << 8 | rec[2];
        type = rec[3];
        if (type == 0) {
            fd_buf_append(payload, rec + 4, count);
            if (addr == expected && r.count && r.len == count) {
                r.count++;
            } else {
                flush_run(&r, layout);
                if (addr == expected) {
                    r.count = 1;
                    r.len = count;
                } else {
                    fd_buf_byte(layout, OP_AT);
                    fd_buf_varint(layout, addr);
                    fd_buf_varint(layout, count);
                }
            }
            expected = (addr + count) & 0xFFFF;
        } else {
            flush_run(&r, layout);
            fd_buf_byte(layout, OP_OTHER);
            fd_buf_byte(layout, (uint8_t)type);
            fd_buf_varint(layout, addr);
            fd_buf_varint(layout, count);
            fd_buf_append(layout, rec + 4, count);
        }
    }
    flush_run(&r, layout);
    if (payload->failed || layout->failed)
        return FD_HEX_ENOMEM;
    layout->data[flags_at] = (uint8_t)((crlf == 1 ? FLAG_CRLF : 0) | (cases & DIGIT_LOWER ? FLAG_LOWER : 0) |
                                       (last_eol ? 0 : FLAG_NO_FINAL_EOL));
    return FD_HEX_OK;
}

typedef struct {
    const uint8_t *at;
    const uint8_t *end;
} cursor;

static int read_varint(cursor *c, uint64_t *v)
{
    return fd_read_varint(&c->at, c->end, v) ? FD_HEX_ECORRUPT : FD_HEX_OK;
}

typedef struct {
    uint8_t *out;
    size_t len;
    size_t pos;
    uint8_t digits[512]; /* the two digits of each byte value: one lookup a byte */
    int crlf;
    int records;
} writer;

static void put_byte(writer *w, unsigned b)
{
    memcpy(w->out + w->pos, w->digits + 2 * b, 2);
    w->pos += 2;
}

/* One record with its line end before it (all but the first record), its
 * count data bytes at data[at...] (nothing is read of data, which may be
 * NULL, for none). */
static int put_record(writer *w, unsigned type, unsigned addr, const uint8_t *data, size_t at, unsigned count)
{
    size_t need = (w->records ? (size_t)(w->crlf ? 2 : 1) : 0) + RECORD_MIN_CHARS + 2 * (size_t)count;
    unsigned sum = count + (addr >> 8) + (addr & 0xFF) + type;

    if (count > 255 || addr > 0xFFFF || need > w->len - w->pos)
        return FD_HEX_ECORRUPT;
    if (w->records++) {
        if (w->crlf)
            w->out[w->pos++] = '\r';
        w->out[w->pos++] = '\n';
    }
    w->out[w->pos++] = ':';
    put_byte(w, count);
    put_byte(w, addr >> 8);
    put_byte(w, addr & 0xFF);
    put_byte(w, type);
    for (unsigned k = 0; k < count; k++) {
        put_byte(w, data[at + k]);
        sum += data[at + k];
    }
    put_byte(w, (0x100 - (sum & 0xFF)) & 0xFF);
    return FD_HEX_OK;
}

int fd_hex_join(const uint8_t *payload, size_t payload_len, const uint8_t *layout, size_t layout_len, uint8_t *out,
                size_t text_len)
{
    cursor c = {layout, layout + layout_len};
    writer w;
    size_t used = 0;
    unsigned flags, expected = 0;
    const char *digits;
    int rc;

    if (layout_len == 0 || layout[0] > (FLAG_CRLF | FLAG_LOWER | FLAG_NO_FINAL_EOL))
        return FD_HEX_ECORRUPT;
    flags = *c.at++;
    memset(&w, 0, sizeof w);
    w.out = out;
    w.len = text_len;
    digits = flags & FLAG_LOWER ? "0123456789abcdef" : "0123456789ABCDEF";
    for (unsigned b = 0; b < 256; b++) {
        w.digits[2 * b] = (uint8_t)digits[b >> 4];
        w.digits[2 * b + 1] = (uint8_t)digits[b & 15];
    }
    w.crlf = flags & FLAG_CRLF;
    while (c.at < c.end) {
        uint64_t count, len, addr;
        uint8_t op = *c.at++;
        if (op == OP_RUN) {
            if ((rc = read_varint(&c, &count)) || (rc = read_varint(&c, &len)))
                return rc;
            if (len > 255)
                return FD_HEX_ECORRUPT;
            for (uint64_t k = 0; k < count; k++) {
                if (len > payload_len - used || (rc = put_record(&w, 0, expected, payload, used, (unsigned)len)))
                    return FD_HEX_ECORRUPT;
                used += len;
                expected = (expected + (unsigned)len) & 0xFFFF;
            }
        } else if (op == OP_AT) {
            if ((rc = read_varint(&c, &addr)) || (rc = read_varint(&c, &len)))
                return rc;
            if (addr > 0xFFFF || len > 255 || len > payload_len - used ||
                (rc = put_record(&w, 0, (unsigned)addr, payload, used, (unsigned)len)))
                return FD_HEX_ECORRUPT;
            used += len;
            expected = (unsigned)(addr + len) & 0xFFFF;
        } else if (op == OP_OTHER) {
            unsigned type;
            if (c.at == c.end)
                return FD_HEX_ECORRUPT;
            type = *c.at++;
            if ((rc = read_varint(&c, &addr)) || (rc = read_varint(&c, &len)))
                return rc;
            if (type == 0 || addr > 0xFFFF || len > 255 || len > (uint64_t)(c.end - c.at) ||
                (rc = put_record(&w, type, (unsigned)addr, c.at, 0, (unsigned)len)))
                return FD_HEX_ECORRUPT;
            c.at += len;
        } else {
            return FD_HEX_ECORRUPT;
        }
    }
    if (!(flags & FLAG_NO_FINAL_EOL) && w.records) {
        if ((size_t)(w.crlf ? 2 : 1) > w.len - w.pos)
            return FD_HEX_ECORRUPT;
        if (w.crlf)
            w.out[w.pos++] = '\r';
        w.out[w.pos++] = '\n';
    }
    return used == payload_len && w.pos == text_len && w.records ? FD_HEX_OK : FD_HEX_ECORRUPT;
}
