"""Tiny random-weight vision-language models with word-level tokenizers and chat templates, saved as HF directories."""

from __future__ import annotations

import torch

WORDS = "a the red circle blue square and on dog cat left right big small describe image what is this".split()
TEMPLATE_WORDS = ["USER:", "ASSISTANT:", "Describe", "the", "image."]
#: A minimal chat template in the LLaVA-1.5 form ("USER: <image>\n{prompt} ASSISTANT:"), whitespace-separated.
LLAVA_TEMPLATE = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
                  "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}"
                  "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def tokenizer(specials: list[str], extra: list[str] = (), **names):
    """A word-level fast tokenizer: ``specials`` first (registered as special tokens), then the words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(WORDS + TEMPLATE_WORDS + list(extra)))
    vocab = {t: i for i, t in enumerate(specials + [w for w in words if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **names)
    fast.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in names.values()]})
    return len(vocab), fast


def randomize(model: torch.nn.Module, scale: float = 0.3) -> None:
    """Redraw every matrix with a larger scale than the default init: varied captions, some ending early."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, scale)


def quiet_specials(lm_head: torch.nn.Linear, ids: list[int]) -> None:
    """Zero the output rows of special tokens other than the end token (captions of words, not markers)."""
    with torch.no_grad():
        lm_head.weight[ids] = 0.0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def end_instead_of(lm_head: torch.nn.Linear, eos: int, word: int) -> None:
    """The end token's output row a little above ``word``'s: answers end where they would have said it."""
    with torch.no_grad():
        lm_head.weight[eos] = lm_head.weight[word] * 1.05


