"""libswscale's integer recipe for `scale=W:H:flags=bilinear` to rgb24, worked out in Python.

The decode graph's scale filter (FFmpeg 8.1, libswscale 9) turns an 8-bit planar YUV frame
into rgb24 with integer arithmetic only: a horizontal filter with 14-bit coefficients, a
vertical filter with 12-bit coefficients and a YUV->RGB output stage. This module computes
every constant of that recipe for one (source, destination, pixel format, colour tags)
combination - filter taps, their positions, which vertical output routine each row gets,
the colour tables - so that `devicescale` can replay it with tensor operations. It imports
no torch: decode workers call `unsupported_reason` to decide, per video, whether frames go
to the device as YUV planes or through the CPU graph.

docs/device-scale.md explains each rule and where it comes from. Long on purpose: the
constants are one recipe computed in libswscale's order, read against its C code.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

# Pixel formats covered: (horizontal, vertical) chroma subsampling shift and full range.
PIX_FMTS = {
    "yuv420p": (1, 1, False), "yuvj420p": (1, 1, True),
    "yuv422p": (1, 0, False), "yuvj422p": (1, 0, True),
    "yuv444p": (0, 0, False), "yuvj444p": (0, 0, True),
}
# AVColorSpace values libswscale accepts as input (sws_test_colorspace), and the row of its
# YUV->RGB coefficient table each one selects (sws_getCoefficients: out-of-table values
# fall back to BT.601). Values are FFmpeg's enum numbers, as PyAV's frame.colorspace gives.
_COEFFICIENTS = {  # colorspace -> (crv, cbu, cgu, cgv) in 1/65536
    0: (104597, 132201, 25675, 53279),  # RGB (meaningless for YUV; swscale takes row 0)
    1: (117489, 138438, 13975, 34925),  # BT.709
    2: (104597, 132201, 25675, 53279),  # unspecified -> BT.601
    4: (104448, 132798, 24759, 53109),  # FCC
    5: (104597, 132201, 25675, 53279),  # BT.470BG (BT.601 625)
    6: (104597, 132201, 25675, 53279),  # SMPTE 170M (BT.601 525)
    7: (117579, 136230, 16907, 35559),  # SMPTE 240M
    9: (110013, 140363, 12277, 42626),  # BT.2020 non-constant luminance
}
COLOR_RANGE_JPEG = 2  # AVCOL_RANGE_JPEG (full range); 0 unspecified and 1 MPEG are limited
ROTATIONS = (0, 90, 180, 270)  # clockwise quarter turns the CLI's autorotate applies

_BILINEAR_SIZE_FACTOR = 2
_MAX_REDUCE_CUTOFF = 0.002  # taps whose weights add up to less than this share are dropped
_MAX_FILTER_SIZE = 256  # beyond this swscale scales in two cascaded passes: not covered
_H_ALIGN, _V_ALIGN = 4, 2  # x86 (and NEON) pad horizontal taps to 4, vertical to 2
_INT_MAX = 2 ** 31 - 1
_HEADROOM = 512  # rows of clamp headroom on each side of swscale's luma table


def _cdiv(a: int, b: int) -> int:
    """C's integer division (truncates towards zero); Python's // floors."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _rounded_div(a: int, b: int) -> int:
    return _cdiv(a + (b >> 1) if a >= 0 else a - (b >> 1), b)


def _log2(v: int) -> int:
    return v.bit_length() - 1 if v > 0 else 0


@dataclass(frozen=True)
class Filter:
    """One direction of a scaler: output i = sum_k input[pos[i] + k] * coef[i, k]."""

    pos: np.ndarray  # (dst,) int64, first input sample of each output sample
    coef: np.ndarray  # (dst, size) int64, 14-bit (horizontal) or 12-bit (vertical) weights

    @property
    def size(self) -> int:
        return self.coef.shape[1]


