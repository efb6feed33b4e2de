/* Host-side encoder of the MCU LZ codec: binary-tree match finder over the
 * bounded window, price-driven forward parse (a shortest path over the next few
 * thousand bytes with the coder's current bit costs), and a range coder that
 * mirrors fd_lz.c bit for bit. Format: docs/mcu-codec.md.
 *
 * Each lane is parsed on its own, a few thousand bytes ahead, into a queue of
 * operations; the queues are encoded in the order the decoder will meet them:
 * an operation when the caller's turns first ask for its first byte. */
#include "fd_lz_enc.h"

#include <stdlib.h>
#include <string.h>

#define MIN_MATCH FD_LZ_MIN_MATCH
#define MAX_MATCH FD_LZ_MAX_MATCH
#define POS_MASK ((1u << FD_LZ_POS_BITS) - 1)

/* Parser and match finder effort. */
#ifndef OPT_SPAN
#define OPT_SPAN 4096      /* bytes one parse step may look ahead */
#endif
#ifndef NICE_LEN
#define NICE_LEN MAX_MATCH /* a match this long is taken without weighing others */
#endif
#ifndef CHAIN_DEPTH
#define CHAIN_DEPTH 48     /* tree nodes visited per position */
#endif
#ifndef PRICE_REFRESH
#define PRICE_REFRESH 64   /* operations between refreshes of the length/distance price tables */
#endif
#ifndef GOOD_LEN
#define GOOD_LEN 24        /* once a match this long is found, search a quarter as deep */
#endif
#ifndef HASH3_BITS
#define HASH3_BITS 15
#endif

#define NO_REP UINT32_MAX /* no match yet: never usable as a repeat distance */
#define INFINITE_COST UINT32_MAX

enum { K_LIT, K_MATCH, K_REP };

/* ---- range encoder ------------------------------------------------------ */

typedef struct {
    uint64_t low; /* 32 bits plus a carry bit */
    uint32_t range;
    uint8_t cache;     /* last byte not yet written (a carry may still reach it) */
    int have_cache;    /* the decoder does not see the always-zero first byte */
    size_t ff_run;     /* 0xFF bytes after cache, also waiting for a carry */
    fd_buf *out;
} rc_enc;

static void rc_shift(rc_enc *e)
{
    if ((uint32_t)e->low < 0xFF000000u || (e->low >> 32)) {
        uint8_t carry = (uint8_t)(e->low >> 32);
        if (e->have_cache)
            fd_buf_byte(e->out, (uint8_t)(e->cache + carry));
        for (; e->ff_run; e->ff_run--)
            fd_buf_byte(e->out, (uint8_t)(0xFF + carry));
        e->cache = (uint8_t)(e->low >> 24);
        e->have_cache = 1;
    } else {
        e->ff_run++;
    }
    e->low = (e->low & 0x00FFFFFFu) << 8;
}

static inline void rc_bit(rc_enc *e, uint16_t *p, unsigned bit)
{
    uint32_t bound = (e->range >> FD_LZ_PROB_BITS) * *p;

    if (bit) {
        e->low += bound;
        e->range -= bound;
        *p = (uint16_t)(*p - (*p >> FD_LZ_PROB_SHIFT));
    } else {
        e->range = bound;
        *p = (uint16_t)(*p + ((FD_LZ_PROB_ONE - *p) >> FD_LZ_PROB_SHIFT));
    }
    while (e->range < (1u << 24)) {
        e->range <<= 8;
        rc_shift(e);
    }
}

/* Ends the stream with the value in [low, low + range) that has the most
 * trailing zero bytes, then drops up to 4 trailing zero bytes: the decoder
 * reads them as padding. */
static void rc_flush(rc_enc *e, size_t start)
{
    uint64_t end = e->low + e->range;
    int k;

    for (k = 4; k > 0; k--) {
        uint64_t mask = ((uint64_t)1 << (8 * k)) - 1;
        uint64_t v = (e->low + mask) & ~mask;
        if (v < end) {
            e->low = v;
            break;
        }
    }
    for (k = 0; k < 5; k++)
        rc_shift(e);
    for (k = 0; k < 4 && e->out->len > start && e->out->data[e->out->len - 1] == 0; k++)
        e->out->len--;
}

/* ---- encoder state -------------------------------------------------------- */

typedef struct {
    int32_t len;
    uint32_t dist;
} match;

/* A parse node: the cheapest known way to reach this many bytes past the
 * start of the step. The step into it is one operation (kind, len, dist), or
 * that operation followed by an optional literal (mid) and a repeat match of
 * len2 bytes. */
