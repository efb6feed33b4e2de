#ifndef SEED_IMAGES_H
#define SEED_IMAGES_H

/* Generated images for the fuzz targets' seed makers (-DFUZZ_*_SEEDS): one
 * definition, so every target is seeded from the same kind of firmware. */

#include <stddef.h>
#include <stdint.h>

static uint32_t rnd(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(*s >> 33);
}

/* Code-like words with repeats and small edits, as in a firmware image. */
static void firmware_like(uint64_t *r, uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (i >= 64 && rnd(r) % 4 == 0)
            p[i] = p[i - 4 * (1 + rnd(r) % 16)];
        else
            p[i] = (uint8_t)(rnd(r) % 8 == 0 ? rnd(r) : (i % 4 == 3 ? 0x08 : rnd(r) % 16));
    }
}

#endif
