# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin binding to the C core in csrc/. Compression lives in Python."""

from libc.stdint cimport UINT64_MAX, int32_t, int64_t, uint8_t, uint32_t, uint64_t, uintptr_t
from cpython.buffer cimport PyBUF_WRITE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc.stdlib cimport free
from libc.string cimport memcpy, memset

import ctypes
import hashlib
import importlib.util
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

from fotadelta.errors import PatchError


cdef extern from "fd_buf.h":
    ctypedef struct fd_buf:
        uint8_t *data
        size_t len
        int failed
    void fd_buf_free(fd_buf *b)
    void fd_buf_append(fd_buf *b, const uint8_t *src, size_t n) nogil


cdef extern from "fd_format.h":
    enum:
        FD_WORD
        FD_GROUP_WORDS
        FD_GROUP_BYTES
        FD_GROUP_SUMS
        FD_GROUP_SPANS
        FD_SPAN_MIN
        FD_SPAN_MAX


cdef extern from "fd_code.h":
    ctypedef struct fd_code_range:
        uint64_t start
        uint64_t len
        uint64_t addr
        uint8_t arch
    ctypedef struct fd_code_map:
        const fd_code_range *ranges
        uint32_t count
        uint8_t block_log
    ctypedef struct fd_code_remap:
        uint64_t (*fn)(void *user, uint64_t pc, uint64_t target) noexcept nogil
        void *user
    ctypedef struct fd_code_step:
        uint64_t start "from"
        int64_t delta
    ctypedef struct fd_code_moves:
        const fd_code_step *steps
        uint32_t count
    enum:
        FD_CODE_MAX_RANGES
        FD_CODE_MAX_MOVES
        FD_CODE_BLOCK_LOG_MIN
        FD_CODE_BLOCK_LOG_MAX
    int fd_code_check(const fd_code_map *m, uint64_t image_len)
    int fd_code_moves_check(const fd_code_moves *m)
    uint64_t fd_code_moved(void *moves, uint64_t pc, uint64_t target) noexcept nogil
    ctypedef struct fd_code_moves_index:
        pass
    void fd_code_moves_index_init(fd_code_moves_index *x, const fd_code_moves *m) nogil
    uint64_t fd_code_moved_indexed(void *index, uint64_t pc, uint64_t target) noexcept nogil
    void fd_code_image(const fd_code_map *m, uint8_t *image, uint64_t lo, uint64_t hi, int inverse,
                       const fd_code_remap *remap) nogil
    void fd_code_copy_image(const fd_code_map *m, uint8_t *dst, const uint8_t *src, uint64_t len, int inverse,
                            const fd_code_remap *remap) nogil


cdef extern from "fd_reloc.h":
    enum:
        FD_RELOC_PIECE
    ctypedef struct fd_reloc:
        uint8_t arch
        const fd_code_moves *moves
        const fd_code_moves_index *index
    int fd_reloc_check(const fd_reloc *r)


cdef extern from "fd_diff.h":
    ctypedef struct fd_diff_params:
        int32_t min_gain
        int32_t min_match
        int32_t threads
    ctypedef struct fd_delta:
        fd_buf ctrl
        fd_buf wmap
        fd_buf words
        fd_buf sums
        fd_buf extra
        uint64_t records
        uint64_t copied
        uint64_t changed
        uint64_t carried
        uint64_t inserted
        uint64_t relocated
    ctypedef struct fd_index:
        pass
    ctypedef int (*fd_progress_fn)(void *user, uint64_t done, uint64_t total)
    ctypedef int (*fd_sort_fn)(const uint8_t *text, int32_t *sa, int32_t n) noexcept nogil
    enum:
        FD_DIFF_OK
        FD_DIFF_ENOMEM
        FD_DIFF_ETOOBIG
        FD_DIFF_CANCELLED
    int fd_index_build(fd_index **out, const uint8_t *old, size_t old_len, int threads, fd_sort_fn sort) nogil
    void fd_index_free(fd_index *ix)
    void fd_diff_default_params(fd_diff_params *p)
    int fd_diff(const fd_index *ix, const uint8_t *new_, size_t new_len, const fd_diff_params *params,
                fd_delta *out, fd_progress_fn progress, void *user) nogil
    void fd_delta_free(fd_delta *d)
    ctypedef struct fd_record:
        int64_t new_pos
        int64_t old_pos
        int64_t add_len
        int64_t insert_len
    enum:
        FD_DIFF_EINVAL
    int fd_ctrl_records(const uint8_t *ctrl, size_t ctrl_len, size_t old_len, size_t new_len, fd_record **out,
                        size_t *count) nogil
    int fd_delta_from_records(const uint8_t *old, size_t old_len, const uint8_t *new_, size_t new_len,
                              const fd_record *recs, size_t n, int grouping, size_t span, const fd_reloc *reloc,
                              fd_delta *out) nogil


cdef extern from "fd_apply.h":
    ctypedef int (*fd_fill_fn)(void *user, uint8_t *buf, size_t cap, size_t *got)
    ctypedef int (*fd_read_at_fn)(void *user, uint64_t offset, uint8_t *dst, size_t len)
    ctypedef int (*fd_write_fn)(void *user, const uint8_t *src, size_t len)
    ctypedef struct fd_reader:
        pass
    ctypedef struct fd_apply_ctx:
        const uint8_t *old
        fd_read_at_fn read_old
        void *old_user
        uint64_t old_len
        uint8_t *out
        fd_write_fn write_out
        void *out_user
        uint64_t new_len
        fd_reader ctrl
        fd_reader wmap
        fd_reader words
        fd_reader extra
        uint8_t *work
        size_t work_len
        const fd_code_map *old_code
        const fd_code_map *new_code
        const fd_code_moves *old_moves
        uint8_t grouping
        uint8_t span
        uint8_t *code_work
        size_t code_work_len
        const fd_reloc *reloc
    enum:
        FD_OK
        FD_ECORRUPT
    size_t FD_APPLY_CODE_WORK(unsigned block_log)
    void fd_reader_init_mem(fd_reader *r, const uint8_t *data, size_t len)
    void fd_reader_init_fill(fd_reader *r, fd_fill_fn fill, void *user, uint8_t *buf, size_t cap)
    int fd_apply(fd_apply_ctx *ctx) nogil
    const char *fd_strerror(int code)


cdef extern from "fd_est.h":
    ctypedef struct fd_est_shape:
        uint8_t lc
        uint8_t lp
        uint8_t pb
    enum:
        FD_EST_MAX_SHAPES
        FD_EST_OK
        FD_EST_ENOMEM
    int fd_est(const uint8_t *data, size_t len, const fd_est_shape *shapes, unsigned nshapes, uint64_t *bits) nogil


def lzma_estimate(const uint8_t[::1] data, shapes):
    """Estimated LZMA-coded size of data in bits, one per (lc, lp, pb) shape (csrc/fd_est.h)."""
    cdef fd_est_shape s[FD_EST_MAX_SHAPES]
    cdef uint64_t bits[FD_EST_MAX_SHAPES]
    cdef unsigned n = len(shapes)
    cdef int rc
    cdef const uint8_t *p = _ptr(data)
    cdef size_t size = data.shape[0]
    if not 1 <= n <= FD_EST_MAX_SHAPES:
        raise ValueError(f"1 to {FD_EST_MAX_SHAPES} shapes")
    for i, (lc, lp, pb) in enumerate(shapes):
        if not (0 <= lc <= 4 and 0 <= lp <= 4 and lc + lp <= 4 and 0 <= pb <= 4):
            raise ValueError(f"invalid LZMA shape {(lc, lp, pb)}")
        s[i].lc = lc
        s[i].lp = lp
        s[i].pb = pb
    with nogil:
        rc = fd_est(p, size, s, n, bits)
    if rc == FD_EST_ENOMEM:
        raise MemoryError()
    if rc != FD_EST_OK:
        raise ValueError("invalid estimate arguments")
    return [bits[i] for i in range(n)]


# Referenced LZMA (codec.compress_referenced_lzma): liblzma's raw LZMA2 coder with the old image as
# its preset dictionary, which Python's lzma module does not expose. Host side only: the device
# patcher never decodes a referenced patch.
cdef extern from "lzma.h" nogil:
    ctypedef enum lzma_ret:
        LZMA_OK
        LZMA_STREAM_END
        LZMA_MEM_ERROR
    ctypedef enum lzma_action:
        LZMA_RUN
        LZMA_FINISH
    ctypedef enum lzma_mode:
        LZMA_MODE_NORMAL
    ctypedef enum lzma_match_finder:
        LZMA_MF_HC4
    ctypedef struct lzma_stream:
        const uint8_t *next_in
        size_t avail_in
        uint8_t *next_out
        size_t avail_out
    ctypedef struct lzma_options_lzma:
        uint32_t dict_size
        const uint8_t *preset_dict
        uint32_t preset_dict_size
        uint32_t lc
        uint32_t lp
        uint32_t pb
        lzma_mode mode
        uint32_t nice_len
        lzma_match_finder mf
    ctypedef struct lzma_filter:
        uint64_t id
        void *options
    uint64_t LZMA_FILTER_LZMA2
    uint64_t LZMA_VLI_UNKNOWN
    uint8_t lzma_lzma_preset(lzma_options_lzma *options, uint32_t preset)
    lzma_ret lzma_raw_encoder(lzma_stream *strm, const lzma_filter *filters)
    lzma_ret lzma_raw_decoder(lzma_stream *strm, const lzma_filter *filters)
    lzma_ret lzma_code(lzma_stream *strm, lzma_action action)
    void lzma_end(lzma_stream *strm)


# liblzma keeps dictionaries and preset dictionaries below 4 GiB; referenced images are far smaller.
cdef size_t _LZMA_DICT_MAX = 1 << 30


cdef void _referenced_filters(lzma_options_lzma *opt, lzma_filter *filters, const uint8_t *ref, size_t ref_len,
                              size_t dict_size) noexcept nogil:
    opt.dict_size = <uint32_t>dict_size
    opt.preset_dict = ref if ref_len else NULL
    opt.preset_dict_size = <uint32_t>ref_len
    filters[0].id = LZMA_FILTER_LZMA2
    filters[0].options = opt
    filters[1].id = LZMA_VLI_UNKNOWN
    filters[1].options = NULL


cdef void _lzma_buffers(lzma_stream *strm, const uint8_t[::1] data, bytes out, size_t out_len):
    strm.next_in = _ptr(data)
    strm.avail_in = data.shape[0]
    strm.next_out = <uint8_t *>PyBytes_AS_STRING(out)
    strm.avail_out = out_len


