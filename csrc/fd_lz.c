/* Device-side decoder of the MCU LZ codec (format: docs/mcu-codec.md).
 * Written for small code: one bit decoder, one tree walker, and a main loop
 * that produces one byte per step so a match can stop and resume anywhere. */
#include "fd_lz.h"

/* The range coder may ask for up to this many bytes past the end of the
 * stream; the encoder leaves out trailing zero bytes and the decoder supplies
 * them. */
#define PAD_MAX 4

size_t fd_lz_work_size(unsigned window_log)
{
    if (window_log < FD_LZ_WINDOW_LOG_MIN || window_log > FD_LZ_WINDOW_LOG_MAX)
        return 0;
    return 2 * (size_t)FD_LZ_NPROBS + FD_LZ_INBUF + ((size_t)1 << window_log);
}

static void fail(fd_lz_dec *d, int code)
{
    if (!d->err)
        d->err = (int8_t)code;
}

/* Next stream byte; past the end, zero bytes (at most PAD_MAX of them before
 * that counts as truncation). Failures are recorded in d->err. */
static uint32_t in_byte(fd_lz_dec *d)
{
    if (d->in_pos == d->in_len) {
        size_t got = 0;
        d->in_pos = d->in_len = 0;
        if (!d->eof && (d->read(d->user, d->in, FD_LZ_INBUF, &got) || got > FD_LZ_INBUF)) {
            fail(d, FD_LZ_EIO);
            got = 0;
        }
        if (!got) {
            d->eof = 1;
            if (d->pad < 255 && ++d->pad > PAD_MAX)
                fail(d, FD_LZ_ETRUNCATED);
            return 0;
        }
        d->in_len = (uint16_t)got;
    }
    return d->in[d->in_pos++];
}

/* One bit with adaptive probability *p (of a 0); renormalizes afterwards so
 * that the decoder has read exactly as many bytes as the encoder wrote. */
static unsigned get_bit(fd_lz_dec *d, uint16_t *p)
{
    uint32_t bound = (d->range >> FD_LZ_PROB_BITS) * *p;
    unsigned bit = d->code >= bound;

    if (bit) {
        d->code -= bound;
        d->range -= bound;
        *p = (uint16_t)(*p - (*p >> FD_LZ_PROB_SHIFT));
    } else {
        d->range = bound;
        *p = (uint16_t)(*p + ((FD_LZ_PROB_ONE - *p) >> FD_LZ_PROB_SHIFT));
    }
    while (d->range < ((uint32_t)1 << 24)) {
        d->range <<= 8;
        d->code = (d->code << 8) | in_byte(d);
    }
    return bit;
}

/* n bits through a binary tree of probabilities p[1 .. 2^n - 1]. Returns the
 * value read most significant bit first, or, with rev, least significant
 * first. */
static uint32_t get_tree(fd_lz_dec *d, uint16_t *p, unsigned n, int rev)
{
    uint32_t m = 1, v = 0;
    unsigned i;

    for (i = 0; i < n; i++) {
        unsigned bit = get_bit(d, p + m);
        m = (m << 1) | bit;
        v |= (uint32_t)bit << i;
    }
    return rev ? v : m - ((uint32_t)1 << n);
}

/* Match length: 2-9, 10-17 (3-bit trees per position context) or 18-145. */
static unsigned get_len(fd_lz_dec *d, uint16_t *l, unsigned ps)
{
    unsigned base = FD_LZ_MIN_MATCH, n = 3;
    uint16_t *t = l + FD_LZ_L_LOW + 8 * ps;

    if (get_bit(d, l + ps)) {
        base += 8;
        t += FD_LZ_L_MID - FD_LZ_L_LOW;
        if (get_bit(d, l + FD_LZ_L_CHOICE2 + ps)) {
            base += 8;
            n = FD_LZ_LEN_HIGH_BITS;
            t = l + FD_LZ_L_HIGH;
        }
    }
    return base + get_tree(d, t, n, 0);
}

static uint32_t get_dist(fd_lz_dec *d, unsigned len)
{
    uint16_t *p = d->prob;
    unsigned ctx = len < 5 ? len - 2 : 3;
    unsigned slot = get_tree(d, p + FD_LZ_P_SLOT + (ctx << FD_LZ_SLOT_BITS), FD_LZ_SLOT_BITS, 0);
    unsigned n;
    uint32_t dist;

    if (slot < 4)
        return slot + 1;
    n = (slot >> 1) - 1;
    dist = (2u | (slot & 1)) << n;
    if (slot < FD_LZ_FOOT_END) {
        dist += get_tree(d, p + FD_LZ_P_FOOT + dist - slot, n, 1);
    } else {
        uint32_t direct = 0;
        for (n -= FD_LZ_ALIGN_BITS; n; n--) {
            uint16_t half = FD_LZ_PROB_ONE / 2; /* fixed, never adapted */
            direct = (direct << 1) | get_bit(d, &half);
        }
        dist += (direct << FD_LZ_ALIGN_BITS) + get_tree(d, p + FD_LZ_P_ALIGN, FD_LZ_ALIGN_BITS, 1);
    }
    return dist + 1;
}

