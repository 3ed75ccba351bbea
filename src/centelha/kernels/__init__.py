"""centelha's own CPU kernels: a small C++ extension, compiled on first use.

`lowbit.cpp` multiplies float32 activations by Q8/Q4 block-quantized weights with integer
dot products (see `centelha.quant` for the formats and the layers that use it);
`decode.cpp` does a decode step's small operations in one call each (attention over the KV
cache with rotary embedding and the cache write, RMSNorm, SwiGLU; see `centelha.model`).
Both go into one extension, built here at first use by `torch.utils.cpp_extension.load`
(g++ and ninja) rather than shipped compiled, because it is compiled for *this* processor
(`-march=native`: AVX2, AVX-VNNI or AVX-512 VNNI as available) and against *this* torch.

Design choices a reader should know:
- Never fatal. Anything that goes wrong while building or loading (no compiler, no ninja, a
  non-x86 machine whose compiler rejects a flag, a read-only cache, a failed self-test) is
  caught, reported by one warning, and `load_kernels()` returns None: callers then use the
  pure-PyTorch path in `centelha.quant`, which computes the same products, only slower.
  Setting `CENTELHA_NO_KERNELS=1` skips the kernels without building (checked on every call,
  so tests can switch it).
- The build directory is `$CENTELHA_KERNEL_DIR` or `~/.cache/centelha/kernels`, one folder per
  build. The extension's name carries a hash of the source, the compiler flags, torch's and
  Python's versions and the CPU's feature flags: an edit rebuilds, and a cache shared between
  machines never loads code compiled for instructions this CPU lacks.
- `CENTELHA_KERNEL_ARCH` replaces `native` in `-march=` (e.g. `haswell` to try the AVX2 path on
  an AVX-512 machine, `x86-64` for the portable scalar path); `CENTELHA_KERNEL_VERBOSE=1`
  shows the compiler's output.
- After loading, a tiny self-test compares the kernels with plain float arithmetic on odd
  shapes; a miscompiled build is refused rather than trusted.
- Threads: on Linux the extension is compiled with -fopenmp, without which at::parallel_for
  (a header template) silently runs on one thread; its libgomp.so.1 dependency resolves to
  the copy torch already loaded, so kernels and torch share one OpenMP pool and follow
  torch.set_num_threads.
- The first build takes ≈ 15 s on 2 cores; later processes load the cached .so in ≈ 0.2 s.
- Concurrent builds in one folder are serialised by torch's `lock` file, which a process
  killed mid-build leaves behind; torch would then wait for it forever. So the loader waits
  itself while the build folder shows progress, and removes a lock under which nothing has
  changed for `STALE_LOCK_SECONDS` (5 minutes; a build writes a file every few seconds).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

from centelha.errors import CentelhaError

SOURCES = [Path(__file__).with_name(name) for name in ("lowbit.cpp", "decode.cpp")]
_X86 = {"x86_64", "amd64", "i386", "i686", "x86"}
STALE_LOCK_SECONDS = 300.0

# os.environ's raw dict (bytes keys on POSIX): a lookup there costs a tenth of os.environ.get,
# and it stays in step with os.environ (and pytest's monkeypatch.setenv).
_environ = getattr(os.environ, "_data", None) if os.name == "posix" else None
_lock = threading.Lock()
_state: dict = {"tried": False, "module": None, "error": None, "build_dir": None}


def kernels_disabled() -> bool:
    """True when the environment asks for the pure-PyTorch path (`CENTELHA_NO_KERNELS`)."""
    value = _environ.get(b"CENTELHA_NO_KERNELS") if _environ is not None else \
        os.environ.get("CENTELHA_NO_KERNELS")
    if not value:  # the common case, checked on every quantized matmul: keep it cheap
        return False
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value.strip().lower() not in ("0", "false", "no")


def load_kernels() -> ModuleType | None:
    """The compiled extension, building it on the first call; None if it cannot be had."""
    if kernels_disabled():
        return None
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                _state["module"] = _load_or_warn()
                _state["tried"] = True
    return _state["module"]


def kernel_info() -> dict:
    """What was built and where, or why not (for benchmarks and bug reports)."""
    module = load_kernels()
    return {
        "available": module is not None,
        "simd": module.simd() if module is not None else None,
        "flags": compile_flags(),
        "build_dir": _state["build_dir"],
        "error": _state["error"],
    }


def compile_flags(arch: str | None = None) -> list[str]:
    """g++ flags: `-march=` is `arch`, else $CENTELHA_KERNEL_ARCH, else native (x86 only)."""
    flags = ["-O3", "-ffp-contract=off"]  # no silent FMA contraction: dequantize stays exact
    if platform.machine().lower() in _X86:
        flags.append(f"-march={arch or os.environ.get('CENTELHA_KERNEL_ARCH') or 'native'}")
    if _torch_uses_gomp():
        flags.append("-fopenmp")
    return flags


def _torch_uses_gomp() -> bool:
    """at::parallel_for is a header template: its `#pragma omp parallel` only splits work if
    the extension is compiled with -fopenmp. On Linux torch ships libgomp.so.1 under that very
    soname, so the extension's libgomp dependency resolves to torch's copy: one thread pool."""
    return sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info()


def build_kernels(arch: str | None = None) -> ModuleType:
    """Build (or reuse from the cache) and self-test the extension for `-march=arch`; raises
    on any failure. `load_kernels` is the never-failing, cached entry point; this one lets
    tests and benchmarks load other instruction-set variants side by side."""
    module = _build(compile_flags(arch))
    _self_test(module)
    return module


def _load_or_warn() -> ModuleType | None:
    try:
        return build_kernels()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a failed build must never stop the program
        reason = f"{type(exc).__name__}: {exc}".strip()
        _state["error"] = reason
        # A compiler failure is pages long: show its first "error:" line, not the command.
        lines = [line.strip() for line in reason.splitlines() if line.strip()]
        errors = [line for line in lines[1:] if "error" in line.lower()]
        short = f"{type(exc).__name__}: {errors[0]}" if errors else lines[0]
        warnings.warn(
            f"centelha: low-bit CPU kernels unavailable ({short[:300]}); quantized layers "
            "use the slower pure-PyTorch path. Set CENTELHA_KERNEL_VERBOSE=1 for the compiler "
            "output, or CENTELHA_NO_KERNELS=1 to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def _cpu_fingerprint() -> str:
    """The CPU's feature flags (Linux), or whatever the platform says about the processor."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _build_name(flags: list[str]) -> str:
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in SOURCES))
    for part in (*flags, torch.__version__, sys.version, _cpu_fingerprint()):
        digest.update(b"\0" + part.encode())
    return f"centelha_lowbit_{digest.hexdigest()[:16]}"


