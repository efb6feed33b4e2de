/* LZMA size estimate: one greedy parse (with a step of lazy matching), priced
 * with LZMA's adaptive models for each shape. The models follow the LZMA
 * format: 11-bit probabilities moved by 1/32 per coded bit, a 12-state machine
 * over literals, matches, repeat matches and short repeats, length coders per
 * position state, distance slots per length state with reverse-coded low
 * bits, and literals coded against the byte at the last distance after a
 * match. Prices are in 1/16 bit, from -log2 of the probability. */
#include "fd_est.h"

#include "fd_buf.h"

#include <stdlib.h>
#include <string.h>

#define PROB_BITS 11
#define PROB_ONE (1u << PROB_BITS)
#define MOVE_BITS 5
#define PRICE_SHIFT 4 /* prices in 1/16 bit */
#define PRICE_SLOTS (PROB_ONE >> PRICE_SHIFT)
#define STATES 12
#define POS_STATES_MAX 16
#define MATCH_MIN 2
#define MATCH_MAX 273
#define DIST_STATES 4
#define DIST_SLOT_BITS 6
#define DIST_MODEL_END 14
#define SPECIAL_PROBS 124 /* reverse trees of slots 4..13: 2, 2, 4, 4, 8, 8, 16, 16, 32, 32 */
#define ALIGN_BITS 4
#define LITERAL_PROBS 0x300
/* The match finder: per 3-byte hash, a bucket of the last WAYS positions
 * (one cache line: following hash chains was three times slower for
 * estimates within 1% of the same); a search stops at a match this long.
 * The buckets hold an entry per TABLE_DIV input bytes: at two entries per
 * byte the table (8 bytes per input byte, 1-2 MB for the streams of small
 * diffs) missed the cache on nearly every position; a quarter of that made
 * the estimates 25-35% faster, within 0.5% of the same. */
#define WAYS 8
#define TABLE_DIV 2
#define NICE_LEN 96
#define HASH_BITS_MIN 8
#define HASH_BITS_MAX 17
/* A 3-byte match this far away costs about what its literals do. */
#define FAR_3 (1u << 14)

typedef uint16_t prob;

/* -log2((k + 0.5) / PRICE_SLOTS) in 1/16 bit: the price of a bit whose
 * probability is in slot k. */
static const uint16_t prices[PRICE_SLOTS] = {
    128, 103, 91, 83, 77, 73, 69, 65, 63, 60, 58, 56, 54, 52, 50, 49,
    47, 46, 45, 43, 42, 41, 40, 39, 38, 37, 36, 35, 35, 34, 33, 32,
    32, 31, 30, 30, 29, 28, 28, 27, 27, 26, 25, 25, 24, 24, 23, 23,
    22, 22, 21, 21, 21, 20, 20, 19, 19, 18, 18, 18, 17, 17, 17, 16,
    16, 15, 15, 15, 14, 14, 14, 13, 13, 13, 12, 12, 12, 12, 11, 11,
    11, 10, 10, 10, 10, 9, 9, 9, 9, 8, 8, 8, 7, 7, 7, 7,
    7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4, 4, 3, 3,
    3, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 0, 0, 0,
};

typedef struct {
    prob choice;
    prob choice2;
    prob low[POS_STATES_MAX][8];
    prob mid[POS_STATES_MAX][8];
    prob high[256];
} len_model;

typedef struct {
    unsigned lc, lp, pb;
    prob is_match[STATES][POS_STATES_MAX];
    prob is_rep[STATES];
    prob is_rep0[STATES];
    prob is_rep1[STATES];
    prob is_rep2[STATES];
    prob is_rep0_long[STATES][POS_STATES_MAX];
    prob dist_slot[DIST_STATES][1 << DIST_SLOT_BITS];
    prob dist_special[SPECIAL_PROBS];
    prob dist_align[1 << ALIGN_BITS];
    len_model match_len;
    len_model rep_len;
    prob *lit;
    uint64_t price;
} model;

/* What the parser decided at one position. */
enum { TOKEN_LITERAL, TOKEN_SHORT_REP, TOKEN_REP, TOKEN_MATCH };

