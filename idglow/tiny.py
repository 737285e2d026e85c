"""The embedded tiny FLUX model: every FLUX component at toy size with random weights and in-memory tokenizers,
built in code. It is the demo default when no weights are configured (``idglow generate`` / the app without
``--model``, ``model: tiny`` in a training config) and what tests and benchmarks run on. Nothing here touches the
network or reads weights from disk."""

from __future__ import annotations

import torch

from idglow.faces.base import FaceAnalyzer

# Words the tiny tokenizers know (anything else maps to <unk>); enough for the prompts the app writes.
_WORDS = ["a", "an", "the", "and", "or", "of", "in", "on", "at", "with", "without", "to", "from", "by", "for", "as", "is", "are", "be", "this", "that", "these", "those", "it", "its", "his", "her", "their", "them", "he", "she", "they", "person", "people", "man", "woman", "boy", "girl", "child", "children", "kid", "kids", "baby", "toddler", "teenager", "adult", "elderly", "old", "young", "mother", "father", "mom", "dad", "parent", "parents", "son", "daughter", "brother", "sister", "grandmother", "grandfather", "family", "friends", "group", "photo", "photograph", "portrait", "picture", "image", "shot", "scene", "selfie", "candid", "studio", "natural", "light", "lighting", "soft", "warm", "bright", "golden", "hour", "sunset", "sunny", "daylight", "indoor", "indoors", "outdoor", "outdoors", "park", "beach", "garden", "street", "home", "living", "room", "kitchen", "table", "sofa", "couch", "backyard", "forest", "mountain", "lake", "city", "background", "bokeh", "blurry", "sharp", "detailed", "realistic", "photorealistic", "high", "quality", "professional", "camera", "lens", "mm", "standing", "sitting", "smiling", "laughing", "hugging", "holding", "hands", "together", "side", "next", "behind", "front", "left", "right", "middle", "center", "first", "second", "third", "fourth", "fifth", "sixth", "from", "year", "years", "aged", "age", "looks", "looking", "wearing", "shirt", "t-shirt", "dress", "jacket", "sweater", "coat", "hat", "glasses", "hair", "short", "long", "curly", "straight", "blond", "blonde", "brown", "black", "red", "gray", "grey", "white", "blue", "green", "yellow", "pink", "purple", "orange", "dark", "light", "skin", "eyes", "beard", "mustache", "face", "faces", "expression", "happy", "joyful", "calm", "serious", "proportions", "childlike", "body", "small", "tall", "little", "big", "round", "cheeks", "not", "proportioned", "shown", "depicted", "same", "identity", "identical", "distinct", "different", "each", "every", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def tiny_tokenizer(model_max_length: int):
    """A word-level fast tokenizer built in memory (bos=0, pad=1, eos=2, unk=3)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for word in list(dict.fromkeys(_WORDS + [str(d) for d in range(10)] + list(".,;:!?'-()\""))):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def tiny_components(seed: int = 0, *, num_layers: int = 2, num_single_layers: int = 2, heads: int = 2,
                    head_dim: int = 16, text_dim: int = 32) -> dict:
    """FLUX components at toy size: CLIP + T5 encoders, VAE (×2 downsampling), transformer, scheduler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = tiny_tokenizer(77)
    tokenizer_2 = tiny_tokenizer(128)
    vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, pad_token_id=1, eos_token_id=2, vocab_size=vocab_size, hidden_size=text_dim,
        intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
        projection_dim=text_dim, hidden_act="gelu",
    ))
    torch.manual_seed(seed + 1)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=text_dim, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=1, eos_token_id=2,
    ))
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )
    torch.manual_seed(seed + 3)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=text_dim,
        pooled_projection_dim=text_dim, guidance_embeds=True,
        axes_dims_rope=[head_dim // 4, (head_dim - head_dim // 4) // 2, (head_dim - head_dim // 4) // 2],
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)


def tiny_adapter(transformer, seed: int = 0, id_dim: int = 128, zero_init: bool = False):
    """An IdGlowAdapter for a tiny transformer: identity after every double block and every 2nd single block.
    Random (non-zero) output projections by default, so that identity visibly changes the image."""
    from idglow.adapter import IdGlowAdapter

    torch.manual_seed(seed + 4)
    return IdGlowAdapter.from_transformer(
        transformer, id_dim=id_dim, num_tokens=2, double_interval=1, single_interval=2,
        attn_dim=32, num_heads=2, resampler_hidden=64, zero_init=zero_init,
    )


def tiny_pipeline(seed: int = 0, face_analyzer: FaceAnalyzer | None = None, with_adapter: bool = True):
    """A complete IdGlowPipeline at toy size, built offline; every module in eval mode. Default image 64×64."""
    from idglow.pipeline import IdGlowPipeline

    components = tiny_components(seed)
    adapter = tiny_adapter(components["transformer"], seed) if with_adapter else None
    for module in [*components.values(), adapter]:
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe = IdGlowPipeline(**components, adapter=adapter, face_analyzer=face_analyzer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
