"""The reference networks and the loading of a cxr-led bundle into them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import torch
from torch import nn
from safetensors.torch import load_file
from diffusers import DDIMScheduler, UNet2DModel


class ResnetBlock(nn.Module):
    """CycleGAN's residual block: two reflection-padded 3x3 convolutions with instance norm."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=True),
            nn.InstanceNorm2d(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=True),
            nn.InstanceNorm2d(dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResnetGenerator (norm='instance', no dropout, 2 downsamplings)."""

    def __init__(self, input_nc: int, output_nc: int, ngf: int, n_blocks: int):
        super().__init__()
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=True), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        for i in range(2):
            mult = 2**i
            model += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=True),
                nn.InstanceNorm2d(ngf * mult * 2),
                nn.ReLU(True),
            ]
        model += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            mult = 2 ** (2 - i)
            model += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1, bias=True),
                nn.InstanceNorm2d(ngf * mult // 2),
                nn.ReLU(True),
            ]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """CycleGAN's PatchGAN (n_layers=3 gives the 70x70 receptive field), instance norm."""

    def __init__(self, input_nc: int, ndf: int, n_layers: int = 3):
        super().__init__()
        sequence = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            previous, mult = mult, min(2**n, 8)
            sequence += [
                nn.Conv2d(ndf * previous, ndf * mult, 4, stride=2, padding=1, bias=True),
                nn.InstanceNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        previous, mult = mult, min(2**n_layers, 8)
        sequence += [
            nn.Conv2d(ndf * previous, ndf * mult, 4, stride=1, padding=1, bias=True),
            nn.InstanceNorm2d(ndf * mult),
            nn.LeakyReLU(0.2, True),
        ]
        sequence += [nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*sequence)

    def forward(self, x):
        return self.model(x)


def generator_state_dict(rust: dict[str, torch.Tensor], residual_blocks: int) -> dict[str, torch.Tensor]:
    """Maps the Rust generator's names to ResnetGenerator's ``model.<index>`` names.

    stem -> model.1; down.i -> model.4, model.7; blocks.b.conv1/conv2 ->
    model.(10+b).conv_block.1/.5; up.i -> model.(10+n), model.(13+n); head -> model.(17+n).
    """
    n = residual_blocks
    prefixes = {"stem": "model.1", "down.0": "model.4", "down.1": "model.7", "up.0": f"model.{10 + n}",
                "up.1": f"model.{13 + n}", "head": f"model.{17 + n}"}
    for b in range(n):
        prefixes[f"blocks.{b}.conv1"] = f"model.{10 + b}.conv_block.1"
        prefixes[f"blocks.{b}.conv2"] = f"model.{10 + b}.conv_block.5"
    mapped = {}
    for name, tensor in rust.items():
        prefix, leaf = name.rsplit(".", 1)
        mapped[f"{prefixes[prefix]}.{leaf}"] = tensor
    return mapped


def discriminator_state_dict(rust: dict[str, torch.Tensor], layers: int = 3) -> dict[str, torch.Tensor]:
    """Maps the Rust PatchGAN's names (convs.k, head) to NLayerDiscriminator's model.<index>."""
    indices = {"convs.0": 0, **{f"convs.{k}": 3 * k - 1 for k in range(1, layers + 1)}, "head": 3 * layers + 2}
    mapped = {}
    for name, tensor in rust.items():
        prefix, leaf = name.rsplit(".", 1)
        mapped[f"model.{indices[prefix]}.{leaf}"] = tensor
    return mapped


def unet_from_config(config: dict) -> UNet2DModel:
    """diffusers' UNet2DModel configured from a bundle's [unet] table, as LED configures it."""
    levels = len(config["channel-mult"])
    size = config["sample-size"]
    attention = [(size >> level) in config["attention-resolutions"] for level in range(levels)]
    return UNet2DModel(
        sample_size=size,
        in_channels=config["image-channels"] + config["condition-channels"],
        out_channels=config["image-channels"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        block_out_channels=tuple(config["base-channels"] * m for m in config["channel-mult"]),
        layers_per_block=config["res-blocks"],
        attention_head_dim=config["attention-head-dim"],
        norm_num_groups=config["norm-groups"],
        norm_eps=1e-5,
        freq_shift=0,
        flip_sin_to_cos=True,
    )


def ddim_scheduler(schedule: dict) -> DDIMScheduler:
    """diffusers' DDIMScheduler with LED's settings: linear betas, x0 clipped to [-1, 1],
    final alpha 1, no step offset."""
    assert schedule["kind"] == "linear", "the reference covers LED's linear schedule"
    return DDIMScheduler(
        num_train_timesteps=schedule["timesteps"],
        beta_start=schedule["beta-start"],
        beta_end=schedule["beta-end"],
        beta_schedule="linear",
        clip_sample=True,
        clip_sample_range=1.0,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
    )


class ReferenceLed:
    """A cxr-led bundle loaded into the reference networks."""

    def __init__(self, bundle_dir: Path, device: str = "cpu"):
        self.manifest = tomllib.loads((bundle_dir / "bundle.toml").read_text())
        generator = self.manifest["generator"]
        blocks = generator["residual-blocks"]

        def load_generator(name: str) -> ResnetGenerator:
            net = ResnetGenerator(generator["image-channels"], generator["image-channels"],
                                  generator["base-channels"], blocks)
            weights = load_file(bundle_dir / self.manifest["files"][name]["path"])
            net.load_state_dict(generator_state_dict(weights, blocks), strict=True)
            return net.to(device).eval()

        self.g_ab = load_generator("g_ab")
        self.g_ba = load_generator("g_ba")
        self.unet = unet_from_config(self.manifest["unet"])
        self.unet.load_state_dict(load_file(bundle_dir / self.manifest["files"]["unet"]["path"]), strict=True)
        self.unet = self.unet.to(device).eval()
        self.schedule = self.manifest["schedule"]

    @torch.no_grad()
    def predict_noise(self, x_t, condition, t):
        timesteps = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device) if isinstance(t, int) else t
        return self.unet(torch.cat([x_t, condition], 1), timesteps).sample

    @torch.no_grad()
    def ddim_step(self, scheduler: DDIMScheduler, eps, t: int, x_t, stride: int, last: bool):
        """One DDIM update with diffusers' scheduler. cxr-led's last step always lands on the
        clean image; diffusers does so when the step reaches below t = 0, which a stride
        longer than t gives."""
        total = scheduler.config.num_train_timesteps
        scheduler.num_inference_steps = 1 if last else total // stride
        return scheduler.step(eps, t, x_t, eta=0.0).prev_sample

    @torch.no_grad()
    def enhance(self, low_quality, start_noise, t0: int, steps: int):
        """LED on one image that fits one tile: G_AB estimate, noised to t0, DDIM to clean."""
        scheduler = ddim_scheduler(self.schedule)
        stride = t0 // steps
        estimate = self.g_ab(low_quality)
        alpha_bar = scheduler.alphas_cumprod[t0]
        x = alpha_bar.sqrt() * estimate + (1 - alpha_bar).sqrt() * start_noise
        timesteps = [t0 - i * stride for i in range(steps)]
        for i, t in enumerate(timesteps):
            eps = self.predict_noise(x, low_quality, t)
            x = self.ddim_step(scheduler, eps, t, x, stride, last=i == steps - 1)
        return x.clamp(-1, 1), estimate