typedef struct {
    int kind;
    unsigned len;
    unsigned rep;  /* TOKEN_REP: which repeat distance */
    uint32_t dist; /* TOKEN_MATCH: distance - 1 */
} token;

typedef struct {
    const uint8_t *data;
    size_t len;
    unsigned special_off[DIST_MODEL_END];
    int32_t *buckets; /* WAYS positions per hash, newest first, -1 for none */
    uint32_t hash_mask;
    size_t inserted; /* positions below this are in the chains */
    size_t found_at; /* the last find_match: its position + 1 (0: none), length, distance */
    unsigned found_len;
    uint32_t found_dist;
    unsigned state;
    uint32_t reps[4];
    model *models;
    unsigned nmodels;
} est;

static void probs_init(prob *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = PROB_ONE / 2;
}

static void model_init(model *m)
{
    prob *lit = m->lit;
    unsigned lc = m->lc, lp = m->lp, pb = m->pb;
    size_t n = (size_t)LITERAL_PROBS << (lc + lp);

    memset(m, 0, sizeof *m);
    m->lc = lc;
    m->lp = lp;
    m->pb = pb;
    m->lit = lit;
    probs_init(&m->is_match[0][0], sizeof m->is_match / sizeof(prob));
    probs_init(m->is_rep, STATES);
    probs_init(m->is_rep0, STATES);
    probs_init(m->is_rep1, STATES);
    probs_init(m->is_rep2, STATES);
    probs_init(&m->is_rep0_long[0][0], sizeof m->is_rep0_long / sizeof(prob));
    probs_init(&m->dist_slot[0][0], sizeof m->dist_slot / sizeof(prob));
    probs_init(m->dist_special, SPECIAL_PROBS);
    probs_init(m->dist_align, 1 << ALIGN_BITS);
    probs_init((prob *)&m->match_len, sizeof m->match_len / sizeof(prob));
    probs_init((prob *)&m->rep_len, sizeof m->rep_len / sizeof(prob));
    probs_init(lit, n);
}

static uint32_t bit_price(prob p, unsigned bit)
{
    return prices[(bit ? PROB_ONE - p : p) >> PRICE_SHIFT];
}

static void code_bit(model *m, prob *p, unsigned bit)
{
    m->price += bit_price(*p, bit);
    if (bit)
        *p = (prob)(*p - (*p >> MOVE_BITS));
    else
        *p = (prob)(*p + ((PROB_ONE - *p) >> MOVE_BITS));
}

/* Most significant bit first, through the nodes of a binary tree. */
static void code_tree(model *m, prob *probs, unsigned nbits, unsigned sym)
{
    unsigned node = 1;
    for (unsigned i = nbits; i-- > 0;) {
        unsigned bit = (sym >> i) & 1;
        code_bit(m, &probs[node], bit);
        node = (node << 1) | bit;
    }
}

/* Least significant bit first. */
static void code_reverse(model *m, prob *probs, unsigned nbits, unsigned sym)
{
    unsigned node = 1;
    for (unsigned i = 0; i < nbits; i++) {
        unsigned bit = (sym >> i) & 1;
        code_bit(m, &probs[node], bit);
        node = (node << 1) | bit;
    }
}

static void code_len(model *m, len_model *lm, unsigned len, unsigned pos_state)
{
    len -= MATCH_MIN;
    if (len < 8) {
        code_bit(m, &lm->choice, 0);
        code_tree(m, lm->low[pos_state], 3, len);
    } else if (len < 16) {
        code_bit(m, &lm->choice, 1);
        code_bit(m, &lm->choice2, 0);
        code_tree(m, lm->mid[pos_state], 3, len - 8);
    } else {
        code_bit(m, &lm->choice, 1);
        code_bit(m, &lm->choice2, 1);
        code_tree(m, lm->high, 8, len - 16);
    }
}

static unsigned dist_slot(uint32_t dist)
{
    unsigned n = 0;
    if (dist < 4)
        return dist;
    while ((dist >> n) > 1)
        n++;
    return (n << 1) | ((dist >> (n - 1)) & 1);
}

