"""A caching malloc (tcmalloc) for the extract process, preloaded by re-executing it.

On a CPU every activation tensor of a 3-D CNN is tens to hundreds of MB. glibc serves blocks
that large with a fresh mmap and unmaps them on free, so each forward pass page-faults its
whole working set again; a caching allocator keeps the pages (docs/benchmarks.md: 1.8x the
speed of a SlowFast forward pass on a 2-core machine). A process cannot swap its malloc once
it runs, so the extract entry points re-execute themselves once with the library in
LD_PRELOAD, as PyTorch's CPU launcher (torch.backends.xeon.run_cpu) does. Decode workers are
spawned with the same environment, so they get it too.

HERO_FEATURES_ALLOCATOR (an ops knob, documented in the README):
  unset or "auto"   tcmalloc where it is installed (Debian/Ubuntu: libtcmalloc-minimal4),
                    else the system allocator and one note on stderr
  "system"          never preload anything
  /path/to/lib.so   preload that library instead (e.g. jemalloc); missing: a note, system
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys
import sysconfig
from pathlib import Path
from typing import Optional

ENV = "HERO_FEATURES_ALLOCATOR"
# Set on the re-executed process (to its own pid, which exec keeps): it must not exec again.
_REEXEC_MARK = "HERO_FEATURES_ALLOCATOR_REEXEC"
# gperftools' tcmalloc: the "minimal" build (Debian's libtcmalloc-minimal4) first, then the
# full one, then the unversioned names conda and the -dev packages install.
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4",
                  "libtcmalloc_minimal.so", "libtcmalloc.so")
KNOWN = ("tcmalloc", "jemalloc", "mimalloc")
INSTALL_HINT = "apt install libtcmalloc-minimal4 (libtcmalloc-minimal4t64 on Ubuntu 24.04+)"


class AllocatorError(Exception):
    """HERO_FEATURES_ALLOCATOR holds something that is neither a mode nor a path."""


def _search_dirs() -> list[Path]:
    """Where tcmalloc is looked for: the environment's own lib folder, then the system's."""
    dirs = [Path(os.environ[var]) / "lib" for var in ("CONDA_PREFIX", "VIRTUAL_ENV")
            if os.environ.get(var)]
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    dirs += [Path(p) for p in ("/usr/local/lib", f"/usr/lib/{multiarch}", f"/lib/{multiarch}",
                                "/usr/lib64", "/usr/lib")]
    return dirs


def find_tcmalloc() -> Optional[Path]:
    for folder in _search_dirs():
        for name in TCMALLOC_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def requested() -> tuple[Optional[Path], Optional[str]]:
    """(library to preload, or None; note to print when the wanted one is missing)."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() == "system":
        return None, None
    if value.lower() in ("", "auto"):
        found = find_tcmalloc()
        note = None if found else (f"note: tcmalloc not found, using the system allocator "
                                   f"(CPU runs are slower; {INSTALL_HINT}, or set "
                                   f"{ENV}=system)")
        return found, note
    if "/" not in value:
        raise AllocatorError(f"{ENV} must be auto, system or the path of a malloc library "
                             f"(.so), not {value!r}")
    path = Path(value).expanduser()
    if not path.is_file():
        return None, f"note: {ENV}={value} does not exist; using the system allocator"
    return path, None


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


class _DlPhdrInfo(ctypes.Structure):  # the leading fields of struct dl_phdr_info
    _fields_ = [("dlpi_addr", ctypes.c_void_p), ("dlpi_name", ctypes.c_char_p)]


_PHDR_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_DlPhdrInfo), ctypes.c_size_t,
                                  ctypes.c_void_p)


def _shared_objects(process) -> list[bytes]:
    """The names of the loaded shared objects in the linker's order (LD_PRELOAD first)."""
    names: list[bytes] = []

    def add(info, _size, _data):
        names.append(info.contents.dlpi_name or b"")
        return 0
    process.dl_iterate_phdr(_PHDR_CALLBACK(add), None)
    return [n for n in names[1:] if n]  # the first is the program itself


def _object_of(process, address, info: _DlInfo) -> Optional[bytes]:
    if not address or not process.dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return None
    return info.dli_fname


