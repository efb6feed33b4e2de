#include "fd_ip_lz.h"

static int lz_input(void *user, uint8_t *buf, size_t cap, size_t *got)
{
    fd_ip_lz *lz = user;
    uint32_t n = lz->end - lz->next;

    if (n > cap)
        n = (uint32_t)cap;
    if (n && lz->read_patch(lz->patch_user, lz->next, buf, n))
        return 1;
    lz->next += n;
    *got = n;
    return 0;
}

static int lz_open(void *user, uint32_t start, uint32_t len, uint8_t *work, uint32_t work_len)
{
    fd_ip_lz *lz = user;

    lz->next = start;
    lz->end = start + len;
    return fd_lz_init(&lz->dec, work, work_len, lz_input, lz);
}

static int lz_read(void *user, unsigned lane, uint8_t *dst, uint32_t len)
{
    fd_ip_lz *lz = user;
    return fd_lz_decode(&lz->dec, lane, dst, len);
}

void fd_ip_lz_source(fd_ip_lz *lz, fd_payload_source *src, fd_patch_read_fn read_patch, void *patch_user)
{
    lz->read_patch = read_patch;
    lz->patch_user = patch_user;
    src->open = lz_open;
    src->read = lz_read;
    src->user = lz;
}
