"""`hero-features models` (the registry and the checkpoints found) and `hero-features
download` (fetch, or install from a folder). No torch: checkpoints are found and verified,
never loaded."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from ..config import model_list
from ..errors import UsageError, WeightsError

EXIT_OK, EXIT_FAILED = 0, 1


def models(args) -> int:
    from ..models import MODEL_IDS, get_spec
    from ..weights import find_checkpoint, verify_cached

    rows, mismatched = [], []
    for name in MODEL_IDS:
        spec = get_spec(name)
        rate = "30 fps" if spec.unit == "clip" else "1/clip_len fps"
        decode = f"{rate}, short side {spec.size}{', crop' if spec.crop else ''}"
        path = find_checkpoint(spec.checkpoint, args.weights_dir)
        if path is None:
            state = "missing"
        else:
            ok = verify_cached(path, spec.checkpoint)
            state = {True: "verified", False: "HASH MISMATCH",
                     None: "present (no published hash)"}[ok] + f" {path}"
            if ok is False:
                mismatched.append(path)
        rows.append((name, str(spec.dim), spec.unit, decode,
                     f"{spec.checkpoint.filename}: {state}"))
    print(_table(("model", "dim", "unit", "decode", "checkpoint"), rows, right={1}))
    if mismatched:
        print(f"hero-features models: {len(mismatched)} checkpoint(s) under an official name "
              f"are not the published files (HASH MISMATCH), so their features will not match "
              f"the released ones: {', '.join(map(str, mismatched))}. Delete them and run "
              f"`hero-features download` (or `hero-features download --from DIR` with the "
              f"published files) to replace them.", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right=frozenset()) -> str:
    """Columns as wide as their widest cell (the last one left ragged)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]

    def line(cells):
        parts = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts + [cells[-1]])

    return "\n".join(line(cells) for cells in [header, *rows])


def download(args) -> int:
    from ..models import MODEL_IDS, get_spec
    from ..weights import mismatch_warning, resolve_checkpoint

    names = model_list(args.model) or list(MODEL_IDS)
    if args.from_dir is not None:
        return _install_from(args.from_dir, names, args.weights_dir)
    status = EXIT_OK
    found = {}
    for name in names:
        ckpt = get_spec(name).checkpoint
        try:
            found[name] = (resolve_checkpoint(ckpt, args.weights_dir), ckpt)
            print(f"{name}: {found[name][0]}")
        except WeightsError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            status = EXIT_FAILED
    warning = mismatch_warning(found)
    if warning:
        print(f"hero-features download: {warning}", file=sys.stderr)
    return status


def _install_from(folder: Path, names: Sequence[str], weights_dir: Optional[Path]) -> int:
    from ..models import get_spec
    from ..weights import cache_dir, install_checkpoint

    if not folder.is_dir():
        raise UsageError(f"--from {folder} is not a folder")
    target = Path(weights_dir) if weights_dir else cache_dir()
    status = EXIT_OK
    for name in names:
        try:
            print(f"{name}: {install_checkpoint(get_spec(name).checkpoint, folder, target)}")
        except WeightsError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            status = EXIT_FAILED
    return status
