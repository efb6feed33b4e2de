/* Constants of the delta format shared by the encoder and the patchers. */
#ifndef FD_FORMAT_H
#define FD_FORMAT_H

/* Difference bytes are grouped by aligned words of this many new-image bytes:
 * the width of an instruction or address on the 32-bit targets we update. */
#define FD_WORD 4

/* How a delta's differences are grouped (docs/format.md): per changed word,
 * the byte differences of its COPY/ADD bytes; per changed byte, its
 * difference; or per changed word, the digits of the little-endian sum that
 * turns the copied word into the new one (each byte's carry goes into the
 * next byte of the same word: an address that moved by a constant is one
 * constant, whatever carries it crosses). */
enum { FD_GROUP_WORDS = 0, FD_GROUP_BYTES = 1, FD_GROUP_SUMS = 2 };

#endif
