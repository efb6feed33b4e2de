/* In-place planning (after Burns, Long and Stockmeyer): writing new block t
 * destroys old block t, so every other block that copies from old block t
 * must be written first. Those constraints form a graph; blocks are written
 * in a topological order. Where a cycle leaves no block free, a block of it is
 * built now but parked in a spare park block, and moved into place once its
 * readers are written; when no park block is free (or a copy is short), a
 * copy is given up: its bytes are re-sourced from rewritten blocks that hold
 * them, or become literals. A block that copies from its own old
 * bytes is staged through the scratch block on the device. Literals are
 * looked for in the slot as the device reads it (old bytes not yet
 * overwritten, new bytes already written) and copied from there instead. */
#include "fd_ipdiff.h"

#include "fd_inplace.h"
#include "fd_ip_code.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    uint32_t reader; /* target block that copies */
    uint32_t source; /* old block it copies from */
    uint64_t bytes;
} edge;

typedef struct {
    const uint8_t *old;
    int64_t old_len;
    const uint8_t *new_;
    int64_t new_len;
    int64_t bs;
    uint32_t nblocks;   /* blocks spanned by either image */
    uint8_t *is_step;       /* per block: it is rewritten */
    uint32_t *assemble_at;  /* per block: step that builds its new bytes */
    uint32_t *overwrite_at; /* per block: step that writes them into the slot */
    const fd_record *recs;
    size_t nrecs;
    const fd_record **by_old; /* copying records sorted by old position */
    size_t nby_old;
    fd_ip_code code;          /* relocation, reading the table from memory */
    const fd_ip_code_plan *code_plan;
    uint8_t *scratch;         /* a block: a copy relocated, to compare */
    /* Literals looked for in the slot as the device reads it: old bytes not
     * yet overwritten, new bytes already written (NULL heads: not looked). */
    struct hashed { const uint8_t *data; int64_t len; uint32_t *head, *prev; } in_old, in_new;
    unsigned hash_bits;
    int64_t copy_min;
    int64_t word_cost; /* APPROX_WORD_COST, 0: exact runs only */
    int64_t unit;      /* bytes a group of differences covers: FD_WORD, 1 (by byte) or a span's */
    int64_t stride;    /* what a gap counts: FD_WORD by word, else 1 (bytes) */
    int sums;          /* a group's differences are the digits of a sum (FD_GROUP_SUMS, _SPANS) */
    uint32_t give_up; /* FD_IP_GIVE_UP_* */
} plan;

/* Bytes hashed to find literals in the slot; candidates looked at per
 * position and image. */
#define FIND_KEY 8
#define FIND_TRIES 64
/* Runs found in the slot that go on past differing bytes (approx): each
 * changed word (or byte) the device then corrects weighs as much as this many bytes
 * that match (on the AMD GC 11.0 MEC pair of the broad corpus 2 did best of
 * 1 to 12), and a run is not followed further once its score falls this far
 * below its best. */
#define APPROX_WORD_COST 2
#define APPROX_DROP 32
#define NO_POS UINT32_MAX

static int cmp_by_reader(const void *a, const void *b)
{
    const edge *x = a, *y = b;
    if (x->reader != y->reader)
        return x->reader < y->reader ? -1 : 1;
    return x->source < y->source ? -1 : x->source > y->source;
}

static int64_t block_len(const plan *p, uint32_t t)
{
    int64_t rest = p->new_len - (int64_t)t * p->bs;
    return rest < p->bs ? rest : p->bs;
}

/* Index of the first record (records are in new order) reaching past start. */
static size_t first_record(const plan *p, int64_t start)
{
    size_t lo = 0, hi = p->nrecs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const fd_record *r = &p->recs[mid];
        if (r->new_pos + r->add_len + r->insert_len <= start)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Collects (reader, source, bytes) for every copy of every rewritten block. */
static edge *collect_edges(const plan *p, size_t *count)
{
    size_t cap = 256, n = 0;
    edge *e = malloc(cap * sizeof *e);

    for (size_t i = 0; e && i < p->nrecs; i++) {
        int64_t np = p->recs[i].new_pos, op = p->recs[i].old_pos, left = p->recs[i].add_len;
        while (left > 0) {
            uint32_t t = (uint32_t)(np / p->bs), s = (uint32_t)(op / p->bs);
            int64_t len = left;
            if ((int64_t)(t + 1) * p->bs - np < len)
                len = (int64_t)(t + 1) * p->bs - np;
            if ((int64_t)(s + 1) * p->bs - op < len)
                len = (int64_t)(s + 1) * p->bs - op;
            if (p->is_step[t] && p->is_step[s] && s != t) {
                if (n == cap) {
                    edge *g = realloc(e, 2 * cap * sizeof *e);
                    if (!g) {
                        free(e);
                        return NULL;
                    }
                    e = g;
                    cap *= 2;
                }
                e[n].reader = t;
                e[n].source = s;
                e[n].bytes = (uint64_t)len;
                n++;
            }
            np += len;
            op += len;
            left -= len;
        }
    }
    if (!e)
        return NULL;
    /* Merge duplicates of the same (reader, source). */
    qsort(e, n, sizeof *e, cmp_by_reader);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m && e[m - 1].reader == e[i].reader && e[m - 1].source == e[i].source)
            e[m - 1].bytes += e[i].bytes;
        else
            e[m++] = e[i];
    }
    *count = m;
    return e;
}

/* Tarjan's strongly connected components over the blocks not yet built,
 * with an edge from each reader to the blocks it still copies from. */
typedef struct {
    uint32_t *index, *low, *stack, *comp, *call, *edge_pos;
    uint8_t *on_stack, *not_source;
    size_t *inner, ninner; /* live edges within a component, in edge order */
} scc_work;

static int scc_alloc(scc_work *w, uint32_t n, size_t nedges)
{
    w->inner = malloc((nedges + 1) * sizeof *w->inner);
    w->index = malloc(n * sizeof *w->index);
    w->low = malloc(n * sizeof *w->low);
    w->stack = malloc(n * sizeof *w->stack);
    w->comp = malloc(n * sizeof *w->comp);
    w->call = malloc(n * sizeof *w->call);
    w->edge_pos = malloc(n * sizeof *w->edge_pos);
    w->on_stack = malloc(n);
    w->not_source = malloc(n);
    return !(w->index && w->low && w->stack && w->comp && w->call && w->edge_pos && w->on_stack && w->not_source &&
             w->inner);
}

static void scc_free(scc_work *w)
{
    free(w->index);
    free(w->low);
    free(w->stack);
    free(w->comp);
    free(w->call);
    free(w->edge_pos);
    free(w->on_stack);
    free(w->not_source);
    free(w->inner);
}

typedef struct {
    const plan *p;
    edge *edges;        /* sorted by reader */
    size_t nedges;
    size_t *first;      /* first[b]..first[b+1]: edges of reader b */
    uint8_t *removed;   /* per edge: given up to break a cycle */
    const uint8_t *done; /* order_state's */
} graph;

/* Block b is still to be built (blocks left as they are count as done). */
static int live(const graph *g, uint32_t b)
{
    return !g->done[b];
}

/* Fills w->comp, w->inner and w->not_source (a component is a source when no live
 * reader outside it still copies from it). */