typedef struct {
    uint32_t dist;
    uint32_t rep; /* repeat distance after the step (set when the node is expanded) */
    uint16_t from;
    uint16_t len;
    uint16_t len2;
    uint8_t kind;
    uint8_t mid;
    uint8_t state;
} node;

/* One lane: its bytes, match finder, and parse and encode positions. */
typedef struct {
    const uint8_t *src;
    size_t n;
    uint32_t wsize;
    uint16_t *match; /* its literal/match flags, [state][pos & 3] */
    uint16_t *lit;   /* its literal tree */
    uint32_t *lit_path_price; /* its literal tree: price from the root to each node, at the last refresh */
    int lit_changed;          /* a literal was encoded since (its tree's probabilities moved) */

    /* state and repeat distance after the operations parsed so far (state,
     * rep) and after those encoded so far (enc_state, enc_rep) */
    unsigned state, enc_state;
    uint32_t rep, enc_rep;
    size_t encoded;    /* bytes covered by the encoded operations */
    size_t requested;  /* bytes the turns so far ask for */
    node *queue;       /* parsed, not yet encoded */
    size_t queue_head, queue_len;

    /* match finder */
    int32_t *head3; /* tree root (newest position) per 3-byte hash */
    int32_t *head2; /* newest position of each 2-byte string */
    int32_t *chain; /* tree children, [2 * (position & (wsize - 1)) + 0/1] */
    size_t next_insert;
    size_t found_pos; /* position whose matches are in found[] */
    int found_count;
    match found[MAX_MATCH + 1];
} enc_lane;

typedef struct {
    uint16_t prob[FD_LZ_NPROBS(FD_LZ_MAX_LANES)];
    rc_enc rc;

    /* prices, in 1/16 bit */
    uint32_t bit_price[256]; /* of a 0 bit, by probability >> 4 */
    uint32_t len_price[2][1u << FD_LZ_POS_BITS][MAX_MATCH + 1];
    uint32_t slot_price[FD_LZ_DIST_CTX][1u << FD_LZ_SLOT_BITS];
    uint32_t near_price[FD_LZ_DIST_CTX][32]; /* whole distance price for dist - 1 < 32 */
    uint32_t align_price[1u << FD_LZ_ALIGN_BITS];
    uint32_t lit_path_price[FD_LZ_MAX_LANES][0x200];
    unsigned ops_since_refresh;
    /* Tables whose probabilities moved since the last refresh: only those are priced again. */
    int len_changed, dist_changed;

    node *opt;
    uint32_t *cost; /* cost[i]: of opt[i], kept apart for the length loops */
    node *path;
    enc_lane lane[FD_LZ_MAX_LANES];
} lz_enc;

/* ---- prices ---------------------------------------------------------------- */

/* -log2(x / 4096) in 1/16 bit, for 1 <= x < 4096, in integer arithmetic. */
static uint32_t neg_log2_price(uint32_t x)
{
    unsigned k = 0, i;
    uint64_t y;
    uint32_t frac = 0, log2x;

    while ((x >> k) > 1)
        k++;
    y = ((uint64_t)x << 30) >> k; /* x / 2^k in [1, 2), 30 fraction bits */
    for (i = 0; i < 8; i++) {
        y = (y * y) >> 30;
        frac <<= 1;
        if (y >= ((uint64_t)1 << 31)) {
            y >>= 1;
            frac |= 1;
        }
    }
    log2x = (k << 8) | frac;
    return ((FD_LZ_PROB_BITS << 8) - log2x + 8) >> 4;
}

static uint32_t price0(const lz_enc *z, uint16_t p)
{
    return z->bit_price[p >> 4];
}

static uint32_t price1(const lz_enc *z, uint16_t p)
{
    return z->bit_price[(FD_LZ_PROB_ONE - p) >> 4];
}

static uint32_t price_bit(const lz_enc *z, uint16_t p, unsigned bit)
{
    return bit ? price1(z, p) : price0(z, p);
}

static uint32_t price_rtree(const lz_enc *z, const uint16_t *p, unsigned n, uint32_t v)
{
    uint32_t m = 1, price = 0;

    while (n--) {
        unsigned bit = v & 1;
        v >>= 1;
        price += price_bit(z, p[m], bit);
        m = (m << 1) | bit;
    }
    return price;
}

