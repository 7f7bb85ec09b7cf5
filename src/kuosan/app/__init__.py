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
"""

from kuosan.app.distillation import score_distillation
from kuosan.app.evaluation import evaluate, likelihood, load_samples, reconstruct
from kuosan.app.exporting import export
from kuosan.app.sampling import run_info, sample, sampler_options
from kuosan.app.text_to_3d import dreamfusion
from kuosan.app.text_to_image import text_to_image
from kuosan.app.training import build_conditional_training, build_trainer, train

__all__ = [
    "build_conditional_training",
    "build_trainer",
    "dreamfusion",
    "evaluate",
    "export",
    "likelihood",
    "load_samples",
    "reconstruct",
    "run_info",
    "sample",
    "sampler_options",
    "score_distillation",
    "text_to_image",
    "train",
]
