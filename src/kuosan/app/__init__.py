"""kuosan's application functions: what the command line runs, callable from Python with the same
arguments and the same one-line errors (ConfigError, DataError, CheckpointError: all ValueErrors).

    train(out, preset=..., steps=...)              -> the Trainer's summary
    sample(run_dir, n, sampler=..., steps=...)     -> samples (n, ...)
    text_to_image(run_dir, prompt, task=...)       -> images (n, C, H, W)
    evaluate(samples_or_file, dataset)             -> every sample-quality metric
    likelihood(run_dir, split=..., method=...)     -> (report, bits/dim per image)
    reconstruct(run_dir, split=...)                -> (report, picture)
    run_info(run_dir)                              -> what a run is
    export(run_dir, out, format="diffusers")       -> a diffusers folder of the run
    score_distillation(run_dir, prompt, n=...)     -> (images optimised by SDS, report)
    dreamfusion(run_dir, prompt, out, steps=...)   -> a NeRF optimised by SDS, written to out
    plot_training(run_dir)                         -> the loss, lr, grad-norm and speed curves (a picture)
    forward_picture(dataset), score_picture(run_dir), langevin_picture()
                                                   -> q(x_t|x_0), score fields, Langevin chains (pictures)
    Trajectory, save_trajectory                    -> x_t and x0_hat at every sampler step (callback=)
"""

from kuosan.app.distillation import score_distillation
from kuosan.app.evaluation import evaluate, likelihood, load_samples, reconstruct
from kuosan.app.exporting import export
from kuosan.app.pictures import (
    Trajectory,
    forward_picture,
    langevin_picture,
    plot_training,
    save_trajectory,
    score_picture,
    trajectory_for,
)
from kuosan.app.sampling import run_info, sample, sampler_options
from kuosan.app.text_to_3d import dreamfusion
from kuosan.app.text_to_image import load_pipeline, text_to_image
from kuosan.app.training import build_conditional_training, build_trainer, train

__all__ = [
    "Trajectory",
    "build_conditional_training",
    "build_trainer",
    "dreamfusion",
    "evaluate",
    "export",
    "forward_picture",
    "langevin_picture",
    "load_pipeline",
    "plot_training",
    "likelihood",
    "load_samples",
    "reconstruct",
    "run_info",
    "sample",
    "sampler_options",
    "save_trajectory",
    "score_picture",
    "score_distillation",
    "text_to_image",
    "train",
    "trajectory_for",
]
