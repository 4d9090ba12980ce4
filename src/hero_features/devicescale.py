"""Scale, crop and convert YUV frames to rgb24 on the model's device, byte for byte as the
CPU decode graph's `scale=W:H:flags=bilinear` + `format=rgb24` (libswscale) does.

Decode workers hand over the selected frames' YUV planes at source resolution; this module
replays libswscale's integer recipe (computed once per geometry by `swsplan`) with integer
tensor operations, so the same code runs on the CPU (tests) and on CUDA. Rotation by quarter
turns is a permutation of each plane, as the transpose / hflip+vflip filters do it.

    scaler = DeviceScaler(1280, 720, "yuv420p", 0, 2, 398, 224, crop=(87, 0, 224, 224))
    rgb = scaler(y, u, v)  # uint8 (N, 224, 224, 3) from uint8 (N, 720, 1280), 2x (N, 360, 640)
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import numpy as np
import torch

from .swsplan import DeviceGeometry, Filter, Plan, plan_for, unpack_planes

_INT32 = torch.int32


def _as_tensor(array, device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(array), device=device)


def _filter_taps(filt: Filter, outputs: slice, src: int, dim: int, device):
    """(index, weight) per tap for the outputs in `outputs`, to apply along `dim` (-1 or -2).
    Indices past the input carry weight 0 (swscale reads padding there): clamped."""
    pos, coef = filt.pos[outputs], filt.coef[outputs]
    taps = []
    for k in range(coef.shape[1]):
        if not coef[:, k].any():
            continue
        weight = coef[:, k].astype(np.int32).reshape((-1,) + (1,) * (-1 - dim))
        taps.append((_as_tensor(np.minimum(pos + k, src - 1), device), _as_tensor(weight, device)))
    return taps


def _apply(x: torch.Tensor, taps, dim: int) -> torch.Tensor:
    """sum_k x[..., index_k, ...] * weight_k along `dim` (int32, exact)."""
    out = None
    for index, weight in taps:
        term = x.index_select(dim, index).mul_(weight)
        out = term if out is None else out.add_(term)
    return out


def _rotate(plane: torch.Tensor, rotation: int) -> torch.Tensor:
    """(N, H, W) turned clockwise by `rotation` degrees, as transpose=clock (90),
    hflip+vflip (180) and transpose=cclock (270) turn each plane."""
    if rotation == 90:
        return torch.rot90(plane, -1, (1, 2))
    if rotation == 180:
        return torch.flip(plane, (1, 2))
    if rotation == 270:
        return torch.rot90(plane, 1, (1, 2))
    return plane


class DeviceScaler:
    """One video's frame geometry: YUV planes in, rgb24 (N, h, w, 3) uint8 out.

    `width`, `height`: the decoded frames' size (before rotation); `out_w`, `out_h`: the scale
    filter's target; `crop` = (x, y, w, h) within the output computes only that window (the
    pixels are the same as cropping the whole output afterwards). `color_range` and
    `colorspace` are FFmpeg's enum values as PyAV reports them on the frame.
    Raises ValueError for inputs `swsplan.unsupported_reason` refuses.
    """

    def __init__(self, width: int, height: int, pix_fmt: str, color_range: int,
                 colorspace: int, out_w: int, out_h: int, rotation: int = 0,
                 crop: Optional[tuple[int, int, int, int]] = None,
                 device: torch.device | str = "cpu"):
        self.plan: Plan = plan_for(pix_fmt, width, height, out_w, out_h, color_range,
                                   colorspace, rotation)
        self.rotation = rotation
        self.device = torch.device(device)
        x, y, w, h = crop if crop is not None else (0, 0, out_w, out_h)
        if not (0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= out_w and y + h <= out_h):
            raise ValueError(f"crop {crop} is outside the {out_w}x{out_h} output")
        self.window = (x, y, w, h)
        plan, dev = self.plan, self.device
        table = plan.colour
        self._luma_table = _as_tensor(table.luma.astype(np.int64), dev)
        self._offsets = [_as_tensor(t.astype(np.int32), dev)
                         for t in (table.r_v, table.g_u, table.g_v, table.b_u)]
        cols, rows = np.arange(x, x + w), np.arange(y, y + h)
        if plan.unscaled:
            self._cols = _as_tensor(cols, dev)
            self._rows = _as_tensor(rows, dev)
            self._chroma_cols = _as_tensor(cols >> plan.sub_x, dev)
            self._chroma_rows = _as_tensor(rows >> plan.sub_y, dev)
            return
        chroma_w, chroma_h = -(-plan.src_w >> plan.sub_x), -(-plan.src_h >> plan.sub_y)
        half = 0 if plan.full_chroma else 1
        first, last = x >> half, (x + w - 1) >> half
        self._h_luma = _filter_taps(plan.h_luma, slice(x, x + w), plan.src_w, -1, dev)
        self._h_chroma = _filter_taps(plan.h_chroma, slice(first, last + 1), chroma_w, -1, dev)
        self._v_luma = _filter_taps(plan.v_luma, slice(y, y + h), plan.src_h, -2, dev)
        self._v_chroma = _filter_taps(plan.v_chroma, slice(y, y + h), chroma_h, -2, dev)
        self._chroma_of_col = _as_tensor((cols >> half) - first, dev)
        self._luma_round = _as_tensor(plan.luma_round[y:y + h, None].astype(np.int32), dev)
        self._chroma_round = _as_tensor(plan.chroma_round[y:y + h, None].astype(np.int32), dev)

    def __call__(self, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """uint8 planes (N, H, W), (N, H >> sy, W >> sx) rounded up -> uint8 (N, h, w, 3)."""
        planes = []
        for plane in (y, u, v):
            plane = torch.as_tensor(plane, device=self.device)
            if plane.dim() == 2:
                plane = plane.unsqueeze(0)
            planes.append(_rotate(plane, self.rotation))
        luma, cb, cr = planes
        plan = self.plan
        chroma = (-(-plan.src_h >> plan.sub_y), -(-plan.src_w >> plan.sub_x))
        for plane, shape in ((luma, (plan.src_h, plan.src_w)), (cb, chroma), (cr, chroma)):
            if plane.dtype != torch.uint8 or tuple(plane.shape[1:]) != shape:
                raise ValueError(f"a {plane.dtype} plane of {tuple(plane.shape[1:])} where "
                                 f"uint8 {shape} was planned (sizes after rotation)")
        if self.plan.unscaled:
            return self._convert_unscaled(luma, cb, cr)
        return self._scale(luma, cb, cr)

    def _convert_unscaled(self, luma, cb, cr) -> torch.Tensor:
        """The x86 SSSE3 yuv420/422 -> rgb24 converter: 16-bit fixed point with pmulhw
        (products >> 16, rounding down) and saturating adds, no tables."""
        t = self.plan.colour
        y = luma.index_select(1, self._rows).index_select(2, self._cols).to(_INT32)
        u = cb.index_select(1, self._chroma_rows).index_select(2, self._chroma_cols).to(_INT32)
        v = cr.index_select(1, self._chroma_rows).index_select(2, self._chroma_cols).to(_INT32)
        y = ((y * 8 - t.simd_y_offset) * t.simd_y) >> 16
        u = (u * 8 - 1024).clamp_(-32768, 32767)
        v = (v * 8 - 1024).clamp_(-32768, 32767)
        green = (((u * t.simd_u2g) >> 16) + ((v * t.simd_v2g) >> 16)).clamp_(-32768, 32767)
        channels = (y + ((v * t.simd_v2r) >> 16), y + green, y + ((u * t.simd_u2b) >> 16))
        # Saturating to int16 and then packing with unsigned saturation is a clamp to 0..255.
        return torch.stack([c.clamp_(0, 255) for c in channels], dim=-1).to(torch.uint8)

    def _scale(self, luma, cb, cr) -> torch.Tensor:
        # Horizontal: 14-bit weights on 8-bit samples, >> 7 into 15 bits, capped at 2^15 - 1.
        # U and V share their filters, so they go through as one (N, 2, rows, columns).
        chroma = torch.stack((cb, cr), 1).to(_INT32)
        hy = (_apply(luma.to(_INT32), self._h_luma, -1) >> 7).clamp_(max=32767)
        hc = (_apply(chroma, self._h_chroma, -1) >> 7).clamp_(max=32767)
        # Vertical: 12-bit weights, each row's rounding constant, then the output routine.
        sy = _apply(hy, self._v_luma, -2).add_(self._luma_round)
        sc = _apply(hc, self._v_chroma, -2).add_(self._chroma_round)
        sc = sc.index_select(-1, self._chroma_of_col)
        if self.plan.full_chroma:
            sc = (sc - (128 << 19)) >> 10
            return self._write_full(sy >> 10, sc[:, 0], sc[:, 1])
        sc = (sc >> 19).clamp_(0, 255)
        return self._write_table(sy >> 19, sc[:, 0], sc[:, 1])

    def _write_table(self, y, u, v) -> torch.Tensor:
        """The half-chroma routine: three lookups in the clamped luma table, each shifted by
        per-chroma-value offsets (out-of-range chroma reads the clamped table rows)."""
        r_v, g_u, g_v, b_u = self._offsets
        u, v = u.long(), v.long()
        base = y + self.plan.colour.base
        last = self._luma_table.numel() - 1
        channels = (base + r_v[v], base + g_u[u] + g_v[v], base + b_u[u])
        return torch.stack([self._luma_table[c.clamp_(0, last).long()] for c in channels],
                           dim=-1).to(torch.uint8)

    def _write_full(self, y, u, v) -> torch.Tensor:
        """The full-chroma routine: 13-bit coefficients in 32-bit arithmetic (wrapping as
        swscale's unsigned sums do), clamped to 30 bits, top 8 bits kept."""
        t = self.plan.colour
        y = ((y - t.full_y_offset) * t.full_y + (1 << 21)).long()
        u, v = u.long(), v.long()
        channels = (y + v * t.full_v2r, y + v * t.full_v2g + u * t.full_u2g, y + u * t.full_u2b)
        out = []
        for c in channels:
            c = ((c + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)  # as the int32 it is in C
            out.append(c.clamp_(0, (1 << 30) - 1) >> 22)
        return torch.stack(out, dim=-1).to(torch.uint8)


@lru_cache(maxsize=32)
def cached_scaler(width: int, height: int, pix_fmt: str, color_range: int, colorspace: int,
                  out_w: int, out_h: int, rotation: int = 0,
                  crop: Optional[tuple[int, int, int, int]] = None,
                  device: torch.device | str = "cpu") -> DeviceScaler:
    """A `DeviceScaler` built once per geometry, colour tags, crop and device (its filter
    tensors stay on the device), for callers that see the same videos' shapes again."""
    return DeviceScaler(width, height, pix_fmt, color_range, colorspace, out_w, out_h,
                        rotation, crop, device)


def rgb_from_packed(packed: torch.Tensor, geometry: DeviceGeometry) -> torch.Tensor:
    """(N, packed_size) uint8 packed YUV frames of one geometry, on their device -> the CPU
    path's rgb24 pixels (N, h, w, 3), cropped as the geometry says."""
    g = geometry
    scaler = cached_scaler(g.width, g.height, g.pix_fmt, g.color_range, g.colorspace, g.out_w,
                           g.out_h, g.rotation, g.crop, packed.device)
    return scaler(*unpack_planes(packed, geometry))