static void code_dist(const est *e, model *m, uint32_t dist, unsigned len)
{
    unsigned len_state = len - MATCH_MIN < DIST_STATES - 1 ? len - MATCH_MIN : DIST_STATES - 1;
    unsigned slot = dist_slot(dist);

    code_tree(m, m->dist_slot[len_state], DIST_SLOT_BITS, slot);
    if (slot >= 4) {
        unsigned footer = (slot >> 1) - 1;
        uint32_t rest = dist - ((2u | (slot & 1)) << footer);
        if (slot < DIST_MODEL_END) {
            code_reverse(m, m->dist_special + e->special_off[slot], footer, rest);
        } else {
            m->price += (uint64_t)(footer - ALIGN_BITS) << PRICE_SHIFT; /* direct bits */
            code_reverse(m, m->dist_align, ALIGN_BITS, rest & ((1u << ALIGN_BITS) - 1));
        }
    }
}

static prob *literal_probs(const est *e, const model *m, size_t i)
{
    unsigned prev = i ? e->data[i - 1] : 0;
    size_t ctx = ((i & ((1u << m->lp) - 1)) << m->lc) + (prev >> (8 - m->lc));
    return m->lit + LITERAL_PROBS * ctx;
}

/* A literal, coded against the byte at the last distance right after a match. */
static void code_literal(const est *e, model *m, size_t i)
{
    prob *probs = literal_probs(e, m, i);
    unsigned byte = e->data[i];

    if (e->state < 7) {
        code_tree(m, probs, 8, byte);
        return;
    }
    {
        unsigned match = e->data[i - e->reps[0] - 1], node = 1;
        int k = 8;
        while (k-- > 0) {
            unsigned match_bit = (match >> k) & 1, bit = (byte >> k) & 1;
            code_bit(m, &probs[((1 + match_bit) << 8) + node], bit);
            node = (node << 1) | bit;
            if (match_bit != bit)
                break;
        }
        while (k-- > 0) {
            unsigned bit = (byte >> k) & 1;
            code_bit(m, &probs[node], bit);
            node = (node << 1) | bit;
        }
    }
}

/* Price of a literal at i in the first model, without coding it. */
static uint32_t literal_price(const est *e, size_t i)
{
    const model *m = &e->models[0];
    const prob *probs = literal_probs(e, m, i);
    unsigned byte = e->data[i], node = 1, matched = e->state >= 7;
    unsigned match = matched ? e->data[i - e->reps[0] - 1] : 0;
    uint32_t price = bit_price(m->is_match[e->state][i & ((1u << m->pb) - 1)], 0);
    int k = 8;

    while (matched && k-- > 0) {
        unsigned match_bit = (match >> k) & 1, bit = (byte >> k) & 1;
        price += bit_price(probs[((1 + match_bit) << 8) + node], bit);
        node = (node << 1) | bit;
        if (match_bit != bit)
            break;
    }
    while (k-- > 0) {
        unsigned bit = (byte >> k) & 1;
        price += bit_price(probs[node], bit);
        node = (node << 1) | bit;
    }
    return price;
}

static uint32_t short_rep_price(const est *e, size_t i)
{
    const model *m = &e->models[0];
    unsigned s = e->state, ps = (unsigned)(i & ((1u << m->pb) - 1));
    return bit_price(m->is_match[s][ps], 1) + bit_price(m->is_rep[s], 1) + bit_price(m->is_rep0[s], 0) +
           bit_price(m->is_rep0_long[s][ps], 0);
}

static void code_token(est *e, model *m, size_t i, const token *t)
{
    unsigned s = e->state, ps = (unsigned)(i & ((1u << m->pb) - 1));

    if (t->kind == TOKEN_LITERAL) {
        code_bit(m, &m->is_match[s][ps], 0);
        code_literal(e, m, i);
        return;
    }
    code_bit(m, &m->is_match[s][ps], 1);
    if (t->kind == TOKEN_MATCH) {
        code_bit(m, &m->is_rep[s], 0);
        code_len(m, &m->match_len, t->len, ps);
        code_dist(e, m, t->dist, t->len);
        return;
    }
    code_bit(m, &m->is_rep[s], 1);
    if (t->kind == TOKEN_SHORT_REP || t->rep == 0) {
        code_bit(m, &m->is_rep0[s], 0);
        code_bit(m, &m->is_rep0_long[s][ps], t->kind == TOKEN_REP);
    } else {
        code_bit(m, &m->is_rep0[s], 1);
        code_bit(m, &m->is_rep1[s], t->rep > 1);
        if (t->rep > 1)
            code_bit(m, &m->is_rep2[s], t->rep > 2);
    }
    if (t->kind == TOKEN_REP)
        code_len(m, &m->rep_len, t->len, ps);
}