static void find_components(const graph *g, scc_work *w)
{
    const uint32_t none = UINT32_MAX, n = g->p->nblocks;
    uint32_t counter = 0, sp = 0, ncomp = 0;

    for (uint32_t b = 0; b < n; b++) {
        w->index[b] = none;
        w->on_stack[b] = 0;
    }
    for (uint32_t root = 0; root < n; root++) {
        uint32_t depth = 0;
        if (!live(g, root) || w->index[root] != none)
            continue;
        w->call[depth++] = root;
        w->index[root] = w->low[root] = counter++;
        w->edge_pos[root] = (uint32_t)g->first[root];
        w->stack[sp++] = root;
        w->on_stack[root] = 1;
        while (depth) {
            uint32_t v = w->call[depth - 1];
            if (w->edge_pos[v] < g->first[v + 1]) {
                size_t e = w->edge_pos[v]++;
                uint32_t s = g->edges[e].source;
                if (g->removed[e] || !live(g, s))
                    continue;
                if (w->index[s] == none) {
                    w->index[s] = w->low[s] = counter++;
                    w->edge_pos[s] = (uint32_t)g->first[s];
                    w->stack[sp++] = s;
                    w->on_stack[s] = 1;
                    w->call[depth++] = s;
                } else if (w->on_stack[s] && w->index[s] < w->low[v]) {
                    w->low[v] = w->index[s];
                }
                continue;
            }
            depth--;
            if (depth && w->low[v] < w->low[w->call[depth - 1]])
                w->low[w->call[depth - 1]] = w->low[v];
            if (w->low[v] == w->index[v]) {
                uint32_t x;
                do {
                    x = w->stack[--sp];
                    w->on_stack[x] = 0;
                    w->comp[x] = ncomp;
                } while (x != v);
                ncomp++;
            }
        }
    }
    memset(w->not_source, 0, ncomp ? ncomp : 1);
    w->ninner = 0;
    /* (Edges are sorted by reader: those of readers built are skipped whole.) */
    for (uint32_t r = 0; r < n; r++) {
        if (!live(g, r))
            continue;
        for (size_t e = g->first[r]; e < g->first[r + 1]; e++) {
            uint32_t s = g->edges[e].source;
            if (g->removed[e] || !live(g, s))
                continue;
            if (w->comp[r] != w->comp[s])
                w->not_source[w->comp[s]] = 1;
            else
                w->inner[w->ninner++] = e;
        }
    }
}

typedef struct {
    uint32_t block;
    uint8_t kind; /* FD_IP_STEP_* */
    uint8_t slot; /* park slot of PARK and UNPARK steps */
} step;

/* Copies this short or shorter are given up rather than spending a park
 * block on them: a few literal bytes cost less than holding a park block
 * while the cycle's far end is reached. */
#define CHEAP_EDGE 64
#define NO_BLOCK UINT32_MAX

/* No park block is free (FD_IP_GIVE_UP_BLOCK): give up every pending copy
 * from the block whose pending readers copy the fewest bytes from it, so
 * that it can be written. weight: work memory, one per block. */
static void give_up_cheapest_block(graph *g, uint32_t *indeg, uint64_t *weight, uint32_t *queue, uint32_t *qtail)
{
    const plan *p = g->p;
    uint32_t best = NO_BLOCK;

    for (uint32_t b = 0; b < p->nblocks; b++)
        weight[b] = 0;
    for (size_t e = 0; e < g->nedges; e++)
        if (!g->removed[e] && live(g, g->edges[e].reader) && live(g, g->edges[e].source))
            weight[g->edges[e].source] += g->edges[e].bytes;
    for (uint32_t b = 0; b < p->nblocks; b++)
        if (live(g, b) && indeg[b] && (best == NO_BLOCK || weight[b] < weight[best]))
            best = b;
    for (size_t e = 0; e < g->nedges; e++)
        if (!g->removed[e] && g->edges[e].source == best && live(g, g->edges[e].reader)) {
            g->removed[e] = 1;
            indeg[best]--;
        }
    if (indeg[best] == 0)
        queue[(*qtail)++] = best;
}

/* The choices of a write order: which block to park when a cycle is broken
 * by parking, and, giving up single copies, which copy when the park slots
 * run out. choice[i] ranks the candidates of the i-th decision (0: the
 * heuristic's, see run_order; decisions past nchoice take 0). */
typedef struct {
    const uint8_t *choice;
    uint32_t nchoice;
} park_choices;

/* Candidate ranking for parking: more blocks freed first, then fewer
 * pending readers, then the lower block. */
typedef struct {
    uint32_t block, frees;
    uint64_t readers;
} park_candidate;

static int cmp_candidates(const void *a, const void *b)
{
    const park_candidate *x = a, *y = b;
    if (x->frees != y->frees)
        return x->frees > y->frees ? -1 : 1;
    if (x->readers != y->readers)
        return x->readers < y->readers ? -1 : 1;
    return x->block < y->block ? -1 : x->block > y->block;
}

/* A copy that may be given up, ranked lightest first. */
typedef struct {
    uint64_t bytes;
    size_t edge;
} light_candidate;

static int cmp_light(const void *a, const void *b)
{
    const light_candidate *x = a, *y = b;
    if (x->bytes != y->bytes)
        return x->bytes < y->bytes ? -1 : 1;
    return x->edge < y->edge ? -1 : x->edge > y->edge;
}

/* A write order in progress: everything planning it changes, so that the
 * search can go back to any decision and try another choice from there
 * instead of planning the order again from its start. */
typedef struct {
    uint32_t *indeg;                  /* per block: live readers that still copy from it */
    uint32_t *queue;                  /* blocks free to write (two per block at most) */
    uint8_t *done;                    /* per block: built (written or parked), or not rewritten */
    uint8_t *slot_of;                 /* per block: park slot + 1, 0 when not parked */
    uint8_t *removed;                 /* per edge: given up */
    step *steps;                      /* two per block at most */
    uint32_t *assemble_at, *overwrite_at; /* per block: as in plan */
    uint32_t parked[FD_IP_MAX_PARK];  /* per park slot: its block, NO_BLOCK when free */
    uint32_t qhead, qtail, consumed, nsteps, nparked;
    uint32_t decisions;               /* decisions made (see park_choices) */
    uint32_t cycles_broken, starved, parked_total, park_used; /* as in fd_ipdelta */
} order_state;

static int state_alloc(order_state *s, uint32_t nblocks, size_t nedges)
{
    memset(s, 0, sizeof *s);
    s->indeg = malloc((size_t)nblocks * sizeof *s->indeg);
    s->queue = malloc((size_t)nblocks * 2 * sizeof *s->queue);
    s->done = malloc(nblocks);
    s->slot_of = malloc(nblocks);
    s->removed = malloc(nedges + 1);
    s->steps = malloc((size_t)nblocks * 2 * sizeof *s->steps);
    s->assemble_at = malloc((size_t)nblocks * sizeof *s->assemble_at);
    s->overwrite_at = malloc((size_t)nblocks * sizeof *s->overwrite_at);
    return !(s->indeg && s->queue && s->done && s->slot_of && s->removed && s->steps && s->assemble_at &&
             s->overwrite_at);
}

static void state_free(order_state *s)
{
    free(s->indeg);
    free(s->queue);
    free(s->done);
    free(s->slot_of);
    free(s->removed);
    free(s->steps);
    free(s->assemble_at);
    free(s->overwrite_at);
}

