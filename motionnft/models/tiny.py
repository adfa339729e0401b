"""Tiny offline components: tokenizers and text encoders built in code, no hub access.

Tokenizers are byte-level BPE with no merges (one token per UTF-8 byte) plus the special
tokens each model family expects, wrapped in ``PreTrainedTokenizerFast``. Text encoders
are the real ``transformers`` classes at toy widths with random weights (seeded).
"""

from __future__ import annotations

import torch


def byte_level_tokenizer(special_tokens: list[str], bos: str | None, eos: str | None, pad: str,
                         model_max_length: int, unk: str | None = None):
    """A byte-level BPE tokenizer (256 byte symbols + ``special_tokens``), as a fast tokenizer.

    ``bos``/``eos`` (when given) are added around every encoded text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    for token in special_tokens:
        vocab[token] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(special_tokens)
    template = " ".join(t for t in (bos, "$A", eos) if t)
    specials = [(t, vocab[t]) for t in (bos, eos) if t]
    tokenizer.post_processor = processors.TemplateProcessing(single=template, special_tokens=specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
        model_max_length=model_max_length,
    )


def tiny_clip_and_t5(seed: int = 0, width: int = 32):
    """CLIP-L and T5 stand-ins for FLUX at toy width: ``(clip, clip_tokenizer, t5, t5_tokenizer)``."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tokenizer = byte_level_tokenizer(["<|startoftext|>", "<|endoftext|>"], "<|startoftext|>", "<|endoftext|>",
                                          pad="<|endoftext|>", model_max_length=77)
    t5_tokenizer = byte_level_tokenizer(["<pad>", "</s>", "<unk>"], None, "</s>", pad="<pad>",
                                        model_max_length=512, unk="<unk>")
    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=width,
        bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
        pad_token_id=clip_tokenizer.pad_token_id,
    ))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=width, d_kv=8, d_ff=2 * width, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=t5_tokenizer.pad_token_id,
        eos_token_id=t5_tokenizer.eos_token_id, decoder_start_token_id=t5_tokenizer.pad_token_id,
    ))
    return clip.eval(), clip_tokenizer, t5.eval(), t5_tokenizer


QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>"]


def tiny_qwen_vl(seed: int = 0, width: int = 16):
    """A Qwen2.5-VL text encoder at toy width, its tokenizer and a processor without torchvision.

    Returns ``(text_encoder, processor)``; the processor uses the PIL image processor.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = byte_level_tokenizer(QWEN_SPECIAL_TOKENS, None, None, pad="<|endoftext|>", model_max_length=4096)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
            rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}, rope_theta=10000.0,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"],
        ),
        vision_config=dict(
            depth=2, hidden_size=width, intermediate_size=2 * width, num_heads=2, out_hidden_size=width,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[1],
            window_size=112, in_chans=3,
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    return encoder, QwenVLProcessor(tokenizer, ids["<|image_pad|>"])


class QwenVLProcessor:
    """The Qwen2-VL processor's contract (text + images -> token ids, pixel patches, grids).

    Built on transformers' PIL ``Qwen2VLImageProcessorPil`` so that it runs where
    torchvision does not exist (the fast image and video processors need it): each
    ``<|image_pad|>`` in the text is expanded to the image's number of merged patches.
    """

    def __init__(self, tokenizer, image_token_id: int, min_pixels: int = 56 * 56, max_pixels: int = 384 * 384):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.tokenizer = tokenizer
        self.image_token = tokenizer.convert_ids_to_tokens(image_token_id)
        self.image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)

    def __call__(self, text, images=None, padding=True, return_tensors="pt", **_):
        from transformers import BatchFeature

        texts = [text] if isinstance(text, str) else list(text)
        features = {}
        if images is not None:
            images = images if isinstance(images, list) else [images]
            out = self.image_processor(images=images, return_tensors="pt")
            features.update(out)
            merge = self.image_processor.merge_size ** 2
            counts = iter([int(g.prod()) // merge for g in out["image_grid_thw"]])
            expanded = []
            for piece in texts:
                parts = piece.split(self.image_token)
                expanded.append(parts[0] + "".join(self.image_token * next(counts) + rest for rest in parts[1:]))
            texts = expanded
        features.update(self.tokenizer(texts, padding=padding, return_tensors=return_tensors))
        return BatchFeature(features)
