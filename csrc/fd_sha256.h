/* SHA-256 (FIPS 180-4) for the device side: no allocation, no tables in RAM. */
#ifndef FD_SHA256_H
#define FD_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define FD_SHA256_LEN 32

typedef struct {
    uint32_t state[8];
    uint64_t length; /* bytes hashed so far */
    uint8_t block[64];
    uint32_t used; /* bytes waiting in block */
} fd_sha256;

void fd_sha256_init(fd_sha256 *h);
void fd_sha256_update(fd_sha256 *h, const uint8_t *data, size_t len);
void fd_sha256_final(fd_sha256 *h, uint8_t out[FD_SHA256_LEN]);

#endif