/* dst becomes src (both allocated for the same graph). */
static void state_copy(order_state *dst, const order_state *src, uint32_t nblocks, size_t nedges)
{
    order_state keep = *dst;
    memcpy(keep.indeg, src->indeg, (size_t)nblocks * sizeof *src->indeg);
    memcpy(keep.queue, src->queue, (size_t)src->qtail * sizeof *src->queue);
    memcpy(keep.done, src->done, nblocks);
    memcpy(keep.slot_of, src->slot_of, nblocks);
    memcpy(keep.removed, src->removed, nedges + 1);
    memcpy(keep.steps, src->steps, (size_t)src->nsteps * sizeof *src->steps);
    memcpy(keep.assemble_at, src->assemble_at, (size_t)nblocks * sizeof *src->assemble_at);
    memcpy(keep.overwrite_at, src->overwrite_at, (size_t)nblocks * sizeof *src->overwrite_at);
    *dst = *src;
    dst->indeg = keep.indeg;
    dst->queue = keep.queue;
    dst->done = keep.done;
    dst->slot_of = keep.slot_of;
    dst->removed = keep.removed;
    dst->steps = keep.steps;
    dst->assemble_at = keep.assemble_at;
    dst->overwrite_at = keep.overwrite_at;
}

/* Planning write orders: the graph of copies (the same for every order),
 * the order being planned (now) and the work memory of its decisions. */
typedef struct {
    plan *p;
    uint32_t park_slots;
    uint32_t steps;  /* blocks to write */
    graph g;         /* g.removed and g.done: now's */
    order_state now;
    scc_work scc;
    uint64_t *cost;
    park_candidate *cand;
    light_candidate *light_cand;
    uint64_t work;   /* edge visits so far (see search_order) */
} orderer;

static void orderer_free(orderer *o)
{
    free(o->g.edges);
    free(o->g.first);
    free(o->cost);
    free(o->cand);
    free(o->light_cand);
    scc_free(&o->scc);
    state_free(&o->now);
}

static int orderer_init(orderer *o, plan *p, uint32_t park_slots, uint32_t steps)
{
    memset(o, 0, sizeof *o);
    o->p = p;
    o->park_slots = park_slots;
    o->steps = steps;
    o->g.p = p;
    o->g.edges = collect_edges(p, &o->g.nedges);
    o->g.first = calloc((size_t)p->nblocks + 1, sizeof *o->g.first);
    o->cost = malloc((size_t)p->nblocks * sizeof *o->cost);
    o->cand = malloc((size_t)p->nblocks * sizeof *o->cand);
    o->light_cand = malloc((o->g.nedges + 1) * sizeof *o->light_cand);
    if (!o->g.edges || !o->g.first || !o->cost || !o->cand || !o->light_cand || scc_alloc(&o->scc, p->nblocks, o->g.nedges) ||
        state_alloc(&o->now, p->nblocks, o->g.nedges))
        return FD_DIFF_ENOMEM;
    o->g.removed = o->now.removed;
    o->g.done = o->now.done;
    for (size_t i = 0; i < o->g.nedges; i++)
        o->g.first[o->g.edges[i].reader + 1]++;
    for (uint32_t b = 0; b < p->nblocks; b++)
        o->g.first[b + 1] += o->g.first[b];
    return FD_DIFF_OK;
}

/* now: an order with nothing written yet. */
static void order_start(orderer *o)
{
    const plan *p = o->p;
    order_state *s = &o->now;
    uint32_t *queue = s->queue;

    memset(s->indeg, 0, (size_t)p->nblocks * sizeof *s->indeg);
    for (uint32_t b = 0; b < p->nblocks; b++)
        s->done[b] = !p->is_step[b];
    memset(s->slot_of, 0, p->nblocks);
    memset(s->removed, 0, o->g.nedges + 1);
    memset(s->assemble_at, 0, (size_t)p->nblocks * sizeof *s->assemble_at);
    memset(s->overwrite_at, 0, (size_t)p->nblocks * sizeof *s->overwrite_at);
    s->qhead = s->qtail = s->consumed = s->nsteps = s->nparked = s->decisions = 0;
    s->cycles_broken = s->starved = s->parked_total = s->park_used = 0;
    for (uint32_t i = 0; i < FD_IP_MAX_PARK; i++)
        s->parked[i] = NO_BLOCK;
    for (size_t i = 0; i < o->g.nedges; i++)
        s->indeg[o->g.edges[i].source]++;
    for (uint32_t b = 0; b < p->nblocks; b++)
        if (p->is_step[b] && s->indeg[b] == 0)
            queue[s->qtail++] = b;
}

/* The rank pc chose for the next decision, counted. */
static uint32_t next_rank(const park_choices *pc, order_state *s)
{
    uint32_t i = s->decisions++;
    return i < pc->nchoice ? pc->choice[i] : 0;
}

/* Copied bytes the order in now gives up. */
static uint64_t given_up(const orderer *o)
{
    uint64_t bytes = 0;
    for (size_t e = 0; e < o->g.nedges; e++)
        if (o->now.removed[e])
            bytes += o->g.edges[e].bytes;
    return bytes;
}

/* Plans the rest of the order in now, its decisions as pc says. With at
 * (not NULL), stops instead before decision stop is made, now then as it
 * was when the order last found itself stuck before it; at is that state
 * (the order is then finished from there with another choice). */
