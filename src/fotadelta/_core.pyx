# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin binding to the C core in csrc/. Container format and compression live in Python."""

from libc.stdint cimport int32_t, uint8_t, uint64_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy, memset

from fotadelta.errors import PatchError


cdef extern from "fd_buf.h":
    ctypedef struct fd_buf:
        uint8_t *data
        size_t len


cdef extern from "fd_diff.h":
    ctypedef struct fd_diff_params:
        int32_t min_gain
        int32_t min_match
    ctypedef struct fd_delta:
        fd_buf ctrl
        fd_buf wmap
        fd_buf words
        fd_buf extra
        uint64_t records
        uint64_t copied
        uint64_t changed
        uint64_t inserted
    ctypedef struct fd_index:
        pass
    ctypedef int (*fd_progress_fn)(void *user, uint64_t done, uint64_t total)
    enum:
        FD_DIFF_OK
        FD_DIFF_ENOMEM
        FD_DIFF_ETOOBIG
        FD_DIFF_CANCELLED
    int fd_index_build(fd_index **out, const uint8_t *old, size_t old_len) nogil
    void fd_index_free(fd_index *ix)
    void fd_diff_default_params(fd_diff_params *p)
    int fd_diff(const fd_index *ix, const uint8_t *new_, size_t new_len, const fd_diff_params *params,
                fd_delta *out, fd_progress_fn progress, void *user) nogil
    void fd_delta_free(fd_delta *d)


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
    enum:
        FD_OK
    void fd_reader_init_mem(fd_reader *r, const uint8_t *data, size_t len)
    void fd_reader_init_fill(fd_reader *r, fd_fill_fn fill, void *user, uint8_t *buf, size_t cap)
    int fd_apply(fd_apply_ctx *ctx) nogil
    const char *fd_strerror(int code)


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


def _raise_diff_error(int rc):
    if rc == FD_DIFF_ENOMEM:
        raise MemoryError("out of memory while building the delta")
    if rc == FD_DIFF_ETOOBIG:
        raise ValueError("images of 2 GiB or more are not supported")
    raise RuntimeError(f"diff failed with code {rc}")


cdef class OldIndex:
    """Suffix arrays over an old image, reusable for several diffs against it."""
    cdef fd_index *ix
    cdef object old  # keeps the indexed buffer alive

    def __cinit__(self, const uint8_t[::1] old):
        cdef const uint8_t *p = _ptr(old)
        cdef size_t n = old.shape[0]
        cdef int rc
        self.old = old
        with nogil:
            rc = fd_index_build(&self.ix, p, n)
        if rc != FD_DIFF_OK:
            _raise_diff_error(rc)

    def __dealloc__(self):
        fd_index_free(self.ix)

    def diff_streams(self, const uint8_t[::1] new, int min_gain=8, int min_match=0, progress=None):
        """Return ((ctrl, wmap, words, extra), stats): the raw record streams of old -> new."""
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
        with nogil:
            rc = fd_diff(self.ix, new_p, new_len, &params, &delta, progress_fn, user)
        if rc == FD_DIFF_CANCELLED and cb is not None and cb.error is not None:
            raise cb.error
        if rc != FD_DIFF_OK:
            _raise_diff_error(rc)
        try:
            streams = (_buf_bytes(&delta.ctrl), _buf_bytes(&delta.wmap), _buf_bytes(&delta.words),
                       _buf_bytes(&delta.extra))
        finally:
            fd_delta_free(&delta)
        stats = {"records": delta.records, "copied": delta.copied, "changed": delta.changed,
                 "inserted": delta.inserted}
        return streams, stats


cdef bytes _buf_bytes(fd_buf *b):
    return b.data[:b.len] if b.len else b""


def _raise_apply_error(int rc, callbacks):
    for cb in callbacks:
        if cb is not None and (<_Callback>cb).error is not None:
            raise (<_Callback>cb).error
    raise PatchError(fd_strerror(rc).decode())


def apply_memory(const uint8_t[::1] old, const uint8_t[::1] ctrl, const uint8_t[::1] wmap,
                 const uint8_t[::1] words, const uint8_t[::1] extra, uint64_t new_len):
    """Apply record streams held in memory; returns the new image."""
    cdef fd_apply_ctx ctx
    cdef int rc
    # A fresh bytes object is private until returned, so it may be filled in place.
    out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>new_len)

    memset(&ctx, 0, sizeof(ctx))
    ctx.old = _ptr(old)
    ctx.old_len = old.shape[0]
    ctx.out = <uint8_t *>PyBytes_AS_STRING(out)
    ctx.new_len = new_len
    fd_reader_init_mem(&ctx.ctrl, _ptr(ctrl), ctrl.shape[0])
    fd_reader_init_mem(&ctx.wmap, _ptr(wmap), wmap.shape[0])
    fd_reader_init_mem(&ctx.words, _ptr(words), words.shape[0])
    fd_reader_init_mem(&ctx.extra, _ptr(extra), extra.shape[0])
    with nogil:
        rc = fd_apply(&ctx)
    if rc != FD_OK:
        _raise_apply_error(rc, ())
    return out


def apply_stream(const uint8_t[::1] old, ctrl_read, wmap_read, words_read, extra_read, write,
                 uint64_t new_len, size_t chunk=1 << 16):
    """Apply record streams pulled from callables read(n) -> bytes (b"" at the end),
    pushing the new image to write(bytes) in chunks; never holds the whole new image."""
    cdef fd_apply_ctx ctx
    cdef int rc
    cbs = [_Callback(f) for f in (ctrl_read, wmap_read, words_read, extra_read, write)]
    buffers = bytearray(chunk * 5)
    cdef uint8_t[::1] mem = buffers

    memset(&ctx, 0, sizeof(ctx))
    ctx.old = _ptr(old)
    ctx.old_len = old.shape[0]
    ctx.write_out = _write_cb
    ctx.out_user = <void *>cbs[4]
    ctx.new_len = new_len
    fd_reader_init_fill(&ctx.ctrl, _fill_cb, <void *>cbs[0], &mem[0], chunk)
    fd_reader_init_fill(&ctx.wmap, _fill_cb, <void *>cbs[1], &mem[chunk], chunk)
    fd_reader_init_fill(&ctx.words, _fill_cb, <void *>cbs[2], &mem[2 * chunk], chunk)
    fd_reader_init_fill(&ctx.extra, _fill_cb, <void *>cbs[3], &mem[3 * chunk], chunk)
    ctx.work = &mem[4 * chunk]
    ctx.work_len = chunk
    with nogil:
        rc = fd_apply(&ctx)
    if rc != FD_OK:
        _raise_apply_error(rc, cbs)
