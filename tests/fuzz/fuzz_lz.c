/* libFuzzer target for the MCU decoder, csrc/fd_lz.c (build: tests/fuzz/run.sh).
 *
 * Input layout:
 *   [0]  cfg: the read callback hands out at most 1 + (cfg & 31) bytes at a
 *        time; (cfg >> 5 & 3) * 2 spare bytes of work memory; bit 7: ask for
 *        lanes 0, 1, 2, 0, ... even when the stream has fewer lanes
 *   [1]  number of turns T
 *   then T little-endian u16 turns (bytes asked of lane 0, 1, ... in
 *   rotation) and the compressed stream (the rest of the input).
 *
 * The work memory is exactly what the stream's header asks for (plus the
 * spare bytes), or the least fd_lz_init accepts when the header is invalid,
 * and starts with garbage; every output buffer has exactly the size asked for.
 * Aborts when a call returns an unknown code, when an error is not sticky, or
 * when the read callback is called again after it reported the end. Memory
 * errors are the sanitizers'.
 *
 * Built with -DFUZZ_LZ_SEEDS instead, the file is a seed maker:
 *   lz_seeds DIR [OLD NEW]...
 * writes inputs: one-, two- and three-lane streams of generated firmware-like
 * data in random turns, headers fd_lz_init must refuse, and the start of the
 * in-place payloads of the given image pairs (4 KiB blocks, the default RAM's
 * windows). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exact.h"
#include "fd_lz.h"

typedef struct {
    const uint8_t *data;
    size_t len, pos, chunk;
    int ended;
} source;

static int read_stream(void *user, uint8_t *buf, size_t cap, size_t *got)
{
    source *s = user;
    size_t n = s->len - s->pos;

    if (s->ended)
        abort(); /* fd_lz.h: never called again after it reported the end */
    if (n > cap)
        n = cap;
    if (n > s->chunk)
        n = s->chunk;
    if (n)
        memcpy(buf, s->data + s->pos, n);
    s->pos += n;
    s->ended = n == 0;
    *got = n;
    return 0;
}


static int known(int rc)
{
    return rc <= FD_LZ_OK && rc >= FD_LZ_EWINDOW;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t min_logs[FD_LZ_MAX_LANES] = {FD_LZ_WINDOW_LOG_MIN, FD_LZ_WINDOW_LOG_MIN, FD_LZ_WINDOW_LOG_MIN};
    size_t turns, pos, work_len, need = 0, i;
    uint8_t *stream, *work;
    unsigned lanes = 1;
    fd_lz_dec d;
    source src;
    int rc, first;

    if (size < 2)
        return 0;
    turns = data[1];
    pos = 2 + 2 * turns;
    if (pos > size)
        return 0;
    stream = alloc_exact(size - pos);
    memcpy(stream, data + pos, size - pos);
    if (size > pos) {
        uint8_t logs[FD_LZ_MAX_LANES] = {(uint8_t)(stream[0] & 0x1F), 0, 0};
        unsigned n = (stream[0] >> 5) + 1u;
        if (n <= FD_LZ_MAX_LANES && size - pos >= n) {
            for (i = 1; i < n; i++)
                logs[i] = stream[i];
            need = fd_lz_work_size(n, logs);
        }
    }
    if (!need)
        need = fd_lz_work_size(1, min_logs) - ((size_t)1 << FD_LZ_WINDOW_LOG_MIN);
    work_len = need + (size_t)(data[0] >> 5 & 3) * 2;
    work = alloc_exact(work_len);
    memset(work, 0xA5, work_len);

    src.data = stream;
    src.len = size - pos;
    src.pos = 0;
    src.chunk = 1 + (data[0] & 31);
    src.ended = 0;
    rc = fd_lz_init(&d, work, work_len, read_stream, &src);
    if (!known(rc))
        abort();
    first = rc;
    if (rc == FD_LZ_OK)
        lanes = d.lanes;
    for (i = 0; i < turns; i++) {
        size_t n = (size_t)data[2 + 2 * i] | (size_t)data[3 + 2 * i] << 8;
        unsigned lane = (unsigned)(i % ((data[0] & 0x80) ? FD_LZ_MAX_LANES : lanes));
        uint8_t *out = alloc_exact(n);
        rc = fd_lz_decode(&d, lane, out, n);
        free_exact(out);
        if (!known(rc) || (first != FD_LZ_OK && rc != first))
            abort();
        if (rc != FD_LZ_OK && first == FD_LZ_OK)
            first = rc;
    }
    rc = fd_lz_finish(&d);
    if (!known(rc) || (first != FD_LZ_OK && rc != first))
        abort();
    free_exact(work);
    free_exact(stream);
    return 0;
}

#ifdef FUZZ_LZ_SEEDS
#include "fd_buf.h"
#include "fd_diff.h"
#include "fd_inplace.h"
#include "fd_ipdiff.h"
#include "fd_lz_enc.h"

#include "seed_images.h"

/* Writes cfg, turns (at most 255, each below 2^16) and the stream. */
static void write_seed(const char *dir, int k, uint8_t cfg, const uint32_t *turns, size_t nturns,
                       const uint8_t *stream, size_t len)
{
    char path[4096];
    FILE *f;

    snprintf(path, sizeof path, "%s/lz-%03d", dir, k);
    f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fputc(cfg, f);
    fputc((int)nturns, f);
    for (size_t i = 0; i < nturns; i++) {
        fputc((int)(turns[i] & 0xFF), f);
        fputc((int)(turns[i] >> 8), f);
    }
    fwrite(stream, 1, len, f);
    fclose(f);
}