def _build(flags: list[str]) -> ModuleType:
    from torch.utils import cpp_extension  # imported late: it is slow and rarely needed

    name = _build_name(flags)
    root = os.environ.get("CENTELHA_KERNEL_DIR") or Path.home() / ".cache" / "centelha" / "kernels"
    build_dir = Path(root) / name
    build_dir.mkdir(parents=True, exist_ok=True)
    if flags == compile_flags():  # the variant load_kernels uses
        _state["build_dir"] = str(build_dir)
    verbose = os.environ.get("CENTELHA_KERNEL_VERBOSE", "") not in ("", "0")
    wait_for_other_build(build_dir)
    ldflags = ["-fopenmp"] if "-fopenmp" in flags else []
    sources = [str(source) for source in SOURCES]
    return cpp_extension.load(name=name, sources=sources, extra_cflags=flags,
                              extra_ldflags=ldflags, build_directory=str(build_dir),
                              verbose=verbose)


def wait_for_other_build(build_dir: Path, stale_after: float | None = None,
                         poll: float = 0.2) -> None:
    """Return once no other process is building in `build_dir`.

    torch's `lock` file there says one is: wait while its build makes progress (a file in
    the folder changed within `stale_after` seconds, default STALE_LOCK_SECONDS). A lock
    with no progress for that long was left by a build that was killed: remove it, so this
    process builds instead (torch would wait for it forever). Raises CentelhaError when the
    lock cannot be removed.
    """
    stale_after = STALE_LOCK_SECONDS if stale_after is None else stale_after
    lock = build_dir / "lock"
    while lock.exists():
        if time.time() - _last_change(build_dir) > stale_after:
            _remove_stale_lock(lock, stale_after)
            return
        time.sleep(poll)


def _last_change(folder: Path) -> float:
    """The latest modification time of the files in `folder` (one may vanish meanwhile)."""
    latest = 0.0
    for entry in folder.iterdir():
        try:
            latest = max(latest, entry.stat().st_mtime)
        except FileNotFoundError:
            continue
    return latest


def _remove_stale_lock(lock: Path, stale_after: float) -> None:
    try:
        lock.unlink(missing_ok=True)
    except OSError as exc:
        raise CentelhaError(f"{lock} is a kernel build lock left by a stopped build and "
                            f"cannot be removed ({exc.strerror or exc}); delete it") from None
    warnings.warn(f"centelha: removed {lock}, a kernel build lock left by a stopped build "
                  f"(nothing changed beside it for {stale_after:.0f} s)",
                  RuntimeWarning, stacklevel=2)


def _self_test(module: ModuleType) -> None:
    """Kernels against float arithmetic on shapes that reach every code path (odd N, block
    tails, 5 activation rows = a group of 4 + 1)."""
    gen = torch.Generator().manual_seed(0)
    N, K, M = 13, 32 * 19, 5
    x = torch.randn(M, K, generator=gen)
    scales = (torch.rand(N, K // 32, generator=gen) * 0.02 + 0.001).half()
    mins = (-8 * scales.float()).half()
    q8 = torch.randint(-127, 128, (N, K), generator=gen, dtype=torch.int8)
    q4 = torch.randint(0, 256, (N, K // 2), generator=gen, dtype=torch.uint8)
    for got, weight in (
        (module.q8_matmul(x, q8, scales), module.q8_dequantize(q8, scales)),
        (module.q4_matmul(x, q4, scales, mins), module.q4_dequantize(q4, scales, mins)),
    ):
        expected = x @ weight.T
        error = ((got - expected).norm() / expected.norm()).item()
        if not error < 0.02:  # int8 activations: ~0.5% expected; "not <" also catches NaN
            raise RuntimeError(f"self-test failed: relative error {error:.3g}")
    w8 = q8.view(N, -1, 32).float() * scales.float()[..., None]
    if not torch.equal(module.q8_dequantize(q8, scales), w8.view(N, K)):
        raise RuntimeError("self-test failed: Q8 dequantization")
    h = torch.randn(M, 2 * K, generator=gen)
    gate, up = h.chunk(2, dim=-1)
    weight = torch.randn(K, generator=gen)
    for got, expected, what in (
        (module.swiglu(h), torch.nn.functional.silu(gate) * up, "SwiGLU"),
        (module.rms_norm(x, weight, 1e-6), torch.nn.functional.rms_norm(x, (K,), weight, 1e-6),
         "RMSNorm"),
    ):
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
            raise RuntimeError(f"self-test failed: {what}")
