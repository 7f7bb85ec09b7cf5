"""Helpers of the tests that need a text encoder: tiny tokenizers saved locally (no download)."""

WORDS = ["a", "red", "green", "blue", "circle", "square", "on", "the", "left", "right"]


def word_tokenizer(directory, cls_sep: bool):
    """A tiny word-level tokenizer saved to ``directory`` (no download): <bos>/<eos> or [CLS]/[SEP]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] if cls_sep else ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=specials[1]))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single=f"{specials[2]} $A {specials[3]}", special_tokens=[(specials[2], 2), (specials[3], 3)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token=specials[0], unk_token=specials[1], bos_token=specials[2], eos_token=specials[3]
    )
    tok.save_pretrained(directory)
    return tok, len(vocab)