def make_llava(path, image: int = 28, patch: int = 7, seed: int = 0, hidden: int = 32, layers: int = 2,
               heads: int = 4):
    """LLaVA-1.5 layout: CLIP tower (CLS dropped), 2-layer projector, Llama with GQA (``heads`` heads, half as many
    key/value heads). ``(image / patch)²`` image tokens: the benchmarks' long prompts come from a large ``image``."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    n, tok = tokenizer(specials, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    vision = CLIPVisionConfig(image_size=image, patch_size=patch, hidden_size=hidden, num_hidden_layers=layers,
                              num_attention_heads=heads, intermediate_size=2 * hidden, projection_dim=hidden)
    text = LlamaConfig(vocab_size=n, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=heads // 2, intermediate_size=2 * hidden, max_position_embeddings=8192,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=4,
                      vision_feature_select_strategy="default", vision_feature_layer=-2)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    randomize(model)
    quiet_specials(model.lm_head, [0, 1, 3, 4])
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 2, 0
    model.generation_config.max_new_tokens = 12  # the default answer length (the CLI tests)
    model.save_pretrained(path)
    proc = CLIPImageProcessor(size={"shortest_edge": image}, crop_size={"height": image, "width": image})
    LlavaProcessor(image_processor=proc, tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE).save_pretrained(path)
    return path


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>", "<unk>"]
#: Qwen2-VL's chat layout, shortened: "<|im_start|>user <|vision_start|><|image_pad|><|vision_end|>{prompt}<|im_end|> ..."
QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}"
                 "{% endif %}{% endfor %}<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant "
                 "{% endif %}")


def make_qwen2_vl(path, version: str = "2", seed: int = 0):
    """Qwen2-VL (``version="2"``) or Qwen2.5-VL (``"2.5"``): 7-px patches merged 2×2, M-RoPE, GQA Qwen2 text model."""
    import transformers

    n, tok = tokenizer(QWEN_SPECIALS, extra=["user", "assistant"], pad_token="<|endoftext|>",
                       eos_token="<|im_end|>")
    tok.padding_side = "left"
    text = dict(vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, max_position_embeddings=4096, bos_token_id=None, eos_token_id=2,
                pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]})
    ids = dict(image_token_id=5, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4)
    if version == "2":
        vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=7)
        cfg = transformers.Qwen2VLConfig(vision_config=vision, text_config=text, **ids)
        cls, proc_cls = transformers.Qwen2VLForConditionalGeneration, transformers.Qwen2VLProcessor
    else:
        vision = dict(depth=2, hidden_size=32, out_hidden_size=32, intermediate_size=64, num_heads=4, patch_size=7,
                      window_size=28, fullatt_block_indexes=[1])
        cfg = transformers.Qwen2_5_VLConfig(vision_config=vision, text_config=text, **ids)
        cls, proc_cls = transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLProcessor
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    randomize(model)
    quiet_specials(model.lm_head, [0, 1, 3, 4, 5, 6, 7])
    if version != "2":
        end_instead_of(model.lm_head, 2, 30)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 2, 0
    model.generation_config.max_new_tokens = 12  # the default answer length (the CLI tests)
    model.save_pretrained(path)
    images = transformers.Qwen2VLImageProcessor(patch_size=7, merge_size=2, temporal_patch_size=2,
                                                size={"shortest_edge": 28 * 28, "longest_edge": 56 * 56})
    videos = transformers.Qwen2VLVideoProcessor(patch_size=7, merge_size=2, temporal_patch_size=2)
    proc_cls(image_processor=images, tokenizer=tok, video_processor=videos,
             chat_template=QWEN_TEMPLATE).save_pretrained(path)
    return path


def make_paligemma(path, seed: int = 0):
    """PaliGemma: SigLIP tower (16 tokens of 7 px over a squashed 28-px image), Gemma text model, plain prompt."""
    from transformers import (GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              SiglipImageProcessor, SiglipVisionConfig)

    n, tok = tokenizer(["<pad>", "<bos>", "<eos>", "<unk>", "<image>"], pad_token="<pad>", bos_token="<bos>",
                       eos_token="<eos>")
    vision = SiglipVisionConfig(image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64, projection_dim=32)
    text = GemmaConfig(vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=8, intermediate_size=64, max_position_embeddings=4096, bos_token_id=1,
                       eos_token_id=2, pad_token_id=0)
    cfg = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=4, projection_dim=32,
                          hidden_size=32, vocab_size=n)
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(cfg).eval()
    randomize(model)
    quiet_specials(model.lm_head, [0, 1, 3, 4])
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 2, 0
    model.generation_config.max_new_tokens = 12  # the default answer length (the CLI tests)
    model.save_pretrained(path)
    images = SiglipImageProcessor(size={"height": 28, "width": 28})
    images.image_seq_length = 16
    PaliGemmaProcessor(image_processor=images, tokenizer=tok).save_pretrained(path)
    return path


IDEFICS_TEMPLATE = ("{% for m in messages %}{{ m['role'] | capitalize }}: {% for c in m['content'] %}"
                    "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}"
                    "<end_of_utterance> {% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")


def make_idefics3(path, smol: bool = False, seed: int = 0):
    """Idefics3 (or SmolVLM): 56-px tiles of 7-px patches, pixel-shuffled 2× to 4×4 tokens; a 112-px image is cut
    into up to 2×2 tiles plus the global view."""
    import transformers

    markers = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    specials = ["<pad>", "<s>", "<end_of_utterance>", "<unk>", "<image>", "<fake_token_around_image>",
                "<global-img>"] + markers
    n, tok = tokenizer(specials, extra=["User:", "Assistant:"], pad_token="<pad>", bos_token="<s>",
                       eos_token="<end_of_utterance>")
    tok.padding_side = "left"
    prefix = "SmolVLM" if smol else "Idefics3"
    vision = getattr(transformers, f"{prefix}VisionConfig")(image_size=56, patch_size=7, hidden_size=32,
                                                           num_hidden_layers=2, num_attention_heads=4,
                                                           intermediate_size=64)
    text = transformers.LlamaConfig(vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=64, max_position_embeddings=4096,
                                    bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg = getattr(transformers, f"{prefix}Config")(vision_config=vision, text_config=text, scale_factor=2,
                                                   image_token_id=4)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(cfg).eval()
    randomize(model)
    quiet_specials(model.lm_head, [0, 1, 3] + list(range(4, len(specials))))
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 2, 0
    model.generation_config.max_new_tokens = 12  # the default answer length (the CLI tests)
    model.save_pretrained(path)
    images = getattr(transformers, f"{prefix}ImageProcessor")(size={"longest_edge": 112},
                                                              max_image_size={"longest_edge": 56})
    extra = {"video_processor": transformers.SmolVLMVideoProcessor()} if smol and _has("num2words") else {}
    # SmolVLM's own processor needs num2words; without it, Idefics3's (same tiles and markers) stands in
    processor = getattr(transformers, f"{prefix if extra or not smol else 'Idefics3'}Processor")
    processor(image_processor=images, tokenizer=tok, image_seq_len=16, chat_template=IDEFICS_TEMPLATE,
              **extra).save_pretrained(path)
    return path
