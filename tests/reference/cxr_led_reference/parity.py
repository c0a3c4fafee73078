"""Checks a parity case written by the Rust side against the reference networks.

    python -m cxr_led_reference.parity --bundle DIR --case FILE.safetensors [--tolerance 1e-4]

The case holds the inputs, the noise and the Rust outputs (and the weights of a
PatchGAN, which bundles do not carry). Prints one line per check with the
largest difference and where it is; exits 1 if any exceeds the tolerance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from .networks import NLayerDiscriminator, ReferenceLed, ddim_scheduler, discriminator_state_dict


def compare(name: str, ours: torch.Tensor, reference: torch.Tensor, tolerance: float) -> bool:
    if ours.shape != reference.shape:
        print(f"FAIL {name}: shape {tuple(ours.shape)} (Rust) vs {tuple(reference.shape)} (reference)")
        return False
    diff = (ours - reference).abs()
    worst = int(diff.argmax())
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), diff.shape))
    largest = float(diff.max())
    ok = largest <= tolerance
    print(f"{'ok  ' if ok else 'FAIL'} {name:<14} max |diff| {largest:.3e} at {where} "
          f"(Rust {float(ours.flatten()[worst]):+.6f}, reference {float(reference.flatten()[worst]):+.6f})")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--case", type=Path, required=True)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    case = load_file(args.case)
    led = ReferenceLed(args.bundle)
    results = []
    lq = case["input"]
    results.append(compare("g_ab", case["g_ab"], led.g_ab(lq), args.tolerance))
    results.append(compare("g_ba", case["g_ba"], led.g_ba(lq), args.tolerance))

    disc_weights = {k.removeprefix("disc."): v for k, v in case.items() if k.startswith("disc.")}
    ndf = disc_weights["convs.0.weight"].shape[0]
    discriminator = NLayerDiscriminator(lq.shape[1], ndf)
    discriminator.load_state_dict(discriminator_state_dict(disc_weights), strict=True)
    results.append(compare("patchgan", case["patchgan"], discriminator(lq), args.tolerance))

    eps = led.predict_noise(case["unet_x"], case["unet_condition"], case["unet_t"].long())
    results.append(compare("unet", case["unet"], eps, args.tolerance))

    t0, steps = int(case["t0"].item()), int(case["steps"].item())
    stride = t0 // steps
    scheduler = ddim_scheduler(led.schedule)
    for name, t, last in [("ddim_step", t0, False), ("ddim_last", stride, True)]:
        stepped = led.ddim_step(scheduler, case[f"{name}_eps"], t, case[f"{name}_x"], stride, last)
        results.append(compare(name, case[name], stepped, args.tolerance))

    output, estimate = led.enhance(lq, case["led_noise"], t0, steps)
    results.append(compare("led_estimate", case["led_estimate"], estimate, args.tolerance))
    results.append(compare("led_output", case["led_output"], output, args.tolerance))
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
