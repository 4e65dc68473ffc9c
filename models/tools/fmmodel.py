"""fmmodel - read and write facemill model files (.fmm, format version 1) from Python.

Converters and the trainer are written in Python; the worker reads the same files in C
(worker/engine/model.c). This module is the Python half of that contract: it writes exactly
the layout that models/FORMAT.md describes and reads files back with the same checks
as the C reader, so a file that passes here passes there and the other way round.

Only the standard library and numpy are used (Debian's python3-numpy; run it with
/usr/bin/python3).

    from fmmodel import write_model, read_model
    write_model("pnet.fmm", {"general.architecture": "mtcnn.pnet",
                             "input.mean": [127.5, 127.5, 127.5]},
                [("conv1.w", w), ("conv1.b", b)])
    meta, tensors = read_model("pnet.fmm")

Type mapping of metadata values (write and read):
    int -> I64, float -> F64, str -> STR,
    list/tuple of int -> I64_ARRAY, of float -> F64_ARRAY, of str -> STR_ARRAY.
read_model returns arrays as lists. Tensors are stored as float32, C order, unless
given as (name, array, "f16"): then they are stored as IEEE binary16 (the compact
form, see models/tools/fmmcompact.py); read_model returns those as float16 arrays.

f32_to_f16 and f16_to_f32 convert on bit patterns exactly like worker/model_f16.c
(round to nearest even, subnormals, overflow to infinity, NaN payloads kept), so a
file converted here and one converted by `facemill model compact|expand` have the
same bytes.
"""

import os
import re
import struct
import zlib

import numpy as np

__all__ = [
    "FormatError", "VersionError", "write_model", "read_model", "RawValue",
    "f32_to_f16", "f16_to_f32",
    "MAGIC", "VERSION", "HEADER_SIZE", "ALIGN",
]

MAGIC = b"FMMODEL\x00"
VERSION = 1
HEADER_SIZE = 128
ALIGN = 64

MAX_META = 4096
MAX_TENSORS = 65536
MAX_KEY_LEN = 255
MAX_STR_LEN = 1 << 20
MAX_ARRAY_COUNT = 1 << 20
MAX_NDIM = 4

T_I64, T_F64, T_STR, T_I64_ARRAY, T_F64_ARRAY, T_STR_ARRAY = 1, 2, 3, 4, 5, 6
DTYPE_F32, DTYPE_F16, DTYPE_I8 = 0, 1, 2
_DTYPE_SIZE = {DTYPE_F32: 4, DTYPE_F16: 2}
_DTYPE_NAME = {DTYPE_F32: "f32", DTYPE_F16: "f16", DTYPE_I8: "int8"}

I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
U64_MAX = (1 << 64) - 1

_KEY_RE = re.compile(rb"[a-z0-9_.]+\Z")

# header: magic, version, header_size, n_meta, n_tensors, meta_offset, meta_size,
# dir_offset, dir_size, data_offset, data_size, index_crc32, data_crc32, reserved
_HEADER = struct.Struct("<8sIIIIQQQQQQII48s")
assert _HEADER.size == HEADER_SIZE
_INDEX_CRC_OFFSET = 72


def f32_to_f16(a):
    """IEEE binary16 bit patterns (uint16 array, same shape) of the float32 values of a.

    Round to nearest, ties to even; gradual underflow; every |x| >= 65520 becomes
    infinity; a NaN keeps its sign and the top 10 payload bits (1 if those are all
    zero). Integer arithmetic only, the same steps as fm_model_f32_to_f16."""
    a = np.asarray(a, dtype=np.float32)
    u = np.ascontiguousarray(a).view(np.uint32).astype(np.int64)
    sign = (u >> 16) & 0x8000
    x = u & 0x7FFFFFFF
    out = np.zeros(u.shape, dtype=np.int64)

    # normal halfs: rebias the exponent and round 23 fraction bits to 10
    normal = (x >= 0x38800000) & (x < 0x477FF000)
    r = x - 0x38000000
    r = (r + 0x0FFF + ((r >> 13) & 1)) >> 13
    out = np.where(normal, r, out)

    # subnormal halfs: significand >> (126 - exponent), rounded to nearest even
    sub = (x >= 0x33000000) & (x < 0x38800000)
    e = np.where(sub, x >> 23, 112)
    shift = 126 - e
    sig = (x & 0x7FFFFF) | 0x800000
    q = sig >> shift
    rem = sig & ((np.int64(1) << shift) - 1)
    half = np.int64(1) << (shift - 1)
    q = q + ((rem > half) | ((rem == half) & ((q & 1) == 1)))
    out = np.where(sub, q, out)

    # overflow and infinities; NaNs keep their payload's top bits, never 0
    out = np.where((x >= 0x477FF000) & (x <= 0x7F800000), 0x7C00, out)
    payload = (x >> 13) & 0x3FF
    nan = 0x7C00 | np.where(payload == 0, 1, payload)
    out = np.where(x > 0x7F800000, nan, out)
    return (out | sign).astype(np.uint16)