static void next_state(est *e, const token *t)
{
    unsigned s = e->state;

    switch (t->kind) {
    case TOKEN_LITERAL:
        e->state = s < 4 ? 0 : s < 10 ? s - 3 : s - 6;
        break;
    case TOKEN_MATCH:
        e->state = s < 7 ? 7 : 10;
        e->reps[3] = e->reps[2];
        e->reps[2] = e->reps[1];
        e->reps[1] = e->reps[0];
        e->reps[0] = t->dist;
        break;
    case TOKEN_REP: {
        uint32_t d = e->reps[t->rep];
        for (unsigned r = t->rep; r > 0; r--)
            e->reps[r] = e->reps[r - 1];
        e->reps[0] = d;
        e->state = s < 7 ? 8 : 11;
        break;
    }
    default: /* TOKEN_SHORT_REP */
        e->state = s < 7 ? 9 : 11;
        break;
    }
}

static uint32_t hash3(const uint8_t *p, uint32_t mask)
{
    return (((uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2]) * 2654435761u >> 8) & mask;
}

static unsigned common(const uint8_t *a, const uint8_t *b, unsigned limit)
{
    return (unsigned)fd_match_len(a, b, limit);
}

/* Adds positions below `to` to the hash chains. */
static void insert_until(est *e, size_t to)
{
    if (to + 3 > e->len)
        to = e->len >= 3 ? e->len - 2 : 0;
    for (size_t p = e->inserted; p < to; p++) {
        int32_t *b = e->buckets + (size_t)hash3(e->data + p, e->hash_mask) * WAYS;
        for (unsigned w = WAYS - 1; w > 0; w--)
            b[w] = b[w - 1];
        b[0] = (int32_t)p;
    }
    if (to > e->inserted)
        e->inserted = to;
}

/* The longest earlier match at i (length, *dist its distance - 1); 0 if
 * none of three bytes or more. */
static unsigned find_match(est *e, size_t i, uint32_t *dist)
{
    unsigned limit = e->len - i < MATCH_MAX ? (unsigned)(e->len - i) : MATCH_MAX, best = 0;
    const int32_t *b;

    if (e->found_at == i + 1) {
        *dist = e->found_dist;
        return e->found_len;
    }
    if (limit < 3)
        return 0;
    insert_until(e, i);
    b = e->buckets + (size_t)hash3(e->data + i, e->hash_mask) * WAYS;
    for (unsigned w = 0; w < WAYS && b[w] >= 0; w++) {
        const int32_t cand = b[w];
        const uint8_t *c = e->data + cand, *p = e->data + i;
        unsigned n;
        if (c[best] != p[best])
            continue;
        n = common(c, p, limit);
        if (n > best) {
            best = n;
            *dist = (uint32_t)(i - (size_t)cand - 1);
            if (n >= NICE_LEN || n == limit)
                break;
        }
    }
    best = best >= 3 ? best : 0;
    e->found_at = i + 1;
    e->found_len = best;
    e->found_dist = *dist;
    return best;
}

/* The longest match at a repeat distance: its length (0 if under 2), *rep which. */
static unsigned find_rep(const est *e, size_t i, unsigned *rep)
{
    unsigned limit = e->len - i < MATCH_MAX ? (unsigned)(e->len - i) : MATCH_MAX, best = 0;

    if (limit < MATCH_MIN)
        return 0;
    for (unsigned r = 0; r < 4; r++) {
        const uint8_t *c, *p = e->data + i;
        unsigned n;
        if (e->reps[r] >= i)
            continue;
        /* Most positions match at no repeat distance: their first two bytes tell. */
        c = p - e->reps[r] - 1;
        if (c[0] != p[0] || c[1] != p[1])
            continue;
        n = common(c, p, limit);
        if (n > best) {
            best = n;
            *rep = r;
        }
    }
    return best >= MATCH_MIN ? best : 0;
}

