"""The command line as a user runs it (subprocess), including bad input."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import fails_cleanly, kuosan

TINY = ["model.params.base_channels=8", "model.params.num_res_blocks=1", "train.batch_size=8", "sample.steps=3"]


def _digest(run: Path) -> dict:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted((run / "checkpoint").iterdir())}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    kuosan("train", "--preset", "digits", "--steps", 3, "--out", out, "--no-progress", *TINY)
    return out


def test_train_sample_info(run, tmp_path):
    assert (run / "checkpoint" / "model.safetensors").is_file() and (run / "log.jsonl").is_file()
    r = kuosan(
        "sample",
        run,
        "--sampler",
        "ddpm",
        "--steps",
        5,
        "-n",
        10,
        "--seed",
        1,
        "--out",
        tmp_path / "s.npy",
        process=True,
    )
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (10, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    kuosan("sample", run, "--steps", 5, "-n", 10, "--seed", 1, "--out", tmp_path / "s2.npy", "--sampler", "ddpm")
    assert np.array_equal(x, np.load(tmp_path / "s2.npy"))  # same seed, same samples
    kuosan("sample", run, "-n", 16, "--out", tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").size[0] > 64
    info = json.loads(kuosan("info", run).stdout)
    assert info["step"] == 3 and info["data_shape"] == [1, 8, 8] and info["parameters"] > 0
    assert json.loads(r.stdout)["shape"] == [10, 1, 8, 8]


def test_resume_continues_to_more_steps(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    kuosan("train", "--resume", "--out", copy, "--steps", 5, "--no-progress")
    assert json.loads(kuosan("info", copy).stdout)["step"] == 5


def test_toy2d_preset(tmp_path):
    out = tmp_path / "toy"
    kuosan(
        "train",
        "--preset",
        "toy2d",
        "--steps",
        3,
        "--out",
        out,
        "--no-progress",
        "model.params.hidden=16",
        "data.n=100",
    )
    kuosan("sample", out, "--steps", 4, "-n", 7, "--out", tmp_path / "p.npy")
    assert np.load(tmp_path / "p.npy").shape == (7, 2)


def test_bad_sampler_steps_and_output(run, tmp_path):
    before = _digest(run)
    fails_cleanly(
        kuosan("sample", run, "--sampler", "nope", "--out", tmp_path / "a.npy", check=False), "sampler='nope'", "ddim"
    )
    fails_cleanly(
        kuosan("sample", run, "--steps", 1001, "--out", tmp_path / "a.npy", check=False), "more than the 1000"
    )
    fails_cleanly(kuosan("sample", run, "--out", tmp_path / "a.txt", check=False), ".npy or .png")
    fails_cleanly(kuosan("sample", tmp_path / "missing", "--out", tmp_path / "a.npy", check=False), "not found")
    assert _digest(run) == before and not (tmp_path / "a.npy").exists()


def test_bad_config(run, tmp_path):
    before = _digest(run)
    fails_cleanly(
        kuosan("train", "--preset", "digits", "--steps", 1, "--out", tmp_path / "x", "train.lrr=1", check=False),
        "unknown config key 'train.lrr'",
    )
    fails_cleanly(
        kuosan("train", "--preset", "nope", "--steps", 1, "--out", tmp_path / "x", check=False), "unknown preset"
    )
    fails_cleanly(
        kuosan(
            "train",
            "--preset",
            "digits",
            "--steps",
            1,
            "--out",
            tmp_path / "x",
            "diffusion.prediction=score",
            check=False,
        ),
        "diffusion.prediction",
    )
    fails_cleanly(
        kuosan(
            "train", "--preset", "digits", "--steps", 1, "--out", tmp_path / "x", "model.params.widht=3", check=False
        ),
        "widht",
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1")
    fails_cleanly(kuosan("train", "--config", bad, "--steps", 1, "--out", tmp_path / "x", check=False), "cannot parse")
    # an existing run is never overwritten by a new one
    fails_cleanly(
        kuosan("train", "--preset", "digits", "--steps", 1, "--out", run, check=False), "already holds a checkpoint"
    )
    assert _digest(run) == before


def _write_pngs(folder: Path, n: int, size: int):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(folder / f"{i}.png")


def test_image_folder_errors(tmp_path):
    args = ["train", "--preset", "digits", "--steps", 2, "--no-progress", *TINY]
    empty = tmp_path / "empty"
    empty.mkdir()
    fails_cleanly(kuosan(*args, "--out", tmp_path / "r0", f"data.name=folder:{empty}", check=False), "no images")
    corrupt = tmp_path / "corrupt"
    _write_pngs(corrupt, 2, 8)
    (corrupt / "broken.png").write_bytes(b"\x89PNG garbage")
    fails_cleanly(kuosan(*args, "--out", tmp_path / "r1", f"data.name=folder:{corrupt}", check=False), "broken.png")
    # train on 8x8 images, then resume on a folder whose images are 16x16: refused, checkpoint untouched
    folder = tmp_path / "imgs"
    _write_pngs(folder, 4, 8)
    kuosan(*args, "--out", tmp_path / "r2", f"data.name=folder:{folder}")
    before = _digest(tmp_path / "r2")
    _write_pngs(folder, 4, 16)
    fails_cleanly(
        kuosan("train", "--resume", "--out", tmp_path / "r2", "--steps", 4, check=False), "(1, 16, 16)", "(1, 8, 8)"
    )
    assert _digest(tmp_path / "r2") == before


def test_sampler_forms_from_the_command_line(run, tmp_path):
    """--solver-type (dpmpp-2m-sde) and --form (dpmpp-3m) reach the sampler: the non-default form
    draws other samples from the same seed; a form the sampler does not take is one line."""
    outs = {}
    for name, extra in (("usual", []), ("exact", ["--form", "exact"])):
        outs[name] = tmp_path / f"{name}.npy"
        kuosan("sample", run, "--sampler", "dpmpp-3m", "--steps", 6, "-n", 8, *extra, "--out", outs[name])
    assert not np.array_equal(np.load(outs["usual"]), np.load(outs["exact"]))
    kuosan("sample", run, "--sampler", "dpmpp-2m-sde", "--solver-type", "heun", "--steps", 4, "-n", 4,
           "--out", tmp_path / "h.npy")  # fmt: skip
    fails_cleanly(
        kuosan("sample", run, "--sampler", "ddim", "--form", "exact", "--out", tmp_path / "x.npy", check=False),
        "does not take form",
    )