static void run_order(orderer *o, const park_choices *pc, uint32_t stop, order_state *at)
{
    plan *p = o->p;
    graph *g = &o->g;
    order_state *s = &o->now;
    uint32_t *indeg = s->indeg, *queue = s->queue, *parked = s->parked;
    uint8_t *done = s->done, *slot_of = s->slot_of;
    step *steps = s->steps;
    const uint32_t park_slots = o->park_slots;

    while (s->consumed < o->steps || s->nparked) {
        uint32_t t, slot = 0;
        uint8_t kind = FD_IP_STEP_WRITE;
        if (s->qhead < s->qtail) {
            t = queue[s->qhead++];
            if (slot_of[t]) {
                /* Its last reader is written: move it into place. */
                steps[s->nsteps].block = t;
                steps[s->nsteps].kind = FD_IP_STEP_UNPARK;
                steps[s->nsteps].slot = (uint8_t)(slot_of[t] - 1);
                parked[slot_of[t] - 1] = NO_BLOCK;
                slot_of[t] = 0;
                s->nparked--;
                s->overwrite_at[t] = s->nsteps++;
                continue;
            }
            if (done[t])
                continue;
        } else {
            /* Every remaining block is still read by another: some group
             * reads itself in a cycle with no live reader outside. Give up
             * its lightest copy if that is cheap; when no park block is
             * free, that copy or a whole block's (p->give_up); else build
             * early and park the block whose building frees the most
             * blocks at once (it is their last pending reader), which
             * keeps the writes going with few blocks parked at a time; among
             * those, the one with the fewest pending readers, which frees
             * its park block soonest. */
            size_t light = SIZE_MAX;
            if (at) {
                if (s->decisions > stop)
                    return;
                if (s->decisions == stop)
                    state_copy(at, s, p->nblocks, g->nedges);
            }
            o->work += g->nedges + p->nblocks;
            find_components(g, &o->scc);
            for (uint32_t b = 0; b < p->nblocks; b++)
                o->cost[b] = 0;
            for (size_t k = 0; k < o->scc.ninner; k++) {
                size_t e = o->scc.inner[k];
                uint32_t src = g->edges[e].source;
                if (o->scc.not_source[o->scc.comp[src]])
                    continue;
                o->cost[src]++;
                if (light == SIZE_MAX || g->edges[e].bytes < g->edges[light].bytes)
                    light = e;
            }
            if (light == SIZE_MAX)
                break; /* cannot happen: a stuck graph has a cycle */
            s->cycles_broken++;
            if (g->edges[light].bytes > CHEAP_EDGE && s->nparked == park_slots)
                s->starved++;
            if (g->edges[light].bytes > CHEAP_EDGE && s->nparked == park_slots && p->give_up == FD_IP_GIVE_UP_COPY) {
                /* Which copy: the lightest by default, another as pc says. */
                uint32_t ncand = 0, rank = next_rank(pc, s);
                for (size_t k = 0; rank && k < o->scc.ninner; k++) {
                    size_t e = o->scc.inner[k];
                    if (o->scc.not_source[o->scc.comp[g->edges[e].source]])
                        continue;
                    o->light_cand[ncand].bytes = g->edges[e].bytes;
                    o->light_cand[ncand].edge = e;
                    ncand++;
                }
                if (rank) {
                    qsort(o->light_cand, ncand, sizeof *o->light_cand, cmp_light);
                    light = o->light_cand[rank < ncand ? rank : ncand - 1].edge;
                }
            }
            if (g->edges[light].bytes <= CHEAP_EDGE || (s->nparked == park_slots && p->give_up == FD_IP_GIVE_UP_COPY)) {
                uint32_t src = g->edges[light].source;
                g->removed[light] = 1;
                if (--indeg[src] == 0)
                    queue[s->qtail++] = src;
                continue;
            }
            if (s->nparked == park_slots) {
                give_up_cheapest_block(g, indeg, o->cost, queue, &s->qtail);
                continue;
            }
            {
                uint32_t ncand = 0, rank = next_rank(pc, s);
                for (uint32_t b = 0; b < p->nblocks; b++) {
                    uint32_t frees = 0; /* sources that only b still reads */
                    if (!o->cost[b])
                        continue;
                    for (size_t e = g->first[b]; e < g->first[b + 1]; e++) {
                        uint32_t src = g->edges[e].source;
                        if (!g->removed[e] && live(g, src) && indeg[src] == 1)
                            frees++;
                    }
                    o->cand[ncand].block = b;
                    o->cand[ncand].frees = frees;
                    o->cand[ncand].readers = o->cost[b];
                    ncand++;
                }
                qsort(o->cand, ncand, sizeof *o->cand, cmp_candidates);
                t = o->cand[rank < ncand ? rank : ncand - 1].block;
            }
            while (parked[slot] != NO_BLOCK)
                slot++;
            parked[slot] = t;
            slot_of[t] = (uint8_t)(slot + 1);
            s->nparked++;
            if (slot + 1 > s->park_used)
                s->park_used = slot + 1;
            kind = FD_IP_STEP_PARK;
            s->parked_total++;
        }
        done[t] = 1;
        s->consumed++;
        steps[s->nsteps].block = t;
        steps[s->nsteps].kind = kind;
        steps[s->nsteps].slot = (uint8_t)slot;
        s->assemble_at[t] = s->nsteps;
        if (kind == FD_IP_STEP_WRITE)
            s->overwrite_at[t] = s->nsteps;
        s->nsteps++;
        /* Its sources no longer wait for it. */
        for (size_t e = g->first[t]; e < g->first[t + 1]; e++) {
            uint32_t src = g->edges[e].source;
            if (!g->removed[e] && (!done[src] || slot_of[src]) && --indeg[src] == 0)
                queue[s->qtail++] = src;
        }
    }
}

/* When the park blocks run out, copies are given up, and the choices made
 * before (which block to park, which copy to give up) decide how many. With
 * a work budget (search_work, in edge visits) the order is searched one such
 * decision at a time: each of the SEARCH_RANKS best-ranked candidates is
 * tried with the later decisions left to the heuristic, and the one that
 * gives up the fewest copied bytes is kept. A trial goes on from the state
 * the order was in before the decision (kept as the search moves on), not
 * from the start: planning the rest of an order costs about (cycles broken
 * after the decision + 1) * (edges + blocks) visits, which the budget counts. */
#define SEARCH_RANKS 24

static int search_order(plan *p, uint32_t park_slots, uint64_t search_work, fd_ipdelta *out, step *steps,
                        uint32_t *count)
{
    orderer o;
    order_state before; /* the best order before decision i */
    park_choices pc;
    uint8_t *choice = calloc((size_t)p->nblocks * 2 + 1, 1);
    uint64_t best_given_up;
    uint32_t best_decisions;
    int rc = FD_DIFF_ENOMEM;

    memset(&before, 0, sizeof before);
    if (!choice || (rc = orderer_init(&o, p, park_slots, out->steps)) ||
        state_alloc(&before, p->nblocks, o.g.nedges)) {
        rc = FD_DIFF_ENOMEM;
        goto out;
    }
    pc.choice = choice;
    pc.nchoice = p->nblocks * 2;
    order_start(&o);
    run_order(&o, &pc, 0, NULL);
    best_given_up = given_up(&o);
    best_decisions = o.now.decisions;
    if (search_work && o.now.starved) {
        o.work = 0;
        order_start(&o);
        for (uint32_t i = 0; i < best_decisions && i < pc.nchoice && best_given_up && o.work < search_work; i++) {
            uint8_t keep = 0;
            /* before: the best order just before decision i. */
            run_order(&o, &pc, i, &before);
            for (uint8_t r = 1; r < SEARCH_RANKS && o.work < search_work; r++) {
                choice[i] = r;
                state_copy(&o.now, &before, p->nblocks, o.g.nedges);
                o.work += o.g.nedges + p->nblocks;
                run_order(&o, &pc, 0, NULL);
                if (given_up(&o) < best_given_up) {
                    best_given_up = given_up(&o);
                    best_decisions = o.now.decisions;
                    keep = r;
                }
            }
            choice[i] = keep;
            state_copy(&o.now, &before, p->nblocks, o.g.nedges);
        }
        run_order(&o, &pc, 0, NULL);
    }
    memcpy(steps, o.now.steps, (size_t)o.now.nsteps * sizeof *steps);
    memcpy(p->assemble_at, o.now.assemble_at, (size_t)p->nblocks * sizeof *p->assemble_at);
    memcpy(p->overwrite_at, o.now.overwrite_at, (size_t)p->nblocks * sizeof *p->overwrite_at);
    *count = o.now.nsteps;
    out->cycles_broken = o.now.cycles_broken;
    out->starved = o.now.starved;
    out->parked = o.now.parked_total;
    out->park_used = o.now.park_used;
    out->given_up = given_up(&o);
    rc = FD_DIFF_OK;
out:
    if (choice)
        orderer_free(&o);
    state_free(&before);
    free(choice);
    return rc;
}

/* Old byte at op can be copied when block t is written. */
static int available(const plan *p, uint32_t t, int64_t op)
{
    uint32_t s = (uint32_t)(op / p->bs);
    return !p->is_step[s] || s == t || p->overwrite_at[s] > p->assemble_at[t];
}

