"""The peer side of bench/text-vs-llama.cpp.sh: llama.cpp (through llama-cpp-python) on the
same GGUF file, thread count and token counts as `atelier-cli bench text`. Prints one JSON line.

Same method as ours: a fixed sequence of ordinary token ids is prefilled in one batch, then
`gen` single-token steps are decoded (greedy, no sampling cost), median of `runs` after a warm-up.
"""
import json
import statistics
import sys
import time

from llama_cpp import Llama

path, threads, n_prompt, n_gen, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
# n_batch spans the whole context: the prompt is prefilled in one batch like ours, and
# llama-cpp-python keeps only n_batch rows of logits when logits_all is off.
n_ctx = n_prompt + n_gen + 8
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
            n_batch=max(512, n_ctx), n_gpu_layers=0, verbose=False, logits_all=False)
vocab = llm.n_vocab()
ids = [200 + (i * 7919) % (vocab - 400) for i in range(n_prompt)]


def once():
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    prefill = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(n_gen):
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
        llm.eval([tok])
    return prefill, time.perf_counter() - t1


once()
samples = [once() for _ in range(runs)]
p = statistics.median(s[0] for s in samples)
d = statistics.median(s[1] for s in samples)
print(json.dumps({"prefill_tokens_per_s": n_prompt / p, "decode_tokens_per_s": n_gen / d}))
