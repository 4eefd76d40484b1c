#!/usr/bin/env python3
"""PyTorch + transformers baseline for bench/llm_gpu: LlamaForCausalLM with the
LLaMA-3.1-8B shapes (random bf16 weights, sdpa attention, static KV cache) on the
GPU; decode tokens/s at batch 1, 8, 64, 256 after a 32-token prompt, and prefill
tokens/s of a 2048-token prompt (medians). Prints one JSON object; {"skipped": why}
when torch/transformers/CUDA are missing. Offline: builds the model from a config.
transformers compiles the forward pass by itself when a static cache is used; that
compilation takes minutes per batch shape, more than a GPU check can spend, so it is
turned off (disable_compile): the baseline is eager PyTorch with a static cache."""
import argparse
import json
import signal
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except Exception as e:  # noqa: BLE001 - report any import problem
        print(json.dumps({"benchmark": "llm_torch", "skipped": f"import: {e}"}))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"benchmark": "llm_torch", "skipped": "no CUDA device"}))
        return 0
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=a.layers, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                      rms_norm_eps=1e-5, tie_word_embeddings=False,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()

    def timed(fn):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    out = {"benchmark": "llm_torch", "torch": torch.__version__, "device": torch.cuda.get_device_name(0),
           "layers": a.layers, "decode_steps": a.steps, "stat": "median"}

    def cut_short(signum, frame):  # timeout(1): print what was measured so far
        out["cut_short"] = True
        print(json.dumps(out, indent=1), flush=True)
        sys.exit(124)
    signal.signal(signal.SIGTERM, cut_short)
    import transformers
    out["transformers"] = transformers.__version__
    out["compiled"] = False
    with torch.inference_mode():
        ids = torch.randint(0, cfg.vocab_size, (1, 2048), device="cuda")
        model(ids)  # warm-up
        out["prefill_2048_tokens_per_s"] = statistics.median(
            2048 / timed(lambda: model(ids, use_cache=False)) for _ in range(a.repeats))
        dec = {}
        for b in (1, 8, 64, 256):
            prompt = torch.randint(0, cfg.vocab_size, (b, 32), device="cuda")

            def gen(n):
                return model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                      cache_implementation="static", pad_token_id=0, disable_compile=True)

            gen(2)  # warm-up (static cache, kernels)
            ts = []
            for _ in range(a.repeats):
                ts.append(timed(lambda: gen(a.steps + 1)) - timed(lambda: gen(1)))
            dec[str(b)] = b * a.steps / statistics.median(ts)
            out["decode_tokens_per_s"] = dec
            print(f"llm_torch: decode batch {b}: {dec[str(b)]:.1f} tokens/s", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
