"""Pack a batch of slides into one token sequence with contiguous attention segments.

Sequence layout, slide after slide: ``[CLS, registers..., patches sorted by fragment]``.
Two segmentations of that sequence drive attention (DESIGN §4):

* ``global_segments`` (NoPE blocks): one segment per slide, prefix included;
* ``fragment_segments`` (RoPE blocks): per slide, the prefix tokens on their own, then one
  segment per tissue fragment; a slide given without fragment ids is a single segment that
  holds its prefix too, as the published code does.

A *patient* (several slides read together) is packed the same way by :func:`pack_patients`: one
prefix for the patient, then each slide's patches (slide after slide, each sorted by fragment).
Fragment ids are offset per slide, so the fragments of different slides are different segments:

* ``global_segments``: one segment per patient, prefix and every slide included (NoPE blocks read
  the slides together);
* ``fragment_segments``: the prefix on its own, then one segment per (slide, fragment); a slide given
  without fragment ids is one segment;
* ``slide_segments`` (RoPE blocks when the fragment mask is off): the prefix on its own, then one
  segment per slide.

So a RoPE segment never holds tokens of two slides, and coordinates stay those of each slide (two
slides' positions are never compared). A one-slide patient is laid out exactly as that slide alone.

Nothing here is of size T x T: segments are lengths and offsets. Everything is built on the host
(lengths are host numbers that the attention loop needs) and moved to the device once per batch,
without waiting (:meth:`PackedSlides.to`); nothing is read back from the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import PathalignError


@dataclass
class Segments:
    """Contiguous segments of a packed sequence of ``total`` tokens."""

    lengths: list[int]
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def total(self) -> int:
        return sum(self.lengths)

    @property
    def max_len(self) -> int:
        return max(self.lengths)

    def offsets(self, device: torch.device | str = "cpu") -> Tensor:
        """``cu_seqlens``: int32 ``[S+1]`` start offsets plus the total (built on the host, copied once per device)."""
        key = ("offsets", str(device))
        if key not in self._cache:
            off = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int32)
            self._cache[key] = to_device(torch.from_numpy(off), device)
        return self._cache[key]

    def ids(self, device: torch.device | str = "cpu") -> Tensor:
        """Segment id of every token, int32 ``[T]`` (built on the host, copied once per device)."""
        key = ("ids", str(device))
        if key not in self._cache:
            ids = np.repeat(np.arange(len(self.lengths), dtype=np.int32), self.lengths)
            self._cache[key] = to_device(torch.from_numpy(ids), device)
        return self._cache[key]


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """``t`` on ``device``; a host-to-device copy is issued without waiting for it (``non_blocking``).

    Safe for pageable host memory too: the driver stages such a copy before the call returns.
    """
    return t.to(device, non_blocking=True)


@dataclass
class PackedSlides:
    """A batch of slides laid out as one sequence (see module docstring).

    Attributes:
        features: ``[P, C]`` patch features of all slides, each slide's patches sorted by fragment.
        coords: float64 ``[P, 2]`` level-0 coordinates in the same order.
        patch_slots: long ``[P]``: sequence position of each packed patch.
        prefix_slots: long ``[S, n_prefix]``: sequence positions of each slide's prefix tokens.
        order: per slide, the permutation applied to its input patches (input index of each packed patch).
        n_patches: patches per slide.
        global_segments / fragment_segments: attention segments of the two block kinds.
        rope_units: per slide, the RoPE unit in level-0 px.
        slide_of: long ``[P]``: the slide of each packed patch.
        patch_units: float64 ``[P]``: the RoPE unit of each packed patch's slide.
        slide_segments: RoPE segments when the fragment mask is off (None: ``global_segments``); set by
            :func:`pack_patients`, where a RoPE segment must not span two slides.
        slides_per_item: for :func:`pack_patients`, the patches of each slide of each item (patient), in
            input order (None: every item is one slide).

    With :func:`pack_patients` an *item* (``S`` above) is a patient: ``n_patches``, ``order`` and
    ``prefix_slots`` are per patient, ``order`` indexes the patient's slides' patches concatenated.
    """

    features: Tensor
    coords: Tensor
    patch_slots: Tensor
    prefix_slots: Tensor
    order: list[np.ndarray]
    n_patches: list[int]
    global_segments: Segments
    fragment_segments: Segments
    rope_units: list[float]
    slide_of: Tensor | None = None
    patch_units: Tensor | None = None
    slide_segments: Segments | None = None
    slides_per_item: list[list[int]] | None = None

    def __post_init__(self):
        if self.slide_of is None:
            self.slide_of = torch.repeat_interleave(torch.arange(len(self.n_patches)), torch.tensor(self.n_patches))
        if self.patch_units is None:
            self.patch_units = torch.repeat_interleave(torch.tensor(self.rope_units, dtype=torch.float64),
                                                       torch.tensor(self.n_patches))

    @property
    def total(self) -> int:
        return self.global_segments.total

    @property
    def rope_free_segments(self) -> Segments:
        """The segments of RoPE blocks without the fragment mask: per slide (never two slides together)."""
        return self.slide_segments if self.slide_segments is not None else self.global_segments

    def patch_unit_per_token(self) -> Tensor:
        """float64 ``[P]``: the RoPE unit of each packed patch's slide (on the packed batch's device)."""
        return self.patch_units

    def to(self, device: torch.device | str) -> "PackedSlides":
        """Move the packed tensors to ``device`` (copies issued without waiting); returns ``self``."""
        for name in ("features", "coords", "patch_slots", "prefix_slots", "slide_of", "patch_units"):
            setattr(self, name, to_device(getattr(self, name), device))
        return self


class SlideInputError(PathalignError, ValueError):
    """Raised for a slide whose inputs cannot be encoded; the message names the slide."""


def _as_numpy(x, name: str, where: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach()
        if x.device.type != "cpu":  # a device tensor given by the caller: one copy to the host
            x = x.cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - any conversion failure is a bad input
        raise SlideInputError(f"{where}: {name} cannot be read as an array ({e})") from None


def _finite_rows(feats: Tensor) -> np.ndarray | Tensor | None:
    """``None`` when every value of ``feats`` ``[N, C]`` is finite, else a bool ``[N]``: which rows are.

    Host tensors are checked through NumPy (no tensor is read back); a device tensor costs one read.
    """
    if feats.device.type == "cpu":
        arr = (feats.float() if feats.dtype == torch.bfloat16 else feats).detach().numpy()
        ok = np.isfinite(arr)
        return None if ok.all() else ok.all(axis=1)
    ok = torch.isfinite(feats)
    return None if bool(ok.all()) else ok.all(dim=1).cpu().numpy()


def validate_slide(features: Tensor | np.ndarray, coords: Tensor | np.ndarray, fragment: Tensor | np.ndarray | None,
                   input_dim: int, where: str) -> tuple[Tensor, np.ndarray, np.ndarray | None]:
    """Check one slide's inputs and return them as ``(features Tensor, coords ndarray, fragment ndarray|None)``.

    Raises:
        SlideInputError: naming ``where`` and the problem (shape, length, NaN, dims, empty slide).
    """
    feats = features if isinstance(features, Tensor) else torch.from_numpy(np.ascontiguousarray(_as_numpy(features, "features", where)))
    if feats.ndim != 2:
        raise SlideInputError(f"{where}: features must be [N, C], got shape {tuple(feats.shape)}")
    n, c = feats.shape
    if n == 0:
        raise SlideInputError(f"{where}: empty slide (0 patches)")
    if c != input_dim:
        raise SlideInputError(f"{where}: features have {c} dims per patch, the encoder expects {input_dim}")
    if not feats.is_floating_point():
        raise SlideInputError(f"{where}: features must be floating point, got {feats.dtype}")
    finite = _finite_rows(feats)
    if finite is not None:
        bad = int((~finite).sum())
        raise SlideInputError(f"{where}: features contain NaN or Inf in {bad} of {n} patches")
    xy = _as_numpy(coords, "coords", where)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise SlideInputError(f"{where}: coords must be [N, 2], got shape {xy.shape}")
    if xy.shape[0] != n:
        raise SlideInputError(f"{where}: {n} feature rows but {xy.shape[0]} coords")
    if not np.issubdtype(xy.dtype, np.number) or not np.isfinite(xy).all():
        raise SlideInputError(f"{where}: coords must be finite numbers")
    frag = None
    if fragment is not None:
        ids = _as_numpy(fragment, "fragment", where)
        frag = ids.reshape(-1) if ids.ndim else None
        if frag is None or frag.shape[0] != n:
            got = None if frag is None else frag.shape[0]
            raise SlideInputError(f"{where}: fragment must be [N] = [{n}], got {got} ids")
        if not np.issubdtype(frag.dtype, np.integer):
            if np.issubdtype(frag.dtype, np.floating) and np.isfinite(frag).all() and (frag == np.round(frag)).all():
                frag = frag.astype(np.int64)
            else:
                raise SlideInputError(f"{where}: fragment ids must be integers, got {frag.dtype}")
    return feats, xy, frag


def _cat_common_dtype(feats: Sequence[Tensor]) -> Tensor:
    """``torch.cat`` of ``feats`` in their one dtype, or in float32 when they differ (slides of mixed precision)."""
    dtypes = {f.dtype for f in feats}
    common = torch.float32 if len(dtypes) > 1 else dtypes.pop()
    return torch.cat([f.to(common) for f in feats])


def pack_slides(
    slides: Sequence[tuple],
    n_prefix: int,
    input_dim: int,
    rope_units: Sequence[float],
    names: Sequence[str] | None = None,
) -> PackedSlides:
    """Lay out ``slides`` (each ``(features [N,C], coords [N,2], fragment [N] | None)``) as one sequence.

    Args:
        slides: the slides' inputs; features may be numpy or torch, any float dtype.
        n_prefix: CLS + register tokens per slide.
        input_dim: expected feature dim ``C``.
        rope_units: RoPE unit (level-0 px) per slide.
        names: optional slide names for error messages.

    Returns:
        A :class:`PackedSlides`.
    """
    if len(slides) == 0:
        raise SlideInputError("no slides to encode")
    feats_all, coords_all, order_all, n_patches = [], [], [], []
    global_lengths: list[int] = []
    fragment_lengths: list[int] = []
    patch_slots, prefix_slots = [], []
    start = 0
    for s, item in enumerate(slides):
        where = f"slide {s}" + (f" ({names[s]!r})" if names is not None else "")
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise SlideInputError(f"{where}: expected (features, coords[, fragment])")
        features, coords, fragment = (tuple(item) + (None,))[:3]
        feats, xy, frag = validate_slide(features, coords, fragment, input_dim, where)
        n = feats.shape[0]
        if frag is None:
            order = np.arange(n)
            fragment_lengths.append(n_prefix + n)
        else:
            order = np.argsort(frag, kind="stable")
            _, counts = np.unique(frag, return_counts=True)  # sorted ids, same order as the sort
            fragment_lengths.append(n_prefix)
            fragment_lengths.extend(int(c) for c in counts)
        global_lengths.append(n_prefix + n)
        order_t = torch.from_numpy(order)
        feats_all.append(feats[order_t])
        coords_all.append(torch.from_numpy(xy[order].astype(np.float64)))
        order_all.append(order)
        n_patches.append(n)
        prefix_slots.append(torch.arange(start, start + n_prefix))
        patch_slots.append(torch.arange(start + n_prefix, start + n_prefix + n))
        start += n_prefix + n
    return PackedSlides(
        features=_cat_common_dtype(feats_all),
        coords=torch.cat(coords_all),
        patch_slots=torch.cat(patch_slots),
        prefix_slots=torch.stack(prefix_slots),
        order=order_all,
        n_patches=n_patches,
        global_segments=Segments(global_lengths),
        fragment_segments=Segments(fragment_lengths),
        rope_units=[float(u) for u in rope_units],
    )


def pack_patients(
    patients: Sequence[Sequence[tuple]],
    n_prefix: int,
    input_dim: int,
    rope_units: Sequence[Sequence[float]],
    names: Sequence[Sequence[str]] | None = None,
) -> PackedSlides:
    """Lay out ``patients`` (each a list of slides ``(features, coords, fragment | None)``) as one sequence.

    Per patient: one prefix, then the slides in the given order, each slide's patches sorted by
    fragment. Fragment ids become ``offset_slide + rank of the id within its slide`` (a slide without
    ids is one fragment), so fragments of different slides never share a RoPE segment; coordinates
    and RoPE units stay per slide. The NoPE blocks see the patient as one segment. A patient with one
    slide is packed exactly as :func:`pack_slides` packs that slide (the prefix joins a slide without
    fragment ids, as in the published code); with several slides the prefix is always its own RoPE
    segment. See the module docstring.

    Args:
        patients: per patient, its slides' inputs.
        n_prefix: CLS + register tokens per patient.
        input_dim: expected feature dim ``C``.
        rope_units: per patient, the RoPE unit (level-0 px) of each slide.
        names: optional slide names per patient, for error messages.

    Returns:
        A :class:`PackedSlides` whose items are the patients (``slides_per_item`` set).
    """
    if len(patients) == 0:
        raise SlideInputError("no patients to encode")
    feats_all, coords_all, units_all, order_all, n_patches, per_item = [], [], [], [], [], []
    global_lengths: list[int] = []
    fragment_lengths: list[int] = []
    slide_lengths: list[int] = []
    patch_slots, prefix_slots = [], []
    start = 0
    for p, slides in enumerate(patients):
        if len(slides) == 0:
            raise SlideInputError(f"patient {p}: no slides")
        if len(rope_units[p]) != len(slides):
            raise SlideInputError(f"patient {p}: {len(slides)} slides but {len(rope_units[p])} RoPE units")
        frag_ids, xys, feats, counts_per_slide = [], [], [], []
        offset = 0
        for s, item in enumerate(slides):
            where = f"patient {p} slide {s}" + (f" ({names[p][s]!r})" if names is not None else "")
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                raise SlideInputError(f"{where}: expected (features, coords[, fragment])")
            features, coords, fragment = (tuple(item) + (None,))[:3]
            f, xy, frag = validate_slide(features, coords, fragment, input_dim, where)
            n = f.shape[0]
            if frag is None:
                local = np.zeros(n, np.int64)
            else:
                _, local = np.unique(frag, return_inverse=True)  # rank of each id within the slide
            frag_ids.append(local.reshape(-1) + offset)  # offset per slide: fragments of two slides never meet
            offset += int(local.max()) + 1
            feats.append(f)
            xys.append(xy.astype(np.float64))
            counts_per_slide.append(n)
        all_ids = np.concatenate(frag_ids)
        order = np.argsort(all_ids, kind="stable")  # slide after slide, then fragment after fragment
        n = len(order)
        one_plain_slide = len(slides) == 1 and (tuple(slides[0]) + (None,))[2] is None
        if one_plain_slide:
            fragment_lengths.append(n_prefix + n)  # as pack_slides lays out one slide without fragment ids
            slide_lengths.append(n_prefix + n)
        else:
            _, counts = np.unique(all_ids, return_counts=True)
            fragment_lengths.append(n_prefix)
            fragment_lengths.extend(int(c) for c in counts)
            if len(slides) == 1:
                slide_lengths.append(n_prefix + n)
            else:
                slide_lengths.append(n_prefix)
                slide_lengths.extend(counts_per_slide)
        global_lengths.append(n_prefix + n)
        feats_all.append(_cat_common_dtype(feats)[torch.from_numpy(order)])
        coords_all.append(torch.from_numpy(np.concatenate(xys)[order]))
        units_all.append(np.repeat(np.asarray(rope_units[p], np.float64), counts_per_slide)[order])
        order_all.append(order)
        n_patches.append(n)
        per_item.append(counts_per_slide)
        prefix_slots.append(torch.arange(start, start + n_prefix))
        patch_slots.append(torch.arange(start + n_prefix, start + n_prefix + n))
        start += n_prefix + n
    return PackedSlides(
        features=_cat_common_dtype(feats_all),
        coords=torch.cat(coords_all),
        patch_slots=torch.cat(patch_slots),
        prefix_slots=torch.stack(prefix_slots),
        order=order_all,
        n_patches=n_patches,
        global_segments=Segments(global_lengths),
        fragment_segments=Segments(fragment_lengths),
        rope_units=[float(u[0]) for u in rope_units],
        patch_units=torch.from_numpy(np.concatenate(units_all)),
        slide_segments=Segments(slide_lengths),
        slides_per_item=per_item,
    )


def allocate_tokens(n_per_slide: Sequence[int], cap: int | None) -> list[int]:
    """How many patches each slide of a patient keeps under ``cap`` tokens for the patient.

    Proportional to each slide's patches (largest remainder, ties to the earlier slide), every slide
    keeping at least one patch while ``cap`` allows; a patient within the cap keeps everything.

    Example:
        >>> allocate_tokens([300, 100], 200)
        [150, 50]
    """
    n = np.asarray(n_per_slide, np.int64)
    total = int(n.sum())
    if cap is None or total <= cap:
        return n.tolist()
    if cap < 1:
        raise ValueError(f"the token cap must be >= 1, got {cap}")
    keep = np.zeros(len(n), np.int64)
    floor_one = cap >= len(n)
    if floor_one:
        keep += 1
    budget = cap - int(keep.sum())
    share = (n - keep) * budget / max(1, int((n - keep).sum()))
    base = np.minimum(np.floor(share).astype(np.int64), n - keep)
    keep += base
    left = cap - int(keep.sum())
    frac = share - base
    for i in sorted(range(len(n)), key=lambda i: (-frac[i], i)):  # largest remainder, earlier slide first
        if left <= 0:
            break
        if keep[i] < n[i]:
            keep[i] += 1
            left -= 1
    return keep.tolist()


def draw_patient_rows(n_per_slide: Sequence[int], cap: int | None,
                      seed: int | Sequence[int]) -> list[np.ndarray | None]:
    """Per slide, the increasing rows a patient keeps under ``cap`` (None: all of that slide's rows).

    The counts come from :func:`allocate_tokens`; the rows of each slide are a uniform random subset
    drawn from ``np.random.default_rng(seed)`` (slide after slide), so the draw depends on ``seed`` and
    the slides' lengths alone (no data is read to choose it).
    """
    keep = allocate_tokens(n_per_slide, cap)
    rng = np.random.default_rng(seed)
    out: list[np.ndarray | None] = []
    for n, k in zip(n_per_slide, keep):
        out.append(None if k >= n else np.sort(rng.choice(n, k, replace=False)))
    return out
