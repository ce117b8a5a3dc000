#!/usr/bin/env python3
"""Writes a llama-architecture GGUF model with random weights, for testing and benchmarking
the kvr prefix cache: meaningless text, but real compute and a real KV cache.

The same seed and size always give the same file, byte for byte. The vocabulary is built
here (SentencePiece-style: <unk>, <s>, </s>, the 256 byte tokens, then filler pieces), since
no installed package ships a vocab-only GGUF; the cache works on token ids and never needs
real text.

Usage: make_model.py --size tiny|bench --seed N OUT.gguf   (needs the `gguf` and `numpy` packages)
"""

import argparse

import gguf
import numpy as np

# n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx_train
SIZES = {
    # A few hundred thousand parameters: loads and prefills in milliseconds.
    "tiny": dict(n_vocab=512, n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128, n_ctx=4096),
    # About 124M parameters (75M in the 12 blocks, 2 x 24.6M embeddings): a 2,048-token
    # prefill takes seconds on 2 cores; the F16 KV cache holds 12 KiB per token.
    "bench": dict(n_vocab=32000, n_embd=768, n_layer=12, n_head=12, n_head_kv=4, n_ff=2048, n_ctx=4096),
}

# SentencePiece token types as llama.cpp reads them.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6


def vocab(n_vocab):
    """Token strings, scores and types of a byte-fallback SentencePiece vocabulary."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL] + [TOKEN_BYTE] * 256
    for i in range(n_vocab - len(tokens)):
        tokens.append(f"\u2581t{i}")
        types.append(TOKEN_NORMAL)
    scores = [0.0] * 3 + [-1000.0] * 256 + [-float(i) for i in range(n_vocab - 259)]
    return tokens, scores, types


def write_model(path, size, seed):
    p = SIZES[size]
    rng = np.random.default_rng(seed)
    head_dim = p["n_embd"] // p["n_head"]
    n_embd_kv = head_dim * p["n_head_kv"]

    def weight(rows, cols):
        # Scaled so activations stay in range through the layers (random, not trained).
        w = rng.standard_normal((rows, cols), dtype=np.float32) * (1.0 / np.sqrt(cols))
        return w.astype(np.float16)

    def norm(n):
        return np.ones(n, dtype=np.float32)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(f"kvr-random-llama-{size}-seed{seed}")
    writer.add_context_length(p["n_ctx"])
    writer.add_embedding_length(p["n_embd"])
    writer.add_block_count(p["n_layer"])
    writer.add_feed_forward_length(p["n_ff"])
    writer.add_head_count(p["n_head"])
    writer.add_head_count_kv(p["n_head_kv"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(p["n_vocab"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    tokens, scores, types = vocab(p["n_vocab"])
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)

    # numpy shapes are (rows = outputs, cols = inputs); gguf stores them reversed, as ggml wants.
    writer.add_tensor("token_embd.weight", weight(p["n_vocab"], p["n_embd"]))
    for i in range(p["n_layer"]):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm(p["n_embd"]))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(p["n_embd"], p["n_embd"]))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(n_embd_kv, p["n_embd"]))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(n_embd_kv, p["n_embd"]))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(p["n_embd"], p["n_embd"]))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm(p["n_embd"]))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(p["n_ff"], p["n_embd"]))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(p["n_ff"], p["n_embd"]))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(p["n_embd"], p["n_ff"]))
    writer.add_tensor("output_norm.weight", norm(p["n_embd"]))
    writer.add_tensor("output.weight", weight(p["n_vocab"], p["n_embd"]))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("out")
    args = ap.parse_args()
    write_model(args.out, args.size, args.seed)


if __name__ == "__main__":
    main()