/* Block b already holds its new bytes when block t is written. */
static int rewritten_before(const plan *p, uint32_t t, uint32_t b)
{
    return p->is_step[b] && b != t && p->overwrite_at[b] < p->assemble_at[t];
}

static int cmp_old_pos(const void *a, const void *b)
{
    const fd_record *x = *(const fd_record *const *)a, *y = *(const fd_record *const *)b;
    return x->old_pos < y->old_pos ? -1 : x->old_pos > y->old_pos;
}

/* The old bytes at op are gone when t is written, but a record copied them
 * into new bytes that are already in flash: returns where (and sets *len to
 * how many follow in a rewritten block), or -1. */
static int64_t moved_copy(const plan *p, uint32_t t, int64_t op, int64_t *len)
{
    size_t lo = 0, hi = p->nby_old;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->by_old[mid]->old_pos <= op)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* Records starting at or before op, nearest first; a few are enough. */
    for (size_t k = lo, tries = 0; k > 0 && tries < 16; k--, tries++) {
        const fd_record *r = p->by_old[k - 1];
        int64_t q, room;
        if (op >= r->old_pos + r->add_len)
            continue;
        q = r->new_pos + (op - r->old_pos);
        if (!rewritten_before(p, t, (uint32_t)(q / p->bs)))
            continue;
        room = r->old_pos + r->add_len - op;
        if (room > p->bs - q % p->bs)
            room = p->bs - q % p->bs;
        if (*len > room)
            *len = room;
        return q;
    }
    return -1;
}

static uint32_t key_hash(const uint8_t *at, unsigned bits)
{
    uint64_t v;
    memcpy(&v, at, sizeof v);
    return (uint32_t)((v * UINT64_C(0x9E3779B97F4A7C15)) >> (64 - bits));
}

/* Chains of the positions of data by the hash of their next FIND_KEY bytes,
 * each through prev from the highest position down. */
static int hash_positions(struct hashed *h, const uint8_t *data, int64_t len, unsigned bits)
{
    int64_t n = len - FIND_KEY + 1;
    h->data = data;
    h->len = len;
    h->head = malloc(((size_t)1 << bits) * sizeof *h->head);
    h->prev = malloc((size_t)(n > 0 ? n : 1) * sizeof *h->prev);
    if (!h->head || !h->prev)
        return FD_DIFF_ENOMEM;
    memset(h->head, 0xFF, ((size_t)1 << bits) * sizeof *h->head);
    for (int64_t i = 0; i < n; i++) {
        uint32_t k = key_hash(data + i, bits);
        h->prev[i] = h->head[k];
        h->head[k] = (uint32_t)i;
    }
    return FD_DIFF_OK;
}

static void hashed_free(struct hashed *h)
{
    free(h->head);
    free(h->prev);
    h->head = h->prev = NULL;
}

/* Block b of the slot holds what h indexes (old or new bytes) when t is
 * written; t itself never, as its old bytes are not staged for literals. */
static int holds(const plan *p, const struct hashed *h, uint32_t t, uint32_t b)
{
    if (b == t)
        return 0;
    return h == &p->in_new ? rewritten_before(p, t, b) : available(p, t, (int64_t)b * p->bs);
}

/* How many bytes of new from np (up to end) the slot holds at q. */
static int64_t run_at(const plan *p, const struct hashed *h, uint32_t t, int64_t q, int64_t np, int64_t end)
{
    int64_t n = 0;
    while (np + n < end && q + n < h->len && holds(p, h, t, (uint32_t)((q + n) / p->bs))) {
        int64_t block_end = ((q + n) / p->bs + 1) * p->bs;
        while (np + n < end && q + n < block_end && q + n < h->len && h->data[q + n] == p->new_[np + n])
            n++;
        if (q + n < block_end)
            break;
    }
    return n;
}

/* Carries a run of n equal bytes (new from np, slot from q) on past
 * differing bytes while the bytes that match outweigh the changed words the
 * device then corrects: the length where that balance was best, and *score. */
static int64_t extend_approx(const plan *p, const struct hashed *h, uint32_t t, int64_t q, int64_t np, int64_t end,
                             int64_t n, int64_t *score)
{
    int64_t best = n, best_len = n, s = n, last_word = -1;
    for (int64_t i = n; np + i < end && q + i < h->len; i++) {
        if ((q + i) % p->bs == 0 && !holds(p, h, t, (uint32_t)((q + i) / p->bs)))
            break;
        if (h->data[q + i] == p->new_[np + i]) {
            s++;
        } else if ((np + i) / p->unit != last_word) {
            s -= p->word_cost;
            last_word = (np + i) / p->unit;
        }
        if (s > best) {
            best = s;
            best_len = i + 1;
        } else if (s < best - APPROX_DROP) {
            break;
        }
    }
    *score = best;
    return best_len;
}

/* The longest run of new from np (up to end) that the slot holds when t is
 * written, or with p->word_cost the one of best score (extend_approx) of
 * those that start with p->copy_min equal bytes: its length (0: none) and
 * *from. */
static int64_t find_in_slot(const plan *p, uint32_t t, int64_t np, int64_t end, int64_t *from)
{
    const struct hashed *hs[2] = {&p->in_old, &p->in_new};
    int64_t best = 0, best_len = 0;
    if (end - np < p->copy_min || np + FIND_KEY > p->new_len)
        return 0;
    for (int k = 0; k < 2; k++) {
        const struct hashed *h = hs[k];
        int tries = 0;
        if (!h->head)
            continue;
        for (uint32_t q = h->head[key_hash(p->new_ + np, p->hash_bits)]; q != NO_POS && tries < FIND_TRIES;
             q = h->prev[q], tries++) {
            int64_t n = run_at(p, h, t, q, np, end), score = n;
            if (n < p->copy_min)
                continue;
            if (p->word_cost)
                n = extend_approx(p, h, t, q, np, end, n, &score);
            if (score > best) {
                best = score;
                best_len = n;
                *from = q;
            }
        }
    }
    return best_len;
}

typedef struct {
    fd_ipdelta *out;
    int64_t cursor;  /* device's old cursor */
    int64_t new_end; /* device's end of the last block built */
    int64_t copy_from, copy_len, copy_to; /* pending copy: slot offset, length, new offset */
    int64_t lit_from, lit_len;            /* pending literals, new offsets */
    uint64_t records, relocated;
} record_writer;

/* The patcher reads the lanes in turns, 0, 1, 2, 0, ...: it reads lane next
 * now, so the turns in between end, each with the bytes written to its lane
 * since it began (none for a lane skipped). */
static fd_buf *turn_to(fd_ipdelta *out, unsigned next)
{
    while (out->lane_now != next) {
        const unsigned l = out->lane_now;
        uint32_t n = (uint32_t)(out->lanes[l].len - out->turn_start[l]);
        fd_buf_append(&out->turns, (const uint8_t *)&n, sizeof n);
        out->turn_start[l] = out->lanes[l].len;
        out->lane_now = (l + 1) % FD_IP_LANES;
    }
    return &out->lanes[next];
}

/* The slot's bytes [x, x + len) as the device reads them while it builds
 * block t: new bytes in blocks rewritten before, old bytes elsewhere. */
static void slot_bytes(const plan *p, uint32_t t, int64_t x, int64_t len, uint8_t *dst)
{
    while (len > 0) {
        uint32_t s = (uint32_t)(x / p->bs);
        int64_t n = (int64_t)(s + 1) * p->bs - x;
        if (n > len)
            n = len;
        memcpy(dst, (rewritten_before(p, t, s) ? p->new_ : p->old) + x, (size_t)n);
        dst += n;
        x += n;
        len -= n;
    }
}

