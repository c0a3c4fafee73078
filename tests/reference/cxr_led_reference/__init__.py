"""Reference implementations of cxr-led's networks in PyTorch.

The canonical Python code each Rust network claims to be, used to check the
Rust side numerically (``parity``) and to time it (``bench``):

- the conditional UNet is diffusers' ``UNet2DModel`` configured as LED
  configures it, the sampler diffusers' ``DDIMScheduler`` with LED's settings;
- the CycleGAN ResNet generator and the PatchGAN discriminator are rewritten
  from the CycleGAN authors' description (``ResnetGenerator``,
  ``NLayerDiscriminator``), with their ``nn.Sequential`` layout and names.

``networks.py`` also holds the documented mapping from the Rust bundle's
tensor names to these modules' state-dict names.
"""