/* Worth a match record: three bytes far away are not. */
static unsigned worth(unsigned len, uint32_t dist)
{
    return len > 3 || (len == 3 && dist < FAR_3) ? len : 0;
}

static token choose(est *e, size_t i)
{
    token t = {TOKEN_LITERAL, 1, 0, 0};
    unsigned rep = 0, rep_len = find_rep(e, i, &rep);
    uint32_t dist = 0;
    unsigned len = worth(find_match(e, i, &dist), dist);

    if (rep_len >= MATCH_MIN && rep_len + 1 >= len) {
        t.kind = TOKEN_REP;
        t.len = rep_len;
        t.rep = rep;
        return t;
    }
    if (len) {
        /* One step of lazy matching: a clearly longer match at the next
         * byte wins over this one. */
        uint32_t dist2 = 0;
        unsigned len2 = i + 1 < e->len && len < NICE_LEN ? worth(find_match(e, i + 1, &dist2), dist2) : 0;
        if (len2 > len + 1)
            return t;
        t.kind = TOKEN_MATCH;
        t.len = len;
        t.dist = dist;
        return t;
    }
    if (e->reps[0] < i && e->data[i] == e->data[i - e->reps[0] - 1] && short_rep_price(e, i) < literal_price(e, i))
        t.kind = TOKEN_SHORT_REP;
    return t;
}

int fd_est(const uint8_t *data, size_t len, const fd_est_shape *shapes, unsigned nshapes, uint64_t *bits)
{
    est *e;
    unsigned hash_bits = HASH_BITS_MIN;
    int rc = FD_EST_OK;

    if (nshapes == 0 || nshapes > FD_EST_MAX_SHAPES || len > INT32_MAX)
        return FD_EST_EINVAL;
    for (unsigned k = 0; k < nshapes; k++)
        if (shapes[k].lc > 4 || shapes[k].lp > 4 || shapes[k].lc + shapes[k].lp > 4 || shapes[k].pb > 4)
            return FD_EST_EINVAL;
    while (hash_bits < HASH_BITS_MAX && ((size_t)WAYS << hash_bits) < len / TABLE_DIV)
        hash_bits++;
    e = calloc(1, sizeof *e);
    if (!e)
        return FD_EST_ENOMEM;
    e->data = data;
    e->len = len;
    e->hash_mask = (1u << hash_bits) - 1;
    e->buckets = malloc((sizeof(int32_t) * WAYS) << hash_bits);
    e->models = calloc(nshapes, sizeof *e->models);
    if (!e->buckets || !e->models) {
        rc = FD_EST_ENOMEM;
        goto done;
    }
    memset(e->buckets, 0xFF, (sizeof(int32_t) * WAYS) << hash_bits);
    e->nmodels = nshapes;
    for (unsigned k = 0; k < nshapes; k++) {
        model *m = &e->models[k];
        m->lc = shapes[k].lc;
        m->lp = shapes[k].lp;
        m->pb = shapes[k].pb;
        m->lit = malloc(sizeof(prob) * ((size_t)LITERAL_PROBS << (m->lc + m->lp)));
        if (!m->lit) {
            rc = FD_EST_ENOMEM;
            goto done;
        }
        model_init(m);
    }
    for (unsigned slot = 4, off = 0; slot < DIST_MODEL_END; slot++) {
        e->special_off[slot] = off;
        off += 1u << ((slot >> 1) - 1);
    }
    for (size_t i = 0; i < len;) {
        token t = choose(e, i);
        for (unsigned k = 0; k < nshapes; k++)
            code_token(e, &e->models[k], i, &t);
        next_state(e, &t);
        i += t.kind == TOKEN_LITERAL || t.kind == TOKEN_SHORT_REP ? 1 : t.len;
    }
    /* The range coder's flush and LZMA2's chunk headers (six bytes per
     * 64 KiB of output at most). */
    for (unsigned k = 0; k < nshapes; k++) {
        uint64_t b = e->models[k].price >> PRICE_SHIFT;
        bits[k] = b + 5 * 8 + (b / (8u << 16) + 1) * 6 * 8;
    }
done:
    if (e->models)
        for (unsigned k = 0; k < nshapes; k++)
            free(e->models[k].lit);
    free(e->models);
    free(e->buckets);
    free(e);
    return rc;
}