/* Aligned units (p->unit bytes) of new[at, at + len) that a differs in. */
static uint32_t units_differing(const plan *p, const uint8_t *a, int64_t at, int64_t len)
{
    const uint8_t *new_ = p->new_;
    uint32_t n = 0;
    for (int64_t w = at - at % p->unit; w < at + len; w += p->unit) {
        int64_t i = w < at ? at : w, end = w + p->unit < at + len ? w + p->unit : at + len;
        while (i < end && a[i - at] == new_[i])
            i++;
        n += i < end;
    }
    return n;
}

/* Writes the pending record, and the bytes its copy gives into the block
 * being assembled (start: its offset), relocated when that leaves fewer
 * words to correct. */
static void flush_record(record_writer *w, const plan *p, uint32_t t, int64_t start, uint8_t *assembled)
{
    uint64_t add = (uint64_t)w->copy_len;
    fd_buf *control;
    if (w->copy_len == 0 && w->lit_len == 0)
        return;
    if (w->copy_len) {
        uint8_t *at = assembled + (w->copy_to - start);
        slot_bytes(p, t, w->copy_from, w->copy_len, at);
        if (p->code.arch) {
            int reloc;
            memcpy(p->scratch, at, (size_t)w->copy_len);
            fd_ip_relocate(&p->code, p->scratch, (uint32_t)w->copy_len, (uint32_t)w->copy_from,
                           (uint32_t)w->copy_to);
            reloc = units_differing(p, p->scratch, w->copy_to, w->copy_len) <
                    units_differing(p, at, w->copy_to, w->copy_len);
            if (reloc) {
                memcpy(at, p->scratch, (size_t)w->copy_len);
                w->relocated++;
            }
            add = add << 1 | (uint64_t)reloc;
        }
    }
    control = turn_to(w->out, FD_IP_LANE_CONTROL);
    fd_buf_varint(control, fd_zigzag(w->copy_len ? w->copy_from - w->cursor : 0));
    fd_buf_varint(control, add);
    fd_buf_varint(control, (uint64_t)w->lit_len);
    if (w->lit_len)
        fd_buf_append(turn_to(w->out, FD_IP_LANE_LITERALS), p->new_ + w->lit_from, (size_t)w->lit_len);
    memcpy(assembled + (w->lit_from - start), p->new_ + w->lit_from, (size_t)w->lit_len);
    if (w->copy_len)
        w->cursor = w->copy_from + w->copy_len;
    w->copy_len = w->lit_len = 0;
    w->records++;
}

/* Extends the pending record with a copy of len slot bytes from op to new
 * offset np, or starts a new one. */
static void put_copy(record_writer *w, const plan *p, uint32_t t, int64_t start, uint8_t *assembled, int64_t op,
                     int64_t np, int64_t len)
{
    if (w->lit_len == 0 && w->copy_len && w->copy_from + w->copy_len == op) {
        w->copy_len += len;
        return;
    }
    flush_record(w, p, t, start, assembled);
    w->copy_from = op;
    w->copy_to = np;
    w->copy_len = len;
}

static void put_literal(record_writer *w, int64_t np, int64_t len)
{
    if (w->lit_len == 0)
        w->lit_from = np;
    w->lit_len += len;
}

/* New bytes [np, np + len) that no record copies: copies from where the
 * slot holds them, else literals. */
static void put_new_bytes(record_writer *w, const plan *p, uint32_t t, int64_t start, uint8_t *assembled, int64_t np,
                          int64_t len)
{
    const int64_t end = np + len;
    int64_t lit = np;
    for (int64_t i = np; p->copy_min && i < end;) {
        int64_t from, n = find_in_slot(p, t, i, end, &from);
        if (n == 0) {
            i++;
            continue;
        }
        if (i > lit)
            put_literal(w, lit, i - lit);
        put_copy(w, p, t, start, assembled, from, i, n);
        w->out->found += (uint64_t)n;
        i += n;
        lit = i;
    }
    if (end > lit)
        put_literal(w, lit, end - lit);
}

/* Emits one step: its records (literals inline), then its changed words. */
static void emit_step(const plan *p, const step *st, int64_t prev, uint8_t kind, record_writer *w,
                      uint8_t *assembled, fd_ipdelta *out)
{
    const uint32_t t = st->block;
    const int64_t start = (int64_t)t * p->bs, blen = block_len(p, t), end = start + blen;
    const int64_t span = p->old_len > p->new_len ? p->old_len : p->new_len;
    int64_t delta = (int64_t)t - (prev + 1);
    size_t i;
    uint32_t words = 0;
    int64_t last = 0; /* where the last changed group ended */
    fd_buf *control = turn_to(out, FD_IP_LANE_CONTROL);

    fd_buf_varint(control, fd_zigzag(delta) << 2 | kind);
    if (kind == FD_IP_STEP_PARK || kind == FD_IP_STEP_UNPARK)
        fd_buf_varint(control, st->slot);
    if (kind == FD_IP_STEP_UNPARK)
        return;
    /* The device moves its cursor with the new position between steps. */
    w->cursor += start - w->new_end;
    w->cursor = w->cursor < 0 ? 0 : w->cursor > span ? span : w->cursor;
    w->new_end = end;
    for (i = first_record(p, start); i < p->nrecs && p->recs[i].new_pos < end; i++) {
        const fd_record *r = &p->recs[i];
        int64_t a0 = r->new_pos > start ? r->new_pos : start;
        int64_t a1 = r->new_pos + r->add_len < end ? r->new_pos + r->add_len : end;
        int64_t i1 = r->new_pos + r->add_len + r->insert_len < end ? r->new_pos + r->add_len + r->insert_len : end;
        int64_t np = a0;
        while (np < a1) {
            int64_t op = r->old_pos + (np - r->new_pos);
            int64_t len = a1 - np, to_edge = p->bs - op % p->bs;
            if (len > to_edge)
                len = to_edge;
            if (available(p, t, op)) {
                put_copy(w, p, t, start, assembled, op, np, len);
            } else {
                int64_t q = moved_copy(p, t, op, &len);
                if (q >= 0) {
                    put_copy(w, p, t, start, assembled, q, np, len);
                    out->moved += (uint64_t)len;
                } else {
                    put_new_bytes(w, p, t, start, assembled, np, len);
                    out->literalized += (uint64_t)len;
                }
            }
            np += len;
        }
        if (i1 > (a1 > start ? a1 : start)) {
            int64_t from = a1 > start ? a1 : start;
            put_new_bytes(w, p, t, start, assembled, from, i1 - from);
        }
    }
    flush_record(w, p, t, start, assembled);

    /* Changed groups (words, bytes or spans): each its gap + 1 in strides in
     * the control lane (a 0 ends the block's list) and its differences in
     * their own lane, where the decoder's position contexts line up with
     * words. As sums, a byte's difference takes in the carry out of the byte
     * before it. A span starts at a changed byte. */
    for (int64_t wpos = 0; wpos < blen; wpos += p->stride) {
        uint8_t d[FD_WORD] = {0, 0, 0, 0};
        unsigned changed = 0, carry = 0;
        if (p->stride == 1 && p->new_[start + wpos] == assembled[wpos])
            continue;
        for (int k = 0; k < p->unit && wpos + k < blen; k++) {
            uint8_t from = assembled[wpos + k], diff = (uint8_t)(p->new_[start + wpos + k] - from);
            d[k] = (uint8_t)(diff - carry);
            carry = p->sums && (unsigned)from + d[k] + carry > 0xFF;
            changed |= diff;
        }
        if (!changed)
            continue;
        fd_buf_varint(turn_to(out, FD_IP_LANE_CONTROL), (uint64_t)((wpos - last) / p->stride) + 1);
        fd_buf_append(turn_to(out, FD_IP_LANE_DIFFS), d, (size_t)p->unit);
        last = wpos + p->unit;
        wpos = last - p->stride;
        words++;
    }
    fd_buf_byte(turn_to(out, FD_IP_LANE_CONTROL), 0);
    out->changed_words += words;
}

