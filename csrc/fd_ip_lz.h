/* Payload source for in-place patches compressed with the MCU codec
 * (fd_lz.h): what a bootloader passes to fd_inplace_apply(). */
#ifndef FD_IP_LZ_H
#define FD_IP_LZ_H

#include <stdint.h>

#include "fd_inplace.h"
#include "fd_lz.h"

typedef struct {
    fd_lz_dec dec;
    fd_patch_read_fn read_patch;
    void *patch_user;
    uint32_t next; /* next compressed byte, as an offset into the patch */
    uint32_t end;  /* end of the coded lanes in the patch */
} fd_ip_lz;

/* Sets up src to decode the lanes of the patch read through read_patch. */
void fd_ip_lz_source(fd_ip_lz *lz, fd_payload_source *src, fd_patch_read_fn read_patch, void *patch_user);

#endif