/* Prices of every value of an n-bit tree (n <= 7): out[v] for v < 2^n. */
static void tree_prices(const lz_enc *z, const uint16_t *p, unsigned n, uint32_t *out)
{
    uint32_t acc[256];
    uint32_t m;

    acc[1] = 0;
    for (m = 1; m < (1u << n); m++) {
        acc[2 * m] = acc[m] + price0(z, p[m]);
        acc[2 * m + 1] = acc[m] + price1(z, p[m]);
    }
    for (m = 0; m < (1u << n); m++)
        out[m] = acc[(1u << n) + m];
}

static unsigned dist_slot(uint32_t d) /* d = distance - 1 */
{
    unsigned n;

    if (d < 4)
        return d;
#if defined(__GNUC__)
    n = 31 - (unsigned)__builtin_clz(d);
#else
    for (n = 0; (d >> n) > 1; n++)
        ;
#endif
    return 2 * n + ((d >> (n - 1)) & 1);
}

static unsigned dist_ctx(unsigned len)
{
    return len < 5 ? len - 2 : 3;
}

static void refresh_prices(lz_enc *z)
{
    unsigned c, ps, len, s, l;
    uint32_t d, high[1u << FD_LZ_LEN_HIGH_BITS];

    if (z->len_changed)
        tree_prices(z, z->prob + FD_LZ_P_HIGH, FD_LZ_LEN_HIGH_BITS, high);
    for (c = 0; c < 2 && z->len_changed; c++) {
        const uint16_t *l = z->prob + (c ? FD_LZ_P_RLEN : FD_LZ_P_MLEN);
        uint32_t t[8];
        for (ps = 0; ps <= POS_MASK; ps++) {
            uint32_t *out = z->len_price[c][ps];
            uint32_t c0 = price0(z, l[ps]), c1 = price1(z, l[ps]);
            uint32_t c10 = c1 + price0(z, l[FD_LZ_L_CHOICE2 + ps]);
            uint32_t c11 = c1 + price1(z, l[FD_LZ_L_CHOICE2 + ps]);
            tree_prices(z, l + FD_LZ_L_LOW + 8 * ps, 3, t);
            for (len = 0; len < 8; len++)
                out[MIN_MATCH + len] = c0 + t[len];
            tree_prices(z, l + FD_LZ_L_MID + 8 * ps, 3, t);
            for (len = 0; len < 8; len++)
                out[MIN_MATCH + 8 + len] = c10 + t[len];
            for (len = 0; len < (1u << FD_LZ_LEN_HIGH_BITS); len++)
                out[MIN_MATCH + 16 + len] = c11 + high[len];
        }
    }
    for (l = 0; l < FD_LZ_MAX_LANES; l++) {
        uint32_t *path = z->lit_path_price[l];
        const uint16_t *lit = z->prob + FD_LZ_P_LANES + l * FD_LZ_P_LANE + FD_LZ_P_LIT;
        if (!z->lane[l].lit_changed)
            continue;
        z->lane[l].lit_changed = 0;
        path[1] = 0;
        for (c = 1; c < 0x100; c++) {
            path[2 * c] = path[c] + price0(z, lit[c]);
            path[2 * c + 1] = path[c] + price1(z, lit[c]);
        }
    }
    for (c = 0; c < FD_LZ_DIST_CTX && z->dist_changed; c++) {
        tree_prices(z, z->prob + FD_LZ_P_SLOT + (c << FD_LZ_SLOT_BITS), FD_LZ_SLOT_BITS, z->slot_price[c]);
        for (d = 0; d < 32; d++) {
            uint32_t price;
            s = dist_slot(d);
            price = z->slot_price[c][s];
            if (s >= 4) {
                unsigned n = (s >> 1) - 1;
                uint32_t base = (2u | (s & 1)) << n;
                price += price_rtree(z, z->prob + FD_LZ_P_FOOT + base - s, n, d - base);
            }
            z->near_price[c][d] = price;
        }
    }
    for (d = 0; d < (1u << FD_LZ_ALIGN_BITS) && z->dist_changed; d++)
        z->align_price[d] = price_rtree(z, z->prob + FD_LZ_P_ALIGN, FD_LZ_ALIGN_BITS, d);
    z->ops_since_refresh = 0;
    z->len_changed = z->dist_changed = 0;
}

static uint32_t dist_price(const lz_enc *z, uint32_t dist, unsigned ctx)
{
    uint32_t d = dist - 1;
    unsigned s, n;

    if (d < 32)
        return z->near_price[ctx][d];
    s = dist_slot(d);
    n = (s >> 1) - 1;
    return z->slot_price[ctx][s] + 16 * (n - FD_LZ_ALIGN_BITS) +
           z->align_price[d & ((1u << FD_LZ_ALIGN_BITS) - 1)];
}