def bilinear_filter(inc: int, src: int, dst: int, align: int, one: int, src_pos: int,
                    dst_pos: int) -> Filter:
    """swscale's initFilter for SWS_BILINEAR: taps, positions, trimming, border folding and
    normalisation to `one` with the rounding error carried from tap to tap.

    Raises ValueError when swscale would cascade two scalers instead (extreme ratios).
    """
    fone = 1 << (54 - min(_log2(src // dst), 8))
    if abs(inc - 0x10000) < 10 and src_pos == dst_pos:  # same size and siting: identity
        size = 1
        taps = [[fone] for _ in range(dst)]
        pos = list(range(dst))
    else:
        if inc <= 1 << 16:
            size = 1 + _BILINEAR_SIZE_FACTOR
        else:
            size = 1 + (_BILINEAR_SIZE_FACTOR * src + dst - 1) // dst
        size = max(min(size, src - 2), 1)
        # Centre of output sample i in input units of 2^-17, sited by the chroma positions.
        centre = ((dst_pos * inc) >> 7) - ((src_pos * 0x10000) >> 7)
        taps, pos = [], []
        for _ in range(dst):
            first = _cdiv(centre - (size - 2) * (1 << 16), 1 << 17)
            row = []
            for j in range(size):
                distance = abs((first + j) * (1 << 17) - centre) << 13
                if inc > 1 << 16:
                    distance = distance * dst // src
                row.append(max((1 << 30) - distance, 0) * (fone >> 30))
            taps.append(row)
            pos.append(first)
            centre += 2 * inc

    # Trim near-zero taps: shift each filter left past negligible leading weights (keeping
    # positions non-decreasing) and find how many trailing taps the widest filter needs.
    cutoff = _MAX_REDUCE_CUTOFF * fone
    needed = 0
    for i in range(dst - 1, -1, -1):
        row = taps[i]
        total = 0
        for _ in range(size):
            total += abs(row[0])
            if float(total) > cutoff:
                break
            if i < dst - 1 and pos[i] >= pos[i + 1]:
                break
            row[:] = row[1:] + [0]
            pos[i] += 1
        keep, total = size, 0
        for j in range(size - 1, 0, -1):
            total += abs(row[j])
            if float(total) > cutoff:
                break
            keep -= 1
        needed = max(needed, keep)
    if needed == 1 and align == 2:  # the x86 vertical scaler takes single taps unpadded
        align = 1
    out_size = (needed + align - 1) & ~(align - 1)
    if out_size >= _MAX_FILTER_SIZE:
        raise ValueError(f"a {src}->{dst} bilinear filter needs {out_size} taps: swscale "
                         "cascades two scalers for such ratios")
    rows = [(row + [0] * out_size)[:out_size] for row in taps]

    # Fold taps that fall outside the input onto its first / last sample.
    for i, row in enumerate(rows):
        if pos[i] < 0:
            for j in range(1, out_size):
                left = max(j + pos[i], 0)
                row[left] += row[j]
                row[j] = 0
            pos[i] = 0
        if pos[i] + out_size > src:
            shift = pos[i] + min(out_size - src, 0)
            spill = 0
            for j in range(out_size - 1, -1, -1):
                if pos[i] + j >= src:
                    spill += row[j]
                    row[j] = 0
            for j in range(out_size - 1, -1, -1):
                row[j] = 0 if j < shift else row[j - shift]
            pos[i] -= shift
            row[src - 1 - pos[i]] += spill
        assert 0 <= pos[i] < src

    # Normalise to `one`, carrying each tap's rounding error into the next.
    coef = np.zeros((dst, out_size), np.int64)
    for i, row in enumerate(rows):
        scale = (sum(row) + one // 2) // one or 1
        error = 0
        for j, value in enumerate(row):
            value += error
            coef[i, j] = _rounded_div(value, scale)
            error = value - int(coef[i, j]) * scale
    return Filter(np.asarray(pos, np.int64), coef)


def _local_pos(subsample: int, pos: int) -> int:
    """A chroma siting (1/256 luma sample, -513 = unset) as initFilter's position argument."""
    if pos == -1 or pos <= -513:
        pos = (128 << subsample) - 128
    return (pos + 128) >> subsample


def _chroma_siting(subsample: int) -> int:
    """The siting FFmpeg 8.1's scale filter gives libswscale for a subsampled axis: it resets
    every frame's chroma_location to "unspecified", which the graph reads as centre (128 in
    1/256 luma samples for 2x subsampling); an axis that is not subsampled gets -513."""
    return 128 * ((1 << subsample) - 1) if subsample else -513


def _round_to_int16(value: int) -> int:
    r = (value + (1 << 15)) >> 16
    return -0x8000 if r < -0x7FFF else min(r, 0x7FFF)


@dataclass(frozen=True)
class Colour:
    """ff_yuv2rgb_c_init_tables' outputs for rgb24, for each output routine.

    Table routine (half-resolution chroma): R = luma[base + Y + r_v[V]],
    G = luma[base + Y + g_u[U] + g_v[V]], B = luma[base + Y + b_u[U]].
    Full-chroma routine: the 13-bit `full_*` coefficients. The x86 SSSE3 unscaled converter:
    the `simd_*` 16-bit words it multiplies with pmulhw.
    """

    luma: np.ndarray  # (1024 + 2 * 512,) uint8
    base: int
    r_v: np.ndarray  # (256,) int64 offsets into `luma`
    g_u: np.ndarray
    g_v: np.ndarray
    b_u: np.ndarray
    full_y_offset: int
    full_y: int
    full_v2r: int
    full_v2g: int
    full_u2g: int
    full_u2b: int
    simd_y_offset: int
    simd_y: int
    simd_v2r: int
    simd_v2g: int
    simd_u2g: int
    simd_u2b: int


@lru_cache(maxsize=None)
def colour(colorspace: int, full_range: bool) -> Colour:
    crv, cbu, cgu, cgv = _COEFFICIENTS[colorspace]
    cgu, cgv = -cgu, -cgv
    cy, oy = 1 << 16, 0
    if full_range:
        crv, cbu, cgu, cgv = (_cdiv(c * 224, 255) for c in (crv, cbu, cgu, cgv))
    else:
        cy, oy = _cdiv(cy * 255, 219), 16 << 16
    # contrast = saturation = 1 << 16 and brightness = 0: the scale filter sets no others.
    cy = (cy * (1 << 16)) >> 16
    crv, cbu, cgu, cgv = ((c * (1 << 16) * (1 << 16)) >> 32 for c in (crv, cbu, cgu, cgv))
    simd = [_round_to_int16(v * (1 << 13)) for v in (cy, crv, cbu, cgv, cgu)]
    full = [_round_to_int16(v * (1 << 13)) for v in (cy, crv, cgv, cgu, cbu)]
    y_offset_simd, y_offset_full = _round_to_int16(oy * (1 << 3)), _round_to_int16(oy * (1 << 9))
    # The table routine's coefficients, rescaled by the luma gain.
    crv, cbu, cgu, cgv = (_cdiv(c * (1 << 16) + 0x8000, max(cy, 1)) for c in (crv, cbu, cgu, cgv))
    size = 1024 + 2 * _HEADROOM
    start = -(384 << 16) - _HEADROOM * cy - oy
    steps = start + np.arange(size, dtype=np.int64) * cy + 0x8000
    luma = np.clip(steps >> 16, 0, 255).astype(np.uint8)

    def offsets(coefficient: int) -> np.ndarray:
        return np.array([-(coefficient >> 9) + ((c * coefficient) >> 16) for c in range(256)],
                        np.int64)

    return Colour(luma=luma, base=(384 if full_range else 326) + _HEADROOM,
                  r_v=offsets(crv), g_u=offsets(cgu), g_v=offsets(cgv), b_u=offsets(cbu),
                  full_y_offset=y_offset_full, full_y=full[0], full_v2r=full[1],
                  full_v2g=full[2], full_u2g=full[3], full_u2b=full[4],
                  simd_y_offset=y_offset_simd, simd_y=simd[0], simd_v2r=simd[1],
                  simd_u2b=simd[2], simd_v2g=simd[3], simd_u2g=simd[4])


@dataclass(frozen=True)
class Plan:
    """Everything needed to replay one scale filter configuration.

    `unscaled`: same size in and out with an even height, where swscale skips its scaler and
    runs the SSSE3 converter (one chroma sample per 2 pixels per row pair). Otherwise the
    filters apply: horizontal (>> 7, capped at 2^15 - 1), then vertical plus the per-row
    rounding constants, then the table routine (`full_chroma` False: one chroma sample per
    pixel pair, >> 19) or the full-chroma routine (>> 10).
    """

    src_w: int
    src_h: int
    dst_w: int
    dst_h: int
    sub_x: int
    sub_y: int
    colour: Colour
    unscaled: bool
    full_chroma: bool = False
    h_luma: Optional[Filter] = None
    h_chroma: Optional[Filter] = None
    v_luma: Optional[Filter] = None
    v_chroma: Optional[Filter] = None
    luma_round: Optional[np.ndarray] = None  # (dst_h,) added before the vertical shift
    chroma_round: Optional[np.ndarray] = None


def _row_rounding(v_luma: Filter, v_chroma: Filter, full: bool):
    """Per-row rounding constants and coefficient overrides for the vertical stage.

    swscale picks an output routine per row: a one-tap routine when the luma filter has a
    single tap (and chroma at most two summing to 4096), a two-tap routine when both have
    exactly two taps summing to 4096, the general one otherwise. They compute the same sums
    but round differently: the two-tap routines drop the rounding constant.
    """
    rows = v_luma.pos.shape[0]
    general = (1 << 9) if full else (1 << 18)
    luma_round = np.full(rows, general, np.int64)
    chroma_round = np.full(rows, general, np.int64)
    lum, chr_ = v_luma.coef.copy(), v_chroma.coef.copy()
    lum_u16, chr_u16 = lum & 0xFFFF, chr_ & 0xFFFF  # the routine picker reads them unsigned
    for y in range(rows):
        if lum.shape[1] == 1 and chr_.shape[1] == 1:
            lum[y, 0] = chr_[y, 0] = 4096  # the one-tap routine assumes unit weights
        elif (lum.shape[1] == 1 and chr_.shape[1] == 2
              and chr_u16[y, 0] + chr_u16[y, 1] == 4096 and chr_u16[y, 1] <= 4096):
            lum[y, 0] = 4096
            if full and chr_u16[y, 1]:
                chroma_round[y] = 0
        elif (lum.shape[1] == 2 and chr_.shape[1] == 2
              and lum_u16[y, 0] + lum_u16[y, 1] == 4096 and lum_u16[y, 1] <= 4096
              and chr_u16[y, 0] + chr_u16[y, 1] == 4096 and chr_u16[y, 1] <= 4096):
            luma_round[y] = chroma_round[y] = 0
    return Filter(v_luma.pos, lum), Filter(v_chroma.pos, chr_), luma_round, chroma_round


def unsupported_reason(pix_fmt: str, width: int, height: int, out_w: int, out_h: int,
                       color_range: int = 0, colorspace: int = 2,
                       rotation: Optional[int] = 0) -> Optional[str]:
    """None when the device path reproduces the CPU graph's bytes for this input, else why
    not (one line, for the run summary). `width`/`height` are the decoded frame's, before
    `rotation` (clockwise degrees the autorotate filters turn it by, see `quarter_turn`);
    `out_w`/`out_h` are the scale filter's target; `color_range`/`colorspace` are the
    frame's FFmpeg enum values (PyAV's frame.color_range / frame.colorspace)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return (f"the CPU graph's swscale on {platform.machine()} uses other SIMD code than "
                "the x86 one the device path reproduces")
    try:
        plan_for(pix_fmt, width, height, out_w, out_h, color_range, colorspace, rotation)
    except ValueError as exc:
        return str(exc)
    return None


@lru_cache(maxsize=64)
def plan_for(pix_fmt: str, width: int, height: int, out_w: int, out_h: int,
             color_range: int = 0, colorspace: int = 2, rotation: int = 0) -> Plan:
    """The swscale recipe for frames of `pix_fmt` and `width` x `height` turned by
    `rotation`, scaled to `out_w` x `out_h` rgb24. Raises ValueError where not covered."""
    if pix_fmt not in PIX_FMTS:
        raise ValueError(f"pixel format {pix_fmt} (covered: {', '.join(PIX_FMTS)})")
    if colorspace not in _COEFFICIENTS:
        raise ValueError(f"colour matrix {colorspace} (FFmpeg AVColorSpace) is not covered")
    if rotation not in ROTATIONS:
        raise ValueError("a display rotation other than a quarter turn (the rotate filter)"
                         if rotation == -1 else
                         f"rotation {rotation} (only quarter turns are covered)")
    if min(width, height, out_w, out_h) < 1:
        raise ValueError(f"empty frame size {width}x{height} -> {out_w}x{out_h}")
    sub_x, sub_y, jpeg = PIX_FMTS[pix_fmt]
    if rotation in (90, 270):
        if sub_x != sub_y:
            raise ValueError(f"transposing {pix_fmt}: the transpose filter takes only equal "
                             "horizontal and vertical chroma subsampling, so FFmpeg converts "
                             "the format first")
        width, height = height, width
    full_range = jpeg or color_range == COLOR_RANGE_JPEG
    table = colour(colorspace, full_range)
    if (width, height) == (out_w, out_h) and sub_y <= 1 and sub_x == 1 and height % 2 == 0:
        return Plan(width, height, out_w, out_h, sub_x, sub_y, table, unscaled=True)
    # Odd output widths and unsubsampled chroma make swscale interpolate chroma per pixel.
    full = out_w % 2 == 1 or (sub_x == 0 and sub_y == 0)
    dst_sub_x = 0 if full else 1
    chroma_w, chroma_h = -(-width >> sub_x), -(-height >> sub_y)
    chroma_out_w = -(-out_w >> dst_sub_x)

    def increment(src: int, dst: int) -> int:
        inc = ((src << 16) + (dst >> 1)) // dst
        if not 10 <= inc <= _INT_MAX:
            raise ValueError(f"scaling {src} -> {dst} is beyond swscale's range")
        return inc

    h_luma = bilinear_filter(increment(width, out_w), width, out_w, _H_ALIGN, 1 << 14,
                             _local_pos(0, 0), _local_pos(0, 0))
    h_chroma = bilinear_filter(increment(chroma_w, chroma_out_w), chroma_w, chroma_out_w,
                               _H_ALIGN, 1 << 14, _local_pos(sub_x, _chroma_siting(sub_x)),
                               _local_pos(dst_sub_x, -513))
    v_luma = bilinear_filter(increment(height, out_h), height, out_h, _V_ALIGN, 1 << 12,
                             _local_pos(0, 0), _local_pos(0, 0))
    v_chroma = bilinear_filter(increment(chroma_h, out_h), chroma_h, out_h, _V_ALIGN, 1 << 12,
                               _local_pos(sub_y, _chroma_siting(sub_y)), _local_pos(0, -513))
    v_luma, v_chroma, luma_round, chroma_round = _row_rounding(v_luma, v_chroma, full)
    return Plan(width, height, out_w, out_h, sub_x, sub_y, table, unscaled=False,
                full_chroma=full, h_luma=h_luma, h_chroma=h_chroma, v_luma=v_luma,
                v_chroma=v_chroma, luma_round=luma_round, chroma_round=chroma_round)


_TURNS = {(): 0, (("transpose", "clock"),): 90, (("hflip", ""), ("vflip", "")): 180,
          (("transpose", "cclock"),): 270}


def quarter_turn(rotation_filters) -> Optional[int]:
    """Clockwise degrees (0/90/180/270) that the autorotate filters `video.rotation_filters`
    returns apply, or None when they are not a quarter turn (the `rotate` filter)."""
    return _TURNS.get(tuple((name, args) for name, args in rotation_filters))


def yuv_planes(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A decoded planar YUV PyAV frame's Y, U, V planes as (rows, columns) uint8 views,
    without the line padding (what a decode worker hands over)."""
    planes = []
    for plane in frame.planes[:3]:
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        planes.append(rows[:, :plane.width])
    return planes[0], planes[1], planes[2]


@dataclass(frozen=True)
class DeviceGeometry:
    """Everything the device needs to turn one video's picked frames into the CPU path's
    pixels: the decoded frame (size before rotation, pixel format, colour tags), the
    autorotation as a clockwise quarter turn, the scale filter's target and the crop window
    (None: the whole picture). Frames travel as their YUV planes packed one after another
    (`pack_planes`), so a batch of them is one uint8 array (N, packed_size)."""

    width: int
    height: int
    pix_fmt: str
    color_range: int
    colorspace: int
    rotation: int
    out_w: int
    out_h: int
    crop: Optional[tuple[int, int, int, int]] = None

    def plane_shapes(self) -> tuple[tuple[int, int], ...]:
        sub_x, sub_y, _ = PIX_FMTS[self.pix_fmt]
        chroma = (-(-self.height >> sub_y), -(-self.width >> sub_x))
        return (self.height, self.width), chroma, chroma

    @property
    def packed_size(self) -> int:
        return sum(rows * columns for rows, columns in self.plane_shapes())

    def centre_crop(self, size: int) -> "DeviceGeometry":
        """The same frames cropped to size x size in the middle, as the crop filter does."""
        x, y = int((self.out_w - size) / 2), int((self.out_h - size) / 2)
        return DeviceGeometry(self.width, self.height, self.pix_fmt, self.color_range,
                              self.colorspace, self.rotation, self.out_w, self.out_h,
                              (x, y, size, size))

    def unsupported(self) -> Optional[str]:
        return unsupported_reason(self.pix_fmt, self.width, self.height, self.out_w,
                                  self.out_h, self.color_range, self.colorspace, self.rotation)


def frame_geometry(frame, rotation: Optional[int], out_w: int, out_h: int) -> DeviceGeometry:
    """The geometry of a decoded PyAV frame scaled to out_w x out_h after `rotation`."""
    return DeviceGeometry(frame.width, frame.height, frame.format.name,
                          int(frame.color_range), int(frame.colorspace),
                          -1 if rotation is None else rotation, out_w, out_h)


def pack_planes(frame) -> np.ndarray:
    """A frame's Y, U and V planes without line padding, one after another (1-D uint8)."""
    return np.concatenate([plane.reshape(-1) for plane in yuv_planes(frame)])


def unpack_planes(packed, geometry: DeviceGeometry) -> list:
    """(N, packed_size) -> [Y (N, H, W), U (N, h, w), V (N, h, w)] views (numpy or torch)."""
    planes, start = [], 0
    for rows, columns in geometry.plane_shapes():
        size = rows * columns
        planes.append(packed[:, start:start + size].reshape(-1, rows, columns))
        start += size
    return planes
