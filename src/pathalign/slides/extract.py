"""Patch feature extraction: parallel reading (DataLoader workers), batched inference.

Each worker opens its own handle on the slide; patches are read at the pyramid level
closest to the target magnification and resized to ``patch_size`` when the level does not
match exactly. Inference runs under ``inference_mode`` in the encoder's precision on CUDA
(bf16/fp16) and float32 on CPU. Features are stored as float16 by default.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from numpy.typing import DTypeLike
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .patch_encoders import PatchEncoder
from .reader import SlideReader, open_slide


class PatchDataset(Dataset):
    """RGB patches (uint8 ``[P, P, 3]``) of one slide at the given level-0 coords."""

    def __init__(self, slide_path: str | Path, coords: np.ndarray, read_level: int, read_size: int, patch_size: int,
                 backend: str = "auto", mpp: float | None = None):
        self.slide_path, self.coords = str(slide_path), np.asarray(coords)
        self.read_level, self.read_size, self.patch_size = read_level, read_size, patch_size
        self.backend, self.mpp = backend, mpp
        self._slide: SlideReader | None = None

    def __len__(self) -> int:
        return len(self.coords)

    def _handle(self) -> SlideReader:
        if self._slide is None:  # opened lazily, once per worker process
            self._slide = open_slide(self.slide_path, self.backend, self.mpp)
        return self._slide

    def __getitem__(self, i: int) -> torch.Tensor:
        x, y = self.coords[i]
        img = self._handle().read_region((x, y), self.read_level, (self.read_size, self.read_size))
        if self.read_size != self.patch_size:
            img = cv2.resize(img, (self.patch_size, self.patch_size), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(img)


def extract_features(encoder: PatchEncoder, dataset: PatchDataset, batch_size: int = 64, workers: int = 0,
                     device: str | torch.device = "cpu", out_dtype: DTypeLike = np.float16, progress: bool = True,
                     desc: str = "patches") -> np.ndarray:
    """Features ``[N, encoder.dim]`` of every patch of ``dataset``."""
    device = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if workers > 0 else None)
    out = np.empty((len(dataset), encoder.dim), dtype=out_dtype)
    use_amp = device.type == "cuda" and encoder.precision in (torch.float16, torch.bfloat16)
    start = 0
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
            x = encoder.transform(batch.to(device, non_blocking=True))
            with torch.autocast(device.type, dtype=encoder.precision, enabled=use_amp):
                feats = encoder.model(x)
            feats = feats.float().cpu().numpy()
            out[start:start + len(feats)] = feats
            start += len(feats)
    return out