def _f16_table():
    """float32 bit patterns of all 65,536 halfs, computed field by field."""
    h = np.arange(65536, dtype=np.int64)
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    out = ((e + 112) << 23) | (m << 13)                      # normal
    out = np.where(e == 0x1F, 0x7F800000 | (m << 13), out)   # infinity, NaN
    # subnormal m x 2^-24: shift the leading 1 up to bit 10 (k = 1..10 places)
    k = np.zeros(h.shape, dtype=np.int64)
    mm = m.copy()
    for _ in range(10):
        step = (mm != 0) & ((mm & 0x400) == 0)
        mm = np.where(step, mm << 1, mm)
        k = k + step
    out = np.where((e == 0) & (m != 0), ((113 - k) << 23) | ((mm & 0x3FF) << 13), out)
    out = np.where((e == 0) & (m == 0), 0, out)
    return (out | sign).astype(np.uint32)


_F16_TABLE = None


def f16_to_f32(h):
    """The float32 values (same shape) of binary16 bit patterns h (uint16 or float16
    array). Exact for every half; NaN payloads are shifted up, never quieted."""
    global _F16_TABLE
    if _F16_TABLE is None:
        _F16_TABLE = _f16_table()
    h = np.asarray(h)
    if h.dtype == np.float16:
        h = h.view(np.uint16)
    if h.dtype != np.uint16:
        raise TypeError("f16_to_f32 takes uint16 bit patterns or float16, not %s" % h.dtype)
    return _F16_TABLE[h].view(np.float32)


class RawValue(tuple):
    """A metadata value as the file encodes it: (type, value bytes). read_model gives
    these with raw_meta=True and write_model writes them verbatim, so a tool can copy
    metadata without re-encoding it (empty arrays, whose element type a plain list
    does not carry, included)."""

    __slots__ = ()

    def __new__(cls, type_, data):
        return tuple.__new__(cls, (type_, bytes(data)))

    @property
    def type(self):
        return self[0]

    @property
    def data(self):
        return self[1]


class FormatError(ValueError):
    """The file is not a valid version-1 model file (message names file and field)."""


class VersionError(FormatError):
    """The file is a model file of a version this module does not read."""


def _align(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _check_key(key):
    """Returns the UTF-8 bytes of a metadata key or raises ValueError."""
    if not isinstance(key, str):
        raise TypeError("metadata key %r is not a str" % (key,))
    b = key.encode("utf-8")
    if not 1 <= len(b) <= MAX_KEY_LEN or not _KEY_RE.match(b):
        raise ValueError("metadata key %r: must be 1..255 bytes of [a-z0-9_.]" % key)
    return b


def _name_ok(b):
    """True when b is a valid tensor name: 1..255 bytes of UTF-8, no control chars."""
    if not 1 <= len(b) <= MAX_KEY_LEN:
        return False
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in s)


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_float(v):
    return isinstance(v, (float, np.floating))


def _enc_str(s, what):
    if not isinstance(s, str):
        raise TypeError("%s: %r is not a str" % (what, s))
    b = s.encode("utf-8")
    if len(b) > MAX_STR_LEN:
        raise ValueError("%s: string of %d bytes exceeds %d" % (what, len(b), MAX_STR_LEN))
    return struct.pack("<I", len(b)) + b


def _enc_i64(v, what):
    v = int(v)
    if not I64_MIN <= v <= I64_MAX:
        raise ValueError("%s: %d does not fit in i64" % (what, v))
    return struct.pack("<q", v)


