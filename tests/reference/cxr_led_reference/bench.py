"""The same LED enhancement as cxr-led's Rust benchmark, in PyTorch eager (and
``torch.compile`` with ``--compile``), on the same bundle and device.

    python -m cxr_led_reference.bench --bundle DIR [--batches 1,4] [--runs N] [--no-large] [--compile] --out FILE

Writes JSON: 256x256 images/s per batch size (untiled, one network call per
batch and step) and seconds for one 1955x1841 image through tiles.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .networks import ReferenceLed, ddim_scheduler
from .tiling import TilePlan


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def led(model: ReferenceLed, scheduler, images, t0: int, steps: int, dtype, generator_fn, unet_fn):
    stride = t0 // steps
    estimate = generator_fn(images)
    alpha_bar = scheduler.alphas_cumprod[t0]
    x = alpha_bar.sqrt() * estimate + (1 - alpha_bar).sqrt() * torch.randn_like(estimate)
    for i in range(steps):
        t = t0 - i * stride
        eps = unet_fn(x, images, t)
        x = model.ddim_step(scheduler, eps, t, x, stride, last=i == steps - 1)
    return x.clamp(-1, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-large", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ReferenceLed(args.bundle, device)
    inference = model.manifest["inference"]
    t0, steps, tiles = inference["t0"], inference["steps"], inference["tiles"]
    precisions = {"f32": torch.float32}
    if device == "cuda":
        precisions.update({"bf16": torch.bfloat16, "f16": torch.float16})
    multiple = max(4, 1 << (len(model.manifest["unet"]["channel-mult"]) - 1))
    results = []
    for name, dtype in precisions.items():
        g_ab = model.g_ab.to(dtype)
        unet = model.unet.to(dtype)
        if args.compile:
            g_ab, unet = torch.compile(g_ab), torch.compile(unet)

        def generator_fn(x, g_ab=g_ab, dtype=dtype):
            return g_ab(x.to(dtype)).float()

        def unet_fn(x, condition, t, unet=unet, dtype=dtype):
            timesteps = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            return unet(torch.cat([x, condition], 1).to(dtype), timesteps).sample.float()

        scheduler = ddim_scheduler(model.schedule)
        row = {"precision": name, "compiled": args.compile, "images_per_second_256": {}}
        for batch in [int(b) for b in args.batches.split(",")]:
            images = (torch.randn(batch, 1, 256, 256, device=device) * 0.3).clamp(-1, 1)
            led(model, scheduler, images, t0, steps, dtype, generator_fn, unet_fn)  # warm-up
            synchronize(device)
            started = time.perf_counter()
            for _ in range(args.runs):
                led(model, scheduler, images, t0, steps, dtype, generator_fn, unet_fn)
            synchronize(device)
            row["images_per_second_256"][str(batch)] = batch * args.runs / (time.perf_counter() - started)
        if not args.no_large:
            image = (torch.randn(1, 1, 1955, 1841, device=device) * 0.3).clamp(-1, 1)
            plan = TilePlan(1955, 1841, tiles["tile"], tiles["overlap"], tiles["batch"], multiple, device)
            synchronize(device)
            started = time.perf_counter()
            led(model, scheduler, image, t0, steps, dtype, lambda x: plan.run([x], generator_fn),
                lambda x, c, t: plan.run([x, c], lambda xb, cb: unet_fn(xb, cb, t)))
            synchronize(device)
            row["seconds_1955x1841"] = time.perf_counter() - started
        results.append(row)
        print(json.dumps(row))
    report = {"device": device, "threads": torch.get_num_threads(), "torch": torch.__version__, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
