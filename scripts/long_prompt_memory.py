"""Peak resident memory of one generate call on long prompts: transformers' greedy against ours (issue 22).

Each method runs in a fresh process (a clean peak); a thread samples the process's RSS every millisecond, and the
figure is the peak during the call minus the RSS just before it (models loaded, inputs built, one short warm-up
call done, so one-off allocations of the first call do not count).

    python scripts/long_prompt_memory.py                       # bundled pair, 8 x 999 tokens, 16 new tokens
    python scripts/long_prompt_memory.py --rows 8 --length 999 --new 16 --methods hf,exspec,eqspec
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

PAIR = Path(__file__).resolve().parent.parent / "hf_batchspec" / "demo_pair"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(method: str, rows: int, length: int, new: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    import hf_batchspec

    torch.set_num_threads(1)
    logging.set_verbosity_error()  # the prompts run past the bundled target's max_position_embeddings (512)
    warnings.simplefilter("ignore")
    target = hf_batchspec.enable(AutoModelForCausalLM.from_pretrained(PAIR / "target", dtype=torch.float32).eval())
    draft = AutoModelForCausalLM.from_pretrained(PAIR / "draft", dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, target.config.vocab_size, (rows, length), generator=generator)
    mask = torch.ones_like(ids)
    call = dict(max_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None)
    if method != "hf":
        call.update(assistant_model=draft, batch_spec=method, num_assistant_tokens=3)
    target.generate(ids[:2, :8], attention_mask=mask[:2, :8], **{**call, "max_new_tokens": 2})  # warm-up
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    before = rss_bytes()
    peak[0] = before
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    out = target.generate(ids, attention_mask=mask, **call)
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    return dict(method=method, rows=rows, length=length, new=new, before_mb=before / 2**20,
                peak_delta_mb=(peak[0] - before) / 2**20, seconds=seconds, out_shape=list(out.shape))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=999)
    parser.add_argument("--new", type=int, default=16)
    parser.add_argument("--methods", default="hf,exspec,eqspec")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one method in this process (the child)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.rows, args.length, args.new)))
        return
    for method in args.methods.split(","):
        child = subprocess.run([sys.executable, __file__, "--one", method, "--rows", str(args.rows), "--length",
                                str(args.length), "--new", str(args.new)], capture_output=True, text=True)
        if child.returncode:
            sys.exit(child.stderr)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{method:>7}: +{result['peak_delta_mb']:.0f} MB peak RSS over {result['before_mb']:.0f} MB "
              f"({result['rows']} x {result['length']} tokens, {result['new']} new, {result['seconds']:.1f} s)")


if __name__ == "__main__":
    main()