/* Literal price: the lane's literal tree as of the last refresh. */
static uint32_t lit_price(const enc_lane *L, unsigned c)
{
    return L->lit_path_price[0x100 | c];
}

/* ---- coder state ------------------------------------------------------------ */

static unsigned next_state(unsigned s, unsigned kind)
{
    if (kind == K_LIT)
        return s < 3 ? 0 : s < 7 ? s - 2 : s - 4;
    if (kind == K_MATCH)
        return s < FD_LZ_LIT_STATES ? 5 : 7;
    return s < FD_LZ_LIT_STATES ? 6 : 8;
}

/* ---- bit writers ------------------------------------------------------------- */

static void put_tree(lz_enc *z, uint16_t *p, unsigned n, uint32_t v)
{
    uint32_t m = 1;

    while (n--) {
        unsigned bit = (v >> n) & 1;
        rc_bit(&z->rc, p + m, bit);
        m = (m << 1) | bit;
    }
}

static void put_rtree(lz_enc *z, uint16_t *p, unsigned n, uint32_t v)
{
    uint32_t m = 1;

    while (n--) {
        unsigned bit = v & 1;
        v >>= 1;
        rc_bit(&z->rc, p + m, bit);
        m = (m << 1) | bit;
    }
}

static void put_len(lz_enc *z, uint16_t *l, unsigned len, unsigned ps)
{
    unsigned v = len - MIN_MATCH;

    rc_bit(&z->rc, l + ps, v >= 8);
    if (v < 8) {
        put_tree(z, l + FD_LZ_L_LOW + 8 * ps, 3, v);
        return;
    }
    rc_bit(&z->rc, l + FD_LZ_L_CHOICE2 + ps, v >= 16);
    if (v < 16)
        put_tree(z, l + FD_LZ_L_MID + 8 * ps, 3, v - 8);
    else
        put_tree(z, z->prob + FD_LZ_P_HIGH, FD_LZ_LEN_HIGH_BITS, v - 16);
}

static void put_dist(lz_enc *z, uint32_t dist, unsigned len)
{
    uint32_t d = dist - 1, base;
    unsigned s = dist_slot(d), n;

    put_tree(z, z->prob + FD_LZ_P_SLOT + (dist_ctx(len) << FD_LZ_SLOT_BITS), FD_LZ_SLOT_BITS, s);
    if (s < 4)
        return;
    n = (s >> 1) - 1;
    base = (2u | (s & 1)) << n;
    if (s < FD_LZ_FOOT_END) {
        put_rtree(z, z->prob + FD_LZ_P_FOOT + base - s, n, d - base);
    } else {
        uint32_t direct = (d - base) >> FD_LZ_ALIGN_BITS;
        for (n -= FD_LZ_ALIGN_BITS; n; n--) {
            uint16_t half = FD_LZ_PROB_ONE / 2;
            rc_bit(&z->rc, &half, (direct >> (n - 1)) & 1);
        }
        put_rtree(z, z->prob + FD_LZ_P_ALIGN, FD_LZ_ALIGN_BITS, (d - base) & ((1u << FD_LZ_ALIGN_BITS) - 1));
    }
}

/* Encodes the lane's next queued operation: a literal, a match (len, dist) or
 * a repeat match of len bytes at the last distance. */
static void put_op(lz_enc *z, enc_lane *L)
{
    const node *o = &L->queue[L->queue_head++];
    unsigned s = L->enc_state, kind = o->kind, len = o->len, ps = (unsigned)L->encoded & POS_MASK;

    rc_bit(&z->rc, L->match + (s << FD_LZ_POS_BITS) + ps, kind != K_LIT);
    if (kind == K_LIT) {
        put_tree(z, L->lit, 8, L->src[L->encoded]);
        L->lit_changed = 1;
    } else {
        z->len_changed = 1;
        z->dist_changed |= kind == K_MATCH;
        rc_bit(&z->rc, z->prob + FD_LZ_P_REP + s, kind == K_REP);
        if (kind == K_REP) {
            put_len(z, z->prob + FD_LZ_P_RLEN, len, ps);
        } else {
            put_len(z, z->prob + FD_LZ_P_MLEN, len, ps);
            put_dist(z, o->dist, len);
            L->enc_rep = o->dist;
        }
    }
    z->ops_since_refresh++;
    L->enc_state = next_state(s, kind);
    L->encoded += len;
}

/* ---- match finder ---------------------------------------------------------------- */

