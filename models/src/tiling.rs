//! Tiled inference: run a network over an image of any matrix size (e.g. a
//! 1955x1841 chest X-ray) in overlapping tiles of the size it was trained on,
//! a batch of tiles at a time, and blend the tile outputs with smooth weights.
//!
//! Each tile's output is weighted by a separable ramp over the overlap on
//! every side that has a neighbouring tile (sides on the image border keep
//! weight 1): zero for the outer quarter of the overlap, then a raised cosine
//! up to 1. The weighted sum is divided by the sum of the weights. A network
//! whose receptive radius fits in a quarter of the overlap therefore gives
//! exactly the untiled result (up to float error), and a deeper one blends
//! smoothly: no seams.
//!
//! Memory is bounded by `batch` tiles in flight, whatever the image size.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::{Error, Result};

/// How an image is cut into tiles, as written in `bundle.toml` and the daemon config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TileConfig {
    /// Side of a square tile in pixels (the network's training size).
    pub tile: i64,
    /// Pixels shared by neighbouring tiles, blended smoothly.
    pub overlap: i64,
    /// Tiles run through the network at once: the memory bound.
    pub batch: i64,
}

impl Default for TileConfig {
    fn default() -> Self {
        Self { tile: 256, overlap: 32, batch: 8 }
    }
}

impl TileConfig {
    /// Checks the numbers against the network's size multiple.
    pub fn validate(&self, multiple: i64) -> Result<()> {
        if self.tile <= 0 || self.tile % multiple != 0 {
            return Err(Error::InvalidParams(format!(
                "tile size {} must be a positive multiple of {multiple} (the network's downsampling factor)",
                self.tile
            )));
        }
        if self.overlap < 0 || self.overlap * 2 > self.tile {
            return Err(Error::InvalidParams(format!(
                "tile overlap {} must lie between 0 and half the tile size ({})",
                self.overlap,
                self.tile / 2
            )));
        }
        if self.batch <= 0 {
            return Err(Error::InvalidParams(format!("tile batch {} must be at least 1", self.batch)));
        }
        Ok(())
    }
}

/// Start offsets of tiles of side `tile` covering `0..size` with steps of at
/// most `tile - overlap`; the last tile ends exactly at `size`.
fn tile_starts(size: i64, tile: i64, overlap: i64) -> Vec<i64> {
    if size <= tile {
        return vec![0];
    }
    let stride = (tile - overlap).max(1);
    let count = (size - tile + stride - 1) / stride + 1;
    (0..count).map(|i| (i * stride).min(size - tile)).collect()
}

/// One axis of a tile's blending weight. On each end that borders another
/// tile, the first `overlap / 4` pixels get weight 0 (a network's output there
/// is spoilt by the tile edge, and the neighbour covers them) and the rest of
/// the overlap rises as a raised cosine to 1.
fn ramp(tile: i64, overlap: i64, taper_start: bool, taper_end: bool) -> Vec<f32> {
    let margin = overlap / 4;
    let rise = overlap - margin;
    let weight_at = |distance: i64| {
        if distance < margin {
            0.0
        } else if distance < overlap {
            (std::f64::consts::FRAC_PI_2 * (distance - margin) as f64 / rise as f64).sin().powi(2).max(1e-3)
        } else {
            1.0
        }
    };
    (0..tile)
        .map(|i| {
            let mut weight = 1.0f64;
            if taper_start {
                weight = weight.min(weight_at(i));
            }
            if taper_end {
                weight = weight.min(weight_at(tile - 1 - i));
            }
            weight as f32
        })
        .collect()
}

/// Where the tiles of one image lie and how they are weighted; built once per
/// image and reused for every network call on it (every diffusion step).
#[derive(Debug)]
pub struct TilePlan {
    height: i64,
    width: i64,
    tile_h: i64,
    tile_w: i64,
    batch: usize,
    /// (y, x, weight `[1, 1, tile_h, tile_w]`) per tile, on the image's device.
    tiles: Vec<(i64, i64, Tensor)>,
    /// Sum of all tile weights over the padded image; at least one tile covers each pixel.
    weight_sum: Tensor,
}

