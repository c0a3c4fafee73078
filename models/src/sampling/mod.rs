//! Diffusion as arithmetic: deterministic [`noise`] from a seed, the noise
//! [`schedule`] (forward process and loss) and the DDPM/DDIM [`sampler`].

pub mod noise;
pub mod sampler;
pub mod schedule;
