/* Buffers of exactly the size asked for, shared by the fuzz targets: under
 * AddressSanitizer even a one-byte overrun is reported, and an empty buffer is
 * a distinct pointer with no usable bytes. */
#ifndef FUZZ_EXACT_H
#define FUZZ_EXACT_H

#include <stdint.h>
#include <stdlib.h>

static uint8_t empty_marker[1];

static uint8_t *alloc_exact(size_t n)
{
    uint8_t *p = malloc(n);
    if (!p && n)
        abort();
    return p ? p : empty_marker;
}

static void free_exact(uint8_t *p)
{
    if (p != empty_marker)
        free(p);
}

#endif