def _encode_value(key, value):
    """Returns (type, value bytes) of one metadata value."""
    what = "metadata '%s'" % key
    if isinstance(value, RawValue):
        if value.type not in (T_I64, T_F64, T_STR, T_I64_ARRAY, T_F64_ARRAY, T_STR_ARRAY):
            raise ValueError("%s: raw type %r is not 1..6" % (what, value.type))
        return value.type, value.data
    if _is_int(value):
        return T_I64, _enc_i64(value, what)
    if _is_float(value):
        return T_F64, struct.pack("<d", float(value))
    if isinstance(value, str):
        return T_STR, _enc_str(value, what)
    if isinstance(value, (list, tuple)):
        n = len(value)
        if n == 0:
            raise ValueError("%s: empty list, element type unknown" % what)
        if n > MAX_ARRAY_COUNT:
            raise ValueError("%s: %d elements exceed %d" % (what, n, MAX_ARRAY_COUNT))
        head = struct.pack("<I", n)
        if all(_is_int(v) for v in value):
            return T_I64_ARRAY, head + b"".join(_enc_i64(v, what) for v in value)
        if all(_is_float(v) for v in value):
            return T_F64_ARRAY, head + struct.pack("<%dd" % n, *[float(v) for v in value])
        if all(isinstance(v, str) for v in value):
            return T_STR_ARRAY, head + b"".join(_enc_str(v, what) for v in value)
        raise TypeError("%s: list elements must be all int, all float or all str" % what)
    raise TypeError("%s: unsupported value type %s" % (what, type(value).__name__))


def _fsync_dir(path):
    d = os.path.dirname(os.path.abspath(path))
    fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_model(path, metadata, tensors):
    """Writes a model file at path, atomically.

    metadata: dict key -> value (see the module docstring for the type mapping); keys
        are 1..255 bytes of [a-z0-9_.]; entries are written in dict order.
    tensors: list of (name, array) or (name, array, "f16"); names unique, 1..255
        bytes of UTF-8 without control characters; arrays have 1..4 dimensions, each
        >= 1. A pair is stored as float32 (f32). With "f16" the tensor is stored as
        binary16: a float16 array is written bit for bit, any other array is
        converted to float32 and rounded with f32_to_f16. Tensors are laid out in
        list order, each at a multiple of 64 bytes.

    The file is written to PATH.tmp.PID in the same directory, fsynced, renamed over
    path, and the directory is fsynced, so a process that has the old file mapped
    keeps its pages. Raises TypeError/ValueError on bad input and OSError on I/O
    errors (the temporary file is removed).
    """
    if not isinstance(metadata, dict):
        raise TypeError("metadata must be a dict")
    if len(metadata) > MAX_META:
        raise ValueError("%d metadata entries exceed %d" % (len(metadata), MAX_META))
    tensors = list(tensors)
    if len(tensors) > MAX_TENSORS:
        raise ValueError("%d tensors exceed %d" % (len(tensors), MAX_TENSORS))

    meta = bytearray()
    for key, value in metadata.items():
        kb = _check_key(key)
        t, vb = _encode_value(key, value)
        meta += struct.pack("<I", len(kb)) + kb + struct.pack("<I", t) + vb

    arrays = []
    seen = set()
    for item in tensors:
        if len(item) == 3:
            name, arr, kind = item
            if kind not in ("f32", "f16"):
                raise ValueError("tensor %r: dtype %r is not 'f32' or 'f16'" % (name, kind))
        else:
            name, arr = item
            kind = "f32"
        if not isinstance(name, str):
            raise TypeError("tensor name %r is not a str" % (name,))
        nb = name.encode("utf-8")
        if not _name_ok(nb):
            raise ValueError("tensor %r: name must be 1..255 bytes without control "
                             "characters" % name)
        if nb in seen:
            raise ValueError("tensor %r: duplicate name" % name)
        seen.add(nb)
        if kind == "f16":
            a = np.asarray(arr)
            if a.dtype == np.float16:
                a = a.view(np.uint16)
            else:
                a = f32_to_f16(a)
            dtype = DTYPE_F16
        else:
            a = np.asarray(arr, dtype=np.float32)
            dtype = DTYPE_F32
        # Checked before ascontiguousarray, which turns a 0-d array into a 1-d one.
        if not 1 <= a.ndim <= MAX_NDIM:
            raise ValueError("tensor %r: ndim %d is not 1..4" % (name, a.ndim))
        if any(d < 1 for d in a.shape):
            raise ValueError("tensor %r: dims %s must all be >= 1" % (name, a.shape))
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        arrays.append((nb, dtype, a))

    directory = bytearray()
    offset = 0
    placed = []
    for nb, dtype, a in arrays:
        directory += struct.pack("<I", len(nb)) + nb
        directory += struct.pack("<II", dtype, a.ndim)
        directory += struct.pack("<%dQ" % a.ndim, *a.shape)
        directory += struct.pack("<QQ", offset, a.nbytes)
        placed.append((offset, a))
        offset = _align(offset + a.nbytes)
    data_size = placed[-1][0] + placed[-1][1].nbytes if placed else 0

    meta_offset = HEADER_SIZE
    dir_offset = meta_offset + len(meta)
    dir_end = dir_offset + len(directory)
    data_offset = _align(dir_end)

    data = bytearray(data_size)
    for off, a in placed:
        data[off:off + a.nbytes] = a.tobytes(order="C")
    data_crc = zlib.crc32(data) & 0xFFFFFFFF

    def header(index_crc):
        return _HEADER.pack(MAGIC, VERSION, HEADER_SIZE, len(metadata), len(arrays),
                            meta_offset, len(meta), dir_offset, len(directory),
                            data_offset, data_size, index_crc, data_crc, bytes(48))

    index = header(0) + bytes(meta) + bytes(directory)
    index_crc = zlib.crc32(index) & 0xFFFFFFFF
    index = header(index_crc) + bytes(meta) + bytes(directory)
    blob = index + bytes(data_offset - dir_end) + bytes(data)

    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            view = memoryview(blob)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path)


