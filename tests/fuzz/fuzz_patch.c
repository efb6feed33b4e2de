/* libFuzzer target for the plain container's reader (fd_patch_parse), the
 * code transform's stream (fd_code_plan_parse, fd_code_plan_moves) and the
 * relocation plan's (fd_reloc_plan_parse, fd_reloc_plan_moves) (build:
 * tests/fuzz/run.sh; seeds: the Python fuzzer's plain patches).
 *
 * The input is a patch; its code stream, when it is stored, is parsed too (as
 * a relocation plan with FD_PATCH_FLAG_RELOC), and so is the input itself as
 * a code stream and as a relocation plan. Checks: only known codes come back;
 * an accepted patch's streams lie inside the input, one after another, and
 * its lengths keep the bounds the reader promises; an accepted code plan's
 * maps and moves pass fd_code_check and fd_code_moves_check for its image
 * sizes, an accepted relocation plan fd_reloc_check. Memory errors are the
 * sanitizers' to find. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fd_code.h"
#include "fd_patch.h"
#include "fd_reloc.h"

static void check(int ok)
{
    if (!ok)
        abort();
}

static void check_span(const fd_patch_stream *s, size_t len, size_t *end)
{
    check(s->codec < FD_CODECS);
    check(s->offset >= *end && s->offset <= len && s->len <= len - s->offset);
    *end = s->offset + s->len;
}

static void plan(const uint8_t *data, size_t len, uint64_t old_size, uint64_t new_size)
{
    fd_code_range old_ranges[FD_CODE_MAX_RANGES], new_ranges[FD_CODE_MAX_RANGES];
    fd_code_plan p;
    fd_code_step *steps;
    int rc = fd_code_plan_parse(data, len, old_size, new_size, old_ranges, new_ranges, &p);

    check(rc <= FD_CODE_PLAN_OK && rc >= FD_CODE_PLAN_ETRAILING);
    if (rc)
        return;
    check(fd_code_check(&p.old_map, old_size) == FD_CODE_OK && fd_code_check(&p.new_map, new_size) == FD_CODE_OK);
    check(p.moves <= FD_CODE_MAX_MOVES && p.moves <= (len - p.moves_at) / 2);
    steps = malloc(((size_t)p.moves + 1) * sizeof *steps);
    check(steps != NULL);
    rc = fd_code_plan_moves(data, len, &p, steps);
    check(rc <= FD_CODE_PLAN_OK && rc >= FD_CODE_PLAN_ETRAILING);
    if (rc == FD_CODE_PLAN_OK) {
        fd_code_moves m = {steps, p.moves};
        check(fd_code_moves_check(&m) == FD_CODE_OK);
    }
    free(steps);
}

static void reloc_plan(const uint8_t *data, size_t len)
{
    fd_reloc_plan p;
    fd_code_step *steps;
    int rc = fd_reloc_plan_parse(data, len, &p);

    check(rc <= FD_CODE_PLAN_OK && rc >= FD_CODE_PLAN_ETRAILING);
    if (rc)
        return;
    check(p.arch > 0 && p.arch < FD_CODE_ARCH_END);
    check(p.moves <= FD_CODE_MAX_MOVES && p.moves <= (len - p.moves_at) / 2);
    steps = malloc(((size_t)p.moves + 1) * sizeof *steps);
    check(steps != NULL);
    rc = fd_reloc_plan_moves(data, len, &p, steps);
    check(rc <= FD_CODE_PLAN_OK && rc >= FD_CODE_PLAN_ETRAILING);
    if (rc == FD_CODE_PLAN_OK) {
        fd_code_moves m = {steps, p.moves};
        fd_reloc r = {p.arch, &m, NULL};
        check(fd_reloc_check(&r) == FD_CODE_OK);
    }
    free(steps);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    fd_patch p;
    size_t end = 0;
    int rc = fd_patch_parse(data, len, &p);

    check(rc <= FD_PATCH_OK && rc >= FD_PATCH_ENEWSIZE);
    /* The input read as a code stream, for images of its first bytes' sizes. */
    plan(data, len, len > 0 ? (uint64_t)data[0] << 8 : 0, len > 1 ? (uint64_t)data[1] << 8 : 0);
    reloc_plan(data, len);
    if (rc)
        return 0;
    check(p.old_size <= FD_PATCH_MAX_IMAGE && p.new_size <= FD_PATCH_MAX_IMAGE);
    check(p.fingerprint + p.fingerprint_len <= len && p.digest + p.digest_len <= len);
    if (p.flags & FD_PATCH_FLAG_LAYER)
        check_span(&p.layout, len, &end);
    check(!(p.flags & FD_PATCH_FLAG_CODE && p.flags & FD_PATCH_FLAG_RELOC));
    check(!(p.flags & FD_PATCH_FLAG_RELOC) || p.version == FD_PATCH_VERSION_IMPLIED);
    if (p.flags & (FD_PATCH_FLAG_CODE | FD_PATCH_FLAG_RELOC)) {
        check_span(&p.code, len, &end);
        check(p.code.raw_len <= FD_PATCH_CODE_RAW_MAX);
    }
    check(p.nstreams == (p.kind == FD_PATCH_DELTA ? 4u : 1u));
    for (uint32_t k = 0; k < p.nstreams; k++)
        check_span(&p.streams[k], len, &end);
    check(end == len);
    if (p.kind == FD_PATCH_FULL || p.kind == FD_PATCH_REFERENCED)
        check(p.streams[0].raw_len == p.new_size && p.flags == 0);
    if (p.kind == FD_PATCH_REFERENCED)
        check(p.streams[0].codec != FD_CODEC_STORED); /* zstd or LZMA */
    if ((p.flags & FD_PATCH_FLAG_RELOC) && p.code.codec == FD_CODEC_STORED && p.code.raw_len == p.code.len)
        reloc_plan(data + p.code.offset, p.code.len);
    if ((p.flags & FD_PATCH_FLAG_CODE) && p.code.codec == FD_CODEC_STORED && p.code.raw_len == p.code.len)
        plan(data + p.code.offset, p.code.len, p.flags & FD_PATCH_FLAG_LAYER ? p.inner_old : p.old_size,
             p.flags & FD_PATCH_FLAG_LAYER ? p.inner_new : p.new_size);
    return 0;
}