def lzma_referenced_compress(const uint8_t[::1] reference, const uint8_t[::1] data, size_t dict_size, shape,
                             uint32_t nice_len, size_t limit):
    """data as raw LZMA2 (hash chains, the normal parser, nice_len) whose dictionary of dict_size
    bytes starts filled with the end of reference; None when that takes more than limit bytes
    (the coding stops there)."""
    cdef lzma_options_lzma opt
    cdef lzma_filter filters[2]
    cdef lzma_stream strm
    cdef lzma_ret rc
    cdef const uint8_t *ref = _ptr(reference)
    cdef size_t ref_len = reference.shape[0]
    lc, lp, pb = shape
    if not (0 <= lc <= 4 and 0 <= lp <= 4 and lc + lp <= 4 and 0 <= pb <= 4):
        raise ValueError(f"invalid LZMA shape {shape}")
    if not 4096 <= dict_size <= _LZMA_DICT_MAX or ref_len > _LZMA_DICT_MAX:
        raise ValueError(f"dictionary of {dict_size} bytes, reference of {ref_len}: out of range")
    if ref_len > dict_size:  # only its last dict_size bytes could be reached
        ref += ref_len - dict_size
        ref_len = dict_size
    lzma_lzma_preset(&opt, 9)
    opt.lc, opt.lp, opt.pb = lc, lp, pb
    opt.mode = LZMA_MODE_NORMAL
    opt.mf = LZMA_MF_HC4
    opt.nice_len = nice_len
    _referenced_filters(&opt, filters, ref, ref_len, dict_size)
    memset(&strm, 0, sizeof(strm))
    if lzma_raw_encoder(&strm, filters) != LZMA_OK:
        raise MemoryError()
    out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>limit)
    _lzma_buffers(&strm, data, out, limit)
    try:
        with nogil:
            rc = LZMA_OK
            while rc == LZMA_OK and strm.avail_out:
                rc = lzma_code(&strm, LZMA_FINISH)
    finally:
        lzma_end(&strm)
    if rc == LZMA_MEM_ERROR:
        raise MemoryError()
    if rc != LZMA_STREAM_END:
        return None
    return out[:limit - strm.avail_out]


def lzma_referenced_decompress(const uint8_t[::1] reference, const uint8_t[::1] data, size_t raw_len):
    """A referenced LZMA2 stream decoded against reference into exactly raw_len bytes; PatchError
    unless it ends there, having used all of data. The dictionary is as long as the reference
    and the output together, so its memory is bounded by what the caller allows them."""
    cdef lzma_options_lzma opt
    cdef lzma_filter filters[2]
    cdef lzma_stream strm
    cdef lzma_ret rc
    cdef size_t ref_len = reference.shape[0]
    cdef size_t dict_size = max(ref_len + raw_len, 4096)
    if dict_size > _LZMA_DICT_MAX:
        raise PatchError(f"a referenced LZMA stream of {raw_len} bytes against {ref_len} is too long")
    lzma_lzma_preset(&opt, 6)
    _referenced_filters(&opt, filters, _ptr(reference), ref_len, dict_size)
    memset(&strm, 0, sizeof(strm))
    if lzma_raw_decoder(&strm, filters) != LZMA_OK:
        raise MemoryError()
    out = _image_buffer(raw_len)
    _lzma_buffers(&strm, data, out, raw_len)
    try:
        with nogil:
            rc = lzma_code(&strm, LZMA_RUN)
            if rc == LZMA_OK and strm.avail_out == 0 and strm.avail_in:
                rc = lzma_code(&strm, LZMA_RUN)  # the end mark, after the last byte
    finally:
        lzma_end(&strm)
    if rc == LZMA_MEM_ERROR:
        raise MemoryError()
    if rc != LZMA_STREAM_END or strm.avail_out or strm.avail_in:
        raise PatchError("corrupt referenced LZMA stream")
    return out


cdef extern from "fd_hex.h":
    enum:
        FD_HEX_ENOMEM
    int fd_hex_split(const uint8_t *text, size_t len, fd_buf *payload, fd_buf *layout) nogil
    int fd_hex_join(const uint8_t *payload, size_t payload_len, const uint8_t *layout, size_t layout_len,
                    uint8_t *out, size_t text_len) nogil


cdef extern from "fd_uf2.h":
    enum:
        FD_UF2_ENOMEM
    int fd_uf2_split(const uint8_t *image, size_t len, fd_buf *payload, fd_buf *layout) nogil
    int fd_uf2_join(const uint8_t *payload, size_t payload_len, const uint8_t *layout, size_t layout_len,
                    uint8_t *out, size_t image_len) nogil


ctypedef int (*_split_fn)(const uint8_t *image, size_t len, fd_buf *payload, fd_buf *layout) noexcept nogil
ctypedef int (*_join_fn)(const uint8_t *payload, size_t payload_len, const uint8_t *layout, size_t layout_len,
                         uint8_t *out, size_t image_len) noexcept nogil


cdef object _layer_split(_split_fn split, int nomem, const uint8_t[::1] image):
    """(payload, layout) of image by a container's split (which answers nomem when out of
    memory), or None when it does not split."""
    cdef fd_buf payload, layout
    cdef int rc
    cdef const uint8_t *p = _ptr(image)
    cdef size_t n = image.shape[0]
    memset(&payload, 0, sizeof(payload))
    memset(&layout, 0, sizeof(layout))
    try:
        with nogil:
            rc = split(p, n, &payload, &layout)
        if rc == nomem:
            raise MemoryError()
        if rc != 0:  # not FD_HEX_OK or FD_UF2_OK
            return None
        return _buf_bytes(&payload), _buf_bytes(&layout)
    finally:
        fd_buf_free(&payload)
        fd_buf_free(&layout)


cdef bytes _layer_join(_join_fn join, const uint8_t[::1] payload, const uint8_t[::1] layout, Py_ssize_t image_len,
                       str name):
    """The image of image_len bytes that a payload and its layout rebuild by a container's join;
    PatchError unless they make exactly that."""
    cdef int rc
    cdef const uint8_t *pp = _ptr(payload)
    cdef const uint8_t *lp = _ptr(layout)
    cdef size_t pn = payload.shape[0], ln = layout.shape[0]
    if image_len < 0:
        raise ValueError("the image length must not be negative")
    out = PyBytes_FromStringAndSize(NULL, image_len)
    cdef uint8_t *o = <uint8_t *>PyBytes_AS_STRING(out)
    with nogil:
        rc = join(pp, pn, lp, ln, o, <size_t>image_len)
    if rc != 0:
        raise PatchError(f"the {name} layout does not rebuild the image")
    return out


def hex_split(const uint8_t[::1] text):
    """(payload, layout) of Intel HEX text, or None when it is not HEX that the layout rebuilds
    exactly (csrc/fd_hex.h)."""
    return _layer_split(fd_hex_split, FD_HEX_ENOMEM, text)


def hex_join(const uint8_t[::1] payload, const uint8_t[::1] layout, Py_ssize_t text_len):
    """The Intel HEX text of text_len bytes that a payload and its layout rebuild; PatchError
    unless they make exactly that."""
    return _layer_join(fd_hex_join, payload, layout, text_len, "HEX")


def uf2_split(const uint8_t[::1] image):
    """(payload, layout) of a UF2 image, or None when it is not UF2 blocks that the layout
    rebuilds exactly (csrc/fd_uf2.h)."""
    return _layer_split(fd_uf2_split, FD_UF2_ENOMEM, image)


def uf2_join(const uint8_t[::1] payload, const uint8_t[::1] layout, Py_ssize_t image_len):
    """The UF2 image of image_len bytes that a payload and its layout rebuild; PatchError unless
    they make exactly that."""
    return _layer_join(fd_uf2_join, payload, layout, image_len, "UF2")


cdef class _Callback:
    """A Python callable invoked from C; keeps the first exception it raises."""
    cdef object fn
    cdef object error

    def __cinit__(self, fn):
        self.fn = fn
        self.error = None


cdef int _progress_cb(void *user, uint64_t done, uint64_t total) noexcept with gil:
    cdef _Callback cb = <_Callback>user
    try:
        cb.fn(done, total)
    except BaseException as exc:
        cb.error = exc
        return 1
    return 0


cdef int _fill_cb(void *user, uint8_t *buf, size_t cap, size_t *got) noexcept with gil:
    cdef _Callback cb = <_Callback>user
    cdef const uint8_t[::1] view
    try:
        chunk = cb.fn(cap)
        view = chunk
        if view.shape[0] > <Py_ssize_t>cap:
            raise PatchError("stream reader returned more than requested")
        if view.shape[0]:
            memcpy(buf, &view[0], view.shape[0])
        got[0] = view.shape[0]
    except BaseException as exc:
        cb.error = exc
        return 1
    return 0


cdef int _write_cb(void *user, const uint8_t *src, size_t n) noexcept with gil:
    cdef _Callback cb = <_Callback>user
    try:
        cb.fn(src[:n])
    except BaseException as exc:
        cb.error = exc
        return 1
    return 0


cdef uint8_t _EMPTY[1]


cdef const uint8_t *_ptr(const uint8_t[::1] view):
    # A zero-length view has no element 0; the C side wants a valid address anyway.
    return &view[0] if view.shape[0] else _EMPTY


def _raise_diff_error(int rc, _Callback progress=None):
    if rc == FD_DIFF_CANCELLED and progress is not None and progress.error is not None:
        raise progress.error
    if rc == FD_DIFF_ENOMEM:
        raise MemoryError("out of memory while building the delta")
    if rc == FD_DIFF_ETOOBIG:
        raise ValueError("images of 2 GiB or more are not supported")
    if rc == FD_DIFF_EINVAL:
        raise ValueError("records do not fit the images")
    raise RuntimeError(f"diff failed with code {rc}")


# glibc raises its mmap threshold to the size of each mmapped block freed (up to 32 MiB): once an
# index's suffix arrays are freed, the diff's later buffers of a few MiB (transformed images,
# record streams) come from the heap and stay there when freed, 3-4 bytes per old-image byte on
# UEFI images. A fixed threshold (which disables the raising) hands them back to the system.
cdef extern from *:
    """
    #if defined(__GLIBC__)
    #include <malloc.h>
    static void fd_fix_mmap_threshold(void) { mallopt(M_MMAP_THRESHOLD, 256 * 1024); }
    #else
    static void fd_fix_mmap_threshold(void) {}
    #endif
    """
    void fd_fix_mmap_threshold() nogil


fd_fix_mmap_threshold()


# Apply's largest buffers (the new image, the old image transformed forward) are plain 4 KiB
# pages. Advised onto 2 MiB pages (MADV_HUGEPAGE) a 30 MB one took 15 page faults instead of
# 7,500, but where the kernel compacts memory to make such pages on request (its default
# "madvise" defrag mode) the first touch stalled for 5-30 ms a page whenever free memory was
# fragmented or handed back to the host: ruff's 30 MB apply took 85-90 ms or 220-420 ms at
# random (HDiffPatch: 140), and 95-100 ms every time on 4 KiB pages.
cdef bytes _image_buffer(size_t n):
    """A new bytes object of n bytes to be filled in place (private until returned)."""
    return PyBytes_FromStringAndSize(NULL, <Py_ssize_t>n)


# libdivsufsort's divsufsort(), run with its OpenMP team set to one thread on the thread that sorts
# (see _suffix_sorter); both pointers are set once, when the library is found.
cdef extern from *:
    """
    typedef int (*fd_lib_sort_fn)(const uint8_t *text, int32_t *sa, int32_t n);
    typedef void (*fd_lib_threads_fn)(int n);
    typedef struct { fd_lib_sort_fn sort; fd_lib_threads_fn threads; } fd_lib_sorter;
    static fd_lib_sorter fd_lib;
    static void fd_lib_set(uintptr_t sort, uintptr_t threads)
    {
        fd_lib.sort = (fd_lib_sort_fn)sort;
        fd_lib.threads = (fd_lib_threads_fn)threads;
    }
    static int fd_lib_sort_alone(const uint8_t *text, int32_t *sa, int32_t n)
    {
        if (fd_lib.threads)
            fd_lib.threads(1);
        return fd_lib.sort(text, sa, n);
    }
    """
    void fd_lib_set(uintptr_t sort, uintptr_t threads)
    int fd_lib_sort_alone(const uint8_t *text, int32_t *sa, int32_t n) noexcept nogil


