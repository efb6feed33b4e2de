/* libFuzzer target for the container layers' joins (fd_hex_join, fd_uf2_join:
 * a patch's layout stream is read before its target digest can be checked)
 * (build and seeds: tests/fuzz/run.sh).
 *
 * The input is a selector byte (bit 0: HEX or UF2), the length of the payload
 * (two bytes, little-endian, cut to what is there), the image length (two
 * bytes; for UF2 a count of 512-byte blocks), then the payload and the
 * layout. Checks: the join answers OK or ECORRUPT only; an image it accepts
 * splits back into the same payload, and that split joins back into the same
 * image. Memory errors are the sanitizers' to find. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fd_hex.h"
#include "fd_uf2.h"

static void check(int ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    fd_buf payload = {0}, layout = {0};
    size_t payload_len, image_len;
    int uf2, rc;
    uint8_t *image, *again;

    if (len < 5)
        return 0;
    uf2 = data[0] & 1;
    payload_len = (size_t)(data[1] | data[2] << 8);
    image_len = (size_t)(data[3] | data[4] << 8);
    if (uf2)
        image_len = (image_len & 0xFF) * FD_UF2_BLOCK;
    data += 5, len -= 5;
    if (payload_len > len)
        payload_len = len;
    image = malloc(image_len + 1);
    check(image != NULL);
    rc = uf2 ? fd_uf2_join(data, payload_len, data + payload_len, len - payload_len, image, image_len)
             : fd_hex_join(data, payload_len, data + payload_len, len - payload_len, image, image_len);
    check(rc == (uf2 ? FD_UF2_OK : FD_HEX_OK) || rc == (uf2 ? FD_UF2_ECORRUPT : FD_HEX_ECORRUPT));
    if (rc == 0) {
        rc = uf2 ? fd_uf2_split(image, image_len, &payload, &layout) : fd_hex_split(image, image_len, &payload, &layout);
        check(rc == 0 && payload.len == payload_len && (!payload_len || !memcmp(payload.data, data, payload_len)));
        again = malloc(image_len + 1);
        check(again != NULL);
        rc = uf2 ? fd_uf2_join(payload.data, payload.len, layout.data, layout.len, again, image_len)
                 : fd_hex_join(payload.data, payload.len, layout.data, layout.len, again, image_len);
        check(rc == 0 && !memcmp(again, image, image_len));
        free(again);
    }
    fd_buf_free(&payload);
    fd_buf_free(&layout);
    free(image);
    return 0;
}