/* The block copies from its own old bytes, so its new bytes must be staged
 * before the block is erased. */
static int reads_itself(const plan *p, uint32_t t)
{
    int64_t start = (int64_t)t * p->bs, end = start + block_len(p, t);

    for (size_t i = first_record(p, start); i < p->nrecs && p->recs[i].new_pos < end; i++) {
        const fd_record *r = &p->recs[i];
        int64_t a0 = r->new_pos > start ? r->new_pos : start;
        int64_t a1 = r->new_pos + r->add_len < end ? r->new_pos + r->add_len : end;
        if (a1 > a0 && r->old_pos + (a0 - r->new_pos) < start + p->bs && r->old_pos + (a1 - r->new_pos) > start)
            return 1;
    }
    return 0;
}

/* The host reads the moves table from memory. */
static int table_read(void *user, uint32_t offset, uint8_t *dst, uint32_t len)
{
    const fd_ip_code_plan *c = user;
    if ((uint64_t)offset + len > (uint64_t)c->moves * FD_IP_MOVE_SIZE)
        return 1;
    memcpy(dst, c->table + offset, len);
    return 0;
}

/* A write order as search_order left it, and what it was planned for. */
typedef struct {
    uint32_t block_size, park_slots, give_up;
    uint64_t search_work;
    step *steps;
    uint32_t nsteps;
    uint32_t *assemble_at, *overwrite_at;
    uint32_t cycles_broken, starved, parked, park_used;
    uint64_t given_up;
} memo_order;

/* Records found between the index and match (new, or new transformed) with
 * params, and the write orders planned for them. */
typedef struct {
    const fd_index *ix;
    const uint8_t *match;
    fd_diff_params params;
    fd_record *recs;
    size_t nrecs;
    memo_order *orders;
    size_t norders;
} memo_records;

struct fd_ip_memo {
    const uint8_t *old, *new_; /* NULL until first used */
    size_t old_len, new_len;
    struct hashed in_old, in_new; /* NULL heads until a plan looks for literals */
    memo_records *sets;
    size_t nsets;
};

fd_ip_memo *fd_ip_memo_new(void)
{
    return calloc(1, sizeof(fd_ip_memo));
}

void fd_ip_memo_free(fd_ip_memo *m)
{
    if (!m)
        return;
    for (size_t k = 0; k < m->nsets; k++) {
        memo_records *r = &m->sets[k];
        free(r->recs);
        for (size_t i = 0; i < r->norders; i++) {
            free(r->orders[i].steps);
            free(r->orders[i].assemble_at);
            free(r->orders[i].overwrite_at);
        }
        free(r->orders);
    }
    free(m->sets);
    hashed_free(&m->in_old);
    hashed_free(&m->in_new);
    free(m);
}

/* The write order for p (search_order's), from set when it holds one
 * planned the same way, else planned and kept there (set NULL: not kept). */
static int planned_order(plan *p, memo_records *set, uint32_t park_slots, uint64_t search_work, fd_ipdelta *out,
                         step *steps, uint32_t *count)
{
    const uint32_t bs = (uint32_t)p->bs;
    memo_order *o, *grown;
    int rc;

    for (size_t i = 0; set && i < set->norders; i++) {
        o = &set->orders[i];
        if (o->block_size != bs || o->park_slots != park_slots || o->give_up != p->give_up ||
            o->search_work != search_work)
            continue;
        memcpy(steps, o->steps, (size_t)o->nsteps * sizeof *steps);
        memcpy(p->assemble_at, o->assemble_at, (size_t)p->nblocks * sizeof *p->assemble_at);
        memcpy(p->overwrite_at, o->overwrite_at, (size_t)p->nblocks * sizeof *p->overwrite_at);
        *count = o->nsteps;
        out->cycles_broken = o->cycles_broken;
        out->starved = o->starved;
        out->parked = o->parked;
        out->park_used = o->park_used;
        out->given_up = o->given_up;
        return FD_DIFF_OK;
    }
    if ((rc = search_order(p, park_slots, search_work, out, steps, count)) || !set)
        return rc;
    grown = realloc(set->orders, (set->norders + 1) * sizeof *set->orders);
    if (!grown)
        return FD_DIFF_ENOMEM;
    set->orders = grown;
    o = &grown[set->norders];
    memset(o, 0, sizeof *o);
    o->steps = malloc((size_t)*count * sizeof *steps + 1);
    o->assemble_at = malloc((size_t)p->nblocks * sizeof *o->assemble_at);
    o->overwrite_at = malloc((size_t)p->nblocks * sizeof *o->overwrite_at);
    if (!o->steps || !o->assemble_at || !o->overwrite_at) {
        free(o->steps);
        free(o->assemble_at);
        free(o->overwrite_at);
        return FD_DIFF_ENOMEM;
    }
    memcpy(o->steps, steps, (size_t)*count * sizeof *steps);
    memcpy(o->assemble_at, p->assemble_at, (size_t)p->nblocks * sizeof *o->assemble_at);
    memcpy(o->overwrite_at, p->overwrite_at, (size_t)p->nblocks * sizeof *o->overwrite_at);
    o->block_size = bs;
    o->park_slots = park_slots;
    o->give_up = p->give_up;
    o->search_work = search_work;
    o->nsteps = *count;
    o->cycles_broken = out->cycles_broken;
    o->starved = out->starved;
    o->parked = out->parked;
    o->park_used = out->park_used;
    o->given_up = out->given_up;
    set->norders++;
    return FD_DIFF_OK;
}

/* The records p is planned from: the memo's, or found (and kept in the
 * memo, *set then where). */