cdef object _sort_library = None  # keeps libdivsufsort loaded once found
cdef fd_sort_fn _sort_fn = NULL
cdef bint _sort_looked_up = False


cdef fd_sort_fn _suffix_sorter():
    """libdivsufsort's divsufsort() (1.6-2x faster than the C core's fd_sais on firmware, the
    same arrays), loaded once from the shared library the pydivsufsort wheel ships. Its Python
    wrapper is not used: it imports numpy and copies the text. NULL (fd_sais) when the
    package or its library is missing.

    The wheel's library is built with OpenMP, whose team of one thread per core spins and then
    waits for a core: on two busy shared cores a 240 KB image's diff took 1.4x the CPU time and
    1.6x the wall time with it (the diff's own threads already sort the two halves of a large
    image at once). So each sort sets the team of the thread it runs on to one thread
    (omp_set_num_threads of the library's private libgomp). Setting OMP_NUM_THREADS while
    loading the library does not do: libgomp reads it once, when first loaded, which importing
    pydivsufsort does with a team per core (a 1.56 MB image's diff, iwlwifi-ax211, then took
    53-63 ms of CPU time instead of 35-37)."""
    global _sort_library, _sort_fn, _sort_looked_up
    if not _sort_looked_up:
        _sort_looked_up = True
        spec = importlib.util.find_spec("pydivsufsort")
        places = spec.submodule_search_locations if spec is not None else None
        found = [f for d in places or () for pattern in ("libdivsufsort.*", "divsufsort.dll")
                 for f in sorted(Path(d).glob(pattern))]
        if found:
            _sort_library = ctypes.CDLL(str(found[0]))
            threads = getattr(_sort_library, "omp_set_num_threads", None)  # None: built without OpenMP
            fd_lib_set(ctypes.cast(_sort_library.divsufsort, ctypes.c_void_p).value,
                       ctypes.cast(threads, ctypes.c_void_p).value if threads is not None else 0)
            _sort_fn = fd_lib_sort_alone
    return _sort_fn


# Old images shorter than this are sorted by fd_sais: divsufsort clears bucket tables of 256 KB
# for any input, whose fresh pages cost more than the sort on a few KB (CPU time, best of 15:
# 0.25 ms against 0.44 on the 6-7 KB ESP32 stubs; the same from 8 KB, 1.2x slower from 16 KB).
cdef size_t _DIVSUFSORT_MIN = 1 << 13


cdef class OldIndex:
    """Suffix arrays over an old image, reusable for several diffs against it; threads is how
    many threads build it and scan new images against it (the output does not depend on it)."""
    cdef fd_index *ix
    cdef object old  # keeps the indexed buffer alive
    cdef int threads

    def __cinit__(self, const uint8_t[::1] old, int threads=1):
        cdef const uint8_t *p = _ptr(old)
        cdef size_t n = old.shape[0]
        cdef int rc
        cdef fd_sort_fn sort
        if threads < 1:
            raise ValueError("threads must be at least 1")
        sort = _suffix_sorter() if n >= _DIVSUFSORT_MIN else NULL
        self.old = old
        self.threads = threads
        with nogil:
            rc = fd_index_build(&self.ix, p, n, threads, sort)
        if rc != FD_DIFF_OK:
            _raise_diff_error(rc)

    def __dealloc__(self):
        fd_index_free(self.ix)

    def diff_streams(self, const uint8_t[::1] new, int min_gain=8, int min_match=0, progress=None):
        """Return ((ctrl, wmap, words, extra), stats, sums): the raw record streams of old -> new
        and the words stream as sums (GROUP_SUMS)."""
        cdef fd_diff_params params
        cdef fd_delta delta
        cdef int rc
        cdef _Callback cb = _Callback(progress) if progress is not None else None
        cdef fd_progress_fn progress_fn = NULL
        cdef const uint8_t *new_p = _ptr(new)
        cdef size_t new_len = new.shape[0]
        cdef void *user = <void *>cb

        if cb is not None:
            progress_fn = _progress_cb
        fd_diff_default_params(&params)
        params.min_gain = min_gain
        params.min_match = min_match
        params.threads = self.threads
        with nogil:
            rc = fd_diff(self.ix, new_p, new_len, &params, &delta, progress_fn, user)
        if rc != FD_DIFF_OK:
            _raise_diff_error(rc, cb)
        return _delta_result(&delta)


cdef bytes _buf_bytes(fd_buf *b):
    return b.data[:b.len] if b.len else b""


cdef tuple _delta_result(fd_delta *delta):
    """The streams, counts and sums (empty by byte) of a delta, which is freed."""
    try:
        streams = (_buf_bytes(&delta.ctrl), _buf_bytes(&delta.wmap), _buf_bytes(&delta.words),
                   _buf_bytes(&delta.extra))
        sums = _buf_bytes(&delta.sums)
    finally:
        fd_delta_free(delta)
    stats = {"records": delta.records, "copied": delta.copied, "changed": delta.changed,
             "carried": delta.carried, "inserted": delta.inserted, "relocated": delta.relocated}
    return streams, stats, sums


GROUP_WORDS = FD_GROUP_WORDS
GROUP_BYTES = FD_GROUP_BYTES
GROUP_SUMS = FD_GROUP_SUMS
GROUP_SPANS = FD_GROUP_SPANS
SPAN_MIN = FD_SPAN_MIN
SPAN_MAX = FD_SPAN_MAX


def delta_along(const uint8_t[::1] old, const uint8_t[::1] new, const uint8_t[::1] ctrl,
                int grouping=FD_GROUP_WORDS, size_t span=0, RelocPlan reloc=None):
    """((ctrl, wmap, words, extra), stats, sums) of old -> new along the records of another
    delta's ctrl stream between images of the same sizes (ValueError if they do not fit, or
    for a grouping other than GROUP_WORDS, GROUP_BYTES and GROUP_SPANS of SPAN_MIN to SPAN_MAX
    bytes). By words the sums are those of diff_streams; by spans the sums are the differences
    to code (the words stream holds their byte differences); by byte there are none. With
    reloc, copies are relocated where that leaves fewer words changed (csrc/fd_reloc.h), the
    ctrl stream's copy lengths carrying the choice; ctrl itself is one without."""
    cdef fd_record *recs = NULL
    cdef size_t n = 0
    cdef fd_delta delta
    cdef const fd_reloc *cp_reloc = NULL
    cdef int rc
    if reloc is not None:
        cp_reloc = &reloc.reloc
    cdef const uint8_t *op = _ptr(old)
    cdef const uint8_t *np = _ptr(new)
    cdef const uint8_t *cp = _ptr(ctrl)
    cdef size_t ol = old.shape[0], nl = new.shape[0], cl = ctrl.shape[0]
    with nogil:
        rc = fd_ctrl_records(cp, cl, ol, nl, &recs, &n)
        if rc == FD_DIFF_OK:
            rc = fd_delta_from_records(op, ol, np, nl, recs, n, grouping, span, cp_reloc, &delta)
        free(recs)
    if rc != FD_DIFF_OK:
        _raise_diff_error(rc)
    return _delta_result(&delta)


CODE_MAX_RANGES = FD_CODE_MAX_RANGES
CODE_MAX_MOVES = FD_CODE_MAX_MOVES
CODE_BLOCK_LOG_MIN = FD_CODE_BLOCK_LOG_MIN
CODE_BLOCK_LOG_MAX = FD_CODE_BLOCK_LOG_MAX


cdef struct _CodeMap:
    fd_code_map map
    fd_code_range ranges[FD_CODE_MAX_RANGES]


cdef int _code_map(_CodeMap *m, int block_log, ranges, uint64_t image_len) except -1:
    """Fills m from (arch, start, length, addr) tuples; PatchError unless fd_code_check accepts it."""
    if len(ranges) > FD_CODE_MAX_RANGES:
        raise PatchError(f"more than {FD_CODE_MAX_RANGES} code ranges")
    if not FD_CODE_BLOCK_LOG_MIN <= block_log <= FD_CODE_BLOCK_LOG_MAX:
        raise PatchError(f"code block log {block_log} out of range")
    for i, (arch, start, length, addr) in enumerate(ranges):
        if not (0 <= arch < 256 and 0 <= start < 2**64 and 0 <= length < 2**64 and 0 <= addr < 2**64):
            raise PatchError("code range field out of range")
        m.ranges[i].arch = arch
        m.ranges[i].start = start
        m.ranges[i].len = length
        m.ranges[i].addr = addr
    m.map.ranges = m.ranges
    m.map.count = len(ranges)
    m.map.block_log = block_log
    if fd_code_check(&m.map, image_len) != 0:
        raise PatchError("code ranges do not fit the image")
    return 0


cdef class _Moves:
    """An fd_code_moves built from (from, delta) pairs, and the memory behind it."""
    cdef fd_code_moves moves
    cdef bytearray mem

    def __cinit__(self, steps):
        cdef fd_code_step *p
        if len(steps) > FD_CODE_MAX_MOVES:
            raise PatchError(f"more than {FD_CODE_MAX_MOVES} code moves")
        self.mem = bytearray(max(len(steps), 1) * sizeof(fd_code_step))
        p = <fd_code_step *><char *>self.mem
        for i, (start, delta) in enumerate(steps):
            if not (0 <= start < 2**64 and -2**63 <= delta < 2**63):
                raise PatchError("code move field out of range")
            p[i].start = start
            p[i].delta = delta
        self.moves.steps = p
        self.moves.count = len(steps)
        if fd_code_moves_check(&self.moves) != 0:
            raise PatchError("code moves are not in increasing order")


def code_transform(const uint8_t[::1] image, int block_log, ranges, bint inverse=False, moves=None):
    """The image with its code ranges ((arch, start, length, addr) tuples) transformed
    forward (relative targets made absolute, moved by moves: (from, delta) steps) or back."""
    cdef _CodeMap m
    cdef fd_code_remap remap
    cdef _Moves mv = _Moves(moves) if moves else None
    cdef fd_code_remap *rp = NULL
    _code_map(&m, block_log, ranges, image.shape[0])
    if mv is not None:
        remap.fn = fd_code_moved
        remap.user = &mv.moves
        rp = &remap
    out = PyBytes_FromStringAndSize(<const char *>_ptr(image), image.shape[0])
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    with nogil:
        fd_code_image(&m.map, p, 0, UINT64_MAX, inverse, rp)
    return out


cdef extern from "fd_moves.h":
    ctypedef struct fd_code_site:
        uint64_t offset
        uint64_t target
    int fd_code_sites(const uint8_t *image, size_t len, const fd_code_map *map, fd_code_site **out,
                      size_t *count) nogil
    int fd_code_score(const uint8_t *image, size_t len, const fd_code_map *map, uint64_t *sites,
                      uint64_t *shared) nogil
    ctypedef struct fd_moves:
        fd_code_step *steps
        size_t count
        int64_t gain
        uint64_t paired
    enum:
        FD_MOVES_OK
        FD_MOVES_ENOMEM
    int fd_moves_learn(const uint8_t *old, size_t old_len, const fd_code_map *old_map, const uint8_t *new_,
                       size_t new_len, const fd_code_map *new_map, const fd_record *recs, size_t nrec,
                       fd_moves *out) nogil