/* Compresses the lanes in the given turns and writes the first at most 255
 * of them and 16 KiB of the stream as a seed. */
static void seed(const char *dir, int k, uint8_t cfg, const fd_lz_lane_src *lanes, unsigned nlanes,
                 const uint32_t *turns, size_t nturns)
{
    fd_buf z;
    size_t keep = nturns < 255 ? nturns : 255;
    uint32_t *clipped = malloc((keep + 1) * sizeof *clipped);

    memset(&z, 0, sizeof z);
    if (!clipped || fd_lz_compress_lanes(lanes, nlanes, turns, nturns, 0, &z) != FD_LZ_OK || z.failed) {
        fprintf(stderr, "lz_seeds: compression failed\n");
        exit(2);
    }
    for (size_t i = 0; i < keep; i++)
        clipped[i] = turns[i] < 0xFFFF ? turns[i] : 0xFFFF;
    write_seed(dir, k, cfg, clipped, keep, z.data, z.len < 16384 ? z.len : 16384);
    free(clipped);
    fd_buf_free(&z);
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *p;
    long n;

    if (!f || fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
        perror(path);
        exit(2);
    }
    p = malloc((size_t)n + 1);
    if (!p || fread(p, 1, (size_t)n, f) != (size_t)n) {
        perror(path);
        exit(2);
    }
    fclose(f);
    *len = (size_t)n;
    return p;
}

int main(int argc, char **argv)
{
    uint64_t r = 0x5eed;
    int k = 0;

    if (argc < 2 || argc % 2) {
        fprintf(stderr, "usage: lz_seeds DIR [OLD NEW]...\n");
        return 2;
    }
    for (int i = 0; i < 24; i++, k++) {
        size_t len[3] = {64 + rnd(&r) % 3000, rnd(&r) % 2000, 4 * (rnd(&r) % 700)}, n = 0, left[3];
        uint8_t *data[3];
        uint32_t turns[258];
        fd_lz_lane_src lanes[3];
        unsigned nlanes = 1 + (unsigned)i % 3;
        for (unsigned l = 0; l < 3; l++) {
            data[l] = malloc(len[l] + 1);
            firmware_like(&r, data[l], len[l]);
            lanes[l].data = data[l];
            lanes[l].len = len[l];
            lanes[l].window_log = 8 + rnd(&r) % 3;
            left[l] = l < nlanes ? len[l] : 0;
        }
        while ((left[0] || left[1] || left[2]) && n + nlanes <= 254) {
            for (unsigned l = 0; l < nlanes; l++) {
                size_t t = 1 + rnd(&r) % 300;
                if (t > left[l])
                    t = left[l];
                turns[n++] = (uint32_t)t;
                left[l] -= t;
            }
        }
        for (unsigned l = 0; l < nlanes; l++) /* what is left, in the last turns */
            turns[n++] = (uint32_t)left[l];
        seed(argv[1], k, (uint8_t)rnd(&r), lanes, nlanes, turns, n);
        for (unsigned l = 0; l < 3; l++)
            free(data[l]);
    }
    /* Headers naming more lanes than a stream may have, or a lane with a bad
     * window: refused by fd_lz_init, and later calls must not index lanes. */
    static const uint8_t bad_headers[] = {0x6A, 0x8C, 0xFF, 0x27, 0x2C};
    for (size_t i = 0; i < sizeof bad_headers; i++, k++) {
        const uint32_t turns[3] = {3, 3, 3};
        uint8_t stream[9] = {bad_headers[i], 0x11, 0x5A, 0, 0, 0, 0, 0, 0};
        write_seed(argv[1], k, 0x80 | 31, turns, 3, stream, sizeof stream);
    }
    for (int i = 2; i + 1 < argc; i += 2, k++) {
        size_t old_len, new_len;
        uint8_t *old = read_file(argv[i], &old_len), *new_ = read_file(argv[i + 1], &new_len);
        fd_index *ix = NULL;
        fd_diff_params params;
        fd_ipdelta d;

        fd_diff_default_params(&params);
        if (fd_index_build(&ix, old, old_len, 2, NULL) == FD_DIFF_OK &&
            /* (every other pair's differences by byte, every third as sums) */
            fd_inplace_diff(ix, old, old_len, new_, new_len, &params, 4096, 8, FD_IP_GIVE_UP_COPY, NULL, 0, 0,
                            (uint32_t)(i / 2) % 3u, 0, 0, NULL, &d, NULL, NULL) == FD_DIFF_OK) {
            fd_lz_lane_src lanes[FD_IP_LANES] = {{d.lanes[0].data, d.lanes[0].len, 8},
                                                 {d.lanes[1].data, d.lanes[1].len, 9},
                                                 {d.lanes[2].data, d.lanes[2].len, 9}};
            uint32_t *turns = malloc(d.turns.len + 4);
            memcpy(turns, d.turns.data, d.turns.len);
            seed(argv[1], k, 31, lanes, FD_IP_LANES, turns, d.turns.len / 4);
            free(turns);
            fd_ipdelta_free(&d);
        }
        fd_index_free(ix);
        free(old);
        free(new_);
    }
    printf("lz_seeds: %d seeds in %s\n", k, argv[1]);
    return 0;
}
#endif
