"""Tests for CLIP-style scores (kuosan.metrics.clip_score) and the shapes contrastive model."""

from __future__ import annotations

import json
import math
import string

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kuosan.data.shapes import ATTRIBUTES, SHAPES_EVAL_SEEDS, make_caption, make_shapes
from kuosan.judges.shapes_clip import (
    WEIGHTS_PATH,
    ShapesCLIP,
    build_vocabulary,
    caption_consistency,
    load_shapes_clip,
    retrieval_report,
    save_shapes_clip,
)
from kuosan.metrics.clip_score import (
    clip_score,
    cosine_scores,
    info_nce_loss,
    load_clip,
    similarity_matrix,
    torchmetrics_convention,
)

# ------------------------------------------------------------------------------------------ formulas


def test_info_nce_matches_hand_computation():
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    w = torch.tensor([[1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    t = math.log(2.0)  # logits = 2 * cosines
    cos = [[(a[0] * b[0] + a[1] * b[1]) / math.hypot(*a) / math.hypot(*b) for b in w.tolist()] for a in u.tolist()]
    logits = [[2.0 * c for c in row] for row in cos]
    expected = []
    for i in range(3):
        row_lse = math.log(sum(math.exp(v) for v in logits[i]))
        col_lse = math.log(sum(math.exp(logits[k][i]) for k in range(3)))
        expected.append(0.5 * ((row_lse - logits[i][i]) + (col_lse - logits[i][i])))
    got = info_nce_loss(u, w, t)
    assert got.shape == (3,)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)


def test_info_nce_limits():
    e = F.normalize(torch.randn(8, 16), dim=1)
    perfect = info_nce_loss(e * 3, e, math.log(100.0))  # orthogonal-ish, matched: loss near 0
    assert perfect.mean() < info_nce_loss(e, e.roll(1, 0), math.log(100.0)).mean()
    # with temperature -> 0 logits vanish: loss = log N for every pair
    assert torch.allclose(info_nce_loss(e, torch.randn(8, 16), -30.0), torch.full((8,), math.log(8)), atol=1e-5)
    with pytest.raises(ValueError, match="N, D"):
        info_nce_loss(torch.randn(3, 4), torch.randn(2, 4), 0.0)


def test_cosine_and_torchmetrics_convention():
    a, b = torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([[6.0, 8.0], [-1.0, 0.0]])
    assert torch.allclose(cosine_scores(a, b), torch.tensor([1.0, -1.0]))
    assert torch.allclose(similarity_matrix(a, b), torch.tensor([[1.0, -0.6], [0.6, -1.0]]))
    assert torch.allclose(torchmetrics_convention(torch.tensor([0.3, -0.2])), torch.tensor([30.0, 0.0]))


# ----------------------------------------------------------------------- transformers CLIP loader


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialised tiny CLIPModel with a character-level CLIP tokenizer, saved by transformers."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    d = tmp_path_factory.mktemp("clip")
    chars = string.ascii_lowercase + string.digits + ",.'"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    out = d / "model"
    CLIPModel(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(out))
    return out


def _reference_scores(path, images_uint8: np.ndarray, texts: list[str]) -> torch.Tensor:
    """Cosines from transformers' own processor, get_image_features and get_text_features."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(path)).eval()
    processor = CLIPProcessor.from_pretrained(str(path))
    inputs = processor(text=texts, images=list(images_uint8), return_tensors="pt", padding=True)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    img = img if isinstance(img, torch.Tensor) else img.pooler_output
    txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    return F.cosine_similarity(img, txt, dim=-1)


def test_load_clip_scores_equal_transformers(tiny_clip_dir):
    batch = make_shapes(6, seed=11)
    uint8 = ((batch.images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    images = uint8.float() / 127.5 - 1  # the same pixels in [-1, 1]
    scorer = load_clip(tiny_clip_dir)
    ours = clip_score(images, batch.captions, scorer)
    ref = _reference_scores(tiny_clip_dir, uint8.permute(0, 2, 3, 1).numpy(), batch.captions)
    assert ours.shape == (6,)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(
        clip_score(images, batch.captions, scorer, torchmetrics_scale=True), 100 * ref.clamp_min(0), atol=1e-3
    )


def test_load_clip_resizes_to_model_size(tiny_clip_dir):
    """48x48 inputs are resized to the model's 32x32 (bicubic, as the processor; PIL's and torch's
    bicubic differ slightly, so the scores agree closely rather than exactly)."""
    batch = make_shapes(4, seed=12)
    big = F.interpolate((batch.images + 1) / 2, size=(48, 48), mode="nearest")
    uint8 = (big * 255).round().clamp(0, 255).to(torch.uint8)
    scorer = load_clip(tiny_clip_dir)
    assert scorer.preprocess(uint8.float() / 127.5 - 1).shape == (4, 3, 32, 32)
    ours = clip_score(uint8.float() / 127.5 - 1, batch.captions, scorer)
    ref = _reference_scores(tiny_clip_dir, uint8.permute(0, 2, 3, 1).numpy(), batch.captions)
    assert (ours - ref).abs().max() < 0.05


def test_load_clip_bad_input(tmp_path, tiny_clip_dir):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_clip(tmp_path)
    with pytest.raises(ValueError, match="one text per image"):
        clip_score(torch.zeros(2, 3, 32, 32), ["a"], load_clip(tiny_clip_dir))


# --------------------------------------------------------------------------- shapes contrastive model


def test_vocabulary_covers_every_caption():
    vocab = set(build_vocabulary())
    for caption in make_shapes(300, seed=3).captions:
        assert set(caption.replace(",", " ").split()) <= vocab, caption


def test_caption_consistency():
    attributes = {
        "shape": torch.tensor([0, 0]),
        "colour": torch.tensor([0, 1]),
        "size": torch.tensor([0, 1]),
        "position": torch.tensor([4, 4]),
    }
    named = {
        "shape": torch.tensor([True, True]),
        "colour": torch.tensor([True, False]),
        "size": torch.tensor([False, True]),
        "position": torch.tensor([True, True]),
    }
    # caption 0 "a red circle in the middle" (no size) fits image 0, not image 1 (green);
    # caption 1 "a large circle in the middle" (no colour) fits image 1, not image 0 (small)
    assert caption_consistency(attributes, named).tolist() == [[True, False], [False, True]]
    named["size"] = torch.tensor([False, False])
    assert caption_consistency(attributes, named).tolist() == [[True, True], [False, True]]


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ShapesCLIP(build_vocabulary(), channels=(4, 4, 4), hidden=8, width=8, layers=1, heads=2, embed_dim=4)
    save_shapes_clip(model.eval(), tmp_path / "m.safetensors")
    again = load_shapes_clip(tmp_path / "m.safetensors")
    x = make_shapes(3, seed=1)
    assert torch.equal(model.encode_images(x.images), again.encode_images(x.images))
    assert torch.equal(model.encode_texts(x.captions), again.encode_texts(x.captions))
    with pytest.raises(FileNotFoundError, match="train_shapes_clip"):
        load_shapes_clip(tmp_path / "missing.safetensors")


def test_shipped_shapes_clip_ranks_true_caption_first():
    model = load_shapes_clip()
    assert WEIGHTS_PATH.stat().st_size < 1_000_000
    test = make_shapes(200, SHAPES_EVAL_SEEDS["test"])
    report = retrieval_report(model, test.images, test.captions, test.attributes, test.named)
    assert report["i2t"] > 0.9 and report["t2i"] > 0.9
    assert report["score_matched"] > report["score_shuffled"] + 0.3
    # canonical full captions: among the 200 images' own full captions the true one ranks first
    full = [make_caption(*(ATTRIBUTES[k][int(test.attributes[k][i])] for k in ATTRIBUTES)) for i in range(200)]
    full_named = {k: torch.ones(200, dtype=torch.bool) for k in ATTRIBUTES}
    with torch.no_grad():
        sim = similarity_matrix(model.encode_images(test.images), model.encode_texts(full))
    consistent = caption_consistency(test.attributes, full_named)
    assert consistent[torch.arange(200), sim.argmax(1)].float().mean() > 0.9
    scores = clip_score(test.images, full, model)
    shuffled = clip_score(test.images, full[100:] + full[:100], model)
    assert (scores > shuffled).float().mean() > 0.9


def test_cli_eval_clip_score_of_any_images(tiny_clip_dir, tmp_path):
    """`kuosan eval IMAGES --prompts FILE --clip DIR`: the CLIP score of each image with its prompt,
    equal to clip_score with the same model."""
    import json

    from cli_helpers import kuosan
    from kuosan.metrics.clip_score import clip_score, load_clip

    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    np.save(tmp_path / "x.npy", images.numpy())
    prompts = ["a red circle", "a blue square", "a red square", "a blue circle"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    report = json.loads(
        kuosan("eval", tmp_path / "x.npy", "--prompts", tmp_path / "p.txt", "--clip", tiny_clip_dir).stdout
    )
    expected = clip_score(images, prompts, load_clip(tiny_clip_dir)).mean()
    assert report["clip_score"] == pytest.approx(float(expected), rel=1e-5) and report["n"] == 4
    r = kuosan("eval", tmp_path / "x.npy", "--prompts", tmp_path / "p.txt", check=False)
    assert r.returncode == 2 and "--clip" in r.stderr


def test_cli_eval_clip_score_from_a_captioned_folder(tiny_clip_dir, tmp_path):
    """--prompts FOLDER reads the captions of a captioned folder (metadata.jsonl, or NAME.txt beside
    NAME.png) in the order its images load; an image without a caption is one line."""
    import json

    from PIL import Image

    from cli_helpers import kuosan

    folder = tmp_path / "captioned"
    folder.mkdir()
    rng = np.random.default_rng(0)
    texts = ["a red circle", "a blue square", "a red square"]
    for i, _ in enumerate(texts):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    meta = [{"file_name": "0.png", "text": texts[0]}, {"file_name": "1.png", "text": texts[1]}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    (folder / "2.txt").write_text(texts[2] + "\n")
    by_folder = json.loads(kuosan("eval", folder, "--prompts", folder, "--clip", tiny_clip_dir).stdout)
    (tmp_path / "p.txt").write_text("\n".join(texts) + "\n")
    by_file = json.loads(kuosan("eval", folder, "--prompts", tmp_path / "p.txt", "--clip", tiny_clip_dir).stdout)
    assert by_folder["clip_score"] == pytest.approx(by_file["clip_score"], rel=1e-9)
    (folder / "2.txt").unlink()
    r = kuosan("eval", folder, "--prompts", folder, "--clip", tiny_clip_dir, check=False)
    assert r.returncode == 2 and "has no caption" in r.stderr