def code_moves(const uint8_t[::1] old, const uint8_t[::1] new, int block_log, old_ranges, new_ranges,
               const uint8_t[::1] ctrl):
    """(moves, gain, paired): the moves of the old image's targets learnt from the copies of a
    delta of old -> new (its ctrl stream), as (from, delta) pairs; the references they are
    expected to save; how many references of new lie in copied code (csrc/fd_moves.h)."""
    cdef _CodeMap om, nm
    cdef fd_record *recs = NULL
    cdef size_t n = 0
    cdef fd_moves mv
    cdef int rc
    cdef const uint8_t *op = _ptr(old)
    cdef const uint8_t *np = _ptr(new)
    cdef const uint8_t *cp = _ptr(ctrl)
    cdef size_t ol = old.shape[0], nl = new.shape[0], cl = ctrl.shape[0]
    _code_map(&om, block_log, old_ranges, ol)
    _code_map(&nm, block_log, new_ranges, nl)
    with nogil:
        rc = fd_ctrl_records(cp, cl, ol, nl, &recs, &n)
        if rc == FD_DIFF_OK:
            rc = fd_moves_learn(op, ol, &om.map, np, nl, &nm.map, recs, n, &mv)
            if rc == FD_MOVES_ENOMEM:
                rc = FD_DIFF_ENOMEM
        free(recs)
    if rc != FD_DIFF_OK:
        _raise_diff_error(rc)
    try:
        moves = [(mv.steps[i].start, mv.steps[i].delta) for i in range(mv.count)]
    finally:
        free(mv.steps)
    return moves, mv.gain, mv.paired


def code_sites(const uint8_t[::1] image, int block_log, ranges):
    """The references the forward transform rewrites, as (image offset, target) pairs in offset
    order (csrc/fd_moves.h)."""
    cdef _CodeMap m
    cdef fd_code_site *sites = NULL
    cdef size_t n = 0
    cdef int rc
    cdef const uint8_t *p = _ptr(image)
    cdef size_t size = image.shape[0]
    _code_map(&m, block_log, ranges, size)
    with nogil:
        rc = fd_code_sites(p, size, &m.map, &sites, &n)
    if rc == FD_MOVES_ENOMEM:
        raise MemoryError()
    try:
        return [(sites[i].offset, sites[i].target) for i in range(n)]
    finally:
        free(sites)


def code_score(const uint8_t[::1] image, int block_log, ranges):
    """(sites, shared): the references the forward transform of the ranges rewrites, and those
    whose target lies in the image (run at address 0) and is another one's (csrc/fd_moves.h)."""
    cdef _CodeMap m
    cdef uint64_t sites = 0, shared = 0
    cdef int rc
    cdef const uint8_t *p = _ptr(image)
    cdef size_t size = image.shape[0]
    _code_map(&m, block_log, ranges, size)
    with nogil:
        rc = fd_code_score(p, size, &m.map, &sites, &shared)
    if rc == FD_MOVES_ENOMEM:
        raise MemoryError()
    return sites, shared


cdef extern from "fd_patch.h":
    enum: FD_CODEC_STORED
    ctypedef struct fd_patch_stream:
        uint8_t codec
        uint64_t raw_len
        size_t offset
        size_t len
    ctypedef struct fd_patch:
        uint8_t version, kind, flags
        uint64_t old_size, new_size
        size_t fingerprint, digest, fingerprint_len, digest_len
        uint64_t inner_old, inner_new
        fd_patch_stream layout, code
        uint64_t parts[4]
        fd_patch_stream streams[4]
        uint32_t nstreams
        uint64_t bad
        unsigned stream
    enum:
        FD_PATCH_OK
        FD_PATCH_EMAGIC
        FD_PATCH_EVERSION
        FD_PATCH_EKIND
        FD_PATCH_EFLAGS
        FD_PATCH_EFULLFLAGS
        FD_PATCH_ETRUNCATED
        FD_PATCH_EVARINT
        FD_PATCH_ECODEC
        FD_PATCH_ETRAILING
        FD_PATCH_ELAYER
        FD_PATCH_ECODELEN
        FD_PATCH_EHUGE
        FD_PATCH_EIMAGELEN
        FD_PATCH_EPARTS
        FD_PATCH_EDATA
        FD_PATCH_EWMAP
        FD_PATCH_ECTRL
        FD_PATCH_ENEWSIZE
        FD_PATCH_FLAG_CODE
        FD_PATCH_FLAG_HEX
        FD_PATCH_FLAG_UF2
        FD_PATCH_FLAG_LAYER
        FD_PATCH_FLAG_BYTES
        FD_PATCH_FLAG_SUMS
        FD_PATCH_FLAG_SPAN
        FD_PATCH_FLAG_RELOC
        FD_PATCH_SOLID
        FD_PATCH_FULL
        FD_PATCH_REFERENCED
        FD_CODECS
    unsigned FD_PATCH_SPAN(uint8_t flags)
    int fd_patch_parse(const uint8_t *data, size_t len, fd_patch *p)
    ctypedef struct fd_code_plan:
        fd_code_map old_map, new_map
        uint32_t moves
        size_t moves_at
        uint64_t bad
    enum:
        FD_CODE_PLAN_OK
        FD_CODE_PLAN_ETRUNCATED
        FD_CODE_PLAN_EVARINT
        FD_CODE_PLAN_EBLOCK
        FD_CODE_PLAN_ERANGES
        FD_CODE_PLAN_EARCH
        FD_CODE_PLAN_ERANGE
        FD_CODE_PLAN_EMOVES
        FD_CODE_PLAN_EORDER
        FD_CODE_PLAN_EMOVE
        FD_CODE_PLAN_ETRAILING
    int fd_code_plan_parse(const uint8_t *data, size_t len, uint64_t old_size, uint64_t new_size,
                           fd_code_range *old_ranges, fd_code_range *new_ranges, fd_code_plan *plan)
    int fd_code_plan_moves(const uint8_t *data, size_t len, const fd_code_plan *plan, fd_code_step *steps)
    ctypedef struct fd_reloc_plan:
        uint8_t arch
        uint32_t moves
        size_t moves_at
        uint64_t bad
    int fd_reloc_plan_parse(const uint8_t *data, size_t len, fd_reloc_plan *plan)
    int fd_reloc_plan_moves(const uint8_t *data, size_t len, const fd_reloc_plan *plan, fd_code_step *steps)


_STREAM_NAMES = ("layout", "code", "ctrl", "wmap", "words", "extra", "image", "records")


cdef str _patch_error(int rc, fd_patch *p):
    if rc == FD_PATCH_EMAGIC:
        return "not a fotadelta patch (bad magic)"
    if rc == FD_PATCH_EVERSION:
        return f"unsupported patch format version {p.bad} (this build reads 1 to 5)"
    if rc == FD_PATCH_EKIND:
        return f"unknown patch kind {p.bad}"
    if rc == FD_PATCH_EFLAGS:
        return f"unknown patch flags {p.bad:#x}"
    if rc == FD_PATCH_EFULLFLAGS:
        return "a full or referenced image carries no code transform, relocated copies or layer"
    if rc == FD_PATCH_ETRUNCATED:
        return "patch is truncated"
    if rc == FD_PATCH_EVARINT:
        return "malformed length field"
    if rc == FD_PATCH_ECODEC:
        if p.kind == FD_PATCH_REFERENCED and p.bad < FD_CODECS:
            return f"a referenced image must be zstd- or LZMA-coded, not codec {p.bad}"
        return f"unknown codec {p.bad} for stream {_STREAM_NAMES[p.stream]}"
    if rc == FD_PATCH_ETRAILING:
        return f"{p.bad} unexpected bytes after the last stream"
    if rc == FD_PATCH_ELAYER:
        return f"{'HEX' if p.flags & FD_PATCH_FLAG_HEX else 'UF2'} layer sizes do not fit the images"
    if rc == FD_PATCH_ECODELEN:
        return "code transform stream is implausibly long"
    if rc == FD_PATCH_EHUGE:
        return "patch declares an image of 2 GiB or more"
    if rc == FD_PATCH_EIMAGELEN:
        return "image stream length differs from the new image size"
    if rc == FD_PATCH_EPARTS:
        return "record stream length differs from the sum of its parts"
    if rc == FD_PATCH_EDATA:
        return "data streams are longer than the new image"
    if rc == FD_PATCH_EWMAP:
        return "word map stream is implausibly long"
    if rc == FD_PATCH_ECTRL:
        return "control stream is implausibly long"
    return "new image size is larger than the records can produce"


cdef tuple _stream(fd_patch_stream *s):
    return (s.codec, s.raw_len, s.offset, s.len)


def parse_patch(const uint8_t[::1] data):
    """The plain container's fields, every length checked (csrc/fd_patch.h): (version, kind,
    flags, old size, new size, fingerprint offset and length, digest offset and length, HEX or
    UF2 payload sizes, solid parts, layout stream, code stream (the code transform, or the
    relocation plan with PATCH_FLAG_RELOC), streams), each stream (codec, raw
    length, offset, stored length) or None; PatchError on anything malformed."""
    cdef fd_patch p
    cdef int rc = fd_patch_parse(_ptr(data), data.shape[0], &p)
    if rc != FD_PATCH_OK:
        raise PatchError(_patch_error(rc, &p))
    return (p.version, p.kind, p.flags, p.old_size, p.new_size, p.fingerprint, p.fingerprint_len,
            p.digest, p.digest_len, (p.inner_old, p.inner_new) if p.flags & FD_PATCH_FLAG_LAYER else None,
            tuple(p.parts) if p.kind == FD_PATCH_SOLID else (),
            _stream(&p.layout) if p.flags & FD_PATCH_FLAG_LAYER else None,
            _stream(&p.code) if p.flags & (FD_PATCH_FLAG_CODE | FD_PATCH_FLAG_RELOC) else None,
            tuple([_stream(&p.streams[k]) for k in range(p.nstreams)]))


PATCH_FLAG_RELOC = FD_PATCH_FLAG_RELOC


cdef str _plan_error(int rc, uint64_t bad, str what="code transform"):
    if rc == FD_CODE_PLAN_ETRUNCATED:
        return "patch is truncated"
    if rc == FD_CODE_PLAN_EVARINT:
        return "malformed length field"
    if rc == FD_CODE_PLAN_EBLOCK:
        return f"code block log {bad} out of range"
    if rc == FD_CODE_PLAN_ERANGES:
        return f"{bad} code ranges (at most {FD_CODE_MAX_RANGES})"
    if rc == FD_CODE_PLAN_EARCH:
        return f"unknown code architecture {bad}"
    if rc == FD_CODE_PLAN_ERANGE:
        return "code range outside its image"
    if rc == FD_CODE_PLAN_EMOVES:
        return f"{bad} code moves (at most {FD_CODE_MAX_MOVES})"
    if rc == FD_CODE_PLAN_EORDER:
        return "code moves are not in increasing order"
    if rc == FD_CODE_PLAN_EMOVE:
        return "code move out of range"
    return f"unexpected bytes after the {what}"