static int plan_records(plan *p, const fd_index *ix, const uint8_t *match, const fd_diff_params *params,
                        fd_ip_memo *memo, memo_records **set, fd_progress_fn progress, void *user)
{
    memo_records *grown;
    int rc;

    *set = NULL;
    if (memo && memo->old) {
        if (memo->old != p->old || memo->old_len != (size_t)p->old_len || memo->new_ != p->new_ ||
            memo->new_len != (size_t)p->new_len)
            return FD_IPDIFF_EPARAM;
    }
    for (size_t k = 0; memo && k < memo->nsets; k++) {
        memo_records *r = &memo->sets[k];
        if (r->ix == ix && r->match == match && r->params.min_gain == params->min_gain &&
            r->params.min_match == params->min_match) {
            p->recs = r->recs;
            p->nrecs = r->nrecs;
            *set = r;
            return FD_DIFF_OK;
        }
    }
    rc = fd_diff_records(ix, match, (size_t)p->new_len, params, (fd_record **)&p->recs, &p->nrecs, progress, user);
    if (rc || !memo)
        return rc;
    grown = realloc(memo->sets, (memo->nsets + 1) * sizeof *memo->sets);
    if (!grown) {
        free((void *)p->recs);
        p->recs = NULL;
        return FD_DIFF_ENOMEM;
    }
    memo->sets = grown;
    memo->old = p->old;
    memo->old_len = (size_t)p->old_len;
    memo->new_ = p->new_;
    memo->new_len = (size_t)p->new_len;
    *set = &grown[memo->nsets++];
    memset(*set, 0, sizeof **set);
    (*set)->ix = ix;
    (*set)->match = match;
    (*set)->params = *params;
    (*set)->recs = (fd_record *)p->recs;
    (*set)->nrecs = p->nrecs;
    return FD_DIFF_OK;
}

int fd_inplace_diff(const fd_index *ix, const uint8_t *old, size_t old_len, const uint8_t *new_, size_t new_len,
                    const fd_diff_params *params, uint32_t block_size, uint32_t park_slots, uint32_t give_up,
                    const fd_ip_code_plan *code, uint32_t copy_min, uint32_t approx, uint32_t grouping,
                    uint32_t span, uint64_t search_work, fd_ip_memo *memo, fd_ipdelta *out, fd_progress_fn progress,
                    void *user)
{
    plan p;
    memo_records *set = NULL;
    step *order = NULL;
    uint32_t nsteps = 0;
    uint8_t *assembled = NULL;
    int rc;

    memset(out, 0, sizeof *out);
    memset(&p, 0, sizeof p);
    if (block_size < FD_IP_BLOCK_MIN || block_size > FD_IP_BLOCK_MAX || (block_size & (block_size - 1)) ||
        park_slots > FD_IP_MAX_PARK || give_up > FD_IP_GIVE_UP_BLOCK || !fd_group_valid(grouping, span) ||
        (code && code->arch && !FD_IP_ARCH_BUILT(code->arch)))
        return FD_IPDIFF_EPARAM;
    if (old_len > FD_IP_IMAGE_MAX || new_len > FD_IP_IMAGE_MAX)
        return FD_DIFF_ETOOBIG;
    p.old = old;
    p.old_len = (int64_t)old_len;
    p.new_ = new_;
    p.new_len = (int64_t)new_len;
    p.bs = block_size;
    p.unit = fd_group_len(grouping, span);
    p.stride = fd_group_stride(grouping);
    p.sums = grouping == FD_GROUP_SUMS || grouping == FD_GROUP_SPANS;
    out->grouping = (uint8_t)grouping;
    out->span = (uint8_t)(grouping == FD_GROUP_SPANS ? span : 0);
    p.give_up = give_up;
    p.nblocks = (uint32_t)(((old_len > new_len ? old_len : new_len) + block_size - 1) / block_size) + 1;
    if (code && code->arch) {
        p.code.arch = code->arch;
        p.code.moves = code->moves;
        p.code.read = table_read;
        p.code.user = (void *)code;
    }
    rc = plan_records(&p, ix, code && code->match_new ? code->match_new : new_, params, memo, &set, progress, user);
    if (rc)
        return rc;
    rc = FD_DIFF_ENOMEM;
    p.scratch = malloc(block_size);
    p.is_step = calloc(p.nblocks, 1);
    p.assemble_at = calloc(p.nblocks, sizeof *p.assemble_at);
    p.overwrite_at = calloc(p.nblocks, sizeof *p.overwrite_at);
    order = malloc((size_t)p.nblocks * 2 * sizeof *order);
    assembled = malloc(block_size);
    p.by_old = malloc((p.nrecs + 1) * sizeof *p.by_old);
    if (!p.is_step || !p.assemble_at || !p.overwrite_at || !order || !assembled || !p.by_old ||
        !p.scratch)
        goto out;
    for (size_t i = 0; i < p.nrecs; i++)
        if (p.recs[i].add_len > 0)
            p.by_old[p.nby_old++] = &p.recs[i];
    qsort(p.by_old, p.nby_old, sizeof *p.by_old, cmp_old_pos);
    for (uint32_t t = 0; (int64_t)t * p.bs < p.new_len; t++) {
        int64_t start = (int64_t)t * p.bs, blen = block_len(&p, t);
        int same = start + blen <= p.old_len && memcmp(old + start, new_ + start, (size_t)blen) == 0;
        p.is_step[t] = !same;
        out->steps += !same;
        out->unchanged += same;
    }
    if ((rc = planned_order(&p, set, park_slots, search_work, out, order, &nsteps)))
        goto out;
    if (copy_min) {
        int64_t most = p.old_len > p.new_len ? p.old_len : p.new_len;
        p.copy_min = copy_min < FIND_KEY ? FIND_KEY : copy_min;
        p.word_cost = approx ? APPROX_WORD_COST : 0;
        p.hash_bits = 10;
        while (p.hash_bits < 24 && ((int64_t)1 << p.hash_bits) < most)
            p.hash_bits++;
        if (memo && memo->in_old.head) {
            p.in_old = memo->in_old;
            p.in_new = memo->in_new;
        } else {
            if ((rc = hash_positions(&p.in_old, old, p.old_len, p.hash_bits)) ||
                (rc = hash_positions(&p.in_new, new_, p.new_len, p.hash_bits))) {
                hashed_free(&p.in_old); /* (out: frees them only without a memo) */
                hashed_free(&p.in_new);
                goto out;
            }
            if (memo) {
                memo->in_old = p.in_old;
                memo->in_new = p.in_new;
            }
        }
        rc = FD_DIFF_ENOMEM;
    }
    {
        record_writer w;
        int64_t prev = -1;
        memset(&w, 0, sizeof w);
        w.out = out;
        for (uint32_t k = 0; k < nsteps; k++) {
            uint32_t t = order[k].block;
            uint8_t kind = order[k].kind;
            if (kind == FD_IP_STEP_WRITE && reads_itself(&p, t)) {
                kind = FD_IP_STEP_STAGED;
                out->staged++;
            }
            emit_step(&p, &order[k], prev, kind, &w, assembled, out);
            prev = t;
        }
        /* The last turn, unless it would be empty. */
        if (out->lanes[out->lane_now].len > out->turn_start[out->lane_now])
            turn_to(out, (out->lane_now + 1) % FD_IP_LANES);
        out->records = w.records;
        out->relocated = w.relocated;
        out->steps = nsteps;
    }
    rc = out->lanes[0].failed || out->lanes[1].failed || out->lanes[2].failed || out->turns.failed ? FD_DIFF_ENOMEM
                                                                                                    : FD_DIFF_OK;
out:
    if (!memo) {
        free((void *)p.recs);
        hashed_free(&p.in_old);
        hashed_free(&p.in_new);
    }
    free(p.is_step);
    free(p.assemble_at);
    free(p.overwrite_at);
    free(p.by_old);
    free(order);
    free(assembled);
    free(p.scratch);
    if (rc)
        fd_ipdelta_free(out);
    return rc;
}

void fd_ipdelta_free(fd_ipdelta *d)
{
    for (int k = 0; k < FD_IP_LANES; k++)
        fd_buf_free(&d->lanes[k]);
    fd_buf_free(&d->turns);
}
