"""A tiny Llama built on the spot: the model the serve check uses when no real one is at hand.

A serve check needs a model, and a machine without a Hugging Face cache (or without network,
like CI) has none; vLLM refuses to download at run time there. So we build one: Llama
architecture (the family every vLLM backend supports), 2 layers of width 128, random weights
from a fixed seed saved as safetensors, and a byte-level BPE tokenizer trained on a few lines
of text, with a chat template so `/v1/chat/completions` works too. Under 2 MB on disk.

Two choices keep the check honest rather than lucky:
- `head_dim` is 64: vLLM's CPU attention supports a fixed list of head sizes (32, 64, 80, 96,
  112, 128, …); an unsupported one passes `/health` and then fails the first request with 500.
- The output rows of the special tokens are zero, so their logits are exactly 0 while the
  others spread around it: greedy decoding never picks EOS first (an empty completion) nor a
  token that detokenising skips.

Only the standard library is imported at module level, so this file also runs as a script
under another interpreter (`python tinymodel.py DEST`) — the validate venv has transformers,
tokenizers, safetensors and numpy through vLLM; spark-build's own venv need not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HIDDEN = 128
LAYERS = 2
HEADS = 2
HEAD_DIM = 64
INTERMEDIATE = 256
VOCAB = 384
SEED = 1234
MAX_POSITIONS = 2048
SPECIAL_TOKENS = ("<|pad|>", "<|begin|>", "<|end|>")

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Enough varied text for a 384-entry byte-level BPE to learn merges; content is irrelevant.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Spark builds vLLM from source for the GB10 and checks that it serves.",
    "Hello! How are you today? I am fine, thank you for asking.",
    "A small model answers questions about compilers, kernels and wheels.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000; symbols: + - * / = < > ( ) [ ] { }",
    "user assistant system: say hello in one short sentence.",
    "Once upon a time there was a tiny language model that could count to ten.",
] * 20


def make_tiny_llama(dest: Path, *, head_dim: int = HEAD_DIM) -> Path:
    """Write config, weights, tokenizer and chat template into `dest` and return it.

    Deterministic: the same versions of the libraries give the same files, so a failure seen
    once can be reproduced. `head_dim` other than 64 exists to build a model a backend rejects."""
    import numpy as np
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    dest.mkdir(parents=True, exist_ok=True)
    pad, bos, eos = SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, model_max_length=MAX_POSITIONS
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(dest)

    vocab = tok.get_vocab_size()
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        head_dim=head_dim,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tok.token_to_id(bos),
        eos_token_id=tok.token_to_id(eos),
        pad_token_id=tok.token_to_id(pad),
        tie_word_embeddings=False,
    )
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(dest)
    _pin_dtype(dest / "config.json")

    rng = np.random.default_rng(SEED)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    attn = HEADS * head_dim
    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal(vocab, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        tensors |= {
            f"{p}.self_attn.q_proj.weight": normal(attn, HIDDEN),
            f"{p}.self_attn.k_proj.weight": normal(attn, HIDDEN),
            f"{p}.self_attn.v_proj.weight": normal(attn, HIDDEN),
            f"{p}.self_attn.o_proj.weight": normal(HIDDEN, attn),
            f"{p}.mlp.gate_proj.weight": normal(INTERMEDIATE, HIDDEN),
            f"{p}.mlp.up_proj.weight": normal(INTERMEDIATE, HIDDEN),
            f"{p}.mlp.down_proj.weight": normal(HIDDEN, INTERMEDIATE),
            f"{p}.input_layernorm.weight": np.ones(HIDDEN, np.float32),
            f"{p}.post_attention_layernorm.weight": np.ones(HIDDEN, np.float32),
        }
    tensors["model.norm.weight"] = np.ones(HIDDEN, np.float32)
    head = normal(vocab, HIDDEN)
    for special in SPECIAL_TOKENS:
        head[tok.token_to_id(special)] = 0.0
    tensors["lm_head.weight"] = head
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}, indent=2) + "\n"
    )
    return dest


def _pin_dtype(config_json: Path) -> None:
    """Record float32 in the config whatever the transformers version writes by default
    (v4 says `torch_dtype`, v5 `dtype`): vLLM's CPU backend reads it to pick the dtype."""
    data = json.loads(config_json.read_text())
    data["torch_dtype"] = "float32"
    data["dtype"] = "float32"
    config_json.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def script_argv(python: str | Path, dest: Path, *, head_dim: int = HEAD_DIM) -> list[str]:
    """The command that builds the model with another interpreter (one that has the libraries).

    `-I` keeps this file's folder off `sys.path`: spark_build's `config`, `state`, `build`…
    would otherwise shadow same-named modules that transformers' imports look for."""
    return [str(python), "-I", str(Path(__file__).resolve()), str(dest), f"--head-dim={head_dim}"]


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Build the tiny Llama the serve check uses offline.")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--head-dim", type=int, default=HEAD_DIM)
    args = parser.parse_args(argv)
    print(make_tiny_llama(args.dest, head_dim=args.head_dim))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
