/* Device-side decoder of the MCU LZ codec (format: docs/mcu-codec.md).
 * Written for small code: one bit decoder, one tree walker, and a main loop
 * that produces one byte per step so a match can stop and resume anywhere
 * (and the caller can switch lanes between any two bytes). */
#include "fd_lz.h"

/* The range coder may ask for up to this many bytes past the end of the
 * stream; the encoder leaves out trailing zero bytes and the decoder supplies
 * them. */
#define PAD_MAX 4

size_t fd_lz_work_size(unsigned nlanes, const uint8_t *window_logs)
{
    size_t need = FD_LZ_INBUF + 2 * (size_t)FD_LZ_NPROBS(nlanes);
    unsigned i;

    if (nlanes < 1 || nlanes > FD_LZ_MAX_LANES || !window_logs)
        return 0;
    for (i = 0; i < nlanes; i++) {
        if (window_logs[i] < FD_LZ_WINDOW_LOG_MIN || window_logs[i] > FD_LZ_WINDOW_LOG_MAX)
            return 0;
        need += (size_t)1 << window_logs[i];
    }
    return need;
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
            t = d->prob + FD_LZ_P_HIGH;
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
    uint8_t *w = (uint8_t *)work, logs[FD_LZ_MAX_LANES];
    unsigned i, first, lanes;
    size_t need;

    if (!d)
        return FD_LZ_EPARAM;
    /* Field by field: a struct copy may become a memset call, and the
     * decoder makes no library calls. */
    for (i = 0; i < FD_LZ_MAX_LANES; i++) {
        fd_lz_lane *c = d->lane + i;
        c->win = 0;
        c->pos = c->fill = c->mask = c->rep = 0;
        c->left = 0;
        c->state = 0;
    }
    d->code = 0;
    d->in_pos = d->in_len = 0;
    d->lanes = d->pad = d->eof = 0;
    d->err = FD_LZ_EPARAM; /* until the arguments pass; later calls then just fail */
    if (!w || !read || ((uintptr_t)w & 1) || work_len < FD_LZ_INBUF + 2 * FD_LZ_NPROBS(1))
        return d->err;
    d->err = FD_LZ_OK;
    /* Work memory: input buffer, probabilities (their number depends on the
     * lanes the header names), windows. */
    d->in = w;
    d->prob = (uint16_t *)(void *)(w + FD_LZ_INBUF);
    d->read = read;
    d->user = user;
    d->range = 0xFFFFFFFFu;

    /* Header: lanes - 1 in bits 5-7 and lane 0's window log in bits 0-4 of
     * the first byte, then one byte per further lane. */
    first = in_byte(d);
    lanes = (first >> 5) + 1;
    logs[0] = (uint8_t)(first & 0x1F);
    for (i = 1; i < lanes && i < FD_LZ_MAX_LANES; i++)
        logs[i] = (uint8_t)in_byte(d);
    if (d->pad)
        fail(d, FD_LZ_ETRUNCATED);
    need = lanes <= FD_LZ_MAX_LANES ? fd_lz_work_size(lanes, logs) : 0;
    if (!need)
        fail(d, FD_LZ_ECORRUPT);
    else if (need > work_len)
        fail(d, FD_LZ_EWINDOW);
    if (d->err)
        return d->err;
    d->lanes = (uint8_t)lanes; /* only now: later calls index lanes by it */
    w = (uint8_t *)(d->prob + FD_LZ_NPROBS(lanes));
    for (i = 0; i < d->lanes; i++) {
        d->lane[i].win = w;
        d->lane[i].mask = ((uint32_t)1 << logs[i]) - 1;
        w += (size_t)1 << logs[i];
    }
    for (i = 0; i < FD_LZ_NPROBS(lanes); i++)
        d->prob[i] = FD_LZ_PROB_ONE / 2;
    for (i = 0; i < 4; i++)
        d->code = (d->code << 8) | in_byte(d);
    return d->err;
}

int fd_lz_decode(fd_lz_dec *d, unsigned lane, uint8_t *out, size_t n)
{
    uint16_t *p = d->prob, *own;
    fd_lz_lane *c;

    if (lane >= d->lanes) {
        fail(d, FD_LZ_EPARAM);
        return d->err;
    }
    c = d->lane + lane;
    own = p + FD_LZ_P_LANES + lane * FD_LZ_P_LANE;
    while (n && !d->err) {
        uint32_t b;

        if (!c->left) {
            unsigned s = c->state, ps = c->pos & ((1u << FD_LZ_POS_BITS) - 1), len;

            if (!get_bit(d, own + FD_LZ_P_MATCH + (s << FD_LZ_POS_BITS) + ps)) {
                /* Literal, from the lane's own tree. */
                b = get_tree(d, own + FD_LZ_P_LIT, 8, 0);
                c->state = (uint8_t)(s < 3 ? 0 : s < 7 ? s - 2 : s - 4);
                goto put;
            }
            if (get_bit(d, p + FD_LZ_P_REP + s)) {
                len = get_len(d, p + FD_LZ_P_RLEN, ps);
                c->state = s < FD_LZ_LIT_STATES ? 6 : 8;
            } else {
                len = get_len(d, p + FD_LZ_P_MLEN, ps);
                c->rep = get_dist(d, len);
                c->state = s < FD_LZ_LIT_STATES ? 5 : 7;
            }
            if (d->err)
                break;
            if (c->rep - 1 >= c->fill) {
                fail(d, FD_LZ_ECORRUPT);
                break;
            }
            c->left = (uint16_t)len;
        }
        b = c->win[(c->pos - c->rep) & c->mask];
        c->left--;
put:
        c->win[c->pos & c->mask] = (uint8_t)b;
        c->pos++;
        if (c->fill <= c->mask)
            c->fill++;
        *out++ = (uint8_t)b;
        n--;
    }
    return d->err;
}

int fd_lz_finish(fd_lz_dec *d)
{
    unsigned i;

    for (i = 0; i < d->lanes; i++)
        if (d->lane[i].left)
            fail(d, FD_LZ_ECORRUPT);
    if (d->in_pos != d->in_len)
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
