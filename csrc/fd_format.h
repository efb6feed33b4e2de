/* Constants of the delta format shared by the encoder and the patchers. */
#ifndef FD_FORMAT_H
#define FD_FORMAT_H

/* Difference bytes are grouped by aligned words of this many new-image bytes:
 * the width of an instruction or address on the 32-bit targets we update. */
#define FD_WORD 4

#endif
