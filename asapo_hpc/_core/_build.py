"""cffi build script (API mode, out of line): compiles csrc/src/ring.c into asapo_hpc._core._ring.

Run by setup.py through ``cffi_modules``; the declarations live in one file,
csrc/include/asapo_hpc/ring_cdefs.h, beside the header they mirror.
"""

from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"

# Scalar-argument wrappers for Python: cffi converts plain arguments faster than it fills
# struct fields one attribute at a time.
SHIM = r"""
#include "asapo_hpc/ring.h"

static int ahrpy_send(struct ahr_ring *ring, uint32_t member, const void *data,
                      uint64_t data_len, uint64_t id, uint32_t stream, uint32_t flags,
                      uint32_t ds_substream, uint32_t ds_size, const char *name,
                      uint32_t name_len, const char *meta, uint32_t meta_len, int64_t timeout_ns)
{
    struct ahr_pub pub = {id, data_len, 0, stream, flags, ds_substream, ds_size};
    return ahr_send(ring, member, data, &pub, name, name_len, meta, meta_len, timeout_ns, 0);
}

static int ahrpy_commit(struct ahr_ring *ring, const struct ahr_reservation *res,
                        uint64_t data_len, uint64_t id, uint32_t stream, uint32_t flags,
                        uint32_t ds_substream, uint32_t ds_size, const char *name,
                        uint32_t name_len, const char *meta, uint32_t meta_len)
{
    struct ahr_pub pub = {id, data_len, 0, stream, flags, ds_substream, ds_size};
    return ahr_commit(ring, res, &pub, name, name_len, meta, meta_len);
}
"""

ffibuilder = FFI()
ffibuilder.cdef((CSRC / "include" / "asapo_hpc" / "ring_cdefs.h").read_text())
ffibuilder.set_source(
    "asapo_hpc._core._ring",
    SHIM,
    sources=[str((CSRC / "src" / "ring.c").relative_to(ROOT))],
    include_dirs=[str(CSRC / "include"), str(CSRC / "src")],
    extra_compile_args=["-std=c11", "-O2", "-Wall"],
    libraries=["rt"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
