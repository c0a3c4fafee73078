"""cxr-led's tiled inference (models/src/tiling.rs), ported for the speed benchmark:
tiles of the training size, last tile flush with the image edge, and a ramp
that is zero over the outer quarter of each interior overlap, then a raised
cosine up to 1."""

from __future__ import annotations

import math

import torch


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    count = (size - tile + stride - 1) // stride + 1
    return [min(i * stride, size - tile) for i in range(count)]


def ramp(tile: int, overlap: int, taper_start: bool, taper_end: bool) -> torch.Tensor:
    margin = overlap // 4
    rise = overlap - margin

    def weight_at(distance: int) -> float:
        if distance < margin:
            return 0.0
        if distance < overlap:
            return max(math.sin(math.pi / 2 * (distance - margin) / rise) ** 2, 1e-3)
        return 1.0

    values = []
    for i in range(tile):
        weight = 1.0
        if taper_start:
            weight = min(weight, weight_at(i))
        if taper_end:
            weight = min(weight, weight_at(tile - 1 - i))
        values.append(weight)
    return torch.tensor(values, dtype=torch.float32)


class TilePlan:
    def __init__(self, height: int, width: int, tile: int, overlap: int, batch: int, multiple: int, device):
        round_up = lambda n: (n + multiple - 1) // multiple * multiple  # noqa: E731
        self.height, self.width, self.batch = height, width, batch
        self.tile_h, self.tile_w = min(tile, round_up(height)), min(tile, round_up(width))
        self.padded = (max(height, self.tile_h), max(width, self.tile_w))
        ys = tile_starts(self.padded[0], self.tile_h, overlap)
        xs = tile_starts(self.padded[1], self.tile_w, overlap)
        self.weight_sum = torch.zeros(1, 1, *self.padded, device=device)
        self.tiles = []
        for iy, y in enumerate(ys):
            row = ramp(self.tile_h, overlap, iy > 0, iy + 1 < len(ys))
            for ix, x in enumerate(xs):
                column = ramp(self.tile_w, overlap, ix > 0, ix + 1 < len(xs))
                weight = (row[:, None] * column[None, :]).to(device)[None, None]
                self.weight_sum[:, :, y:y + self.tile_h, x:x + self.tile_w] += weight
                self.tiles.append((y, x, weight))

    def run(self, inputs: list[torch.Tensor], network) -> torch.Tensor:
        pad_h, pad_w = self.padded[0] - self.height, self.padded[1] - self.width
        padded = [torch.nn.functional.pad(t, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else t
                  for t in inputs]
        total = None
        for start in range(0, len(self.tiles), self.batch):
            chunk = self.tiles[start:start + self.batch]
            batch = [torch.cat([t[:, :, y:y + self.tile_h, x:x + self.tile_w] for y, x, _ in chunk]) for t in padded]
            output = network(*batch).float()
            if total is None:
                total = torch.zeros(1, output.shape[1], *self.padded, device=output.device)
            for k, (y, x, weight) in enumerate(chunk):
                total[:, :, y:y + self.tile_h, x:x + self.tile_w] += output[k:k + 1] * weight
        return (total / self.weight_sum)[:, :, :self.height, :self.width]