cdef class CodePlan:
    """A code transform as a patch carries it (decoded; csrc/fd_patch.h), parsed and checked
    against the image sizes the records turn into each other: the maps and moves apply
    takes."""
    cdef _CodeMap old
    cdef _CodeMap new
    cdef fd_code_moves moves
    cdef bytearray mem

    def __cinit__(self, const uint8_t[::1] data, uint64_t old_size, uint64_t new_size):
        cdef fd_code_plan plan
        cdef const uint8_t *p = _ptr(data)
        cdef size_t n = data.shape[0]
        cdef int rc = fd_code_plan_parse(p, n, old_size, new_size, self.old.ranges, self.new.ranges, &plan)
        if rc == FD_CODE_PLAN_OK:
            self.mem = bytearray(max(plan.moves, 1) * sizeof(fd_code_step))
            rc = fd_code_plan_moves(p, n, &plan, <fd_code_step *><char *>self.mem)
        if rc != FD_CODE_PLAN_OK:
            raise PatchError(_plan_error(rc, plan.bad))
        self.old.map = plan.old_map
        self.old.map.ranges = self.old.ranges
        self.new.map = plan.new_map
        self.new.map.ranges = self.new.ranges
        self.moves.steps = <fd_code_step *><char *>self.mem
        self.moves.count = plan.moves

    @property
    def block_log(self):
        return self.old.map.block_log

    @property
    def old_ranges(self):
        return _ranges(&self.old.map)

    @property
    def new_ranges(self):
        return _ranges(&self.new.map)

    @property
    def moves(self):
        return [(self.moves.steps[i].start, self.moves.steps[i].delta) for i in range(self.moves.count)]

    def undo(self, bytes image, int threads=1):
        """Undoes the new image's transform in image (a buffer of the caller's own that nothing else
        sees yet), in as many spans at once as threads."""
        if threads < 1:
            raise ValueError("threads must be at least 1")
        if <uint64_t>len(image) < _map_end(&self.new.map):
            raise PatchError("code ranges do not fit the image")
        cdef uintptr_t at = <uintptr_t>PyBytes_AS_STRING(image)
        cdef uint64_t n = len(image)
        cuts = [n * k // threads for k in range(threads + 1)]
        with ThreadPoolExecutor(max_workers=threads - 1) if threads > 1 else nullcontext() as pool:
            spans = [pool.submit(self._undo_span, at, cuts[k], cuts[k + 1]) for k in range(1, threads)]
            self._undo_span(at, cuts[0], cuts[1])
            for span in spans:
                span.result()

    def _undo_span(self, uintptr_t image, uint64_t lo, uint64_t hi):
        """undo's blocks that start in [lo, hi) (fd_code_image's span) of the image at that address."""
        with nogil:
            fd_code_image(&self.new.map, <uint8_t *>image, lo, hi, 1, NULL)

    def forward(self, const uint8_t[::1] old):
        """The old image transformed forward, its targets moved."""
        return self._forward(_ptr(old), old.shape[0])

    cdef bytes _forward(self, const uint8_t *old, uint64_t n):
        cdef fd_code_remap remap
        cdef fd_code_remap *rp = NULL
        cdef fd_code_moves_index index
        if n < _map_end(&self.old.map):
            raise PatchError("code ranges do not fit the image")
        if self.moves.count:
            fd_code_moves_index_init(&index, &self.moves)
            remap.fn = fd_code_moved_indexed
            remap.user = &index
            rp = &remap
        out = _image_buffer(n)
        cdef uint8_t *t = <uint8_t *>PyBytes_AS_STRING(out)
        with nogil:
            fd_code_copy_image(&self.old.map, t, old, n, 0, rp)
        return out


cdef class RelocPlan:
    """A relocation plan as a patch with relocated copies carries it (decoded; csrc/fd_patch.h):
    the architecture and the moves, checked (PatchError), indexed, and ready for fd_apply."""
    cdef fd_code_moves moves
    cdef fd_code_moves_index index
    cdef fd_reloc reloc
    cdef bytearray mem

    def __cinit__(self, const uint8_t[::1] data):
        cdef fd_reloc_plan plan
        cdef const uint8_t *p = _ptr(data)
        cdef size_t n = data.shape[0]
        cdef int rc = fd_reloc_plan_parse(p, n, &plan)
        if rc == FD_CODE_PLAN_OK:
            self.mem = bytearray(max(plan.moves, 1) * sizeof(fd_code_step))
            rc = fd_reloc_plan_moves(p, n, &plan, <fd_code_step *><char *>self.mem)
        if rc != FD_CODE_PLAN_OK:
            raise PatchError(_plan_error(rc, plan.bad, "relocation plan"))
        self.moves.steps = <fd_code_step *><char *>self.mem
        self.moves.count = plan.moves
        fd_code_moves_index_init(&self.index, &self.moves)
        self.reloc.arch = plan.arch
        self.reloc.moves = &self.moves
        self.reloc.index = &self.index

    @property
    def arch(self):
        return self.reloc.arch

    @property
    def moves(self):
        return [(self.moves.steps[i].start, self.moves.steps[i].delta) for i in range(self.moves.count)]

    cdef void wire(self, fd_apply_ctx *ctx):
        ctx.reloc = &self.reloc


RELOC_PIECE = FD_RELOC_PIECE


cdef list _ranges(fd_code_map *m):
    return [(m.ranges[i].arch, m.ranges[i].start, m.ranges[i].len, m.ranges[i].addr) for i in range(m.count)]


cdef uint64_t _map_end(fd_code_map *m):
    return m.ranges[m.count - 1].start + m.ranges[m.count - 1].len if m.count else 0


cdef uint64_t _records_on_code(const uint8_t *ctrl, uint64_t ctrl_len, fd_code_map *m):
    """How many records copy from the old image's code (between its first range and the end of
    its last); every record (a record takes three bytes or more) when the control stream is
    not in memory (ctrl NULL) or does not parse (fd_apply rejects it then)."""
    cdef const uint8_t *at = ctrl
    cdef const uint8_t *end = ctrl + ctrl_len
    cdef uint64_t fields[3]
    cdef uint64_t value, old_pos = 0, count = 0, lo, hi
    cdef unsigned shift
    cdef uint8_t b
    if ctrl == NULL or m.count == 0:
        return ctrl_len // 3
    lo, hi = m.ranges[0].start, _map_end(m)
    while at < end:
        for k in range(3):
            value, shift = 0, 0
            while True:
                if at == end or shift > 63:
                    return ctrl_len // 3
                b = at[0]
                at += 1
                value |= <uint64_t>(b & 0x7F) << shift
                if not b & 0x80:
                    break
                shift += 7
            fields[k] = value
        # seek (zigzag-like: odd steps back), copy length, insert length, as fd_apply reads them
        if fields[0] & 1:
            old_pos -= (fields[0] >> 1) + 1
        else:
            old_pos += fields[0] >> 1
        if fields[1] and old_pos < hi and old_pos + fields[1] > lo:
            count += 1
        old_pos += fields[1]
    return count


cdef class _CodeWork:
    """The transformed old image (when it is made whole) and the work blocks of a transformed
    apply, kept alive while fd_apply runs."""
    cdef CodePlan plan
    cdef bytes t_old
    cdef bytearray work

    cdef int wire(self, fd_apply_ctx *ctx, CodePlan plan, bint old_transformed, uint64_t ctrl_len,
                  const uint8_t *ctrl, bint undo=True) except -1:
        """Sets ctx up for a transformed delta whose control stream is ctrl_len bytes long (at
        ctrl when it is in memory, else NULL).
        Unless the caller has transformed the old image (old_transformed), fd_apply reads it
        through the forward transform a block at a time (what a device does), or, when a delta
        has so many records reaching its code that reading their short copies could transform
        a block each (several times the image), it is transformed here, whole and once. fd_apply undoes
        the output's transform, unless not undo (the caller then does: CodePlan.undo)."""
        cdef uint8_t[::1] view
        cdef uint64_t code_len = 0
        if ctx.old_len < _map_end(&plan.old.map) or ctx.new_len < _map_end(&plan.new.map):
            raise PatchError("code ranges do not fit the image")
        self.plan = plan
        self.work = bytearray(FD_APPLY_CODE_WORK(plan.old.map.block_log))
        view = self.work
        ctx.new_code = &plan.new.map if undo else NULL
        ctx.code_work = &view[0]
        ctx.code_work_len = view.shape[0]
        if old_transformed:
            return 0
        for i in range(plan.old.map.count):
            code_len += plan.old.map.ranges[i].len
        # A record's copy reads at most two blocks beyond its whole ones through the transform:
        # read through when the records that reach the code take at most a quarter of what the
        # whole image costs (its copy into new memory, a page fault every 4 KiB, and its code's
        # transform). On grub-aa64-efi (4.3 MB, 48 KiB of code, 1,083 records of which few reach
        # it) that halved the apply time.
        if 2 * _records_on_code(ctrl, ctrl_len, &plan.old.map) << plan.old.map.block_log <= \
                (code_len + ctx.old_len) // 4:
            ctx.old_code = &plan.old.map
            if plan.moves.count:
                ctx.old_moves = &plan.moves
        else:
            self.t_old = plan._forward(ctx.old, ctx.old_len)
            ctx.old = <const uint8_t *>PyBytes_AS_STRING(self.t_old)
        return 0


def _raise_apply_error(int rc, callbacks):
    for cb in callbacks:
        if cb is not None and (<_Callback>cb).error is not None:
            raise (<_Callback>cb).error
    raise PatchError(fd_strerror(rc).decode())


def apply_memory(const uint8_t[::1] old, const uint8_t[::1] ctrl, const uint8_t[::1] wmap,
                 const uint8_t[::1] words, const uint8_t[::1] extra, uint64_t new_len, CodePlan code=None,
                 bint old_transformed=False, uint64_t extra_len=0, extra_fill=None, int undo_threads=1,
                 unsigned grouping=FD_GROUP_WORDS, unsigned span=0, RelocPlan reloc=None):
    """Apply record streams held in memory; returns the new image. grouping: how the
    differences are grouped (GROUP_*), span the bytes per span of GROUP_SPANS. code is the
    CodePlan of a transformed delta, or None; reloc the RelocPlan of a delta with relocated
    copies, or None; old_transformed: old is the old image already transformed
    forward (code.forward); undo_threads: with more than one, the new image's transform is
    undone after the records, in as many spans at once (else as they are written). extra_fill,
    when given, stands for the extra stream (extra is then empty): extra_fill(view) writes its
    extra_len decoded bytes into the writable view, which is the new image's tail (fd_apply
    reads the extra bytes ahead of where it writes)."""
    cdef const uint8_t *records[4]
    cdef size_t lengths[4]
    out = _image_buffer(new_len)
    records[:] = [_ptr(ctrl), _ptr(wmap), _ptr(words), _ptr(extra)]
    lengths[:] = [ctrl.shape[0], wmap.shape[0], words.shape[0], extra.shape[0]]
    if extra_fill is not None:
        if extra_len > new_len:
            raise PatchError(fd_strerror(FD_ECORRUPT).decode())
        records[3] = <uint8_t *>PyBytes_AS_STRING(out) + (new_len - extra_len)
        lengths[3] = extra_len
        tail = PyMemoryView_FromMemory(<char *>records[3], <Py_ssize_t>extra_len, PyBUF_WRITE)
        try:
            extra_fill(tail)
        finally:
            tail.release()  # the image is private until returned
    if undo_threads < 1:
        raise ValueError("undo_threads must be at least 1")
    _apply_records(_ptr(old), old.shape[0], records, lengths, out, code, old_transformed, grouping, span,
                   undo_threads == 1, reloc)
    if code is not None and undo_threads > 1:
        code.undo(out, undo_threads)
    return out


cdef bytes _apply_records(const uint8_t *old, size_t old_len, const uint8_t **records, size_t *lengths,
                          bytes out, CodePlan code, bint old_transformed, unsigned grouping, unsigned span,
                          bint undo=True, RelocPlan reloc=None):
    """apply_memory on pointers: the four record streams in turn, into out (the new image's
    length)."""
    cdef fd_apply_ctx ctx
    cdef int rc
    cdef _CodeWork cw = _CodeWork()

    memset(&ctx, 0, sizeof(ctx))
    ctx.old = old
    ctx.old_len = old_len
    ctx.out = <uint8_t *>PyBytes_AS_STRING(out)
    ctx.new_len = len(out)
    ctx.grouping = grouping
    ctx.span = span
    fd_reader_init_mem(&ctx.ctrl, records[0], lengths[0])
    fd_reader_init_mem(&ctx.wmap, records[1], lengths[1])
    fd_reader_init_mem(&ctx.words, records[2], lengths[2])
    fd_reader_init_mem(&ctx.extra, records[3], lengths[3])
    if code is not None:
        cw.wire(&ctx, code, old_transformed, lengths[0], records[0], undo)
    if reloc is not None:
        reloc.wire(&ctx)
    with nogil:
        rc = fd_apply(&ctx)
    if rc != FD_OK:
        _raise_apply_error(rc, ())
    return out


cdef unsigned _grouping(uint8_t flags):
    """The grouping of the differences that a patch's flags name."""
    if flags & FD_PATCH_FLAG_BYTES:
        return FD_GROUP_BYTES
    if flags & FD_PATCH_FLAG_SPAN:
        return FD_GROUP_SPANS
    return FD_GROUP_SUMS if flags & FD_PATCH_FLAG_SUMS else FD_GROUP_WORDS


def apply_delta(image, patch, decode, fingerprint, digest, size_t coded_max):
    """The new image of a delta patch without a HEX layer, applied in memory in one call (the
    steps between the C parts had taken a third of a small patch's apply time); None for any
    other patch (a full or referenced image, a HEX layer, coded streams of coded_max bytes or
    more in all: stored ones cost nothing to decode). Every check is the one the steps make:
    parse_patch's, the source image's size and fingerprint(old, length), each stream decoded by
    decode(codec, data, raw length) (which bounds it), CodePlan's, fd_apply's, and
    digest(new, length) against the patch's; PatchError on any failure."""
    cdef const uint8_t[::1] old = image
    cdef fd_patch p
    cdef const uint8_t[::1] data = patch
    cdef const uint8_t *base = _ptr(data)
    cdef int rc = fd_patch_parse(base, data.shape[0], &p)
    cdef const uint8_t *records[4]
    cdef size_t lengths[4]
    cdef const uint8_t[::1] decoded
    cdef CodePlan plan = None
    cdef RelocPlan reloc = None
    cdef size_t at = 0
    cdef size_t coded = 0
    if rc != FD_PATCH_OK:
        raise PatchError(_patch_error(rc, &p))
    if p.kind == FD_PATCH_FULL or p.kind == FD_PATCH_REFERENCED or p.flags & FD_PATCH_FLAG_LAYER:
        return None
    for k in range(p.nstreams):
        if p.streams[k].codec != FD_CODEC_STORED:
            coded += p.streams[k].len
    if p.flags & (FD_PATCH_FLAG_CODE | FD_PATCH_FLAG_RELOC) and p.code.codec != FD_CODEC_STORED:
        coded += p.code.len
    if coded >= coded_max:
        return None
    if <uint64_t>old.shape[0] != p.old_size or \
            fingerprint(image, p.fingerprint_len) != patch[p.fingerprint:p.fingerprint + p.fingerprint_len]:
        raise PatchError("the source image is not the one this patch was made from")
    view = memoryview(patch)
    if p.flags & FD_PATCH_FLAG_CODE:
        plan = CodePlan(decode(p.code.codec, view[p.code.offset:p.code.offset + p.code.len], p.code.raw_len),
                        p.old_size, p.new_size)
    elif p.flags & FD_PATCH_FLAG_RELOC:
        reloc = RelocPlan(decode(p.code.codec, view[p.code.offset:p.code.offset + p.code.len], p.code.raw_len))
    # The decoded streams stay referenced (keep) while fd_apply reads them.
    keep = [decode(p.streams[k].codec, view[p.streams[k].offset:p.streams[k].offset + p.streams[k].len],
                   p.streams[k].raw_len) for k in range(p.nstreams)]
    if p.kind == FD_PATCH_SOLID:
        decoded = keep[0]
        for k in range(4):
            records[k] = _ptr(decoded) + at
            lengths[k] = p.parts[k]
            at += p.parts[k]
    else:
        for k in range(4):
            decoded = keep[k]
            records[k] = _ptr(decoded)
            lengths[k] = decoded.shape[0]
    new = _apply_records(_ptr(old), old.shape[0], records, lengths, _image_buffer(p.new_size), plan, False,
                         _grouping(p.flags), FD_PATCH_SPAN(p.flags), True, reloc)
    if digest(new, p.digest_len) != patch[p.digest:p.digest + p.digest_len]:
        raise PatchError("patched image does not match the target hash")
    return new


def apply_stream(const uint8_t[::1] old, ctrl_read, wmap_read, words_read, extra_read, write,
                 uint64_t new_len, size_t chunk=1 << 16, CodePlan code=None, uint64_t ctrl_len=0,
                 unsigned grouping=FD_GROUP_WORDS, unsigned span=0, RelocPlan reloc=None):
    """Apply record streams pulled from callables read(n) -> bytes (b"" at the end),
    pushing the new image to write(bytes) in chunks; never holds the whole new image.
    code, grouping and reloc as for apply_memory, with ctrl_len the control stream's decoded
    length; chunk is at least RELOC_PIECE with reloc."""
    cdef fd_apply_ctx ctx
    cdef int rc
    cdef _CodeWork cw = _CodeWork()
    cbs = [_Callback(f) for f in (ctrl_read, wmap_read, words_read, extra_read, write)]
    buffers = bytearray(chunk * 5)
    cdef uint8_t[::1] mem = buffers

    memset(&ctx, 0, sizeof(ctx))
    ctx.old = _ptr(old)
    ctx.old_len = old.shape[0]
    ctx.write_out = _write_cb
    ctx.out_user = <void *>cbs[4]
    ctx.new_len = new_len
    ctx.grouping = grouping
    ctx.span = span
    fd_reader_init_fill(&ctx.ctrl, _fill_cb, <void *>cbs[0], &mem[0], chunk)
    fd_reader_init_fill(&ctx.wmap, _fill_cb, <void *>cbs[1], &mem[chunk], chunk)
    fd_reader_init_fill(&ctx.words, _fill_cb, <void *>cbs[2], &mem[2 * chunk], chunk)
    fd_reader_init_fill(&ctx.extra, _fill_cb, <void *>cbs[3], &mem[3 * chunk], chunk)
    ctx.work = &mem[4 * chunk]
    ctx.work_len = chunk
    if code is not None:
        cw.wire(&ctx, code, False, ctrl_len, NULL)
    if reloc is not None:
        reloc.wire(&ctx)
    with nogil:
        rc = fd_apply(&ctx)
    if rc != FD_OK:
        _raise_apply_error(rc, cbs)


# ---- In-place patches (csrc/fd_ipdiff.c host planner, csrc/fd_inplace.c device patcher) ----

cdef extern from "fd_ipdiff.h":
    ctypedef struct fd_ipdelta:
        fd_buf lanes[3]
        fd_buf turns
        uint32_t steps
        uint32_t staged
        uint32_t parked
        uint32_t park_used
        uint32_t unchanged
        uint32_t cycles_broken
        uint32_t starved
        uint64_t given_up
        uint64_t moved
        uint64_t literalized
        uint64_t found
        uint64_t records
        uint64_t relocated
        uint64_t changed_words
    ctypedef struct fd_ip_code_plan:
        uint8_t arch
        const uint8_t *table
        uint32_t moves
        const uint8_t *match_new
    int fd_inplace_diff(const fd_index *ix, const uint8_t *old, size_t old_len, const uint8_t *new_,
                        size_t new_len, const fd_diff_params *params, uint32_t block_size, uint32_t park_slots,
                        uint32_t give_up, const fd_ip_code_plan *code, uint32_t copy_min, uint32_t approx,
                        uint32_t grouping, uint32_t span, uint64_t search_work, fd_ip_memo *memo, fd_ipdelta *out,
                        fd_progress_fn progress, void *user) nogil
    void fd_ipdelta_free(fd_ipdelta *d)
    ctypedef struct fd_ip_memo:
        pass
    fd_ip_memo *fd_ip_memo_new()
    void fd_ip_memo_free(fd_ip_memo *m)
    enum:
        FD_IPDIFF_EPARAM
        FD_IP_GIVE_UP_COPY
        FD_IP_GIVE_UP_BLOCK
        FD_IP_SEARCH_WORK


cdef extern from "fd_ip_code.h":
    enum:
        FD_IP_MOVE_SIZE
        FD_IP_ARCHS

IP_MOVE_SIZE = FD_IP_MOVE_SIZE
IP_ARCHS = FD_IP_ARCHS


cdef extern from "fd_inplace.h":
    ctypedef struct fd_flash:
        int (*read)(void *user, uint32_t addr, uint8_t *dst, uint32_t len)
        int (*erase)(void *user, uint32_t addr)
        int (*write)(void *user, uint32_t addr, const uint8_t *src, uint32_t len)
        int (*digest)(void *user, uint32_t addr, uint32_t len, uint8_t *out)
        void *user
        uint32_t block_size
        uint32_t write_size
        uint32_t slot
        uint32_t slot_size
        uint32_t scratch
        uint32_t park
        uint32_t park_blocks
        uint32_t journal
    ctypedef int (*fd_patch_read_fn)(void *user, uint32_t offset, uint8_t *dst, uint32_t len)
    ctypedef struct fd_payload_source:
        int (*open)(void *user, uint32_t start, uint32_t len, uint8_t *work, uint32_t work_len)
        int (*read)(void *user, unsigned lane, uint8_t *dst, uint32_t len)
        void *user
    int fd_inplace_apply(const fd_flash *flash, fd_patch_read_fn read_patch, void *patch_user,
                         const fd_payload_source *source, void *work, uint32_t work_len)
    const char *fd_ip_strerror(int code)
    int fd_inplace_state(const fd_flash *flash, fd_patch_read_fn read_patch, void *patch_user, void *work,
                         uint32_t work_len)
    ctypedef struct fd_ip_header:
        uint8_t codec
        uint8_t grouping
        uint8_t block_log
        uint8_t park_slots
        uint8_t arch
        uint32_t old_size
        uint32_t new_size
        uint32_t lane_raw[3]
        uint32_t payload_len
        uint32_t work_need
        uint32_t moves
        uint32_t header_len
    int fd_ip_read_header(fd_patch_read_fn read_patch, void *patch_user, uint8_t *raw, fd_ip_header *h)
    enum:
        FD_IP_FIXED_SIZE
        FD_IP_EIO


cdef extern from "fd_ip_lz.h":
    ctypedef struct fd_ip_lz:
        pass
    void fd_ip_lz_source(fd_ip_lz *lz, fd_payload_source *src, fd_patch_read_fn read_patch, void *patch_user)


cdef class InplaceMemo:
    """What inplace_payload calls for the same images share (given as memo): the records of each
    index and min_gain, the write orders planned for them and the slot's hash tables, which
    are then not worked out again. It keeps the images it was used with alive; calls with other
    images raise ValueError."""
    cdef fd_ip_memo *memo
    cdef dict pinned  # by id: the buffers and indexes whose pointers the memo holds

    def __cinit__(self):
        self.pinned = {}
        self.memo = fd_ip_memo_new()
        if self.memo is NULL:
            raise MemoryError()

    def __dealloc__(self):
        fd_ip_memo_free(self.memo)


def inplace_payload(OldIndex index, const uint8_t[::1] new, uint32_t block_size, uint32_t park_slots,
                    int min_gain=8, progress=None, old=None, match_new=None, int arch=0, table=b"",
                    uint32_t copy_min=0, bint approx=False, unsigned grouping=FD_GROUP_WORDS, unsigned span=0,
                    bint give_up_blocks=False,
                    bint search_order=False, InplaceMemo memo=None):
    """Plan block order and build the decoded in-place payload; returns ((control lane, literals
    lane, differences lane), turns, stats), turns being the byte counts the patcher reads from
    lane 0, 1, 2, 0, ... in rotation.

    With code relocation (arch, and table: the moves as the patch carries them) the index may
    be over the old image with its code transformed, and match_new the new one transformed the
    same way: records are found between those, and old (the image itself) is what is copied.
    With copy_min, runs of literals of at least that many bytes that the slot holds when their
    block is written (old bytes not yet overwritten, new bytes already written) are copied from
    there; with approx such a copy may go on past bytes that differ (changed words correct them)
    while the bytes that match outweigh them. grouping (GROUP_*): the differences are of 4-byte
    words, of single changed bytes, of words as sums, or the sums of spans of span bytes (the
    header's flags). give_up_blocks: when a
    write-order cycle finds every park slot busy, give up every pending copy from one block (the
    cheapest to free) rather than the lightest copy. search_order:
    when the park slots run out, search (a bounded while) for a write order that gives up fewer
    copied bytes than the heuristic's. memo (InplaceMemo) lets calls for the same images reuse
    what earlier ones found; the payload is the same with or without it."""
    cdef fd_diff_params params
    cdef fd_ipdelta delta
    cdef fd_ip_code_plan code
    cdef const uint32_t *counts
    cdef size_t k
    cdef int rc
    cdef _Callback cb = _Callback(progress) if progress is not None else None
    cdef fd_progress_fn progress_fn = NULL
    cdef const uint8_t[::1] old_v = index.old if old is None else old
    cdef const uint8_t[::1] match_v = new if match_new is None else match_new
    cdef const uint8_t[::1] table_v = table
    cdef const uint8_t *old_p = _ptr(old_v)
    cdef const uint8_t *new_p = _ptr(new)
    cdef size_t old_len = old_v.shape[0], new_len = new.shape[0]
    cdef void *user = <void *>cb

    if old_v.shape[0] != index.old.shape[0] or match_v.shape[0] != new_len:
        raise ValueError("the transformed images must have the lengths of the images")
    if table_v.shape[0] % FD_IP_MOVE_SIZE:
        raise ValueError(f"a moves table is a multiple of {FD_IP_MOVE_SIZE} bytes")
    if cb is not None:
        progress_fn = _progress_cb
    fd_diff_default_params(&params)
    params.min_gain = min_gain
    params.threads = index.threads
    code.arch = <uint8_t>arch
    code.table = _ptr(table_v)
    code.moves = <uint32_t>(table_v.shape[0] // FD_IP_MOVE_SIZE)
    code.match_new = NULL if match_new is None else _ptr(match_v)
    cdef fd_ip_memo *memo_p = NULL
    if memo is not None:
        for pin in (index, old_v.base, new.base, match_v.base):
            memo.pinned[id(pin)] = pin
        memo_p = memo.memo
    with nogil:
        rc = fd_inplace_diff(index.ix, old_p, old_len, new_p, new_len, &params, block_size, park_slots,
                             FD_IP_GIVE_UP_BLOCK if give_up_blocks else FD_IP_GIVE_UP_COPY, &code, copy_min,
                             approx, grouping, span, FD_IP_SEARCH_WORK if search_order else 0, memo_p, &delta,
                             progress_fn, user)
    if rc == FD_IPDIFF_EPARAM:
        raise ValueError(f"block size {block_size}, {park_slots} park slots, architecture {arch} or grouping "
                         f"{grouping} (span {span}) is not one an in-place patch can have, or the memo is another "
                         f"pair's")
    if rc != FD_DIFF_OK:
        _raise_diff_error(rc, cb)
    try:
        lanes = (_buf_bytes(&delta.lanes[0]), _buf_bytes(&delta.lanes[1]), _buf_bytes(&delta.lanes[2]))
        counts = <const uint32_t *>delta.turns.data
        turns = []
        for k in range(delta.turns.len // sizeof(uint32_t)):
            turns.append(counts[k])
    finally:
        fd_ipdelta_free(&delta)
    stats = {"steps": delta.steps, "staged": delta.staged, "parked": delta.parked, "park_used": delta.park_used,
             "unchanged": delta.unchanged, "cycles_broken": delta.cycles_broken, "starved": delta.starved,
             "given_up": delta.given_up,
             "moved": delta.moved, "literalized": delta.literalized, "found": delta.found, "records": delta.records,
             "relocated": delta.relocated,
             "changed_words": delta.changed_words}
    return lanes, turns, stats


cdef class _Bridge:
    """Python objects the C patcher calls back into, and the first exception they raised."""
    cdef object flash
    cdef object source
    cdef object error


cdef _copy_exact(data, uint8_t *dst, uint32_t n, str short):
    """Copies a callback's result into C memory; it must be exactly n bytes."""
    cdef const uint8_t[::1] view = data
    if view.shape[0] != n:
        raise PatchError(short)
    if n:
        memcpy(dst, &view[0], n)


cdef int _flash_read(void *user, uint32_t addr, uint8_t *dst, uint32_t n) noexcept with gil:
    cdef _Bridge b = <_Bridge>user
    try:
        _copy_exact(b.flash.read(addr, n), dst, n, "flash returned a short read")
    except BaseException as exc:
        b.error = exc
        return 1
    return 0


cdef int _flash_erase(void *user, uint32_t addr) noexcept with gil:
    cdef _Bridge b = <_Bridge>user
    try:
        b.flash.erase(addr)
    except BaseException as exc:
        b.error = exc
        return 1
    return 0


cdef int _flash_write(void *user, uint32_t addr, const uint8_t *src, uint32_t n) noexcept with gil:
    cdef _Bridge b = <_Bridge>user
    try:
        b.flash.write(addr, src[:n])
    except BaseException as exc:
        b.error = exc
        return 1
    return 0


cdef int _flash_digest(void *user, uint32_t addr, uint32_t n, uint8_t *out) noexcept with gil:
    # The host's SHA-256 (OpenSSL's, through hashlib) over the flash's bytes: the patcher's own (fd_sha256) is
    # written for a microcontroller's code size and costs several times more here.
    cdef _Bridge b = <_Bridge>user
    try:
        _copy_exact(hashlib.sha256(b.flash.read(addr, n)).digest(), out, 32, "a SHA-256 digest is 32 bytes")
    except BaseException as exc:
        b.error = exc
        return 1
    return 0


cdef struct _Memory:
    const uint8_t *data
    uint32_t len


cdef int _patch_read(void *user, uint32_t offset, uint8_t *dst, uint32_t n) noexcept nogil:
    cdef _Memory *m = <_Memory *>user
    if offset > m.len or n > m.len - offset:
        return 1
    memcpy(dst, m.data + offset, n)
    return 0


cdef int _source_open(void *user, uint32_t start, uint32_t length, uint8_t *work,
                      uint32_t work_len) noexcept with gil:
    cdef _Bridge b = <_Bridge>user
    try:
        b.source.open(start, length)
    except BaseException as exc:
        b.error = exc
        return 1
    return 0


cdef int _source_read(void *user, unsigned lane, uint8_t *dst, uint32_t n) noexcept with gil:
    cdef _Bridge b = <_Bridge>user
    try:
        _copy_exact(b.source.read(lane, n), dst, n, "in-place payload ends too early")
    except BaseException as exc:
        b.error = exc
        return 1
    return 0


cdef _wire_flash(fd_flash *f, _Bridge b, uint32_t slot, uint32_t slot_size, uint32_t scratch, uint32_t park,
                      uint32_t park_blocks, uint32_t journal):
    """Points the C patcher's flash callbacks at b.flash, with the slot and spare-block layout."""
    memset(f, 0, sizeof(fd_flash))
    f.read = _flash_read
    f.erase = _flash_erase
    f.write = _flash_write
    f.digest = _flash_digest
    f.user = <void *>b
    f.block_size = b.flash.geometry.block_size
    f.write_size = b.flash.geometry.write_size
    f.slot = slot
    f.slot_size = slot_size
    f.scratch = scratch
    f.park = park
    f.park_blocks = park_blocks
    f.journal = journal


def inplace_apply(flash, uint32_t slot, uint32_t slot_size, uint32_t scratch, uint32_t park,
                  uint32_t park_blocks, uint32_t journal, const uint8_t[::1] patch, source, uint32_t work_len,
                  bint lz=False):
    """Run the C in-place patcher on a Python flash object (read/erase/write, geometry).

    The payload is decoded by the C MCU decoder when lz is true, else by source (an object
    with open(start, length), the coded lanes' place in the patch, and read(lane, n)), or read
    as stored when source is None. Returns the patcher's
    result code; an exception raised by a callback (PowerLoss) propagates."""
    cdef fd_flash f
    cdef fd_payload_source src
    cdef fd_ip_lz lz_state
    cdef _Bridge b = _Bridge()
    cdef _Memory mem
    cdef int rc
    work = bytearray(work_len)
    cdef uint8_t[::1] work_view = work

    b.flash = flash
    b.source = source
    mem.data = _ptr(patch)
    mem.len = patch.shape[0]
    _wire_flash(&f, b, slot, slot_size, scratch, park, park_blocks, journal)
    src.open = _source_open
    src.read = _source_read
    src.user = <void *>b
    if lz:
        fd_ip_lz_source(&lz_state, &src, _patch_read, &mem)
    rc = fd_inplace_apply(&f, _patch_read, &mem, &src if (lz or source is not None) else NULL,
                          &work_view[0] if work_len else _EMPTY, work_len)
    if b.error is not None:
        raise b.error
    return rc


def inplace_state(flash, uint32_t slot, uint32_t slot_size, uint32_t scratch, uint32_t park,
                  uint32_t park_blocks, uint32_t journal, const uint8_t[::1] patch):
    """0 when no update of this patch is under way, 1 while one is, 2 once it completed; <0 on error."""
    cdef fd_flash f
    cdef _Bridge b = _Bridge()
    cdef _Memory mem
    cdef int rc
    work = bytearray(flash.geometry.block_size)
    cdef uint8_t[::1] work_view = work

    b.flash = flash
    mem.data = _ptr(patch)
    mem.len = patch.shape[0]
    _wire_flash(&f, b, slot, slot_size, scratch, park, park_blocks, journal)
    rc = fd_inplace_state(&f, _patch_read, &mem, &work_view[0], <uint32_t>len(work))
    if b.error is not None:
        raise b.error
    return rc


def inplace_header(const uint8_t[::1] patch):
    """The in-place header's fields as the device reads them (fd_ip_read_header): codec, grouping,
    block log, park slots, arch, old and new size, the lanes' decoded lengths, payload length, work
    memory, moves and the header's length; PatchError when the device would refuse it."""
    cdef fd_ip_header h
    cdef uint8_t raw[FD_IP_FIXED_SIZE]
    cdef _Memory mem
    mem.data = _ptr(patch)
    mem.len = patch.shape[0]
    rc = fd_ip_read_header(_patch_read, &mem, raw, &h)
    if rc == FD_IP_EIO:
        raise PatchError("in-place patch is truncated")
    if rc:
        raise PatchError("in-place patch header is malformed")
    return (h.codec, h.grouping, h.block_log, h.park_slots, h.arch, h.old_size, h.new_size,
            (h.lane_raw[0], h.lane_raw[1], h.lane_raw[2]), h.payload_len, h.work_need, h.moves, h.header_len)


def inplace_strerror(int rc):
    return fd_ip_strerror(rc).decode()


# ---- MCU LZ codec (csrc/fd_lz*.c) ----
# Small-window LZ77 + range coder whose decoder runs on the device (docs/mcu-codec.md).

from libc.stdlib cimport malloc as _lz_malloc, free as _lz_free


cdef extern from "fd_lz.h":
    ctypedef int (*fd_lz_read_fn)(void *user, uint8_t *buf, size_t cap, size_t *got) noexcept nogil
    ctypedef struct fd_lz_dec:
        pass
    enum:
        FD_LZ_OK
        FD_LZ_ENOMEM
        FD_LZ_ELIMIT
        FD_LZ_WINDOW_LOG_MIN
        FD_LZ_WINDOW_LOG_MAX
        FD_LZ_MAX_LANES
    size_t fd_lz_work_size(unsigned nlanes, const uint8_t *window_logs) nogil
    int fd_lz_init(fd_lz_dec *d, void *work, size_t work_len, fd_lz_read_fn read, void *user) nogil
    int fd_lz_decode(fd_lz_dec *d, unsigned lane, uint8_t *out, size_t n) nogil
    int fd_lz_finish(fd_lz_dec *d) nogil


cdef extern from "fd_lz_enc.h":
    ctypedef struct fd_lz_lane_src:
        const uint8_t *data
        size_t len
        unsigned window_log
    int fd_lz_compress_lanes(const fd_lz_lane_src *lanes, unsigned nlanes, const uint32_t *turns, size_t nturns,
                             size_t limit, fd_buf *out) nogil
    const char *fd_lz_strerror(int code)


LZ_WINDOW_LOG_MIN = FD_LZ_WINDOW_LOG_MIN
LZ_WINDOW_LOG_MAX = FD_LZ_WINDOW_LOG_MAX
LZ_MAX_LANES = FD_LZ_MAX_LANES


cdef struct _lz_mem:
    const uint8_t *p
    size_t left
    size_t step  # largest read handed out, 0 for no limit


cdef int _lz_mem_read(void *user, uint8_t *buf, size_t cap, size_t *got) noexcept nogil:
    cdef _lz_mem *m = <_lz_mem *>user
    cdef size_t n = m.left if m.left < cap else cap
    if m.step and n > m.step:
        n = m.step
    if n:
        memcpy(buf, m.p, n)
        m.p += n
        m.left -= n
    got[0] = n
    return 0


cdef bytes _lz_window_logs(window_logs):
    if not 1 <= len(window_logs) <= FD_LZ_MAX_LANES:
        raise ValueError(f"a stream has 1 to {FD_LZ_MAX_LANES} lanes, not {len(window_logs)}")
    for w in window_logs:
        if not FD_LZ_WINDOW_LOG_MIN <= w <= FD_LZ_WINDOW_LOG_MAX:
            raise ValueError(f"window_log must be in {FD_LZ_WINDOW_LOG_MIN}..{FD_LZ_WINDOW_LOG_MAX}, not {w}")
    return bytes(window_logs)


def lz_work_size(*window_logs):
    """Bytes of work memory the device decoder needs for a stream whose lanes have these
    window logs."""
    cdef bytes logs = _lz_window_logs(window_logs)
    return fd_lz_work_size(len(logs), logs)


def lz_compress(const uint8_t[::1] data, int window_log=12):
    """Compress data for the device decoder as one lane, with a window of 2**window_log bytes."""
    return lz_compress_lanes([data], [window_log], [data.shape[0]] if data.shape[0] else [])


def lz_compress_lanes(lanes, window_logs, turns, limit=None):
    """Compress lanes (bytes-like, one window log each) into one stream. turns is the order
    in which the decoder will ask for bytes: turns[0] bytes of lane 0, turns[1] of the next
    lane, and so on in rotation; each lane's turns must add up to its length. With limit (at
    least 1), None when the stream would be longer than limit bytes (found out early, mostly)."""
    cdef bytes logs = _lz_window_logs(window_logs)
    cdef fd_lz_lane_src src[FD_LZ_MAX_LANES]
    cdef const uint8_t[::1] view
    cdef fd_buf out
    cdef int rc
    cdef unsigned nlanes = len(logs)
    cdef size_t nturns = len(turns), i
    cdef uint32_t *order
    cdef list counts = turns if type(turns) is list else list(turns)
    cdef size_t most = 0
    if len(lanes) != nlanes:
        raise ValueError("one window log per lane")
    if limit is not None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        most = limit
    views = [memoryview(lane).cast("B") for lane in lanes]
    for i in range(nlanes):
        view = views[i]
        src[i].data = _ptr(view)
        src[i].len = view.shape[0]
        src[i].window_log = logs[i]
    order = <uint32_t *>_lz_malloc(max(nturns, 1) * sizeof(uint32_t))
    if order == NULL:
        raise MemoryError()
    memset(&out, 0, sizeof(out))
    try:
        for i in range(nturns):
            order[i] = counts[i]
        with nogil:
            rc = fd_lz_compress_lanes(src, nlanes, order, nturns, most, &out)
        if rc == FD_LZ_ELIMIT:
            return None
        if rc == FD_LZ_ENOMEM:
            raise MemoryError("out of memory while compressing")
        if rc != FD_LZ_OK:
            raise ValueError(f"{fd_lz_strerror(rc).decode()} (lane lengths and turns must agree)")
        return _buf_bytes(&out)
    finally:
        _lz_free(order)
        fd_buf_free(&out)


def lz_decompress(const uint8_t[::1] data, Py_ssize_t raw_len, Py_ssize_t step=0):
    """Decode a one-lane stream with the device decoder; it must hold exactly raw_len bytes."""
    if raw_len < 0:
        raise ValueError("raw_len must not be negative")
    return lz_decompress_lanes(data, [raw_len] if raw_len else [], 1, step)[0]


def lz_decompress_lanes(const uint8_t[::1] data, turns, int nlanes, Py_ssize_t step=0):
    """Decode a stream of nlanes lanes with the device decoder, asking for bytes in the order
    turns gives (as lz_compress_lanes); returns the lanes. Raises PatchError when the stream
    has another number of lanes, is truncated, corrupt or longer. A positive step makes the
    decoder read and produce at most step bytes per call, as a device would (for tests)."""
    cdef fd_lz_dec dec
    cdef _lz_mem mem
    cdef int rc = FD_LZ_OK
    cdef size_t work_len, done, piece, want
    cdef void *work
    cdef uint8_t *dst
    cdef uint8_t minimal[FD_LZ_MAX_LANES]
    cdef unsigned lane
    if step < 0 or any(t < 0 for t in turns):
        raise ValueError("turns and step must not be negative")
    if not 1 <= nlanes <= FD_LZ_MAX_LANES:
        raise ValueError(f"a stream has 1 to {FD_LZ_MAX_LANES} lanes")
    if data.shape[0] and (data[0] >> 5) + 1 != nlanes:
        raise PatchError(f"MCU LZ stream: {(data[0] >> 5) + 1} lanes, expected {nlanes}")
    sizes = [sum(turns[k::nlanes]) for k in range(nlanes)]
    outs = [PyBytes_FromStringAndSize(NULL, n) for n in sizes]
    memset(minimal, FD_LZ_WINDOW_LOG_MIN, sizeof(minimal))
    work_len = fd_lz_work_size(nlanes, minimal)
    if data.shape[0] >= nlanes:
        logs = bytes([data[0] & 0x1F]) + bytes(data[1:nlanes])
        if fd_lz_work_size(nlanes, logs):
            work_len = fd_lz_work_size(nlanes, logs)
    work = _lz_malloc(work_len)
    if work == NULL:
        raise MemoryError()
    mem.p = _ptr(data)
    mem.left = data.shape[0]
    mem.step = step
    filled = [0] * nlanes
    try:
        rc = fd_lz_init(&dec, work, work_len, _lz_mem_read, &mem)
        for k, want in enumerate(turns):
            if rc != FD_LZ_OK:
                break
            lane = k % nlanes
            dst = <uint8_t *>PyBytes_AS_STRING(outs[lane]) + <size_t>filled[lane]
            filled[lane] += want
            done = 0
            with nogil:
                while rc == FD_LZ_OK and done < want:
                    piece = want - done
                    if step and piece > <size_t>step:
                        piece = step
                    rc = fd_lz_decode(&dec, lane, dst + done, piece)
                    done += piece
        if rc == FD_LZ_OK:
            rc = fd_lz_finish(&dec)
    finally:
        _lz_free(work)
    if rc != FD_LZ_OK:
        raise PatchError(f"MCU LZ stream: {fd_lz_strerror(rc).decode()}")
    return outs


cdef extern from "fd_sais.h":
    int fd_sais(const uint8_t *text, int32_t *sa, int32_t n) nogil


def suffix_array(const uint8_t[::1] text, bint library=True):
    """The suffix array of text as native int32 values, sorted by the sorter old-image indexes
    use (library) or by the C core's own fd_sais: for tests that the two agree."""
    cdef const uint8_t *p = _ptr(text)
    cdef fd_sort_fn sort = _suffix_sorter() if library else NULL
    cdef int32_t n
    cdef int32_t *sa
    cdef int rc
    if text.shape[0] >= 0x7FFFFFFF:
        raise ValueError("text too long")
    if library and sort == NULL:
        raise RuntimeError("libdivsufsort (package pydivsufsort) is not installed")
    n = <int32_t>text.shape[0]
    out = bytearray(4 * n if n else 4)
    sa = <int32_t *><char *>out
    with nogil:
        rc = sort(p, sa, n) if sort != NULL else fd_sais(p, sa, n)
    if rc != 0:
        raise MemoryError("suffix sort failed")
    return bytes(out[:4 * n])