def malloc_library() -> Optional[str]:
    """The file of the shared object whose `malloc` this process calls (what the dynamic
    linker actually bound, not what was asked for), or None where that cannot be told."""
    try:
        process = ctypes.CDLL(None)
        info = _DlInfo()
        found = _object_of(process, ctypes.cast(process.malloc, ctypes.c_void_p), info)
        if found is None:
            return None
        shared = _shared_objects(process)
        if found in shared:
            return os.fsdecode(found)
        # A program built without PIE (Debian 12's /usr/bin/python3.11) that takes
        # malloc's address gets a "canonical PLT" stub, and the lookup above names the
        # program, not the library the stub jumps to: ask the libraries in the linker's order.
        for name in shared:
            try:
                library = ctypes.CDLL(os.fsdecode(name), mode=os.RTLD_NOLOAD)
            except OSError:  # linux-vdso.so.1 and the like
                continue
            if _object_of(process, ctypes.cast(library.malloc, ctypes.c_void_p)
                          if hasattr(library, "malloc") else None, info) == name:
                return os.fsdecode(name)
        return os.fsdecode(found)
    except (OSError, AttributeError):  # no dladdr (not glibc/musl): cannot tell
        return None


def describe(library: Optional[str] = None) -> str:
    """For the run summary: `tcmalloc (/usr/lib/.../libtcmalloc_minimal.so.4)`,
    `system (libc.so.6)`."""
    library = malloc_library() if library is None else library
    if library is None:
        return "unknown"
    name = Path(library).name
    kind = next((k for k in KNOWN if k in name), None)
    if kind is None and name.startswith("libc."):
        kind = "system"
    return f"{kind or 'other'} ({library})"


def _same_file(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _command_line() -> list[str]:
    """This interpreter's own command line, flags included, to run it again."""
    argv = getattr(sys, "orig_argv", None)  # Python >= 3.10
    if argv:
        return [sys.executable, *argv[1:]]
    main = Path(sys.argv[0]).resolve()
    if main == Path(__file__).with_name("__main__.py").resolve():
        return [sys.executable, "-m", "hero_features", *sys.argv[1:]]
    return [sys.executable, *sys.argv]


def use_caching_allocator() -> None:
    """Called first thing by the extract entry points (console script, `python -m`, the
    reference's extract.py scripts), never from library code: re-execute this process with
    the allocator preloaded unless it is already this process's malloc. The exec keeps the
    pid, so signals and exit statuses reach the caller as before. Raises AllocatorError."""
    if not sys.platform.startswith("linux"):
        return  # LD_PRELOAD is the glibc/musl dynamic linker's
    mark = os.environ.pop(_REEXEC_MARK, None)
    library, note = requested()
    if library is None:
        if note:
            print(note, file=sys.stderr, flush=True)
        return
    current = malloc_library()
    if current is not None and _same_file(current, library):
        return
    if os.environ.get(ENV, "").strip().lower() in ("", "auto") and current is not None \
            and any(k in Path(current).name for k in KNOWN):
        return  # the user preloaded a caching allocator of their own: keep it
    preload = os.environ.get("LD_PRELOAD", "")
    if mark == str(os.getpid()):
        # Already re-executed once and the linker still did not take it (a secure-execution
        # binary, or a library that is not an ELF object for this machine): go on without,
        # and keep the decode workers from failing to preload it again.
        os.environ["LD_PRELOAD"] = _without(preload, library)
        print(f"note: could not preload {library}; using the system allocator",
              file=sys.stderr, flush=True)
        return
    os.environ["LD_PRELOAD"] = f"{library}:{preload}" if preload.strip() else str(library)
    os.environ[_REEXEC_MARK] = str(os.getpid())
    sys.stdout.flush()
    sys.stderr.flush()
    command = _command_line()
    try:
        os.execv(command[0], command)
    except OSError as exc:  # the interpreter cannot be run again: carry on as we are
        os.environ["LD_PRELOAD"] = preload
        os.environ.pop(_REEXEC_MARK, None)
        print(f"note: could not restart with {library} preloaded ({exc.strerror or exc}); "
              f"using the system allocator", file=sys.stderr, flush=True)


def _without(preload: str, library: Path) -> str:
    entries = [e for e in preload.replace(" ", ":").split(":") if e]
    if entries and entries[0] == str(library):
        entries = entries[1:]
    return ":".join(entries)