static uint32_t hash3(const uint8_t *p)
{
    return (((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16) * 2654435761u) >> (32 - HASH3_BITS);
}

/* Binary search tree match finder. The positions sharing a 3-byte hash form a
 * tree ordered by the bytes that follow them (up to MAX_MATCH), rooted at the
 * newest; each position is inserted as the new root by splitting the tree
 * along the path that searching for it walks, which is also where its longest
 * matches are. Children are indexed by position & (wsize - 1); positions
 * wsize or more back count as empty. With record = 0 the position is only
 * inserted. */
static void bt_walk(enc_lane *L, size_t pos, int record)
{
    const uint8_t *cur = L->src + pos;
    size_t avail = L->n - pos, best = 1, len_lo = 0, len_hi = 0;
    uint32_t mask = L->wsize - 1;
    int32_t *lo, *hi, c;
    int count = 0, depth = CHAIN_DEPTH;

    if (avail > MAX_MATCH)
        avail = MAX_MATCH;
    if (avail < 2) {
        L->found_count = 0;
        return;
    }
    c = L->head2[cur[0] | cur[1] << 8];
    L->head2[cur[0] | cur[1] << 8] = (int32_t)pos;
    if (record && c >= 0 && pos - (size_t)c <= L->wsize) {
        best = 2 + fd_match_len(cur + 2, L->src + c + 2, avail - 2);
        L->found[count].len = (int32_t)best;
        L->found[count++].dist = (uint32_t)(pos - (size_t)c);
    }
    if (avail < 3) {
        L->found_count = count;
        return;
    }
    {
        uint32_t h = hash3(cur);
        c = L->head3[h];
        L->head3[h] = (int32_t)pos;
    }
    /* lo collects the subtree of strings below ours, hi those above it. */
    lo = &L->chain[2 * (pos & mask)];
    hi = lo + 1;
    for (;;) {
        const uint8_t *q;
        int32_t *kids;
        size_t l;
        /* Distance wsize would alias our own slot: the tree ends one short. */
        if (c < 0 || pos - (size_t)c >= L->wsize || depth-- <= 0) {
            *lo = *hi = -1;
            break;
        }
        q = L->src + c;
        kids = &L->chain[2 * ((size_t)c & mask)];
        l = len_lo < len_hi ? len_lo : len_hi;
        l += fd_match_len(cur + l, q + l, avail - l);
        if (l > best) {
            if (l >= GOOD_LEN && best < GOOD_LEN)
                depth >>= 2;
            best = l;
            if (record) {
                L->found[count].len = (int32_t)l;
                L->found[count++].dist = (uint32_t)(pos - (size_t)c);
            }
        }
        if (l >= avail) { /* equal as far as we can see: take over its subtrees */
            *lo = kids[0];
            *hi = kids[1];
            break;
        }
        if (q[l] < cur[l]) {
            *lo = c;
            lo = &kids[1];
            c = *lo;
            len_lo = l;
        } else {
            *hi = c;
            hi = &kids[0];
            c = *hi;
            len_hi = l;
        }
    }
    L->found_count = count;
}

static void mf_find(enc_lane *L, size_t pos)
{
    while (L->next_insert < pos)
        bt_walk(L, L->next_insert++, 0);
    bt_walk(L, pos, 1);
    L->found_pos = pos;
    L->next_insert = pos + 1;
}

/* ---- parser ------------------------------------------------------------------------ */

static void set_node(lz_enc *z, unsigned at, uint32_t cost, unsigned from, unsigned kind, unsigned len, uint32_t dist,
                     unsigned mid, unsigned len2)
{
    node *t = &z->opt[at];

    z->cost[at] = cost;
    t->from = (uint16_t)from;
    t->kind = (uint8_t)kind;
    t->len = (uint16_t)len;
    t->dist = dist;
    t->mid = (uint8_t)mid;
    t->len2 = (uint16_t)len2;
}

static void extend(lz_enc *z, unsigned *reach, unsigned to)
{
    while (*reach < to)
        z->cost[++*reach] = INFINITE_COST;
}

/* After an operation that ends at q (node at), with state s, cost base and
 * repeat distance rep: try a literal at q followed by a repeat match, the
 * pattern of a single changed byte inside a repeated run. */
static void try_lit_rep(lz_enc *z, const enc_lane *L, size_t q, unsigned at, unsigned s, uint32_t rep,
                        uint32_t base, unsigned from, unsigned kind, unsigned len, uint32_t dist, unsigned *reach)
{
    const uint8_t *src = L->src;
    size_t avail, l;
    unsigned s2, ps2;
    uint32_t cost;

    if (at + 1 + MIN_MATCH > OPT_SPAN || q + 3 > L->n || rep > q || src[q] == src[q - rep])
        return;
    avail = L->n - q - 1;
    if (avail > MAX_MATCH)
        avail = MAX_MATCH;
    if (avail > OPT_SPAN - at - 1)
        avail = OPT_SPAN - at - 1;
    l = fd_match_len(src + q + 1, src + q + 1 - rep, avail);
    if (l < MIN_MATCH)
        return;
    s2 = next_state(s, K_LIT);
    ps2 = (unsigned)(q + 1) & POS_MASK;
    cost = base + price0(z, L->match[(s << FD_LZ_POS_BITS) + ((unsigned)q & POS_MASK)]) +
           lit_price(L, src[q]) +
           price1(z, L->match[(s2 << FD_LZ_POS_BITS) + ps2]) +
           price1(z, z->prob[FD_LZ_P_REP + s2]) + z->len_price[1][ps2][l];
    extend(z, reach, at + 1 + (unsigned)l);
    if (cost < z->cost[at + 1 + l])
        set_node(z, at + 1 + (unsigned)l, cost, from, kind, len, dist, kind != K_LIT, (unsigned)l);
}

/* Chooses the operations for the lane's next bytes and queues them (the queue
 * must be empty). */
static void parse_step(lz_enc *z, enc_lane *L)
{
    const uint8_t *src = L->src;
    const size_t pos = L->encoded;
    node *opt = z->opt;
    unsigned cur, reach = 0, end = 0, np = 0, i;

    z->cost[0] = 0;
    opt[0].state = (uint8_t)L->state;
    opt[0].rep = L->rep;
    for (cur = 0;; cur++) {
        node *nd = &opt[cur];
        size_t p = pos + cur, avail;
        unsigned s, ps, longest, rep_len = 0;
        uint32_t base, rep, avail_dist, match_base;
        int j;

        if (cur > 0) {
            const node *fr = &opt[nd->from];
            s = next_state(fr->state, nd->kind);
            nd->rep = nd->kind == K_MATCH ? nd->dist : fr->rep;
            if (nd->mid)
                s = next_state(s, K_LIT);
            if (nd->len2)
                s = next_state(s, K_REP);
            nd->state = (uint8_t)s;
            if (cur >= reach || p >= L->n || cur >= OPT_SPAN) {
                end = reach > cur ? reach : cur;
                break;
            }
        }
        if (L->found_pos != p)
            mf_find(L, p);
        s = nd->state;
        rep = nd->rep;
        ps = (unsigned)p & POS_MASK;
        avail = L->n - p;
        if (avail > MAX_MATCH)
            avail = MAX_MATCH;
        avail_dist = p < L->wsize ? (uint32_t)p : L->wsize;
        if (rep <= avail_dist)
            rep_len = (unsigned)fd_match_len(src + p, src + p - rep, avail);
        longest = L->found_count ? (unsigned)L->found[L->found_count - 1].len : 0;

        if (longest >= NICE_LEN || rep_len >= NICE_LEN) {
            if (cur > 0) { /* start the next step with it */
                end = cur;
                break;
            }
            if (rep_len >= longest)
                set_node(z, rep_len, 0, 0, K_REP, rep_len, 0, 0, 0);
            else
                set_node(z, longest, 0, 0, K_MATCH, longest, L->found[L->found_count - 1].dist, 0, 0);
            end = rep_len >= longest ? rep_len : longest;
            break;
        }
        if (avail > OPT_SPAN - cur)
            avail = OPT_SPAN - cur;
        base = z->cost[cur];
        extend(z, &reach, cur + 1);

        /* literal, and literal + repeat match */
        {
            uint32_t c = base + price0(z, L->match[(s << FD_LZ_POS_BITS) + ps]) + lit_price(L, src[p]);
            if (c < z->cost[cur + 1])
                set_node(z, cur + 1, c, cur, K_LIT, 1, 0, 0, 0);
            if (rep <= avail_dist)
                try_lit_rep(z, L, p, cur, s, rep, base, cur, K_LIT, 1, 0, &reach);
        }
        match_base = base + price1(z, L->match[(s << FD_LZ_POS_BITS) + ps]);

        /* repeat match, every length, then + literal + repeat */
        if (rep_len > avail)
            rep_len = (unsigned)avail;
        if (rep_len >= MIN_MATCH) {
            uint32_t rb = match_base + price1(z, z->prob[FD_LZ_P_REP + s]);
            unsigned k;
            extend(z, &reach, cur + rep_len);
            for (k = MIN_MATCH; k <= rep_len; k++) {
                uint32_t c = rb + z->len_price[1][ps][k];
                if (c < z->cost[cur + k])
                    set_node(z, cur + k, c, cur, K_REP, k, 0, 0, 0);
            }
            try_lit_rep(z, L, p + rep_len, cur + rep_len, next_state(s, K_REP), rep,
                        rb + z->len_price[1][ps][rep_len], cur, K_REP, rep_len, 0, &reach);
        }

        /* new matches, every length at the nearest distance, then + literal + repeat */
        {
            uint32_t mb0 = match_base + price0(z, z->prob[FD_LZ_P_REP + s]);
            unsigned k = MIN_MATCH;
            for (j = 0; j < L->found_count; j++) {
                unsigned l = (unsigned)L->found[j].len;
                uint32_t dist = L->found[j].dist, dp[FD_LZ_DIST_CTX];
                unsigned c4;
                if (l > avail)
                    l = (unsigned)avail;
                if (l < k)
                    continue;
                for (c4 = 0; c4 < FD_LZ_DIST_CTX; c4++)
                    dp[c4] = mb0 + dist_price(z, dist, c4);
                extend(z, &reach, cur + l);
                for (; k <= l; k++) {
                    uint32_t c = dp[dist_ctx(k)] + z->len_price[0][ps][k];
                    if (c < z->cost[cur + k])
                        set_node(z, cur + k, c, cur, K_MATCH, k, dist, 0, 0);
                }
                if (j == L->found_count - 1)
                    try_lit_rep(z, L, p + l, cur + l, next_state(s, K_MATCH), dist,
                                dp[dist_ctx(l)] + z->len_price[0][ps][l], cur, K_MATCH, l, dist, &reach);
            }
        }
    }

    /* Walk back from the end, expanding compound steps, then encode forwards. */
    for (i = end; i > 0; i = opt[i].from) {
        const node *o = &opt[i];
        node *t;
        if (o->len2) {
            t = &z->path[np++];
            t->kind = K_REP;
            t->len = o->len2;
        }
        if (o->mid) {
            t = &z->path[np++];
            t->kind = K_LIT;
            t->len = 1;
        }
        t = &z->path[np++];
        t->kind = o->kind;
        t->len = o->len;
        t->dist = o->dist;
    }
    L->queue_head = L->queue_len = 0;
    while (np--) {
        const node *o = &z->path[np];
        L->queue[L->queue_len++] = *o;
        if (o->kind == K_MATCH)
            L->rep = o->dist;
        L->state = next_state(L->state, o->kind);
    }
}

/* Encodes the lane's queued operations up to byte `to`, parsing more as needed. */
static void encode_to(lz_enc *z, enc_lane *L, size_t to)
{
    while (L->encoded < to) {
        if (L->queue_head == L->queue_len) {
            if (z->ops_since_refresh >= PRICE_REFRESH)
                refresh_prices(z);
            parse_step(z, L);
        }
        put_op(z, L);
    }
}

#define SPAN_NODES (OPT_SPAN + 2 * MAX_MATCH + 4)     /* parse nodes of one step */
#define PATH_NODES (2 * OPT_SPAN + 2 * MAX_MATCH + 4) /* operations one step may choose */

int fd_lz_compress_lanes(const fd_lz_lane_src *lanes, unsigned nlanes, const uint32_t *turns, size_t nturns,
                         size_t limit, fd_buf *out)
{
    lz_enc *z;
    uint64_t asked[FD_LZ_MAX_LANES] = {0};
    size_t first, start, t;
    unsigned i;
    int rc = FD_LZ_OK;

    if (!lanes || nlanes < 1 || nlanes > FD_LZ_MAX_LANES || (nturns && !turns))
        return FD_LZ_EPARAM;
    for (t = 0; t < nturns; t++)
        asked[t % nlanes] += turns[t];
    for (i = 0; i < nlanes; i++) {
        uint8_t wlog = (uint8_t)lanes[i].window_log;
        if (lanes[i].window_log != wlog || !fd_lz_work_size(1, &wlog) || (!lanes[i].data && lanes[i].len) ||
            lanes[i].len > INT32_MAX || asked[i] != lanes[i].len)
            return FD_LZ_EPARAM;
    }
    z = calloc(1, sizeof *z);
    if (!z)
        return FD_LZ_ENOMEM;
    z->opt = malloc(sizeof(node) * SPAN_NODES);
    z->cost = malloc(sizeof(uint32_t) * SPAN_NODES);
    z->path = malloc(sizeof(node) * PATH_NODES);
    if (!z->opt || !z->cost || !z->path)
        rc = FD_LZ_ENOMEM;
    for (i = 0; i < nlanes && !rc; i++) {
        enc_lane *L = &z->lane[i];
        L->src = lanes[i].data;
        L->n = lanes[i].len;
        L->wsize = 1u << lanes[i].window_log;
        L->match = z->prob + FD_LZ_P_LANES + i * FD_LZ_P_LANE + FD_LZ_P_MATCH;
        L->lit = z->prob + FD_LZ_P_LANES + i * FD_LZ_P_LANE + FD_LZ_P_LIT;
        L->lit_path_price = z->lit_path_price[i];
        L->rep = L->enc_rep = NO_REP;
        L->found_pos = (size_t)-1;
        L->head3 = malloc(sizeof(int32_t) << HASH3_BITS);
        L->head2 = malloc(sizeof(int32_t) << 16);
        L->chain = malloc(sizeof(int32_t) * 2 * L->wsize);
        L->queue = malloc(sizeof(node) * PATH_NODES);
        if (!L->head3 || !L->head2 || !L->chain || !L->queue) {
            rc = FD_LZ_ENOMEM;
            break;
        }
        memset(L->head3, 0xFF, sizeof(int32_t) << HASH3_BITS);
        memset(L->head2, 0xFF, sizeof(int32_t) << 16);
    }
    if (rc)
        goto done;
    for (i = 0; i < 256; i++)
        z->bit_price[i] = neg_log2_price(i ? i << 4 | 8 : 8);
    for (i = 0; i < FD_LZ_NPROBS(FD_LZ_MAX_LANES); i++)
        z->prob[i] = FD_LZ_PROB_ONE / 2;
    for (i = 0; i < FD_LZ_MAX_LANES; i++)
        z->lane[i].lit_changed = 1;
    z->len_changed = z->dist_changed = 1;
    z->rc.range = 0xFFFFFFFFu;
    z->rc.out = out;

    first = out->len;
    /* Header: lanes - 1 above lane 0's window log, then the other window logs. */
    fd_buf_byte(out, (uint8_t)(lanes[0].window_log | (nlanes - 1) << 5));
    for (i = 1; i < nlanes; i++)
        fd_buf_byte(out, (uint8_t)lanes[i].window_log);
    start = out->len;
    refresh_prices(z);
    for (t = 0; t < nturns; t++) {
        enc_lane *L = &z->lane[t % nlanes];
        L->requested += turns[t];
        encode_to(z, L, L->requested);
        /* Bytes out stay (a carry changes their value, not their number), but for up to 4
         * zeros rc_flush may drop at the end. */
        if (limit && out->len - first > limit + 4) {
            rc = FD_LZ_ELIMIT;
            goto done;
        }
    }
    rc_flush(&z->rc, start);
    if (out->failed)
        rc = FD_LZ_ENOMEM;
    else if (limit && out->len - first > limit)
        rc = FD_LZ_ELIMIT;
done:
    for (i = 0; i < nlanes; i++) {
        free(z->lane[i].head3);
        free(z->lane[i].head2);
        free(z->lane[i].chain);
        free(z->lane[i].queue);
    }
    free(z->opt);
    free(z->cost);
    free(z->path);
    free(z);
    return rc;
}

int fd_lz_compress(const uint8_t *src, size_t len, unsigned window_log, fd_buf *out)
{
    fd_lz_lane_src lane;
    uint32_t turn = (uint32_t)len;

    if (len > INT32_MAX)
        return FD_LZ_EPARAM;
    lane.data = src;
    lane.len = len;
    lane.window_log = window_log;
    return fd_lz_compress_lanes(&lane, 1, &turn, len ? 1 : 0, 0, out);
}

const char *fd_lz_strerror(int code)
{
    switch (code) {
    case FD_LZ_OK:
        return "ok";
    case FD_LZ_ETRUNCATED:
        return "compressed stream is truncated";
    case FD_LZ_ECORRUPT:
        return "compressed stream is corrupt";
    case FD_LZ_EIO:
        return "read callback failed";
    case FD_LZ_EPARAM:
        return "invalid argument";
    case FD_LZ_EWINDOW:
        return "stream window does not fit the work memory";
    case FD_LZ_ENOMEM:
        return "out of memory";
    case FD_LZ_ELIMIT:
        return "the stream would be longer than the limit";
    default:
        return "unknown error";
    }
}
