/* Suffix array construction by induced sorting (SA-IS), linear time. */
#ifndef FD_SAIS_H
#define FD_SAIS_H

#include <stdint.h>

/* Fills sa[0..n-1] with the start offsets of the suffixes of text in
 * lexicographic order. Uses about 5n bytes of temporary memory on top of sa.
 * Returns 0, or -1 when memory runs out or n is out of range. */
int fd_sais(const uint8_t *text, int32_t *sa, int32_t n);

#endif