int fd_lz_init(fd_lz_dec *d, void *work, size_t work_len, fd_lz_read_fn read, void *user)
{
    uint8_t *w = (uint8_t *)work;
    unsigned i, wlog;
    size_t need;

    if (!d)
        return FD_LZ_EPARAM;
    d->code = d->pos = d->fill = d->mask = d->rep = 0;
    d->left = d->in_pos = d->in_len = 0;
    d->state = d->pad = d->eof = 0;
    d->err = FD_LZ_EPARAM; /* until the arguments pass; later calls then just fail */
    if (!w || !read || ((uintptr_t)w & 1) || work_len < 2 * FD_LZ_NPROBS + FD_LZ_INBUF)
        return d->err;
    d->err = FD_LZ_OK;
    d->prob = (uint16_t *)work;
    d->in = w + 2 * FD_LZ_NPROBS;
    d->win = d->in + FD_LZ_INBUF;
    d->read = read;
    d->user = user;
    d->range = 0xFFFFFFFFu;

    wlog = in_byte(d);
    if (d->pad)
        fail(d, FD_LZ_ETRUNCATED);
    need = fd_lz_work_size(wlog);
    if (!need)
        fail(d, FD_LZ_ECORRUPT);
    else if (need > work_len)
        fail(d, FD_LZ_EWINDOW);
    if (d->err)
        return d->err;
    d->mask = ((uint32_t)1 << wlog) - 1;
    for (i = 0; i < FD_LZ_NPROBS; i++)
        d->prob[i] = FD_LZ_PROB_ONE / 2;
    for (i = 0; i < 4; i++)
        d->code = (d->code << 8) | in_byte(d);
    return d->err;
}

int fd_lz_decode(fd_lz_dec *d, uint8_t *out, size_t n)
{
    uint16_t *p = d->prob;

    while (n && !d->err) {
        uint32_t b;

        if (!d->left) {
            unsigned s = d->state, ps = d->pos & ((1u << FD_LZ_POS_BITS) - 1), len;

            if (!get_bit(d, p + FD_LZ_P_MATCH + (s << FD_LZ_POS_BITS) + ps)) {
                /* Literal. Right after a match its bits are coded against the
                 * byte at the match distance, until the first differing bit. */
                uint16_t *lit = p + FD_LZ_P_LIT;
                uint32_t sym = 1, off = 0, mb = 0;
                if (s >= FD_LZ_LIT_STATES) {
                    off = 0x100;
                    mb = d->win[(d->pos - d->rep) & d->mask];
                }
                while (sym < 0x100) {
                    uint32_t mbit = (mb >> 7) & 1, bit;
                    mb <<= 1;
                    bit = get_bit(d, lit + sym + (off ? off + (mbit << 8) : 0));
                    sym = (sym << 1) | bit;
                    if (bit != mbit)
                        off = 0;
                }
                b = sym & 0xFF;
                d->state = (uint8_t)(s < 3 ? 0 : s < 7 ? s - 2 : s - 4);
                goto put;
            }
            if (get_bit(d, p + FD_LZ_P_REP + s)) {
                len = get_len(d, p + FD_LZ_P_RLEN, ps);
                d->state = s < FD_LZ_LIT_STATES ? 6 : 8;
            } else {
                len = get_len(d, p + FD_LZ_P_MLEN, ps);
                d->rep = get_dist(d, len);
                d->state = s < FD_LZ_LIT_STATES ? 5 : 7;
            }
            if (d->err)
                break;
            if (d->rep - 1 >= d->fill) {
                fail(d, FD_LZ_ECORRUPT);
                break;
            }
            d->left = (uint16_t)len;
        }
        b = d->win[(d->pos - d->rep) & d->mask];
        d->left--;
put:
        d->win[d->pos & d->mask] = (uint8_t)b;
        d->pos++;
        if (d->fill <= d->mask)
            d->fill++;
        *out++ = (uint8_t)b;
        n--;
    }
    return d->err;
}

int fd_lz_finish(fd_lz_dec *d)
{
    if (!d->err && (d->left || d->in_pos != d->in_len))
        fail(d, FD_LZ_ECORRUPT);
    if (!d->err && !d->eof) {
        size_t got = 0;
        if (d->read(d->user, d->in, FD_LZ_INBUF, &got))
            fail(d, FD_LZ_EIO);
        else if (got)
            fail(d, FD_LZ_ECORRUPT);
        d->eof = 1;
    }
    return d->err;
}