class _Cursor:
    """Bounds-checked little-endian reader over one section of the file."""

    def __init__(self, buf, start, end, label):
        self.buf, self.pos, self.end, self.label = buf, start, end, label

    def take(self, n, what):
        if n > self.end - self.pos:
            raise FormatError("%s: %s: %d bytes needed at offset %d, section ends at %d"
                              % (self.label, what, n, self.pos, self.end))
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def u32(self, what):
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what):
        return struct.unpack("<Q", self.take(8, what))[0]


def _read_str(cur, what):
    n = cur.u32(what + " length")
    if n > MAX_STR_LEN:
        raise FormatError("%s: %s: length %d exceeds %d" % (cur.label, what, n, MAX_STR_LEN))
    b = cur.take(n, what)
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("%s: %s: not valid UTF-8" % (cur.label, what)) from None


def _read_count(cur, what):
    n = cur.u32(what + " count")
    if n > MAX_ARRAY_COUNT:
        raise FormatError("%s: %s: count %d exceeds %d" % (cur.label, what, n,
                                                          MAX_ARRAY_COUNT))
    return n


def read_model(path, verify_data=True, raw_meta=False):
    """Reads and validates a model file; returns (metadata, tensors).

    metadata: dict key -> int | float | str | list (in file order); with raw_meta,
        key -> RawValue(type, value bytes) instead (values still checked).
    tensors: dict name -> numpy array (a copy, independent of the file), in
        directory order: float32 for f32 tensors, float16 (the exact bits) for f16.

    Applies every check of the C reader (models/FORMAT.md): magic, version, header
    fields, reserved bytes, limits, section bounds and overflow, key and name rules,
    duplicates, dtype (f32 or f16), ndim, dims, nbytes, alignment, overlap and the
    index CRC.
    With verify_data (the default, since every byte is read anyway) it also checks
    the data CRC and that padding between tensors is zero, like
    FM_MODEL_VERIFY_DATA. Raises VersionError for a version other than 1,
    FormatError for anything else malformed, OSError when the file cannot be read.
    """
    label = os.fspath(path)
    with open(path, "rb") as f:
        buf = f.read()
    size = len(buf)
    if size < HEADER_SIZE:
        raise FormatError("%s: file size %d is smaller than the %d-byte header"
                          % (label, size, HEADER_SIZE))
    (magic, version, header_size, n_meta, n_tensors, meta_offset, meta_size,
     dir_offset, dir_size, data_offset, data_size, index_crc, data_crc,
     reserved) = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise FormatError("%s: magic: not a facemill model file" % label)
    if version != VERSION:
        raise VersionError("%s: version %d is not supported (this reader reads %d)"
                           % (label, version, VERSION))
    if header_size != HEADER_SIZE:
        raise FormatError("%s: header_size %d is not %d" % (label, header_size, HEADER_SIZE))
    if any(reserved):
        raise FormatError("%s: reserved header bytes are not zero" % label)
    if n_meta > MAX_META:
        raise FormatError("%s: n_meta %d exceeds %d" % (label, n_meta, MAX_META))
    if n_tensors > MAX_TENSORS:
        raise FormatError("%s: n_tensors %d exceeds %d" % (label, n_tensors, MAX_TENSORS))
    if meta_offset != HEADER_SIZE:
        raise FormatError("%s: meta_offset %d is not %d" % (label, meta_offset, HEADER_SIZE))
    if meta_size > size - meta_offset:
        raise FormatError("%s: meta_offset %d + meta_size %d exceeds file size %d"
                          % (label, meta_offset, meta_size, size))
    if dir_offset != meta_offset + meta_size:
        raise FormatError("%s: dir_offset %d is not meta_offset + meta_size = %d"
                          % (label, dir_offset, meta_offset + meta_size))
    if dir_size > size - dir_offset:
        raise FormatError("%s: dir_offset %d + dir_size %d exceeds file size %d"
                          % (label, dir_offset, dir_size, size))
    dir_end = dir_offset + dir_size
    if data_offset % ALIGN:
        raise FormatError("%s: data_offset %d is not a multiple of %d"
                          % (label, data_offset, ALIGN))
    if data_offset < dir_end:
        raise FormatError("%s: data_offset %d is before the end of the directory %d"
                          % (label, data_offset, dir_end))
    if data_offset > size or data_size != size - data_offset:
        raise FormatError("%s: data_offset %d + data_size %d is not the file size %d"
                          % (label, data_offset, data_size, size))
    idx = bytearray(buf[:dir_end])
    idx[_INDEX_CRC_OFFSET:_INDEX_CRC_OFFSET + 4] = b"\0\0\0\0"
    crc = zlib.crc32(idx) & 0xFFFFFFFF
    if crc != index_crc:
        raise FormatError("%s: index_crc32 0x%08x does not match the computed 0x%08x"
                          % (label, index_crc, crc))

    metadata = {}
    cur = _Cursor(buf, meta_offset, dir_offset, label + ": metadata")
    for i in range(n_meta):
        what = "entry %d" % i
        klen = cur.u32(what + " key_len")
        if not 1 <= klen <= MAX_KEY_LEN:
            raise FormatError("%s: %s: key_len %d is not 1..255" % (cur.label, what, klen))
        kb = cur.take(klen, what + " key")
        if not _KEY_RE.match(kb):
            raise FormatError("%s: %s: key has characters outside [a-z0-9_.]"
                              % (cur.label, what))
        key = kb.decode("ascii")
        what = "'%s'" % key
        if key in metadata:
            raise FormatError("%s: %s: duplicate key" % (cur.label, what))
        t = cur.u32(what + " type")
        value_pos = cur.pos
        if t == T_I64:
            v = struct.unpack("<q", cur.take(8, what))[0]
        elif t == T_F64:
            v = struct.unpack("<d", cur.take(8, what))[0]
        elif t == T_STR:
            v = _read_str(cur, what)
        elif t == T_I64_ARRAY:
            n = _read_count(cur, what)
            v = list(struct.unpack("<%dq" % n, cur.take(8 * n, what)))
        elif t == T_F64_ARRAY:
            n = _read_count(cur, what)
            v = list(struct.unpack("<%dd" % n, cur.take(8 * n, what)))
        elif t == T_STR_ARRAY:
            n = _read_count(cur, what)
            v = [_read_str(cur, "%s[%d]" % (what, j)) for j in range(n)]
        else:
            raise FormatError("%s: %s: unknown type %d" % (cur.label, what, t))
        metadata[key] = RawValue(t, buf[value_pos:cur.pos]) if raw_meta else v
    if cur.pos != cur.end:
        raise FormatError("%s: %d entries end at offset %d, meta_size says %d"
                          % (cur.label, n_meta, cur.pos, cur.end))

    entries = []
    names = set()
    cur = _Cursor(buf, dir_offset, dir_end, label + ": directory")
    for i in range(n_tensors):
        what = "entry %d" % i
        nlen = cur.u32(what + " name_len")
        if not 1 <= nlen <= MAX_KEY_LEN:
            raise FormatError("%s: %s: name_len %d is not 1..255" % (cur.label, what, nlen))
        nb = cur.take(nlen, what + " name")
        if not _name_ok(nb):
            raise FormatError("%s: %s: name is not UTF-8 without control characters"
                              % (cur.label, what))
        name = nb.decode("utf-8")
        tl = "%s: tensor '%s'" % (label, name)
        if nb in names:
            raise FormatError("%s: duplicate name" % tl)
        names.add(nb)
        dtype = cur.u32(what + " dtype")
        if dtype not in _DTYPE_SIZE:
            raise FormatError("%s: dtype %d (%s) is not supported (f32 = 0 and f16 = 1)"
                              % (tl, dtype, _DTYPE_NAME.get(dtype, "unknown")))
        esize = _DTYPE_SIZE[dtype]
        ndim = cur.u32(what + " ndim")
        if not 1 <= ndim <= MAX_NDIM:
            raise FormatError("%s: ndim %d is not 1..4" % (tl, ndim))
        dims = [cur.u64(what + " dims") for _ in range(ndim)]
        offset = cur.u64(what + " offset")
        nbytes = cur.u64(what + " nbytes")
        # Overflow is judged on product(dims) x 4 for every dtype, like the C reader.
        count = 4
        for d in dims:
            if d < 1:
                raise FormatError("%s: dims %s: every dim must be >= 1" % (tl, dims))
            count *= d
            if count > U64_MAX:
                raise FormatError("%s: dims %s: size overflows 64 bits" % (tl, dims))
        count = count // 4 * esize
        if nbytes != count:
            raise FormatError("%s: nbytes %d is not product(dims) x %d = %d"
                              % (tl, nbytes, esize, count))
        if offset % ALIGN:
            raise FormatError("%s: offset %d is not a multiple of %d" % (tl, offset, ALIGN))
        if offset > data_size or nbytes > data_size - offset:
            raise FormatError("%s: offset %d + %d bytes exceeds data size %d"
                              % (tl, offset, nbytes, data_size))
        entries.append((name, dtype, dims, offset, nbytes))
    if cur.pos != cur.end:
        raise FormatError("%s: %d entries end at offset %d, dir_size says %d"
                          % (cur.label, n_tensors, cur.pos, cur.end))

    spans = sorted((off, off + nb, name) for name, _, _, off, nb in entries)
    for a, b in zip(spans, spans[1:]):
        if b[0] < a[1]:
            raise FormatError("%s: tensor '%s' [%d, %d) overlaps tensor '%s' [%d, %d)"
                              % (label, b[2], b[0], b[1], a[2], a[0], a[1]))

    if verify_data:
        data = buf[data_offset:]
        crc = zlib.crc32(data) & 0xFFFFFFFF
        if crc != data_crc:
            raise FormatError("%s: data_crc32 0x%08x does not match the computed 0x%08x"
                              % (label, data_crc, crc))
        if any(buf[dir_end:data_offset]):
            raise FormatError("%s: padding before data_offset is not zero" % label)
        pos = 0
        for off, end, _ in spans + [(data_size, data_size, None)]:
            if any(data[pos:off]):
                raise FormatError("%s: padding in data [%d, %d) is not zero"
                                  % (label, pos, off))
            pos = max(pos, end)

    tensors = {}
    for name, dtype, dims, off, nb in entries:
        start = data_offset + off
        if dtype == DTYPE_F16:
            a = np.frombuffer(buf, dtype="<f2", count=nb // 2, offset=start)
            tensors[name] = a.reshape(dims).astype(np.float16, copy=True)
        else:
            a = np.frombuffer(buf, dtype="<f4", count=nb // 4, offset=start)
            tensors[name] = a.reshape(dims).astype(np.float32, copy=True)
    return metadata, tensors