impl TilePlan {
    /// Plans the tiles for an `height` x `width` image on `device`. `multiple`
    /// is the network's size multiple: a small image is padded (edge
    /// replicated) to it rather than to a whole tile.
    pub fn new(height: i64, width: i64, config: &TileConfig, multiple: i64, device: tch::Device) -> Result<Self> {
        config.validate(multiple)?;
        if height <= 0 || width <= 0 {
            return Err(Error::InvalidParams(format!("cannot tile an empty {height}x{width} image")));
        }
        let round_up = |n: i64| (n + multiple - 1) / multiple * multiple;
        let tile_h = config.tile.min(round_up(height));
        let tile_w = config.tile.min(round_up(width));
        let (padded_h, padded_w) = (height.max(tile_h), width.max(tile_w));
        let ys = tile_starts(padded_h, tile_h, config.overlap);
        let xs = tile_starts(padded_w, tile_w, config.overlap);
        let weight_sum = Tensor::zeros([1, 1, padded_h, padded_w], (Kind::Float, device));
        let mut tiles = Vec::with_capacity(ys.len() * xs.len());
        for (iy, &y) in ys.iter().enumerate() {
            let row = Tensor::from_slice(&ramp(tile_h, config.overlap, iy > 0, iy + 1 < ys.len()));
            for (ix, &x) in xs.iter().enumerate() {
                let column = Tensor::from_slice(&ramp(tile_w, config.overlap, ix > 0, ix + 1 < xs.len()));
                let weight =
                    (row.view([tile_h, 1]) * column.view([1, tile_w])).view([1, 1, tile_h, tile_w]).to_device(device);
                let _ = weight_sum.narrow(2, y, tile_h).narrow(3, x, tile_w).g_add_(&weight);
                tiles.push((y, x, weight));
            }
        }
        Ok(Self { height, width, tile_h, tile_w, batch: config.batch as usize, tiles, weight_sum })
    }

    /// Number of tiles.
    pub fn len(&self) -> usize {
        self.tiles.len()
    }

    /// Always false: a plan has at least one tile.
    pub fn is_empty(&self) -> bool {
        self.tiles.is_empty()
    }

    /// Runs `network` over every input (all `[1, C_i, H, W]` with the planned H
    /// and W) and returns the blended output `[1, C_out, H, W]` as float.
    /// `network` receives one `[B, C_i, t, t]` tensor per input and returns
    /// `[B, C_out, t, t]`.
    pub fn run(&self, inputs: &[&Tensor], mut network: impl FnMut(&[Tensor]) -> Result<Tensor>) -> Result<Tensor> {
        let (padded_h, padded_w) = (self.weight_sum.size()[2], self.weight_sum.size()[3]);
        let mut padded = Vec::with_capacity(inputs.len());
        for input in inputs {
            let size = input.size();
            if size.len() != 4 || size[0] != 1 || size[2] != self.height || size[3] != self.width {
                return Err(Error::InvalidParams(format!(
                    "tiled inputs must all be [1, C, {}, {}], got {size:?}",
                    self.height, self.width
                )));
            }
            padded.push(if (padded_h, padded_w) == (self.height, self.width) {
                input.shallow_clone()
            } else {
                input.replication_pad2d([0, padded_w - self.width, 0, padded_h - self.height])
            });
        }

        let mut sum: Option<Tensor> = None;
        for chunk in self.tiles.chunks(self.batch) {
            let batch: Vec<Tensor> = padded
                .iter()
                .map(|x| {
                    let crops: Vec<Tensor> = chunk
                        .iter()
                        .map(|(y, x0, _)| x.narrow(2, *y, self.tile_h).narrow(3, *x0, self.tile_w))
                        .collect();
                    Tensor::cat(&crops, 0)
                })
                .collect();
            let output = network(&batch)?.to_kind(Kind::Float);
            let out_size = output.size();
            if out_size.len() != 4
                || out_size[0] != chunk.len() as i64
                || out_size[2] != self.tile_h
                || out_size[3] != self.tile_w
            {
                return Err(Error::InvalidParams(format!(
                    "tiled network returned {out_size:?} for {} tiles of {}x{}",
                    chunk.len(),
                    self.tile_h,
                    self.tile_w
                )));
            }
            let acc = sum.get_or_insert_with(|| {
                Tensor::zeros([1, out_size[1], padded_h, padded_w], (Kind::Float, self.weight_sum.device()))
            });
            for (k, (y, x, weight)) in chunk.iter().enumerate() {
                let _ = acc
                    .narrow(2, *y, self.tile_h)
                    .narrow(3, *x, self.tile_w)
                    .g_add_(&(output.narrow(0, k as i64, 1) * weight));
            }
        }
        let sum = sum.expect("a plan has at least one tile");
        Ok((sum / &self.weight_sum).narrow(2, 0, self.height).narrow(3, 0, self.width))
    }
}

/// One-shot [`TilePlan::run`] for an image whose size is taken from the first input.
pub fn tiled_map(
    inputs: &[&Tensor],
    config: &TileConfig,
    multiple: i64,
    network: impl FnMut(&[Tensor]) -> Result<Tensor>,
) -> Result<Tensor> {
    let first = inputs.first().ok_or_else(|| Error::InvalidParams("tiled_map needs an input".into()))?;
    let size = first.size();
    if size.len() != 4 {
        return Err(Error::InvalidParams(format!("tiled inputs must be [1, C, H, W], got {size:?}")));
    }
    TilePlan::new(size[2], size[3], config, multiple, first.device())?.run(inputs, network)
}
