"""Score distillation: a frozen diffusion model as the critic of a differentiable generator (sds)."""
