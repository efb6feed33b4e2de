/* The in-place header of docs/inplace.md written the way a host writes it, for
 * the tests that build patches themselves (tests/c/ip_test.c,
 * tests/fuzz/fuzz_inplace.c). */
#ifndef IP_HEADER_H
#define IP_HEADER_H

#include <stdint.h>
#include <string.h>

#include "fd_inplace.h"

/* LEB128, low seven bits first: the number of bytes written (1 to 5). */
static uint32_t put_varint(uint8_t *p, uint32_t v)
{
    uint32_t n = 0;
    for (; v >= 0x80; v >>= 7)
        p[n++] = (uint8_t)(v | 0x80);
    p[n++] = (uint8_t)v;
    return n;
}

/* The header for h into out (FD_IP_HEADER_MAX bytes), its
 * digests left zero for the caller: the header's length. */
static uint32_t put_header(uint8_t *out, const fd_ip_header *h)
{
    const uint32_t fields[FD_IP_VARINTS] = {h->old_size, h->new_size, h->lane_raw[FD_IP_LANE_CONTROL],
                                            h->lane_raw[FD_IP_LANE_LITERALS], h->lane_raw[FD_IP_LANE_DIFFS],
                                            h->payload_len, h->work_need, h->moves};
    uint32_t len = FD_IP_FIXED_SIZE;

    memset(out, 0, FD_IP_FIXED_SIZE);
    memcpy(out, "FDIP", 4);
    out[4] = FD_IP_FORMAT_VERSION;
    out[5] = (uint8_t)(h->codec | h->grouping << 4);
    out[6] = h->block_log;
    out[7] = h->park_slots;
    out[8] = h->arch;
    for (int k = 0; k < FD_IP_VARINTS; k++)
        len += put_varint(out + len, fields[k]);
    return len;
}

#endif
